"""The `report` command: a results summary (text, JSON with bootstrap samples, HTML) or a plan file.

Text rendering is `metrics.render` (shared with `run`); the JSON is `metrics.stats.summarize`
plus `samples` (`gate.latency_samples`), so `report RESULTS --json -o baseline.json` writes what
`gate --baseline` needs. A capacity file written by `plan` is recognised by its `format` and
reported as a capacity table (or `--html` page). Plotting is imported only for `--html`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..results import RESULTS_FORMAT

CAPACITY_FORMAT = "servegen-load/capacity/v1"


def detect(path: str) -> str:
    """`results` or `capacity`, from the file's first line / JSON `format`."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            first = fh.readline()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(p)) from None
    try:
        head = json.loads(first)
    except ValueError:
        head = None
    if isinstance(head, dict) and head.get("format") == RESULTS_FORMAT:
        return "results"
    if first.strip() in (b"{", b"{}") or (isinstance(head, dict) and head.get("format") == CAPACITY_FORMAT):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("format") == CAPACITY_FORMAT:
            return "capacity"
    return "results"  # read_results names the problem


def load_capacity(path: str) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != CAPACITY_FORMAT:
        raise InputError(f"not a capacity file (format {CAPACITY_FORMAT!r})", path=path)
    return doc


def summary_json(summary: dict[str, Any], samples: dict[str, Any]) -> str:
    """The summary, indented, with `samples` appended on one compact line (it is data, not reading)."""
    body = json.dumps(summary, indent=2)
    assert body.endswith("\n}")
    return body[:-2] + ',\n  "samples": ' + json.dumps(samples, separators=(",", ":")) + "\n}"


def report_command(paths: list[str], *, as_json: bool, output: str | None, lag_threshold: float,
                   html: str | None = None) -> int:
    """Summarize results (or a capacity file): text/rich, JSON (stdout and/or file), HTML."""
    from ..atomic import atomic_write

    kinds = {detect(p) for p in paths}
    if "capacity" in kinds:
        if len(paths) != 1:
            raise InputError("report takes one capacity file at a time (not mixed with results files)")
        doc = load_capacity(paths[0])
        if html:
            from .html import capacity_html

            with atomic_write(html) as fh:
                fh.write(capacity_html(doc))
        if output:
            with atomic_write(output) as fh:
                fh.write(json.dumps(doc, indent=2) + "\n")
        if as_json:
            print(json.dumps(doc, indent=2))
        else:
            from .text import print_capacity

            print_capacity(doc)
        return 0

    from ..gate import latency_samples
    from ..metrics.render import print_summary
    from ..metrics.stats import summarize
    from ..results import read_results

    res = read_results(*paths)
    if len(paths) > 1:  # scale hook: shards merge only if disjoint (a file given twice double-counts)
        from ..scale.merge import check_unique_ids

        check_unique_ids(res["id"], res.file_index, res.paths)
    summary = summarize(res, lag_threshold=lag_threshold)
    if html:
        from .html import results_html

        with atomic_write(html) as fh:
            fh.write(results_html(res, summary))
    if output or as_json:
        text = summary_json(summary, latency_samples(res))
        if output:
            with atomic_write(output) as fh:
                fh.write(text + "\n")
        if as_json:
            print(text)
    if not as_json:
        print_summary(summary)
    return 0
