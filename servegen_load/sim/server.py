"""HTTP front of the simulator: OpenAI-compatible endpoints over one `Engine` (aiohttp.web).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming and not),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text, vLLM metric names where
one exists), ``POST /tokenize`` (vLLM style), ``GET /sim/stats`` (JSON, see `SimServer.stats`).

Hot path: a handler parses the body, attaches a `_Sink` to a `Sequence` and awaits one future.
The engine loop calls every emitting sink once per step; the sink renders the chunk from byte
templates and writes it straight to the transport, framed as one HTTP/1.1 chunk. No per-token
task, timer or JSON encoding, which is what lets one core hold thousands of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..dispatch.limits import raise_nofile_limit
from .config import SimConfig
from .engine import FINISHED, Engine, Sequence
from .faults import FAULTS, HTTP_FAULTS, Fault, FaultPlan
from .protocol import (
    BROKEN_JSON,
    DONE,
    GARBAGE_LINE,
    BadRequest,
    Job,
    Renderer,
    parse_chat,
    parse_completion,
    tokenize,
)

log = logging.getLogger("servegen_load.sim")

READY_PREFIX = "servegen-load sim listening on "
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_BODY = 512 * 1024 * 1024
LINGER_S = 5.0


def reset_connection(transport: Any) -> None:
    """Abort with an RST (SO_LINGER 0): the peer sees a reset, not an orderly close."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Sink:
    """Writes one request's tokens; `token` is called from the engine loop, never awaited."""

    __slots__ = ("chunked", "done", "fault", "left", "render", "seq", "srv", "stream", "transport")

    def __init__(self, srv: SimServer, job: Job, seq: Sequence, transport: Any, chunked: bool,
                 fault: Fault | None) -> None:
        self.srv, self.seq, self.transport, self.chunked, self.fault = srv, seq, transport, chunked, fault
        self.stream = job.stream
        self.left = False
        self.render = Renderer(job)
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        seq.sink = self

    def client_left(self) -> None:
        """The client went away before the end: free the sequence, count it once."""
        self.srv.engine.abort(self.seq)
        if not self.left:
            self.left = True
            self.srv.n_aborted += 1

    def _resolve(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def token(self) -> None:
        seq, fault, srv = self.seq, self.fault, self.srv
        i = seq.generated
        last = seq.state == FINISHED
        strike = fault is not None and fault.at == i
        if self.stream:
            tr = self.transport
            if tr is None or tr.is_closing():  # client gone: free the slot now
                self.client_left()
                self._resolve("gone")
                return
            data = self.render.chunk(i, seq.cached_tokens if last else None)
            if strike:
                if fault.name == "malformed_sse":
                    data += GARBAGE_LINE
                elif fault.name == "malformed_json":
                    data += BROKEN_JSON
            if last and not (fault is not None and (fault.name == "no_done"
                                                    or (strike and fault.name == "disconnect_mid_stream"))):
                data += DONE
            tr.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if strike:
            name = fault.name
            if name == "disconnect_mid_stream":
                srv.engine.abort(seq)
                reset_connection(self.transport)
                self._resolve("reset")
                return
            if name == "stall_resume" and not last:
                srv.engine.pause(seq, srv.cfg.stall_seconds)
            elif name == "stall_hang" and not last:
                srv.engine.abort(seq)
                self._resolve("hang")
                return
        if last:
            srv.finished(seq)
            self._resolve("ok")


class _Collector:
    """Prometheus view of the engine, read at scrape time (nothing counted per token)."""

    def __init__(self, srv: SimServer) -> None:
        self.srv = srv

    def collect(self) -> Any:
        srv = self.srv
        core, labels = srv.engine.core, [srv.cfg.params.model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", len(core.running))
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be admitted.", len(core.waiting))
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of the KV cache reserved (0-1).",
                    core.kv_used / core.p.kv_cache_tokens)
        yield counter("vllm:prompt_tokens", "Prompt tokens received.", core.prompt_tokens)
        yield counter("vllm:generation_tokens", "Tokens generated.", core.generated_tokens)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      core.cache_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", core.cached_tokens)
        yield counter("vllm:request_success", "Requests finished normally.", srv.n_finished)
        yield counter("servegen_sim_requests_received", "Generation requests received.", srv.n_received)
        f = CounterMetricFamily("servegen_sim_faults_injected", "Faults injected, by name.", labels=["fault"])
        for name, n in srv.faults.injected.items():
            f.add_metric([name], n)
        yield f
        yield gauge("servegen_sim_active_streams", "Streaming responses open.", srv.active_streams)
        yield gauge("servegen_sim_engine_max_lateness_seconds", "Worst step deadline miss of the engine loop.",
                    srv.engine.max_lateness_s)


class SimServer:
    """One simulated server: engine, fault plan, counters and the aiohttp application."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg.params, self._emit)
        self.faults = FaultPlan(dict(cfg.faults), seed=cfg.seed)
        self.started = time.monotonic()
        self.started_unix = int(time.time())  # `created` of /v1/models: a Unix time, as OpenAI's
        self.n_received = self.n_accepted = self.n_finished = self.n_rejected = self.n_aborted = 0
        self.active_requests = self.max_requests = self.active_streams = self.max_streams = 0
        self.sum_prompt = self.sum_output = 0
        self.status_counts: Counter[str] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        buckets = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
        self.h_ttft = Histogram("vllm:time_to_first_token_seconds", "Engine-side time to first token.",
                                registry=self.registry, buckets=buckets)
        self.h_e2e = Histogram("vllm:e2e_request_latency_seconds", "Engine-side request latency.",
                               registry=self.registry, buckets=buckets)
        self.h_step = Histogram("servegen_sim_step_seconds", "Modelled engine step time.", registry=self.registry,
                                buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0))
        self.engine.step_observer = self.h_step.observe

    # --- engine callbacks ---

    def _emit(self, seqs: list[Sequence], t: float) -> None:
        for s in seqs:
            s.sink.token()

    def finished(self, seq: Sequence) -> None:
        self.n_finished += 1
        self.h_ttft.observe(seq.first_token_at - seq.arrival)
        self.h_e2e.observe(seq.finished_at - seq.arrival)

    # --- app ---

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/sim/stats", self.stats_handler)
        app.router.add_get("/version", self.version)
        return app

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        self.status_counts[str(status)] += 1
        kind = {400: "BadRequestError", 429: "RateLimitError", 500: "InternalServerError",
                503: "ServiceUnavailableError"}.get(status, "Error")
        body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.n_received += 1
        raw = await request.read()
        try:
            obj = orjson.loads(raw)
            job = (parse_chat if chat else parse_completion)(obj, raw, self.cfg.params, self.cfg.seed)
        except orjson.JSONDecodeError:
            self.n_rejected += 1
            return self._error(400, "request body is not valid JSON")
        except BadRequest as e:
            self.n_rejected += 1
            return self._error(400, str(e))
        seq = Sequence(job.prompt_tokens, job.output_tokens, job.hashes)
        why = self.engine.core.reject_reason(seq, job.max_tokens)
        if why is not None:
            self.n_rejected += 1
            return self._error(400, why)
        self.n_accepted += 1
        self.sum_prompt += job.prompt_tokens
        self.sum_output += job.output_tokens
        fault = self.faults.draw(job.output_tokens)
        if fault is not None:
            name = fault.name
            if name in HTTP_FAULTS:
                status = HTTP_FAULTS[name]
                return self._error(status, f"simulated fault {name}",
                                   headers={"Retry-After": "1"} if status == 429 else None)
            if name == "reset_before_first_byte":
                reset_connection(request.transport)
                return await self._linger()
            if name == "slow_accept":
                await asyncio.sleep(self.cfg.slow_accept_seconds)
            elif name in ("stall_resume", "stall_hang") and job.output_tokens == 1:
                fault.at = 0  # no gap between tokens to stall in: stall before the first one
        self.active_requests += 1
        self.max_requests = max(self.max_requests, self.active_requests)
        try:
            if job.stream:
                self.active_streams += 1
                self.max_streams = max(self.max_streams, self.active_streams)
                try:
                    return await self._stream(request, job, seq, fault)
                finally:
                    self.active_streams -= 1
            return await self._unary(request, job, seq, fault)
        finally:
            self.active_requests -= 1

    async def _run(self, sink: _Sink, fault: Fault | None) -> str:
        """Submit the sequence and wait for its outcome (ok, reset, hang, gone)."""
        seq = sink.seq
        if self.cfg.params.request_overhead_s > 0:  # HTTP and tokenization of a calibrated preset
            await asyncio.sleep(self.cfg.params.request_overhead_s)
        if fault is not None and fault.at == 0:
            if fault.name == "stall_hang":
                return "hang"
            self.engine.submit(seq)
            self.engine.pause(seq, self.cfg.stall_seconds)
        else:
            self.engine.submit(seq)
        try:
            return await sink.done
        except asyncio.CancelledError:  # the connection is gone (handler cancellation)
            if sink.done.cancelled():  # not ended by us (a fault): the client left
                sink.client_left()
            else:
                self.engine.abort(seq)
            raise

    async def _stream(self, request: web.Request, job: Job, seq: Sequence, fault: Fault | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        chunked = request.version >= HttpVersion11
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.force_close()
        try:
            await resp.prepare(request)
            await resp.write(b"")  # flush the headers now; the body bypasses aiohttp's writer
        except ConnectionError:  # the client left before the answer began: nothing to serve, no traceback
            return resp
        self.status_counts["200"] += 1
        sink = _Sink(self, job, seq, request.transport, chunked, fault)
        outcome = await self._run(sink, fault)
        if outcome == "ok":
            with contextlib.suppress(ConnectionError):  # it may leave once [DONE] is in
                await resp.write_eof()
        elif outcome == "hang":
            await self._hold(request)
        else:
            await self._linger()
        return resp

    async def _unary(self, request: web.Request, job: Job, seq: Sequence, fault: Fault | None) -> web.StreamResponse:
        sink = _Sink(self, job, seq, request.transport, True, fault)
        outcome = await self._run(sink, fault)
        if outcome == "hang":
            await self._hold(request)
            return web.Response(status=504)
        if outcome != "ok":
            return await self._linger()
        body = sink.render.body(seq.cached_tokens)
        name = fault.name if fault is not None else ""
        if name in ("malformed_sse", "malformed_json"):
            body = body[: len(body) // 2]  # a 200 whose JSON is cut short
        elif name == "no_done":  # the body stops half way and the connection dies
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            self.status_counts["200"] += 1
            reset_connection(request.transport)
            return await self._linger(resp)
        self.status_counts["200"] += 1
        return web.Response(body=body, content_type="application/json")

    async def _linger(self, resp: web.StreamResponse | None = None) -> web.StreamResponse:
        """After an abort: wait for aiohttp to cancel this handler (the connection is gone)."""
        await asyncio.sleep(LINGER_S)
        return resp or web.Response(status=499)

    async def _hold(self, request: web.Request) -> None:
        """stall_hang: keep the connection open, silent, until the client gives up."""
        try:
            await asyncio.sleep(self.cfg.hang_seconds)
        except asyncio.CancelledError:  # the client gave up, as it should
            self.n_aborted += 1
            raise
        reset_connection(request.transport)
        await self._linger()

    # --- small endpoints ---

    async def models(self, request: web.Request) -> web.Response:
        p = self.cfg.params
        data = [{"id": p.model, "object": "model", "created": self.started_unix, "owned_by": "servegen-sim",
                 "root": p.model, "parent": None, "max_model_len": p.max_model_len}]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        from .. import __version__
        return web.json_response({"version": f"servegen-sim {__version__}"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            ids = tokenize(orjson.loads(await request.read()))
        except orjson.JSONDecodeError:
            return self._error(400, "request body is not valid JSON")
        except BadRequest as e:
            return self._error(400, str(e))
        return web.json_response({"count": len(ids), "max_model_len": self.cfg.params.max_model_len,
                                  "tokens": ids}, dumps=_dumps)

    def stats(self) -> dict[str, Any]:
        """Counters for tests and `plan`: what was received, injected, finished, and the model."""
        p = self.cfg.params
        core = self.engine.core
        mp = self.sum_prompt / self.n_accepted if self.n_accepted else 1000.0
        mo = self.sum_output / self.n_accepted if self.n_accepted else 200.0
        mc = core.cached_tokens / core.admitted if core.admitted else 0.0
        return {
            "preset": self.cfg.preset, "model": p.model, "time_scale": self.cfg.time_scale, "seed": self.cfg.seed,
            "params": p.to_dict(), "faults_configured": dict(self.cfg.faults),
            "requests_received": self.n_received, "requests_accepted": self.n_accepted,
            "requests_rejected": self.n_rejected, "requests_finished": self.n_finished,
            "requests_aborted": self.n_aborted,
            "status_counts": dict(self.status_counts),
            "faults_injected": {k: self.faults.injected[k] for k in FAULTS},
            "active_requests": self.active_requests, "max_concurrent_requests": self.max_requests,
            "active_streams": self.active_streams, "max_concurrent_streams": self.max_streams,
            "engine": self.engine.snapshot(),
            "saturation_rate": {"mean_prompt_tokens": mp, "mean_output_tokens": mo, "mean_cached_tokens": mc,
                                "requests_per_second": p.saturation_rate(mp, mo, mc)},
            "uptime_seconds": time.monotonic() - self.started,
            "cpu_seconds": time.process_time(),
        }

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# --- running ------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family = infos[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(infos[0][4])
    return sock


def print_ready(url: str, cfg: SimConfig) -> None:
    print(f"{READY_PREFIX}{url} (preset {cfg.preset}, model {cfg.params.model})", flush=True)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the process that started us is gone (no orphaned simulators)."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


async def serve(cfg: SimConfig, ready: Callable[[str, SimConfig], None] = print_ready,
                stop: asyncio.Event | None = None, *, exit_with_parent: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); `ready(url, cfg)` once listening."""
    srv = SimServer(cfg)
    runner = web.AppRunner(srv.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        sock = _listen(cfg.host, cfg.port)
    except OSError as e:
        from ..errors import InputError
        await runner.cleanup()
        raise InputError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}", field="--port") from None
    site = web.SockSite(runner, sock, backlog=4096, shutdown_timeout=0.5)
    await site.start()
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    srv.engine.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    watch = loop.create_task(_watch_parent(os.getppid(), stop)) if exit_with_parent else None
    ready(url, cfg)
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
        await srv.engine.stop()
        await runner.cleanup()


def run(cfg: SimConfig, ready: Callable[[str, SimConfig], None] = print_ready, *,
        exit_with_parent: bool = False) -> None:
    """Blocking entry point: raise the file limit, use uvloop when installed, serve."""
    raise_nofile_limit(None)  # thousands of sockets
    logging.basicConfig(level=os.environ.get("SERVEGEN_SIM_LOG", "WARNING"), stream=sys.stderr,
                        format="servegen-load sim: %(levelname)s %(message)s")
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as r:
        r.run(serve(cfg, ready, exit_with_parent=exit_with_parent))
