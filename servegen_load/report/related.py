"""Which results files are parts of one run: `report` and `gate` merge only those (a merge of
unrelated runs has rates and percentiles that describe nothing), unless `--merge-unrelated`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError


def run_identity(head: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two results files parts of one run: its `run_id` when the header has one, else
    the source and the common start (`start_at` shared by shards and workers, else the start)."""
    if head.get("run_id"):
        return ("run_id", head["run_id"])
    start = head.get("start_at") if head.get("start_at") is not None else head.get("started_unix")
    return ("source", Path(str(head.get("source"))).name, start)


def check_related(headers: list[dict[str, Any]], paths: list[str]) -> None:
    """Refuse to merge results of different runs (their rates and percentiles would mean nothing)."""
    if len(paths) < 2:
        return
    first = run_identity(headers[0])
    for h, p in zip(headers[1:], paths[1:], strict=True):
        if run_identity(h) != first:
            raise InputError(f"{p} is from another run than {paths[0]} (different run id, source or start); "
                             "pass --merge-unrelated to merge them anyway")


def check_mergeable(res: Any, merge_unrelated: bool) -> None:
    """Results files read together (`report`, `gate`) count each request once: parts of one run
    (`check_related`) with no id twice; `--merge-unrelated` files may share ids, not within one."""
    from ..run.merge import check_unique_ids

    if len(res.paths) > 1 and not merge_unrelated:
        check_related(res.headers, res.paths)
    check_unique_ids(res["id"], res.file_index, res.paths, across=not merge_unrelated)
