"""One run in this process: spec -> target -> engine -> summary -> exit code.

Everything that can be wrong with the input is found before anything is started: the outputs
(`outputs.run_outputs`: writable, not an input, locked), the source (every line of a requests
file, the scenario file and its pools), the API key file. Only then is the simulator started or
the endpoint contacted (`run.target`).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from pathlib import Path
from typing import Any

from ..dispatch.limits import Limits, Timeouts
from ..dispatch.runner import GIVE_UP_AFTER, RunConfig
from ..errors import InputError
from ..formats import EXIT_INTERRUPTED, EXIT_NO_SUCCESS, EXIT_STORAGE
from .barrier import StartWithdrawn
from .finish import check_slos, exit_code, publish_summary, refused_line, run_header
from .source import Opened, open_source
from .spec import RunSpec
from .target import Target, api_key_of, resolve_target, safe_argv


def timeouts(spec: RunSpec) -> Timeouts:
    return Timeouts(spec.timeout_connect, spec.timeout_first_token, spec.timeout_total, spec.timeout_idle)


def open_for(spec: RunSpec, *, validate: bool = True) -> Opened:
    """The spec's requests (its shard, rate, duration and count applied)."""
    shard = spec.shard if spec.shard_by == "client" else None
    opened = open_source(spec.source, shard, rate=spec.rate, duration=spec.duration, count=spec.count,
                         validate=validate)
    names = opened.info.get("names")
    if names is not None and names["client"]:
        from ..slo import check_scope_names, parse_slo

        check_scope_names([parse_slo(x) for x in (*opened.info.get("slo", ()), *spec.slo)], names,
                          f"the source {Path(spec.source).name}")
    if spec.shard is not None and spec.shard_by == "request":
        from .shard import by_request

        i, n = (int(x) for x in spec.shard.split("/"))
        opened.requests = by_request(opened.requests, i, n)
    return opened


def engine_config(spec: RunSpec, target: Target, opened: Opened, argv: list[str], output: Path, *,
                  results_copy: Path | None = None, handle_signals: bool = True,
                  metrics_port: int | None = None) -> RunConfig:
    """The engine's configuration for one spec: the only place a `RunConfig` is made from options."""
    from .barrier import stdin_gate
    from .shard import sleep_until_setup, snapshot_path

    start_at = spec.start_at

    async def before_start() -> None:
        if start_at is not None:
            await sleep_until_setup(start_at)

    info = opened.info
    header: dict[str, Any] = {"source": info["source"], "source_kind": info["source_kind"],
                              "content": target.content, "argv": safe_argv(argv, target.api_key)}
    if "seed" in info:
        header["seed"] = info["seed"]
    if "intended" in info:  # report hook: what the scenario meant to schedule (metrics.render prints it)
        intended = dict(info["intended"])
        if spec.shard is not None and spec.shard_by == "request":  # every n-th request: 1/n of the load
            n = int(spec.shard.split("/")[1])
            intended.update({k: intended[k] / n for k in ("requests", "rate") if intended.get(k) is not None})
        header["intended"] = intended  # a shard's own share: `merge.merged_header` sums them
    if spec.shard is not None:
        header["shard"] = spec.shard
    if start_at is not None:
        header.update(start_at=start_at, started_unix=start_at)
    if spec.rate is not None:
        header["rate"] = spec.rate
    if spec.count is not None:
        header["count"] = spec.count
    return RunConfig(
        endpoint=target.endpoint, model=target.model, output=output, api=spec.api, api_key=target.api_key,
        payload=target.payload, max_concurrency=spec.max_concurrency, timeouts=timeouts(spec),
        duration=spec.duration, transport=spec.transport,
        metrics_port=spec.metrics_port if metrics_port is None else metrics_port, metrics_host=spec.metrics_host,
        metrics_linger=spec.metrics_linger, pushgateway=spec.pushgateway, push_timeout=spec.push_timeout,
        progress=spec.progress,
        total_hint=spec.duration or info.get("duration_hint"), header=header, handle_signals=handle_signals,
        summary_follows=handle_signals,
        start_at=start_at, before_start=before_start, metrics_snapshot=snapshot_path(),
        start_gate=stdin_gate if spec.start_barrier else None,
        retries=spec.retries, retry_max_wait=spec.retry_max_wait, insecure=spec.insecure, results_copy=results_copy,
        # per shard too: the parent (`workers`, `ray_actors`) stops the others when one gives up
        give_up_after=0 if spec.keep_going else GIVE_UP_AFTER,
        limits=Limits(max_event_bytes=spec.max_event_bytes, max_prompt_tokens=spec.max_prompt_tokens))


def run_local(spec: RunSpec, outputs: Any, argv: list[str]) -> int:
    """Run the spec here (see the module docstring); the exit code."""
    from ..dispatch.runner import run
    from ..results import read_results

    api_key_of(spec)  # an unreadable key file is input, named before anything starts
    opened = open_for(spec)  # validates every line of a requests file now
    if spec.source != "-":
        from .fill_in import check_source_ids

        check_source_ids(spec.source)  # results are read by id: two lines of one would count as two
    if spec.shard is None and spec.source != "-":  # (a shard may hold none; stdin may not have begun)
        first = next(opened.requests, None)
        if first is None:  # refused before the simulator starts or the endpoint is asked anything
            raise InputError("the source scheduled no request (check --duration/--count and the source)",
                             path=spec.source)
        opened.requests = itertools.chain((first,), opened.requests)
    with contextlib.ExitStack() as stack:
        try:
            target = resolve_target(spec, stack)
        except KeyboardInterrupt:  # in a start-up probe of a server that hangs: nothing was sent
            return interrupted_at_start(spec, opened)
        cfg = engine_config(spec, target, opened, argv, Path(spec.output),
                            results_copy=outputs.copy if outputs is not None else None)
        try:
            outcome = run(opened.requests, cfg)
        except StartWithdrawn:  # --start-barrier: the coordinator gave up before t = 0
            print("servegen-load: the start was withdrawn (end of stdin before t = 0): nothing was sent",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as e:  # the results header could not be written (-o /dev/full): nothing was sent
            if e.filename != str(cfg.output):
                raise
            print(f"servegen-load: error: cannot write results to {e.filename}: {e.strerror}", file=sys.stderr)
            return EXIT_STORAGE
    if outcome.storage_error is not None:
        err = outcome.storage_error
        print(f"servegen-load: error: cannot write results to {err.filename}: {err.strerror}; stopped dispatching "
              f"(the file holds {outcome.written} whole result lines; later results are missing)", file=sys.stderr)
        return EXIT_STORAGE
    readback = outputs.readback if outputs is not None else outcome.output
    res = read_results(readback)
    with outputs.text() if outputs is not None else contextlib.nullcontext():
        summary = publish_summary(res, spec, run_header(spec, target.endpoint, target.model))
        if outcome.incomplete:
            print("servegen-load: WARNING: stopped twice: requests after the interruption point have no result line",
                  file=sys.stderr)
        if outcome.input_error is not None:  # results hold every request before the bad input
            raise outcome.input_error
        holds = outcome.interrupted or check_slos(spec, Path(readback), opened.info.get("slo", []))
    if outcome.gave_up is not None:
        print(refused_line(outcome.gave_up), file=sys.stderr)
        return EXIT_NO_SUCCESS
    return exit_code(summary, spec, target.endpoint, interrupted=outcome.interrupted, slos_hold=holds)


def interrupted_at_start(spec: RunSpec, opened: Opened) -> int:
    """Ctrl-C before the first request (a start-up probe of a server that hangs, `--workers` or
    `--ray` alike): the results file all the same, every request `cancelled`, unsent (one line per
    scheduled request, as after an interruption mid-run; `run._interrupt_once` keeps a second
    Ctrl-C from cutting it). The exit code."""
    import time

    from ..results import ResultSink, unsent_line
    from .target import redact

    header = {"endpoint": redact(spec.endpoint) if spec.endpoint else None, "model": spec.model, "api": spec.api,
              "started_unix": time.time(), "source": opened.info["source"], "source_kind": opened.info["source_kind"]}
    sink = ResultSink(spec.output, header)
    n = 0
    for r in opened.requests:
        sink.add(unsent_line(r, error="run stopped before it began (interrupted during start-up)"))
        n += 1
    sink.close()
    print(f"servegen-load: interrupted before the first request was sent: {n} result lines, "
          f"all cancelled, in {spec.output}", file=sys.stderr)
    return EXIT_INTERRUPTED
