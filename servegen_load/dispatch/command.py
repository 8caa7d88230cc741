"""The `run` and `report` commands behind the CLI: input, endpoint, model, run, summary, exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..payload import FAMILIES
from ..requests import Request
from .endpoint import load_api_key, scrub
from .limits import Timeouts

# Exit codes of `run` (documented in `run --help` and docs/reliability.md): 0 the schedule ran to
# its end (failed requests are results, not a failed run: `gate` judges them; an endpoint that
# disappears mid-run is this case, its requests end as connect_error); 2 bad input; 3 the run
# ended and not one request succeeded (wrong endpoint, dead server, every answer an error);
# 130 stopped by SIGINT/SIGTERM (results still hold one line per scheduled request).
EXIT_NO_SUCCESS = 3
EXIT_INTERRUPTED = 130


def open_source(path: str, shard: str | None = None) -> tuple[Iterator[Request], dict[str, Any]]:
    """The requests of a requests file (streamed) or of a scenario (generated on the fly); with
    `shard` ("i/N", scale hook) only that shard's clients (see `scale.shard`)."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        from ..workload.compose import iter_scenario_requests

        return iter_scenario_requests(p, shard=shard), {"source": str(p), "source_kind": "scenario"}
    from ..requests import iter_requests, read_header

    head = read_header(p)
    for _ in iter_requests(p):  # validate every line before anything is contacted (~0.7 us a line)
        pass
    info: dict[str, Any] = {"source": str(p), "source_kind": "requests"}
    if head.get("seed") is not None:
        info["seed"] = head["seed"]
    dur = head.get("duration")
    if isinstance(dur, int | float) and dur > 0:
        info["duration_hint"] = float(dur)
    if shard is not None:  # scale hook
        from ..scale.shard import iter_file_shard
        from ..workload.compose import parse_shard

        return iter_file_shard(p, parse_shard(shard)), info  # type: ignore[arg-type]
    return iter_requests(p), info


def publish_summary(res: Any, lag_threshold: float, summary_json: str | None) -> dict[str, Any]:
    """Summarize results, print the summary, write it to `summary_json`, warn when the client fell
    behind: the end of every run, single-process or merged from workers."""
    from ..metrics.render import print_summary
    from ..metrics.stats import summarize

    summary = summarize(res, lag_threshold=lag_threshold)
    print_summary(summary)
    if summary_json:
        from ..atomic import atomic_write

        with atomic_write(summary_json) as fh:
            json.dump(summary, fh, indent=2)
    if summary["fidelity"]["fell_behind"]:
        print(f"servegen-load: WARNING: the client fell behind its schedule (send lag p99 "
              f"{summary['latency']['send_lag']['p99'] * 1e3:.1f} ms > {lag_threshold * 1e3:g} ms); "
              "results understate the scheduled load", file=sys.stderr)
    return summary


def _safe_argv(argv: list[str], key: str | None) -> list[str]:
    return [scrub(a, key) for a in argv]


def run_command(*args: Any, **kwargs: Any) -> int:
    """`_run_command` with Ctrl-C before or after the run (sim start, model lookup) as exit 130."""
    try:
        if kwargs.get("workers") is not None or kwargs.get("ray") is not None:  # scale hook
            from ..scale.workers import scaled_run_command

            return scaled_run_command(*args, **kwargs)
        return _run_command(*args, **kwargs)
    except KeyboardInterrupt:
        print("servegen-load: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_command(source: str, output: str, *, endpoint: str | None, model: str | None, api: str,
                server_family: str | None, api_key_file: str | None, max_concurrency: int | None,
                duration: float | None, timeouts: Timeouts, metrics_port: int | None, metrics_host: str,
                metrics_linger: float, pushgateway: str | None, transport: str, lag_threshold: float,
                progress: str, summary_json: str | None = None, sim_preset: str | None = None,
                argv: list[str] | None = None, shard: str | None = None, start_at: float | None = None,
                workers: str | None = None, ray: str | None = None, retries: int = 0,
                retry_max_wait: float = 10.0, insecure: bool = False,
                content: dict[str, Any] | None = None) -> int:
    """Run SOURCE against ENDPOINT (or the embedded simulator), print the summary; the exit code."""
    from ..results import read_results
    from .runner import RunConfig, run

    if api not in ("chat", "completions"):
        raise InputError(f"expected chat or completions, got {api!r}", field="--api")
    if transport not in ("raw", "aiohttp"):
        raise InputError(f"expected raw or aiohttp, got {transport!r}", field="--transport")
    if progress not in ("auto", "live", "plain", "off"):
        raise InputError(f"expected auto, live, plain or off, got {progress!r}", field="--progress")
    if max_concurrency is not None and max_concurrency < 1:
        raise InputError("expected at least 1", field="--max-concurrency")
    if duration is not None and not duration > 0:
        raise InputError("expected a duration > 0 seconds", field="--duration")
    if retries < 0:
        raise InputError(f"expected 0 or more, got {retries}", field="--retries")
    if not retry_max_wait >= 0:
        raise InputError(f"expected seconds >= 0, got {retry_max_wait}", field="--retry-max-wait")
    family = server_family or ("vllm" if endpoint else "sim")
    if family not in FAMILIES:
        raise InputError(f"expected one of {', '.join(FAMILIES)}, got {family!r}", field="--server-family")
    api_key = load_api_key(Path(api_key_file) if api_key_file else None)
    from ..scale.shard import parse_start_at, snapshot_path  # scale hook: --shard / --start-at
    from ..workload.compose import parse_shard

    start_at = parse_start_at(start_at)
    parse_shard(shard)
    requests, info = open_source(source, shard)
    with ExitStack() as stack:
        if endpoint is None:
            try:
                from ..sim.process import SimProcess
            except ImportError:
                raise InputError("no --endpoint given and the embedded simulator is not available") from None
            sim = stack.enter_context(SimProcess(sim_preset) if sim_preset else SimProcess())
            endpoint = sim.url
            print(f"servegen-load: no --endpoint: started the embedded simulator at {endpoint}", file=sys.stderr)
        if model is None:
            import asyncio

            from .endpoint import Endpoint, discover_model

            ep = Endpoint.parse(endpoint)
            if insecure:
                import dataclasses

                ep = dataclasses.replace(ep, verify=False)
            model = asyncio.run(discover_model(ep, api_key))
        from ..content.setup import payload_options

        # payload hook: the token model is learned once, before the clock starts
        payload, content_header = payload_options(family, api, endpoint, model, api_key, content, insecure)
        cfg = RunConfig(
            endpoint=endpoint, model=model, output=Path(output), api=api,  # type: ignore[arg-type]
            api_key=api_key, payload=payload, max_concurrency=max_concurrency,
            timeouts=timeouts, duration=duration, transport=transport, metrics_port=metrics_port,
            metrics_host=metrics_host, metrics_linger=metrics_linger, pushgateway=pushgateway,
            progress=progress,  # type: ignore[arg-type]
            retries=retries, retry_max_wait=retry_max_wait, insecure=insecure,
            total_hint=duration or info.get("duration_hint"), start_at=start_at,
            metrics_snapshot=snapshot_path(),  # scale hook: set by `run --workers` for its workers
            header={"source": info["source"], "source_kind": info["source_kind"], "content": content_header,
                    "argv": _safe_argv(argv if argv is not None else sys.argv, api_key),
                    **({"seed": info["seed"]} if "seed" in info else {}),
                    **({"shard": shard} if shard is not None else {}),
                    **({"start_at": start_at, "started_unix": start_at} if start_at is not None else {})})
        outcome = run(requests, cfg)
    res = read_results(outcome.output)
    summary = publish_summary(res, lag_threshold, summary_json)
    if outcome.incomplete:
        print("servegen-load: WARNING: stopped twice: requests after the interruption point have no result line",
              file=sys.stderr)
    if outcome.input_error is not None:  # results hold every request before the bad input
        raise outcome.input_error
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    by = summary["requests"]["by_status"]
    if by.get("connect_error"):
        print(f"servegen-load: WARNING: {by['connect_error']} requests could not connect to {endpoint} "
              "(status connect_error: refused, TLS or DNS failure; the endpoint may have gone away)",
              file=sys.stderr)
    if summary["requests"]["ok"] == 0 and summary["requests"]["errors"] > 0:
        print(f"servegen-load: no request succeeded (exit {EXIT_NO_SUCCESS})", file=sys.stderr)
        return EXIT_NO_SUCCESS
    return 0


def report_command(paths: list[str], *, as_json: bool, output: str | None, lag_threshold: float) -> int:
    """Summarize one or more results files: text/rich to stdout, or JSON (stdout and/or a file)."""
    from ..metrics.render import print_summary
    from ..metrics.stats import summarize
    from ..results import read_results

    summary = summarize(read_results(*paths), lag_threshold=lag_threshold)
    text = json.dumps(summary, indent=2)
    if output:
        from ..atomic import atomic_write

        with atomic_write(output) as fh:
            fh.write(text + "\n")
    if as_json:
        print(text)
    else:
        print_summary(summary)
    return 0
