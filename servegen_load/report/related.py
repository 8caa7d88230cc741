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


def shards_of(headers: list[dict[str, Any]]) -> tuple[set[int], int] | None:
    """(the shard indices present, N) when the files are `--shard i/N` parts of one run, else None."""
    seen: set[int] = set()
    total = None
    for h in headers:
        sh = h.get("shard")
        if not isinstance(sh, str) or "/" not in sh:
            return None
        i, _, n = sh.partition("/")
        if not (i.isdigit() and n.isdigit()) or (total is not None and int(n) != total):
            return None
        seen.add(int(i))
        total = int(n)
    return (seen, total) if total is not None else None


def missing_shards(headers: list[dict[str, Any]]) -> str | None:
    """Why these `--shard` files are not the whole run, if they are not (a gate on 19 of 52 requests,
    shard 0 of 2, passed as the run)."""
    got = shards_of(headers)
    if got is None or len(got[0]) == got[1]:
        return None
    have, n = got
    return (f"results of {len(have)} of {n} shards ({', '.join(f'{i}/{n}' for i in sorted(have))}): "
            "give every shard's file")


def intended_of(headers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the run meant to schedule: one header's, or the sum of the shards' shares (each shard's
    header holds its own share; the first alone said 32.6 of a 60-request run)."""
    shares = [h.get("intended") for h in headers]
    if not shares or not all(isinstance(x, dict) for x in shares):
        return None
    got = shards_of(headers)
    if len(headers) == 1 or got is None:
        return shares[0]  # type: ignore[return-value]
    total = dict(shares[0])  # type: ignore[arg-type]
    for k in ("requests", "rate"):
        vals = [x.get(k) for x in shares]  # type: ignore[union-attr]
        total[k] = sum(vals) if all(isinstance(v, int | float) for v in vals) else None
    return total
