"""`run --ray [ADDRESS]`: one Ray actor per shard, across a cluster, one results file.

Flow: the driver (where `servegen-load run` was typed) connects to the cluster, creates one actor
per shard with the SPREAD strategy (so shards land on different machines when there are several),
and holds them at a ready barrier, as `run --workers` holds its processes (`barrier`): each actor
opens its shard and generates its first requests (`prepare`), then its engine resolves the target,
opens connections and fills its look-ahead, and waits (`wait_set_up`). Only when all are set up
does the driver pick the common start instant, `RAY_LEAD_S` ahead, and give it to all (`go`);
a `--start-at` given replaces the barrier's second half. Each actor runs the ordinary dispatcher
(`dispatch.runner.Runner`, configured by `run.local.engine_config` from the
shard's `RunSpec`) on its node, writing its shard's results to a local temporary file; the
driver polls the actors every `POLL_S` and receives the new complete lines in batches, appends them
to a per-shard file on the driver's disk, and when all are done merges them into `--output`,
sorted by scheduled time, and prints one summary. Shards are those of `run --workers` (by client, or by request for
fewer clients than shards), so the union is the single-process workload; all actors share t = 0 through their nodes' wall
clocks (keep the nodes NTP-synchronised; skew adds to send lag).

How many shards: `--workers N` (N actors); `--workers auto` (the schedule's busiest second over
`workers.PROCESS_RATE`, capped by the cluster's CPUs); neither: one actor per alive node. Each
actor reserves one CPU.

Requirements on the nodes: servegen-load (same version, with this extra) importable by the Ray
workers, and SOURCE readable at the same path on every node (a shared filesystem, the container
image, or a Ray `runtime_env`); the driver checks it on each actor before starting and names the
node that cannot read it. Without `--endpoint` the embedded simulator runs beside the driver,
which only a single-node cluster can reach, so a multi-node cluster needs `--endpoint`. Each actor receives
the driver's `RunSpec` with the endpoint, model, family and content salt pinned (`target.pinned_spec`:
every content option, one salt for all shards) and resolves its own token model from it, as a
`--workers` child does. The API key (from `--api-key-file` or `OPENAI_API_KEY` on the driver)
travels to the actors in the `run` call's arguments, in memory; it is never written to results
or logs.

Metrics: with `--metrics-port P` actor i serves its own `/metrics` on its node at
`--metrics-host`:P+i (P = 0: a free port each). The driver prints every `host:port` and writes them
to `OUTPUT.prom-targets.json` in Prometheus `file_sd_configs` format, label `shard="i/N"`: point a
cluster Prometheus at that file (or, on Kubernetes with KubeRay, a PodMonitor on the Ray worker
pods' port range) and `sum` across shards. With `--pushgateway URL` every actor pushes its final
values under the grouping key `job="servegen-load", shard="i-of-N"`, so shards never overwrite each
other; `sum without (shard, instance)` gives the run.

Stopping: SIGINT/SIGTERM to the driver stop every actor (each cancels in-flight requests and writes
a `cancelled` line for everything unsent, as a single run does); a second signal abandons the
drain. An actor that dies (its node lost) has its shard's missing lines written by the driver
(regenerated from SOURCE) as `cancelled`, so the results file still has one line per scheduled
request.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import EXIT_NO_SUCCESS
from .barrier import READY_TIMEOUT_S, choose_start
from .spec import RunSpec

RAY_LEAD_S = 1.0       # from the last actor set up to t = 0: the go() calls reach every node well within it
POLL_S = 0.5           # how often the driver collects result lines
BATCH_BYTES = 4 << 20  # at most this much of results per poll and actor
PROGRESS_S = 10.0


class ShardActor:
    """One shard on one node (made a Ray actor by `_actor_class`; plain class for readability)."""

    def __init__(self, spec: RunSpec, index: int, n: int) -> None:
        self.spec = spec
        self.index, self.n = index, n
        self.dir = Path(tempfile.mkdtemp(prefix=f"servegen-shard-{index}-"))
        self.part = self.dir / "part.jsonl"
        self.offset = 0
        self.finished = False
        self.runner: Any = None
        self.task: Any = None
        self.loop: Any = None
        self.stop_requested = 0
        self.opened: Any = None
        self.metrics_port: int | None = None
        self.set_up = threading.Event()  # the engine is set up and waits for t = 0 (`start_gate`)
        self.lock = threading.Lock()
        self.start: Any = None  # the future `go` resolves with t = 0
        self.go_at: float | None = None

    def prepare(self, metrics_port: int | None, metrics_host: str) -> dict[str, Any]:
        """Open the shard and make its first requests (the barrier); where this actor runs."""
        import itertools
        import os
        import socket

        from .local import open_for

        host = socket.gethostname()
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            ip = "127.0.0.1"
        if not Path(self.spec.source).exists():
            raise InputError(f"not readable on node {host} ({ip}): SOURCE must be at the same path on every node",
                             path=self.spec.source)
        self.opened = open_for(self.spec, validate=False)
        reqs = self.opened.requests
        first = next(reqs, None)  # generation of the first block happens now, not after t = 0
        self.opened.requests = iter(()) if first is None else itertools.chain([first], reqs)
        port = None
        if metrics_port is not None:
            port = metrics_port + self.index if metrics_port else _free_port(metrics_host)
        self.metrics_port = port
        return {"host": host, "ip": ip, "pid": os.getpid(), "metrics_port": port,
                "metrics_host": ip if metrics_host in ("0.0.0.0", "::") else metrics_host}

    def run(self, start_at: float | None, api_key: str | None, argv: list[str]) -> dict[str, Any]:
        """Run the shard with t = 0 at `start_at` (unix), or (None) at the instant `go` gives once
        the engine is set up (`wait_set_up`: the ready barrier); returns the outcome's counts."""
        import asyncio
        import dataclasses

        from ..dispatch.runner import Runner
        from .local import engine_config
        from .target import resolve_target

        async def gate() -> float:  # a closure: an `async def` method would make Ray run this actor on asyncio
            with self.lock:
                self.start = self.loop.create_future()
                if self.go_at is not None:
                    self.start.set_result(self.go_at)
            self.set_up.set()
            return float(await self.start)

        spec = self.spec.replace(start_at=start_at)
        push = spec.pushgateway
        with contextlib.ExitStack() as stack:
            target = resolve_target(spec, stack, api_key=api_key)
        cfg = engine_config(spec, target, self.opened, argv, self.part, handle_signals=False,
                            metrics_port=self.metrics_port if (self.metrics_port is not None or not push) else 0)
        cfg = dataclasses.replace(cfg, pushgateway=None, progress="off",
                                  metrics_host=spec.metrics_host if self.metrics_port is not None else "127.0.0.1",
                                  start_gate=gate if start_at is None else None)
        self.runner = Runner(self.opened.requests, cfg)

        async def main() -> Any:
            self.task = asyncio.current_task()
            self.loop = asyncio.get_running_loop()
            if self.stop_requested:
                raise asyncio.CancelledError
            return await self.runner.run()

        try:
            try:
                import uvloop

                outcome = uvloop.run(main())
            except ImportError:
                outcome = asyncio.run(main())
        except asyncio.CancelledError:  # stopped before the clock started: nothing sent, no file
            self.finished = True
            return {"started": False, "interrupted": True}
        finally:
            self.finished = True
        if push and self.runner.metrics is not None:
            from ..metrics.prometheus import push_bounded, push_text

            push_bounded(lambda: push_text(push, self.runner.metrics.render().decode(), timeout=self.spec.push_timeout,
                                           grouping={"shard": f"{self.index}-of-{self.n}"}),
                         push, self.spec.push_timeout)  # a silent gateway must not hold the actor
        return {"started": True, "interrupted": outcome.interrupted, "incomplete": outcome.incomplete,
                "scheduled": outcome.scheduled, "by_status": outcome.by_status, "gave_up": outcome.gave_up,
                "input_error": None if outcome.input_error is None else str(outcome.input_error)}

    def wait_set_up(self, timeout: float) -> bool:
        """True once the engine is set up and waits for `go` (False: not within `timeout`)."""
        return self.set_up.wait(timeout)

    def go(self, start_at: float) -> None:
        """t = 0 for the run at the barrier (or about to reach it)."""
        with self.lock:
            self.go_at = start_at
            fut, loop = self.start, self.loop
        if fut is not None and loop is not None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(start_at))

    def stop(self) -> None:
        """Like SIGINT to a single run (a second call abandons the drain)."""
        self.stop_requested += 1
        r = self.runner
        loop = self.loop
        if r is None or loop is None:
            return
        if getattr(r, "_finished", None) is not None:  # the run is set up: the runner's own stop
            loop.call_soon_threadsafe(r.stop, "interrupted (driver)")
        elif self.task is not None:  # still waiting for the start or setting up: nothing to cancel
            loop.call_soon_threadsafe(self.task.cancel)

    def poll(self) -> tuple[bytes, bool]:
        """New complete lines since the last poll (header included in the first), and whether the
        shard is finished and fully read (the actor's file is removed then)."""
        done = self.finished
        try:
            with self.part.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(BATCH_BYTES)
        except FileNotFoundError:
            data = b""
        cut = data.rfind(b"\n") + 1
        data = data[:cut]
        self.offset += cut
        if done and len(data) < BATCH_BYTES // 2:
            with contextlib.suppress(OSError):
                rest = self.part.stat().st_size - self.offset
                if rest > 0:
                    return data, False
            shutil.rmtree(self.dir, ignore_errors=True)
            return data, True
        return data, False


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "") else "0.0.0.0", 0))
        return int(s.getsockname()[1])


def _actor_class(ray: Any) -> Any:
    # max_concurrency: poll() and stop() must run while run() is busy (threaded actor)
    return ray.remote(num_cpus=1, max_concurrency=4)(ShardActor)


def connect(ray: Any, address: str) -> bool:
    """Connect to ADDRESS (`local`: start a small local cluster on 127.0.0.1). True if we started it."""
    from .workers import cores

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=cores(), object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        return True
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {e}", field="--ray") from None
    return False


def shard_count(ray: Any, spec: RunSpec) -> tuple[int, int, int]:
    """(shards, total requests, clients): --workers N, auto (capped by the cluster's CPUs), or one
    per alive node."""
    from .workers import resolve_workers, schedule_shape

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if spec.workers is None:
        _, total, clients = schedule_shape(spec)
        return max(1, sum(1 for n in ray.nodes() if n.get("Alive"))), total, clients
    n, total, clients = resolve_workers(spec, local_sim=False, cpus=cpus)
    if n > cpus:
        raise InputError(f"{n} actors need {n} CPUs; the cluster has {cpus}", field="--workers")
    return n, total, clients


def shipped_specs(spec: RunSpec, target: Any, n: int, clients: int, start: float) -> list[RunSpec]:
    """The spec each actor receives (what `tests/test_run_spec.py` compares with the workers')."""
    from .target import pinned_spec
    from .workers import shard_specs

    pinned = pinned_spec(spec, target).replace(metrics_port=None, metrics_linger=0.0)
    return [s.replace(output="-", pushgateway=spec.pushgateway, metrics_host=spec.metrics_host)
            for s in shard_specs(spec, pinned, n, clients, start)]


def ray_run(spec: RunSpec, outputs: Any, argv: list[str]) -> int:
    """`run --ray`: see the module docstring."""
    try:
        import ray as ray_module
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'servegen-load[ray]'", field="--ray") from None
    ray: Any = ray_module
    from .fill_in import check_source_ids
    from .local import interrupted_at_start, open_for
    from .target import api_key_of, resolve_target

    api_key_of(spec)
    opened = open_for(spec)
    check_source_ids(spec.source)  # shards are merged by id: duplicates refused before anything is sent
    out = Path(outputs.readback if outputs is not None else spec.output)
    address = spec.ray or "local"
    started = connect(ray, address)
    try:
        with contextlib.ExitStack() as stack:
            if spec.endpoint is None and (address.startswith("ray://") or
                                          sum(1 for n in ray.nodes() if n.get("Alive")) > 1):
                raise InputError("a Ray cluster's actors cannot reach the embedded simulator: give --endpoint",
                                 field="--ray")
            n, _, clients = shard_count(ray, spec)
            try:
                target = resolve_target(spec, stack)
            except KeyboardInterrupt:  # no actor started yet
                return interrupted_at_start(spec, opened)
            return _drive(ray, spec, target, out, outputs, n, clients, argv)
    finally:
        if started:
            ray.shutdown()


def _drive(ray: Any, spec: RunSpec, target: Any, out: Path, outputs: Any, n: int, clients: int,
           argv: list[str]) -> int:
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    from .target import safe_argv

    start_hint = spec.start_at if spec.start_at is not None else time.time() + RAY_LEAD_S
    specs = shipped_specs(spec, target, n, clients, start_hint)
    Actor = _actor_class(ray)
    actors = [Actor.options(scheduling_strategy="SPREAD").remote(s, i, n) for i, s in enumerate(specs)]
    from .workers import parts_home

    parts_dir = Path(tempfile.mkdtemp(prefix=f".{Path(spec.output).name}.parts-", dir=parts_home(spec, outputs)))
    parts = [parts_dir / f"part-{i}.jsonl" for i in range(n)]
    sinks = [p.open("wb") for p in parts]
    failed: dict[int, str] = {}
    try:
        try:
            where = ray.get([a.prepare.remote(spec.metrics_port, spec.metrics_host) for a in actors],
                            timeout=READY_TIMEOUT_S)
        except GetTimeoutError:
            raise InputError(f"the {n} shard actors were not all ready after {READY_TIMEOUT_S:.0f} s "
                             "(not enough free CPUs in the cluster?)", field="--ray") from None
        except RayTaskError as e:
            cause = e.as_instanceof_cause()  # type: ignore[no-untyped-call]
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from None
            raise
        nodes = {x["ip"] for x in where}
        print(f"servegen-load: {n} shard actors ready on {len(nodes)} node(s)", file=sys.stderr)
        if spec.metrics_port is not None:
            _write_targets(out if outputs is None or outputs.copy is None else Path(spec.output), where, n)
        shown = safe_argv(argv, target.api_key)
        runs = {a.run.remote(spec.start_at, target.api_key, shown): i for i, a in enumerate(actors)}
        outcomes: dict[int, dict[str, Any]] = {}
        received: list[int] = []
        forwarded = 0
        drained: set[int] = set()
        refused = False
        old = {s: signal.signal(s, lambda sig, _f: received.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
        start = spec.start_at if spec.start_at is not None else _release(ray, actors, list(runs), received)
        print(f"servegen-load: t = 0 at {start:.3f} (in {start - time.time():.1f} s)", file=sys.stderr)
        last_note = time.monotonic()
        lines = 0
        try:
            while len(drained) < n:
                pending = [r for r in runs if runs[r] not in outcomes]
                if pending:
                    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
                    for r in ready:
                        i = runs[r]
                        try:
                            outcomes[i] = ray.get(r)
                            if outcomes[i].get("gave_up") and not refused:  # the endpoint refuses the run
                                refused = True
                                for j, a in enumerate(actors):
                                    if j not in outcomes:
                                        a.stop.remote()
                        except (RayActorError, RayTaskError) as e:
                            outcomes[i] = {"started": False, "failed": True, "ended": time.time()}
                            failed[i] = _last_line(e)
                            drained.add(i)
                else:
                    time.sleep(POLL_S / 5)
                while forwarded < len(received):
                    forwarded += 1
                    for i, a in enumerate(actors):
                        if i not in outcomes:
                            a.stop.remote()
                todo = [i for i in range(n) if i not in drained]
                polls = {i: actors[i].poll.remote() for i in todo}
                for i, ref in polls.items():
                    try:
                        data, done = ray.get(ref)
                    except (RayActorError, RayTaskError) as e:
                        failed.setdefault(i, _last_line(e) or "actor died")
                        outcomes.setdefault(i, {"started": False, "failed": True, "ended": time.time()})
                        drained.add(i)
                        continue
                    if data:
                        sinks[i].write(data)
                        lines += data.count(b"\n")
                    if done and i in outcomes:
                        drained.add(i)
                if spec.progress != "off" and time.monotonic() - last_note > PROGRESS_S:
                    last_note = time.monotonic()
                    print(f"servegen-load: t = {time.time() - start:.0f} s, {lines} result lines from {n} shards",
                          file=sys.stderr)
        finally:
            for s_, h in old.items():
                signal.signal(s_, h)
            for f in sinks:
                f.close()
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
        interrupted = bool(received) or any(o.get("interrupted") for o in outcomes.values())
        return _finish(spec, specs, target, out, outputs, parts, parts_dir, start, outcomes, failed, argv,
                       interrupted)
    finally:
        for f in sinks:
            f.close()


def _release(ray: Any, actors: list[Any], runs: list[Any], received: list[int]) -> float:
    """The ready barrier's second half: wait until every actor's engine is set up (connections
    open, look-ahead filled; a run that ended already does not hold the others, nor does a signal),
    then give all one t = 0 `RAY_LEAD_S` ahead."""
    pending = [a.wait_set_up.remote(READY_TIMEOUT_S) for a in actors]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while pending and not received and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        if ray.wait(runs, num_returns=1, timeout=0)[0]:
            break
    start = choose_start(RAY_LEAD_S)
    for a in actors:
        a.go.remote(start)
    return start


def _last_line(e: BaseException) -> str:
    """A shard's failure in one line: the actor's own exception, not Ray's wrapped traceback."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip()
    return text.splitlines()[-1][:300] if text else type(e).__name__


def _finish(spec: RunSpec, specs: list[RunSpec], target: Any, out: Path, outputs: Any, parts: list[Path],
            parts_dir: Path, start: float, outcomes: dict[int, dict[str, Any]], failed: dict[int, str],
            argv: list[str], interrupted: bool) -> int:
    from .finish import finish_merged, refused_line
    from .workers import missing_lines, result_ids

    n = len(parts)
    present = [p for p in parts if p.exists() and p.stat().st_size > 0]
    lost = [i for i in range(n) if not outcomes.get(i, {}).get("started") or i in failed]
    extra: list[bytes] = []
    if lost:
        have: set[str] = set()
        for p in present:
            have |= result_ids(p)
        for i in lost:
            ended = outcomes.get(i, {}).get("ended")
            extra.extend(missing_lines(specs[i], have, f"shard actor {i}/{n}", None,
                                       None if ended is None else ended - start))
    refused = sorted((i, o["gave_up"]) for i, o in outcomes.items() if o.get("gave_up"))
    code = finish_merged(spec, present, out, outputs, extra, argv, target,
                         {"ray": spec.ray, "workers": n, "start_at": start, "started_unix": start},
                         interrupted or bool(refused), keep=parts_dir)
    for i, why in sorted(failed.items()):
        print(f"servegen-load: shard actor {i}/{n} failed: {why}", file=sys.stderr)
    errors = [o["input_error"] for o in outcomes.values() if o.get("input_error")]
    if errors:
        print(f"servegen-load: error: {errors[0]}", file=sys.stderr)
        return 2
    if failed:
        print(f"servegen-load: shard results kept in {parts_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(parts_dir, ignore_errors=True)
    if refused:  # one shard's first answers were all one refusal: the rest were stopped
        i, why = refused[0]
        print(refused_line(why, f"shard actor {i}/{n}"), file=sys.stderr)
        return EXIT_NO_SUCCESS
    return code


def _write_targets(out: Path, where: list[dict[str, Any]], n: int) -> None:
    """`OUTPUT.prom-targets.json`: the actors' /metrics as a Prometheus file_sd target list."""
    from ..atomic import atomic_write

    targets: list[dict[str, Any]] = [{"targets": [f"{x['metrics_host']}:{x['metrics_port']}"],
                "labels": {"job": "servegen-load", "shard": f"{i}/{n}", "node": x["host"]}}
               for i, x in enumerate(where)]
    path = out.with_name(out.name + ".prom-targets.json")
    with atomic_write(path) as fh:
        json.dump(targets, fh, indent=2)
    for t in targets:
        print(f"servegen-load: shard {t['labels']['shard']} /metrics at http://{t['targets'][0]}/metrics",
              file=sys.stderr)
    print(f"servegen-load: Prometheus file_sd targets written to {path}", file=sys.stderr)
