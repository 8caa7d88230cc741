"""The open-loop scheduler: sends every request at its time, whatever the server is doing.

Pacing rule (the whole of it): request i is due at `t0 + t_i`, where `t0` is one start instant
taken from `time.perf_counter()` and `t_i` the request's offset. Due times are never computed
from the previous send, so lateness never accumulates; running behind, the scheduler sends
everything already due at once and records each request's send lag.

Hot path:
- One timer (`clock.make_timer`: a timerfd on Linux) armed for the next due instant; its callback
  `tick(now)` sends all due requests and re-arms. Transports also call `tick` whenever they wake
  for I/O and something is due, so a busy loop never holds a send behind a batch of reads.
- Bodies (and, for the raw transport, the whole HTTP request) are built ahead, in a bounded
  look-ahead (`LOOKAHEAD_S` of schedule, at least `LOOKAHEAD_MIN` and at most `LOOKAHEAD_MAX`
  requests), refilled between sends within a time budget. The input is consumed lazily.
- Completion (`on_done`) encodes the result line and appends it to the sink's buffer; the
  housekeeping task (every 0.1 s) hands the buffer to the writer thread, enforces timeouts,
  folds metrics, draws progress and freezes survivors out of the garbage collector's reach
  (gen1/gen2 collections otherwise paused the loop 3-10 ms at 1000 req/s).
- Before the clock starts: the look-ahead is filled, about the first second's connections are
  opened (`transport.prewarm`), and first-call costs (numpy, orjson) are paid once.

`--max-concurrency N`: a due request that finds N in flight waits in a FIFO; its wait is
`queue_time`, excluded from send lag and included in user-felt latency (see `metrics.stats`).

Stopping: SIGINT/SIGTERM stop dispatching, cancel in-flight requests (status `cancelled`, with
the timings they had), write a `cancelled` line for every scheduled request not yet sent (the
look-ahead and the rest of the input up to `--duration`), flush, and report `interrupted`. A
second signal abandons that drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import math
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from ..content.payload import Api, PayloadOptions, build_body
from ..requests import Request
from ..results import ResultSink, result_line, unsent_line
from .clock import make_timer, monotonic_at
from .endpoint import Endpoint, check_key, scrub
from .limits import NOFILE_WARN_BELOW, Limits, Timeouts, raise_nofile_limit
from .progress import Mode, Progress, Snapshot
from .sessions import SessionGate
from .stream import JSON_ANSWER, Flight
from .transports.base import Transport

LOOKAHEAD_S = 2.0
LOOKAHEAD_MIN = 64
LOOKAHEAD_MAX = 8192
# Body building per refill call: small slices, topping the look-ahead up continuously, so no
# read waits behind more than ~0.1 ms of it (one big refill a second was a TTFT-error tail).
REFILL_BUDGET_S = 0.0001
HOUSEKEEPING_S = 0.1
FLUSH_S = 0.25
PROGRESS_S = 0.5
TOP_CLIENTS = 20
PREWARM_MAX = 1024  # connections opened before the clock starts (about the first second's requests)
GIVE_UP_AFTER = 20  # `run`: the first answers that, all one refusal, stop the run (`_watch_start`)
# Codes a server gives a request it will never serve, whatever the load: bad request, key, path, model, method
CONFIG_ERRORS = frozenset({400, 401, 403, 404, 405, 422})
REFUSED_HINT = "check the endpoint, --model, --api, the API key and --server-family"
FULL_GC_S = 600.0  # a full collection this often (a pause of a few ms on a long run)
# Idle connections are kept for the requests due this far ahead, less the connections the last
# as long freed (`_provision`): a burst in the schedule finds them open.
PROVISION_S = 0.3


def refusal(status: str | None, http_status: float | None, error: str | None = None) -> str | None:
    """The kind of refusal an answer is, when load cannot explain it: "HTTP 404" (`CONFIG_ERRORS`), or
    "protocol_error" (not an OpenAI stream: a web page, a server that does not stream, a JSON
    error object answering with 200); else None."""
    if status == "http_error" and http_status in CONFIG_ERRORS:
        return f"HTTP {int(http_status)}"
    if status == "http_error" and http_status == 200 and (error or "").startswith(JSON_ANSWER):
        return "protocol_error"
    return "protocol_error" if status == "protocol_error" else None


def refused_as(kind: str, error: str | None) -> str:
    """A refusal and the server's message, for the one line a refused run stops with."""
    return f"{kind} ({(error or '').removeprefix(kind + ': ')[:160]})"


@dataclass
class RunConfig:
    """Everything a run needs besides its requests. `endpoint` is a base URL (`/v1` optional)."""

    endpoint: str
    model: str
    output: Path
    api: Api = "chat"
    api_key: str | None = None
    payload: PayloadOptions = field(default_factory=PayloadOptions)
    max_concurrency: int | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    duration: float | None = None
    transport: str = "raw"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_linger: float = 0.0
    pushgateway: str | None = None
    push_timeout: float = 5.0  # --push-timeout: the longest the end of the run waits for the Pushgateway
    progress: Mode = "auto"
    total_hint: float | None = None
    header: dict[str, Any] = field(default_factory=dict)  # extra results-header fields (source, argv)
    handle_signals: bool = True
    summary_follows: bool = False  # the caller writes a summary after the run: signals then are `_finishing`'s
    # t = 0 as a unix instant (None: as soon as the run is set up); a run of several processes or
    # machines passes one shared instant, converted to the monotonic clock once (`clock.monotonic_at`)
    start_at: float | None = None
    # awaited before the transport opens (e.g. sleep until shortly before `start_at`)
    before_start: Callable[[], Awaitable[None]] | None = None
    # awaited once set up (connections open, look-ahead filled), just before t = 0 is fixed; returns
    # t = 0 as a unix instant: the ready barrier of a run over several processes (`run.barrier`)
    start_gate: Callable[[], Awaitable[float]] | None = None
    metrics_snapshot: Path | None = None  # the final /metrics text is written here (a parent may sum them)
    # reliability hooks (see dispatch.retry, docs/reliability.md)
    retries: int = 0  # --retries: re-sends of a 429/503/connect failure before any token (0: never)
    retry_max_wait: float = 10.0  # --retry-max-wait: cap on Retry-After / back-off, seconds
    insecure: bool = False  # --insecure: do not verify TLS certificates
    limits: Limits = field(default_factory=Limits)  # --max-event-bytes, --max-prompt-tokens (dispatch.limits)
    results_copy: Path | None = None  # outputs hook: a regular file the summary is read from (-o -, a pipe)
    give_up_after: int = 0  # stop when this many first answers are all one client error (see `_watch_start`)


@dataclass
class RunOutcome:
    output: Path
    scheduled: int
    interrupted: bool
    incomplete: bool  # a second signal cut the cancelled-lines drain short
    by_status: dict[str, int]
    metrics_port: int | None = None
    input_error: Exception | None = None  # the input broke mid-run: requests before it ran
    storage_error: OSError | None = None  # results could not be written: dispatching stopped there
    written: int = 0  # result lines on disk (what a storage failure left)
    gave_up: str | None = None  # why the run stopped by itself: its first answers were all one client error


def _finishing(signum: int, frame: object) -> None:
    """A signal once the engine has stopped: its results are whole, and the summary, `--summary-json`
    and the SLO verdict are being written (removing the engine's handlers had left the defaults:
    a second SIGTERM killed the process there, exit 143, nothing printed). The first is said and
    let pass; another is the default's."""
    print("servegen-load: finishing the summary (signal again to quit at once)", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


class Runner:
    """One run: `await Runner(requests, config).run()`; see the module docstring."""

    def __init__(self, requests: Iterable[Request], config: RunConfig) -> None:
        self.cfg = config
        it: Iterator[Request] = iter(requests)
        if config.duration is not None:
            d = config.duration
            it = itertools.takewhile(lambda r: r.t < d, it)
        self._it = it
        self.la: deque[Flight] = deque()
        self.waiting: deque[Flight] = deque()
        self.exhausted = False
        self.next_due = math.inf
        self.t0 = math.inf
        self.in_flight = 0
        self.dispatched = 0
        self.done = 0
        self.errors = 0
        self.unsent = 0
        self.by_status: Counter[str] = Counter()
        self.stopping = False
        self.interrupted = False
        self.abort_drain = False
        self.incomplete = False
        self._refill_pending = False
        self._recent_ttft: deque[float] = deque(maxlen=2000)
        self._recent_lag: deque[float] = deque(maxlen=2000)
        self._finished: asyncio.Future[None] | None = None
        self._limit = config.max_concurrency or 0
        self.metrics: Any = None
        self.input_error: Exception | None = None
        self.storage_error: OSError | None = None
        self.gave_up: str | None = None
        self._watch = config.give_up_after  # 0 once an answer breaks the pattern (see `_watch_start`)
        self._watch_kind: str | None = None
        self.retry: Any = None  # dispatch.retry.Retrier with --retries
        self.sessions = SessionGate(self)  # sessions hook: later turns wait for the previous response

    # --- look-ahead ---
    def _prepare(self, r: Request) -> Flight:
        limits = self.cfg.limits
        why = limits.prompt_excess(r)
        if why is None:
            body = build_body(r, self.cfg.api, self.cfg.model, self.cfg.payload)
            if len(body) <= limits.max_request_bytes:
                return Flight(r, self.transport.wire(body))
            why = f"request body of {len(body)} bytes over the {limits.max_request_bytes} byte cap"
        f = Flight(r, b"")  # never sent: ends as client_error when due (see `tick`)
        f.fail("client_error", "not sent: " + why)
        return f

    def _fill(self, horizon_rel: float, budget_until: float) -> None:
        """Build flights until the look-ahead reaches `horizon_rel` (or its bounds / the budget)."""
        la = self.la
        it = self._it
        n = 0
        while len(la) < LOOKAHEAD_MAX and (len(la) < LOOKAHEAD_MIN or la[-1].t_rel < horizon_rel):
            try:
                r = next(it, None)
            except Exception as e:  # a bad line mid-file: finish what was scheduled, then report it
                if self.t0 == math.inf:
                    raise
                self.input_error = e
                r = None
            if r is None:
                self.exhausted = True
                return
            la.append(self._prepare(r))
            n += 1
            if n % 2 == 0 and perf_counter() > budget_until:
                return

    def _refill(self) -> None:
        self._refill_pending = False
        if self.stopping or self.exhausted:
            self._check_done()
            return
        now = perf_counter()
        was_empty = not self.la
        # stop early for a send due soon (at least two bodies are built per call: progress)
        self._fill(now - self.t0 + LOOKAHEAD_S, min(now + REFILL_BUDGET_S, self.next_due - 0.00005))
        if was_empty and self.la:
            self.next_due = self.t0 + self.la[0].t_rel
            self.timer.arm(self.next_due)
        if not self.exhausted and self._needs_refill(perf_counter() - self.t0):
            self._refill_pending = True
            self.loop.call_soon(self._refill)
        self._check_done()

    def _needs_refill(self, rel: float) -> bool:
        la = self.la
        return not la or (len(la) < LOOKAHEAD_MAX and
                          (len(la) < LOOKAHEAD_MIN or la[-1].t_rel < rel + LOOKAHEAD_S * 0.9))

    # --- the scheduler (hot path) ---
    def _on_timer(self) -> None:
        self.tick(perf_counter())

    def tick(self, now: float) -> None:
        if self.stopping:
            return
        la = self.la
        rel = now - self.t0
        limit = self._limit
        transport = self.transport
        while la and la[0].t_rel <= rel:
            f = la.popleft()
            if f.req.session is not None and self.sessions.hold(f):  # sessions hook
                continue
            f.dispatched = now
            self.dispatched += 1
            if limit and self.in_flight >= limit:
                self.waiting.append(f)
                continue
            f.queue_time = 0.0
            self.in_flight += 1
            if f.status is not None:  # refused before sending (`_prepare`): its line, no request
                self.on_done(f)
                continue
            try:
                transport.submit(f)
            except Exception as e:  # a transport bug must not lose the request or stop the clock
                transport.end_flight(f, "client_error", f"{type(e).__name__}: {e}")
        if la:
            self.next_due = self.t0 + la[0].t_rel
            self.timer.arm(self.next_due)
        else:
            self.next_due = math.inf
        if not self._refill_pending and not self.exhausted and self._needs_refill(rel):
            self._refill_pending = True
            self.loop.call_soon(self._refill)

    def on_done(self, f: Flight) -> None:
        if self.retry is not None and self.retry.take(f):
            return  # waits for its retry (dispatch.retry); still in flight
        if f.error is not None:  # one choke point: no error text carries the key or a control character
            f.error = scrub(f.error, self.cfg.api_key)
        self.in_flight -= 1
        self.done += 1
        if f.req.session is not None:  # sessions hook: the session's next turn may go
            self.sessions.done(f)
        st = f.status
        if st is None:  # a transport that decided nothing: never an unproven `ok`
            f.status = st = "client_error"
            f.error = "the request ended without a status (internal error)"
        self.by_status[st] += 1
        if st != "ok" and st != "cancelled":
            self.errors += 1
        if self._watch:
            self._watch_start(f)
        self.sink.add(result_line(f, self.t0))
        if f.sent is not None:
            self._recent_lag.append(f.sent - (self.t0 + f.t_rel) - (f.queue_time or 0.0))
            if st == "ok" and f.first_token is not None:
                self._recent_ttft.append(f.first_token - f.sent)
        if self.metrics is not None:
            self.metrics.pending.append(f)
        if self.waiting and not self.stopping:
            g = self.waiting.popleft()
            g.queue_time = perf_counter() - (g.dispatched or 0.0)
            self.in_flight += 1
            self._submit(g)
        elif self.exhausted and not self.la and not self.in_flight:
            self._check_done()

    def send_now(self, f: Flight) -> None:
        """sessions hook: dispatch one flight now (a later turn released by `dispatch.sessions`)."""
        if self.stopping:
            self.sink.add(unsent_line(f.req))
            self.unsent += 1
            self.by_status["cancelled"] += 1
            return
        f.dispatched = perf_counter()
        self.dispatched += 1
        if self._limit and self.in_flight >= self._limit:
            self.waiting.append(f)
            return
        f.queue_time = 0.0
        self.in_flight += 1
        self._submit(f)

    def _submit(self, f: Flight) -> None:
        """`transport.submit` off the hot path (`tick` inlines it): a flight refused before sending
        (`_prepare`) ends unsent, a transport failure ends the flight as `client_error`."""
        if f.status is not None:
            self.loop.call_soon(self.on_done, f)
            return
        try:
            self.transport.submit(f)
        except Exception as e:
            self.transport.end_flight(f, "client_error", f"{type(e).__name__}: {e}")

    def _check_done(self) -> None:
        if (self.exhausted and not self.la and not self.in_flight and not self.waiting
                and not self.sessions.pending and self._finished is not None and not self._finished.done()):
            self._finished.set_result(None)

    def _watch_start(self, f: Flight) -> None:
        """Stop the run when its first `give_up_after` answers are all the same refusal (`refusal`).

        A wrong model name, path, key or request option fails every request with one 4xx from the
        first; a port that serves a web page or a server that does not stream fails every one as a
        protocol_error. An hour-long run would send an hour of them. Load does not cause these
        (429, 503 and timeouts are not among them), so a run whose first answers are all one of
        them is misconfigured: it stops, and `run` says so and exits 3. One other outcome ends the watch.
        """
        if f.status == "cancelled":
            return
        kind = refusal(f.status, f.http_status, f.error)
        if kind is None or self._watch_kind not in (None, kind):
            self._watch = 0
            return
        self._watch_kind = kind
        if self.done >= self._watch:
            self._watch = 0
            self.gave_up = f"the first {self.done} requests all failed with {refused_as(kind, f.error)}"
            self.stop(f"stopped: {self.gave_up}")

    # --- stopping ---
    def stop(self, reason: str) -> None:
        """Stop dispatching and cancel everything (idempotent; the second call abandons the drain)."""
        if self.stopping:
            self.abort_drain = True
            return
        self.stopping = True
        self.interrupted = True
        self.timer.disarm()
        self.next_due = math.inf
        if self.retry is not None:
            self.retry.flush(reason)  # waiting retries end cancelled, their last failure said
        self.transport.cancel_all(reason)
        now = perf_counter()
        while self.waiting:
            f = self.waiting.popleft()
            f.queue_time = now - f.dispatched  # type: ignore[operator]
            f.fail("cancelled", reason + " while waiting for a concurrency slot")
            self.in_flight += 1  # on_done balances it
            self.on_done(f)
        while self.la:
            f = self.la.popleft()
            self.sink.add(unsent_line(f.req))
            self.unsent += 1
            self.by_status["cancelled"] += 1
        for f in self.sessions.drain():  # sessions hook: turns waiting for their previous turn
            self.sink.add(unsent_line(f.req))
            self.unsent += 1
            self.by_status["cancelled"] += 1
        self.loop.create_task(self._drain_unsent())

    def _storage_failed(self, e: OSError) -> None:
        """The results file cannot take more lines: stop sending (a result nobody can read is a
        request wasted on the server) and end the run; the cancelled lines are not written."""
        if self.storage_error is None:
            self.storage_error = e
            self.abort_drain = True
            self.incomplete = True
        self.stop(f"stopped: cannot write results ({e.strerror})")

    async def _drain_unsent(self) -> None:
        n = 0
        if self.storage_error is not None:  # nothing more can be written: do not walk the input
            self.exhausted = True
            self._check_done()
            return
        try:
            for r in self._it:
                self.sink.add(unsent_line(r))
                n += 1
                if n % 2000 == 0:
                    try:
                        self.sink.flush()
                    except OSError as e:  # the disk filled while writing the cancelled lines
                        self._storage_failed(e)
                    await asyncio.sleep(0)
                    if self.abort_drain:
                        self.incomplete = True
                        break
        except Exception as e:  # the rest of the input is unreadable: report it, keep what we have
            self.input_error = e
        self.unsent += n
        self.by_status["cancelled"] += n
        self.exhausted = True
        self._check_done()

    # --- housekeeping (low frequency) ---
    def _snapshot(self, now: float) -> Snapshot:
        """Progress figures; percentiles over the last 2000 requests (sorting 2000 floats: ~40 µs)."""
        def p50_p99(values: deque[float]) -> tuple[float | None, float | None]:
            if not values:
                return None, None
            a = np.fromiter(values, dtype=np.float64, count=len(values))
            a.sort()
            n = len(a) - 1
            return float(a[n // 2]), float(a[int(n * 0.99)])

        p50, p99 = p50_p99(self._recent_ttft)
        _, lag99 = p50_p99(self._recent_lag)
        return Snapshot(elapsed=max(0.0, now - self.t0), total=self.cfg.total_hint or self.cfg.duration,
                        sent=self.dispatched - len(self.waiting), in_flight=self.in_flight,
                        queued=len(self.waiting), done=self.done, errors=self.errors,
                        ttft_p50=p50, ttft_p99=p99, lag_p99=lag99)

    def _provision(self, now: float, done_hist: deque[tuple[float, int]]) -> int:
        """Idle connections to hold now: requests due within PROVISION_S, less as many as the
        last PROVISION_S of completions freed (about what the next will free).

        Why: a request that finds no idle connection waits for a connect, several loop turns, and
        under a burst (the bursty arrivals this tool exists to send) or on a busy machine each turn
        is long. Measured on a quiet machine, 300 requests due within 30 ms after 2 s at 200 req/s
        were sent up to 24 ms late with a fixed 16 spares. The schedule is known ahead, so the
        connections are opened before the burst; in steady state sends and completions cancel
        and this stays near the fixed spares.
        """
        horizon = now - self.t0 + PROVISION_S
        due = 0
        for f in self.la:
            if f.t_rel > horizon:
                break
            due += 1
        done_hist.append((now, self.done))
        while now - done_hist[0][0] > PROVISION_S:
            done_hist.popleft()
        need = due - (self.done - done_hist[0][1])
        return min(need, self._limit - self.in_flight) if self._limit else need

    async def _housekeeping(self) -> None:
        last_flush = last_progress = last_full_gc = perf_counter()
        rate_hist: deque[tuple[float, int]] = deque()
        done_hist: deque[tuple[float, int]] = deque()
        spare = self.transport.spare
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = perf_counter()
            if spare:
                self.transport.spare = max(spare, self._provision(now, done_hist))
            self.transport.sweep(now)
            if now - last_flush >= FLUSH_S or self.sink.error is not None:
                try:
                    self.sink.flush()
                except OSError as e:
                    self._storage_failed(e)
                last_flush = now
            if now - last_progress >= PROGRESS_S:
                last_progress = now
                if self.progress.due():
                    self.progress.update(self._snapshot(now))
                if self.metrics is not None:
                    rate_hist.append((now, self.dispatched))
                    while rate_hist and now - rate_hist[0][0] > 5.0:
                        rate_hist.popleft()
                    t_a, n_a = rate_hist[0]
                    rate = (self.dispatched - n_a) / (now - t_a) if now > t_a else 0.0
                    self.metrics.set_gauges(self.in_flight, rate)
            if self.metrics is not None and self.metrics.pending:
                self.metrics.observe(self.t0)
            # Survivors (look-ahead, connections, in-flight records) go to the permanent generation
            # at once, so the collector never rescans them: measured at 1000 req/s, gen1/gen2
            # collections otherwise paused the loop 3-10 ms each. gc.freeze is O(1). What it costs:
            # cyclic garbage frozen here waits for the periodic full collection below; the
            # dispatcher makes none per request (checked with DEBUG_SAVEALL).
            gc.freeze()
            if now - last_full_gc >= FULL_GC_S:
                last_full_gc = now
                gc.unfreeze()
                gc.collect()
                gc.freeze()

    # --- the run ---
    def _top_clients(self) -> list[str]:
        counts = Counter(f.req.client for f in self.la)
        return [c for c, _ in counts.most_common(TOP_CLIENTS)]

    async def run(self) -> RunOutcome:
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        nofile = raise_nofile_limit(cfg.max_concurrency + 64 if cfg.max_concurrency else None)
        if not cfg.max_concurrency and nofile < NOFILE_WARN_BELOW:
            print(f"servegen-load: warning: the open-file limit is {nofile}: more requests than that in flight "
                  f"at once fail (too many open files); raise it (`ulimit -n {NOFILE_WARN_BELOW}`) or set "
                  "--max-concurrency", file=sys.stderr, flush=True)
        if cfg.before_start is not None:
            await cfg.before_start()
        endpoint = Endpoint.parse(cfg.endpoint)
        if cfg.api_key:  # one header value, whoever built the config: no header injection
            check_key(cfg.api_key, "api_key")
        if cfg.insecure:
            endpoint = dataclasses.replace(endpoint, verify=False)
        self.transport: Transport = self._make_transport(endpoint)
        if cfg.retries:
            from .retry import Retrier

            self.retry = Retrier(self, cfg.retries, cfg.retry_max_wait)
        # llama.cpp's HTTP server parks one worker thread (n_parallel + 2 of them) on every open
        # keep-alive connection until its 5 s idle timeout: idle connections held ahead of need
        # would make real requests wait 5 s, so against it they open only when a request needs one.
        lean = cfg.payload.server_family == "llamacpp"
        if lean:
            self.transport.spare = 0
        await self.transport.open()
        # Prefill the look-ahead before the clock starts: the first second must not pay for it.
        self._fill(LOOKAHEAD_S, math.inf)
        first_second = sum(1 for f in self.la if f.t_rel < self.la[0].t_rel + 1.0) if self.la else 0
        warm = min(max(first_second, 16), PREWARM_MAX, cfg.max_concurrency or PREWARM_MAX)
        if lean:
            warm = 0
        await self.transport.prewarm(warm)
        metrics_port = None
        if cfg.metrics_port is not None or cfg.pushgateway:
            from ..metrics.prometheus import LoadMetrics

            self.metrics = LoadMetrics(self._top_clients())
            if cfg.metrics_port is not None:
                metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        start_at = cfg.start_at if cfg.start_gate is None else await cfg.start_gate()
        self.sink = ResultSink(cfg.output, self._header(endpoint, start_at), copy=cfg.results_copy)
        self.progress = Progress(cfg.progress)
        self.timer = make_timer(loop, self._on_timer)
        self._finished = loop.create_future()
        if cfg.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop, f"interrupted ({signal.Signals(sig).name})")
        self._snapshot(perf_counter())  # first calls into numpy & co. cost ms: pay them before the clock
        if self.la:
            result_line(self.la[0], 0.0)
        # Objects alive now (imports, look-ahead) are never garbage: keep the collector off them.
        gc.collect()
        gc.freeze()
        if start_at is None:
            self.t0 = perf_counter() + 0.005
        else:  # the shared wall-clock instant, on the monotonic clock once
            self.t0 = monotonic_at(start_at)
        if self.la:
            self.next_due = self.t0 + self.la[0].t_rel
            self.timer.arm(self.next_due)
        hk = loop.create_task(self._housekeeping())
        hk.add_done_callback(self._housekeeping_ended)
        self._check_done()
        try:
            await self._finished
        finally:
            hk.cancel()
            self.timer.close()
            self.sessions.close()  # sessions hook
            await self.transport.close()
            try:
                self.sink.close()
            except OSError as e:
                self.storage_error = self.storage_error or e
            if self.metrics is not None:
                self.metrics.set_gauges(0, 0.0)
                self.metrics.observe(self.t0)
            self.progress.update(self._snapshot(perf_counter()), final=True)
            self.progress.close()
            gc.unfreeze()
        if self.metrics is not None:
            await self._final_metrics(self.metrics)
        if cfg.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
                if cfg.summary_follows:
                    signal.signal(sig, _finishing)
        return RunOutcome(output=cfg.output, scheduled=self.done + self.unsent, interrupted=self.interrupted,
                          incomplete=self.incomplete, by_status=dict(self.by_status), metrics_port=metrics_port,
                          input_error=self.input_error, storage_error=self.storage_error,
                          written=self.sink.written, gave_up=self.gave_up)

    def _make_transport(self, endpoint: Endpoint) -> Transport:
        cfg = self.cfg
        if cfg.transport == "aiohttp":
            from .transports.aiohttp import AiohttpTransport

            return AiohttpTransport(endpoint, cfg.api, self, cfg.timeouts, cfg.api_key, cfg.limits)
        if cfg.transport == "raw":
            from .transports.raw import RawTransport

            return RawTransport(endpoint, cfg.api, self, cfg.timeouts, cfg.api_key, cfg.limits)
        raise ValueError(f"unknown transport {cfg.transport!r}")

    def _header(self, endpoint: Endpoint, start_at: float | None) -> dict[str, Any]:
        """The results file's first line: what this run was (its options, not the key)."""
        cfg = self.cfg
        header = {"endpoint": endpoint.url, "model": cfg.model, "api": cfg.api,
                  "started_unix": time.time(), "transport": self.transport.name,
                  "server_family": cfg.payload.server_family, "max_concurrency": cfg.max_concurrency,
                  "duration": cfg.duration,
                  "timeouts": {"connect": cfg.timeouts.connect, "first_token": cfg.timeouts.first_token,
                               "total": cfg.timeouts.total, "idle": cfg.timeouts.idle},
                  "retries": cfg.retries, "insecure": cfg.insecure,
                  "limits": {"max_event_bytes": cfg.limits.max_event_bytes,
                             "max_prompt_tokens": cfg.limits.max_prompt_tokens,
                             "max_request_bytes": cfg.limits.max_request_bytes},
                  **cfg.header}
        if cfg.start_gate is not None:
            header.update(start_at=start_at, started_unix=start_at)
        return header

    async def _final_metrics(self, metrics: Any) -> None:
        """The run's last metric values: to the snapshot file, the Pushgateway, and /metrics for
        --metrics-linger seconds."""
        cfg = self.cfg
        if cfg.metrics_snapshot is not None:
            from ..atomic import atomic_write

            with atomic_write(cfg.metrics_snapshot, "wb") as fh:
                fh.write(metrics.render())
        if cfg.pushgateway:
            await self._push(cfg.pushgateway, cfg.push_timeout)
        if cfg.metrics_port is not None and cfg.metrics_linger > 0 and not self.interrupted:
            await self._linger(cfg.metrics_linger)
        metrics.stop()

    def _housekeeping_ended(self, task: asyncio.Task[None]) -> None:
        """Housekeeping enforces timeouts and flushes results: if it dies, the run must not go on
        blind (it would hang on stalled requests and hold every result in memory)."""
        if task.cancelled() or task.exception() is None:
            return
        e = task.exception()
        if isinstance(e, OSError):
            self._storage_failed(e)
        else:
            self.input_error = self.input_error or (e if isinstance(e, Exception) else None)
            self.stop(f"stopped: internal error ({type(e).__name__}: {e})")

    async def _push(self, gateway: str, timeout: float) -> None:
        """Push the final metrics, waiting at most `timeout` s; a signal meanwhile abandons the push
        and makes the run interrupted (exit 130). Failures are a warning on stderr."""
        import functools
        import threading

        from ..metrics.prometheus import push_bounded

        stop = threading.Event()
        if self.cfg.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, stop.set)
        push = functools.partial(self.metrics.push, gateway, timeout=timeout)
        warning = await asyncio.to_thread(push_bounded, push, gateway, timeout, stop)
        if stop.is_set():
            self.interrupted = True
        if warning:
            print(f"servegen-load: warning: {warning}", file=sys.stderr, flush=True)

    async def _linger(self, seconds: float) -> None:
        """Keep /metrics up after the run so a scraper sees the final values (a signal ends it)."""
        ev = asyncio.Event()
        if self.cfg.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, ev.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), seconds)


def run(requests: Iterable[Request], config: RunConfig) -> RunOutcome:
    """Run on uvloop (when installed) and return the outcome; the synchronous entry point."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(Runner(requests, config).run())
    return uvloop.run(Runner(requests, config).run())
