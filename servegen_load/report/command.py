"""The `report` command: a results summary (text, JSON, CSV, HTML) or a plan file.

Text rendering is `metrics.render` (shared with `run`); the JSON is `metrics.stats.summarize`
(plus the goodput block with `--request-slo`). The JSON written with `-o` also carries `samples`
(`gate.latency_samples`: per-request latencies), so `report RESULTS --json -o baseline.json`
writes what `gate --baseline` needs; the JSON printed on stdout leaves them out (it is for
reading). `--csv` writes one row per request (`report.csv`). Several results files merge only
when they are parts of one run (`check_related`), unless `--merge-unrelated`. A capacity file
written by `plan` is recognised by its `format` and reported as a capacity table (or `--html`
page). Plotting is imported only for `--html`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import CAPACITY_FORMAT
from .related import check_mergeable


def detect(path: str) -> str:
    """`results` or `capacity`, from the file's first line / JSON `format`."""
    from ..formats import sniff

    try:
        kind = sniff(path)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(path)) from None
    return "capacity" if kind == "capacity" else "results"  # read_results names any other problem


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
                   html: str | None = None, warmup: float = 0.0, slos: Any = None, csv: str | None = None,
                   merge_unrelated: bool = False, slo_file: str | None = None) -> int:
    """Summarize results (or a capacity file): text/rich, JSON (stdout and/or file), CSV, HTML.

    Returns the exit code: 0, or 1 when there is no request to summarize (an all-dash summary
    would look like a result)."""
    from ..atomic import atomic_write
    from ..outputs import check_paths

    # outputs hook: no output is an input or another output; `-` (stdout) at most once
    check_paths([("-o", output), ("--html", html), ("--csv", csv)],
                [("RESULTS", p) for p in paths] + [("--slo-file", slo_file)])
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

    import sys

    from ..gate import latency_samples, whole_run_gap
    from ..metrics.render import print_summary
    from ..metrics.stats import summary as summary_of
    from ..results import read_results
    from ..slo import after_warmup, evaluate, goodput_summary

    res = read_results(*paths)
    check_mergeable(res, merge_unrelated)  # scale hook: shards merge only if disjoint
    part = whole_run_gap(res) if output else None  # said in the baseline's samples: no gate compares with part of a run
    res = after_warmup(res, warmup)
    if res.n == 0:
        # nothing to summarize is bad input (exit 2), as for `gate`: a 1 would read as a failed verdict
        print(f"servegen-load: error: no requests to summarize in {', '.join(paths)}"
              + (f" after the {warmup:g} s warm-up" if warmup else ""), file=sys.stderr)
        return 2
    summary = summary_of(res, lag_threshold=lag_threshold)
    if warmup:
        summary.warmup_s = warmup
    if slos is not None and slos.request is not None:
        summary.goodput = goodput_summary(res, slos.request)
    if slos is not None and slos.slos:
        summary.slo = [c.to_dict() for c in evaluate(res, slos, lag_threshold=lag_threshold)]
    if html:
        from .html import results_html

        with atomic_write(html) as fh:
            fh.write(results_html(res, summary))
    if csv:
        from .csv import write_csv

        write_csv(res, csv)
    if output:
        with atomic_write(output) as fh:
            samples = latency_samples(res)
            if part:
                samples["incomplete"] = part
            fh.write(summary_json(summary.to_dict(), samples) + "\n")
    if "-" in (output, html, csv):  # stdout holds that file: the text summary goes to stderr
        print_summary(summary, file=sys.stderr)
    elif as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print_summary(summary)
    return 0
