"""The end of every run, local or merged from shards: header, summary, warnings, SLOs, exit code.

Exit codes (`formats`): 0 the schedule ran to its end (failed requests are results, judged by
`gate` or the run's SLOs); 1 an SLO given with `--slo` or a scenario's `slo:` failed; 3 not one
request succeeded; 130 interrupted. The summary is printed in every case, first the lines naming
the run (source, endpoint without credentials, model, results file), so a summary pasted into a
ticket says what it measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..formats import EXIT_FAIL, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_NO_SUCCESS, STOPPED
from ..metrics.summary import Summary
from .spec import RunSpec
from .target import redact


def refused_line(why: str, who: str | None = None) -> str:
    """The line a run the endpoint refused from its first answers exits 3 with (`runner.gave_up`);
    `who`: the shard that saw it."""
    from ..dispatch.runner import REFUSED_HINT

    return f"{STOPPED} {who + ': ' if who else ''}{why}: {REFUSED_HINT} (exit {EXIT_NO_SUCCESS})"


def run_header(spec: RunSpec, endpoint: str, model: str) -> str:
    """The lines naming the run, printed above its summary."""
    out = "-" if spec.output == "-" else spec.output
    return f"run: {spec.source} -> {out}\nendpoint: {redact(endpoint)}  model: {model}"


def publish_summary(results: Any, spec: RunSpec, header: str | None = None) -> Summary:
    """Summarize results, print the summary (under `header`), write `--summary-json`. A client
    that fell behind is said once, by the summary's own warnings (`metrics.stats`)."""
    from ..metrics import stats
    from ..metrics.render import print_summary

    summary = stats.summary(results, lag_threshold=spec.lag_threshold)
    if header:
        print(header, flush=True)
    print_summary(summary)
    if spec.summary_json:
        from ..atomic import atomic_write

        with atomic_write(spec.summary_json) as fh:
            json.dump(summary.to_dict(), fh, indent=2)
    return summary


def check_slos(spec: RunSpec, results_path: Path, extra: list[str]) -> bool:
    """The run's SLOs (`--slo` and the scenario's `slo:`) on its results; True when all hold."""
    specs = list(extra) + list(spec.slo)
    if not specs:
        return True
    from ..gate import print_gate, run_gate
    from ..slo import build_slos

    g = run_gate([str(results_path)], build_slos(specs), lag_threshold=spec.lag_threshold)
    print_gate(g)
    return g.exit_code == 0


def exit_code(summary: Summary, spec: RunSpec, endpoint: str, *, interrupted: bool, slos_hold: bool) -> int:
    """The run's exit code from its summary (warnings on the way)."""
    if interrupted:
        return EXIT_INTERRUPTED
    req = summary.requests
    if req.by_status.get("connect_error"):
        print(f"servegen-load: WARNING: {req.by_status['connect_error']} requests could not connect to "
              f"{redact(endpoint)} (status connect_error: refused, TLS or DNS failure; the endpoint may "
              "have gone away)", file=sys.stderr)
    if req.scheduled == 0 and spec.shard is not None:  # a shard of few clients or requests may hold none
        print(f"servegen-load: shard {spec.shard} holds no request of the source", file=sys.stderr)
        return 0
    if req.scheduled == 0:  # an all-dash summary must not look like a result: the input is what is wrong
        print(f"servegen-load: the source scheduled no request (check --duration/--count and the source); "
              f"exit {EXIT_INPUT}", file=sys.stderr)
        return EXIT_INPUT
    if req.ok == 0 and req.errors > 0:
        print(f"servegen-load: no request succeeded (exit {EXIT_NO_SUCCESS})", file=sys.stderr)
        return EXIT_NO_SUCCESS
    return 0 if slos_hold else EXIT_FAIL


def finish_merged(spec: RunSpec, parts: list[Path], out: Path, outputs: Any, extra_lines: list[bytes],
                  argv: list[str], target: Any, fields: dict[str, Any], interrupted: bool,
                  keep: Path | None = None) -> int:
    """The end of a scaled-out run: merge the shards' parts (and `extra_lines`, for shards that never
    ran) into the results file, then the summary, SLOs and exit code as for a local run."""
    from ..results import read_results
    from .merge import merge_results, merged_header
    from .target import safe_argv

    header = merged_header(parts, {**fields, "source": spec.source, "endpoint": target.endpoint,
                                   "model": target.model}, safe_argv(argv, target.api_key))
    try:
        merge_results(parts, out, header, extra_lines)
    except BaseException as e:  # the parts stay where they are, and the user is told where
        print(f"servegen-load: merge failed ({type(e).__name__}); shard results kept in {keep}", file=sys.stderr)
        raise
    if outputs is not None:
        outputs.deliver()
    import contextlib

    with outputs.text() if outputs is not None else contextlib.nullcontext():
        summary = publish_summary(read_results(out), spec, run_header(spec, target.endpoint, target.model))
        holds = interrupted or check_slos(spec, out, _scenario_slos(spec))
    return exit_code(summary, spec, target.endpoint, interrupted=interrupted, slos_hold=holds)


def _scenario_slos(spec: RunSpec) -> list[str]:
    from .source import is_scenario

    if not is_scenario(spec.source):
        return []
    from ..scenario import load_scenario

    return list(load_scenario(spec.source).slo or [])
