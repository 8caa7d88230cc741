"""The `run` use case: one `RunSpec` in, requests sent, results and a summary out, an exit code.

Folders below know nothing of this one: `dispatch/` is the engine (one process, one start
instant), `content/` builds bodies, `workload/` makes requests. Here: the spec (`spec`), the
resolved target (`target`), what is sent (`source`), running it here (`local`), in N processes
(`workers`) or on a Ray cluster (`ray_actors`), sharding (`shard`), merging shards' results
(`merge`, `metrics_proxy`) and the end of every run (`finish`).
"""

from __future__ import annotations

import contextlib
import signal
import sys

from ..formats import EXIT_INTERRUPTED
from .spec import RunSpec


def run(spec: RunSpec, argv: list[str] | None = None) -> int:
    """Run a spec locally, over `--workers` or `--ray`; the exit code (Ctrl-C anywhere: 130)."""
    from ..outputs import run_outputs
    from .source import check_source

    argv = list(sys.argv if argv is None else argv)
    # SIGTERM as Ctrl-C until the engine installs its own handlers: a start-up probe that hangs
    # ends with the results file, not a killed process (the engine's handlers replace this one)
    with contextlib.suppress(ValueError):  # not the main thread: signals are not ours to handle
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt_once)
    try:
        if spec.endpoint:  # a bad URL (or one carrying credentials) before anything is written
            from ..dispatch.endpoint import Endpoint

            Endpoint.parse(spec.endpoint)
        if spec.pushgateway:
            _check_url(spec.pushgateway, "--pushgateway")
        inputs = [("SOURCE", spec.source), ("--api-key-file", spec.api_key_file), ("--tokenizer", spec.tokenizer)]
        # outputs checked and -o locked before anything is contacted
        with run_outputs(spec.output, spec.summary_json, inputs) as outs:
            check_source(spec.source)
            if spec.ray is not None:
                from .ray_actors import ray_run

                return ray_run(spec, outs, argv)
            if spec.workers is not None:
                from .workers import workers_run

                return workers_run(spec, outs, argv)
            from .local import run_local

            return run_local(spec, outs, argv)
    except KeyboardInterrupt:
        print("servegen-load: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C (or SIGTERM) before the engine runs: KeyboardInterrupt, and later signals ignored,
    so a second one cannot cut the results file `local.interrupted_at_start` is writing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _check_url(url: str, option: str) -> None:
    """A URL (or host:port) urllib can split, port included: one line, not a traceback later."""
    from urllib.parse import urlsplit

    from ..dispatch.endpoint import redact_url
    from ..errors import InputError

    try:
        urlsplit(url if "://" in url else "http://" + url).port  # noqa: B018 (raises on a bad port)
    except ValueError as e:
        raise InputError(f"expected host:port or a URL, got {redact_url(url)!r} ({e})", field=option) from None
