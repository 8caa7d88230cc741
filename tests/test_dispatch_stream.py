"""Stream reading against odd but legal (and some broken) servers, over real HTTP on 127.0.0.1.

A scripted asyncio server in a thread answers each POST according to the first path segment
(`http://127.0.0.1:P/<script>/v1/...`): byte-by-byte writes, CRLF events, Content-Length and
read-until-close bodies, usage in the last content chunk (llama.cpp) or in a `choices: []` chunk
(OpenAI/vLLM), reasoning chunks, in-stream errors, broken framing, disconnects, and a server that
closes kept-alive connections under a request (never re-sent unless --retries asks).
Plus the embedded simulator, which puts usage in both places (chat vs completions).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_dispatch_fixtures import make_requests, read_lines

from servegen_load.dispatch.endpoint import Endpoint
from servegen_load.dispatch.limits import Timeouts
from servegen_load.dispatch.runner import RunConfig, run
from servegen_load.dispatch.stream import Flight, feed_sse
from servegen_load.dispatch.transports.raw import PARK_S, RawTransport


def _chunk(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _text(t: str, **extra) -> bytes:
    return _chunk({"choices": [{"index": 0, "text": t, "finish_reason": None}], **extra})


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
         "prompt_tokens_details": {"cached_tokens": 2}}
EVENTS = [_text(" a"), _text(" b"), _text(" c", usage=USAGE), b"data: [DONE]\n\n"]  # llama.cpp style


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

SCRIPTS: dict[str, tuple[list[bytes], bool]] = {
    # name: (writes, close after)
    "bytewise": ([bytes([b]) for b in HEAD_CHUNKED + _chunked(EVENTS)], False),
    "crlf": ([HEAD_CHUNKED + _chunked([e.replace(b"\n", b"\r\n") for e in EVENTS])], False),
    "length": ([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(b"".join(EVENTS)), b"".join(EVENTS))],
               False),
    "untilclose": ([b"HTTP/1.0 200 OK\r\n\r\n" + b"".join(EVENTS)], True),
    "twoperchunk": ([HEAD_CHUNKED + _chunked([EVENTS[0] + EVENTS[1], EVENTS[2] + EVENTS[3]])], False),
    "splitevents": ([HEAD_CHUNKED, _chunked([b"".join(EVENTS)])[:40], _chunked([b"".join(EVENTS)])[40:]], False),
    "usagechunk": ([HEAD_CHUNKED + _chunked([_text(" a"), _text(""), _text(" b"),
                                             _chunk({"choices": [], "usage": USAGE}), b"data: [DONE]\n\n"])], False),
    "comments": ([HEAD_CHUNKED + _chunked([b": keep-alive\n\n", b"event: message\ndata: " + EVENTS[0][6:],
                                           b"data: {\"choices\":[{\"text\":\n", b"data: \" b\"}]}\n\n",
                                           EVENTS[2], EVENTS[3]])], False),
    "reasoning": ([HEAD_CHUNKED + _chunked([
        _chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
        _chunk({"choices": [{"delta": {"reasoning_content": "hmm"}}]}),
        _chunk({"choices": [{"delta": {"reasoning": "so"}}]}),
        _chunk({"choices": [{"delta": {"content": "Yes"}}]}),
        _chunk({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        _chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                         "completion_tokens_details": {"reasoning_tokens": 2}}}),
        b"data: [DONE]\n\n"])], False),
    # plain token chunks (template fast path) mixed with ones it must not take: quotes, empties
    "template": ([HEAD_CHUNKED, *[_chunked([e])[:-5] for e in (
        _chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
        _chunk({"choices": [{"delta": {"content": "a"}}]}), _chunk({"choices": [{"delta": {"content": "b"}}]}),
        _chunk({"choices": [{"delta": {"content": 'say "hi"'}}]}), _chunk({"choices": [{"delta": {"content": ""}}]}),
        _chunk({"choices": [{"delta": {"content": "back\\"}}]}), _chunk({"choices": [{"delta": {"content": "c"}}]}),
        _chunk({"choices": [{"delta": {"content": "d"}}], "usage": {**USAGE, "completion_tokens": 8}}),
        _chunk({"choices": [{"delta": {"content": "e"}}]}) + _chunk({"choices": [{"delta": {"content": "f"}}]}),
        b"data: [DONE]\n\n")], b"0\r\n\r\n"], False),
    "errorevent": ([HEAD_CHUNKED + _chunked([_text(" a"), _chunk({"error": {"message": "engine died"}})])], False),
    "badchunk": ([HEAD_CHUNKED + b"zz\r\nhello\r\n"], False),
    "badjson": ([HEAD_CHUNKED + _chunked([b"data: {not json\n\n"])], False),
    "cutoff": ([HEAD_CHUNKED + _chunked(EVENTS[:2])[:-5]], True),
    "http500": ([b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 11\r\n\r\nboom happen"], False),
    # keep-alive looking response; the next request on the connection is read and dropped unanswered
    "dropnext": ([HEAD_CHUNKED + _chunked(EVENTS)], False),
}


class ScriptServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.connections = 0
        self.reuse_gaps: list[float] = []  # answer written -> next request read, same connection (s)
        self.arrivals: list[tuple[float, float]] = []  # (request read, its connection accepted) (s)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.server = server
        ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        accepted = time.perf_counter()
        served = 0
        answered = 0.0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.perf_counter()
                self.arrivals.append((now, accepted))
                if served:
                    self.reuse_gaps.append(now - answered)
                path = head.split(b" ", 2)[1].decode()
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                await reader.readexactly(n)
                name = path.split("/")[1]
                if name == "dropnext" and served:
                    break  # a keep-alive connection closed under a request: no byte of response
                served += 1
                if name == "slow":  # an answer that takes a while: its connection stays busy
                    await asyncio.sleep(0.2)
                writes, close = SCRIPTS["crlf" if name == "slow" else name]
                for w in writes:
                    writer.write(w)
                    await writer.drain()
                    if len(writes) > 1:
                        await asyncio.sleep(0.001)
                answered = time.perf_counter()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def script_server() -> Iterator[ScriptServer]:
    s = ScriptServer()
    yield s
    s.stop()


def _run_script(server: ScriptServer, name: str, tmp_path: Path, n: int = 2, api: str = "completions",
                transport: str = "raw") -> list[dict]:
    out = tmp_path / f"{name}.jsonl"
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{server.port}/{name}", model="m", output=out, api=api,  # type: ignore[arg-type]
                    progress="off", handle_signals=False, transport=transport)
    run(make_requests([0.02 * i for i in range(n)], output_tokens=3), cfg)
    _, lines = read_lines(out)
    assert len(lines) == n
    return lines


@pytest.mark.parametrize("name", ["bytewise", "crlf", "length", "untilclose", "twoperchunk", "splitevents",
                                  "comments"])
@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_framings_all_read_the_same(script_server: ScriptServer, tmp_path: Path, name: str, transport: str) -> None:
    for d in _run_script(script_server, name, tmp_path, transport=transport):
        assert d["status"] == "ok", d
        assert len(d["chunk_times"]) == 3
        assert (d["prompt_tokens"], d["completion_tokens"], d["cached_tokens"]) == (7, 3, 2)
        assert d["first_token"] is not None and d["last_token"] >= d["first_token"]


def test_usage_in_a_separate_chunk_and_empty_chunks_are_not_tokens(script_server, tmp_path: Path) -> None:
    for d in _run_script(script_server, "usagechunk", tmp_path):
        assert d["status"] == "ok" and len(d["chunk_times"]) == 2 and d["completion_tokens"] == 3


def test_template_fast_path_counts_exactly_the_token_chunks(script_server, tmp_path: Path) -> None:
    """Each chunk its own read: plain ones take the template path, the rest are parsed; same result."""
    for d in _run_script(script_server, "template", tmp_path, api="chat"):
        assert d["status"] == "ok" and len(d["chunk_times"]) == 8, d  # a b "hi" back c d e f
        assert d["completion_tokens"] == 8 and d["prompt_tokens"] == 7


def test_reasoning_then_answer(script_server, tmp_path: Path) -> None:
    for d in _run_script(script_server, "reasoning", tmp_path, api="chat"):
        assert d["status"] == "ok" and len(d["chunk_times"]) == 3
        assert d["first_answer_token"] >= d["first_token"]
        assert d["reasoning_tokens"] == 2 and d["completion_tokens"] == 3


@pytest.mark.parametrize(("name", "status", "text"), [
    ("errorevent", "http_error", "engine died"),
    ("badchunk", "protocol_error", "chunk size"),
    ("badjson", "protocol_error", "not JSON"),
    ("cutoff", "disconnect", "closed"),
    ("http500", "http_error", "HTTP 500: boom happen"),
])
def test_failures_map_to_statuses(script_server, tmp_path: Path, name: str, status: str, text: str) -> None:
    for d in _run_script(script_server, name, tmp_path):
        assert d["status"] == status, d
        assert text in d["error"]


def test_a_server_that_keeps_its_connections_gets_them_back_at_once(script_server, tmp_path: Path) -> None:
    """A request every 3 ms to a keep-alive server: a finished connection waits PARK_S before
    reuse (a server that closes after each answer would race it) until PROVEN_AFTER connections
    have outlived that wait; then it is reused at once, as pooled clients do. That keeps TCP in
    its interactive mode (a few ACKs per stream, not one per token: a tenth of the client's CPU
    at 1000 req/s); reused only after PARK_S, every gap here was over 50 ms."""
    n = 300
    out = tmp_path / "reuse.jsonl"
    before = len(script_server.reuse_gaps)
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{script_server.port}/crlf", model="m", output=out,
                    api="completions", progress="off", handle_signals=False)
    run(make_requests([0.003 * i for i in range(n)], output_tokens=3), cfg)
    _, lines = read_lines(out)
    assert len(lines) == n and {d["status"] for d in lines} == {"ok"}
    gaps = script_server.reuse_gaps[before:]
    assert gaps and gaps[0] >= PARK_S  # unproven: the first reuse waited
    assert sum(g < PARK_S / 2 for g in gaps) >= n // 3, sorted(gaps)


def test_a_request_with_no_idle_connection_takes_the_first_one_freed(script_server, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """50 requests at once, answers 0.2 s long, connects 1.5 s long (a busy host, a far server):
    the 16 connections opened before the clock carry 16 at once; the other 34 do not wait for
    connects of their own but go out on the first connections the first answers free."""
    slow = RawTransport._connect

    async def slow_connect(self: RawTransport) -> object:
        await asyncio.sleep(1.5)
        return await slow(self)

    monkeypatch.setattr(RawTransport, "_connect", slow_connect)
    # every new connection through `_connect` (as for TLS): a local server's handshake is done at
    # once, and `_dial` would send on it without waiting
    monkeypatch.setattr(RawTransport, "_dial", lambda self, f: self._wait(f, None))
    out = tmp_path / "wait.jsonl"
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{script_server.port}/slow", model="m", output=out,
                    api="completions", progress="off", handle_signals=False)
    run(make_requests([0.0] + [1.5] * 50, output_tokens=3), cfg)  # (the first second's are prewarmed)
    _, lines = read_lines(out)
    assert len(lines) == 51 and {d["status"] for d in lines} == {"ok"}
    lags = sorted(d["sent"] - d["scheduled"] for d in lines)
    assert lags[15] < 0.1, lags  # on the connections opened before the clock
    assert lags[-1] < 1.0, lags  # the rest: after an answer (0.2 s + PARK_S), not a connect (1.5 s)


class _Hooks:
    """The runner's side of a transport, for driving one directly: no schedule, a done event."""

    next_due = float("inf")

    def __init__(self) -> None:
        self.done = asyncio.Event()

    def tick(self, now: float) -> None:
        pass

    def on_done(self, f: Flight) -> None:
        self.done.set()


def _loops() -> list[Callable[[Coroutine[Any, Any, Any]], Any]]:
    import uvloop
    return [asyncio.run, uvloop.run]


async def _one_fresh_request(url: str, timeouts: Timeouts, on_submit: Callable[[Flight, RawTransport], None],
                             prompt: bytes = b"x", spare: int = 0) -> Flight:
    """Submit one request to a transport with no idle connection (unless `spare`); `on_submit`
    sees it right after `submit` returns, in the same loop turn."""
    hooks = _Hooks()
    tr = RawTransport(Endpoint.parse(url), "completions", hooks, timeouts)
    tr.spare = spare
    await tr.open()
    f = Flight(make_requests([0.0])[0], tr.wire(b'{"model":"m","prompt":"%b","stream":true}' % prompt))
    tr.submit(f)
    on_submit(f, tr)
    await asyncio.wait_for(hooks.done.wait(), 20)
    await tr.close()
    return f


@pytest.mark.parametrize("loop_run", _loops(), ids=["asyncio", "uvloop"])
def test_a_request_needing_a_new_connection_is_sent_in_the_turn_it_is_due(script_server, loop_run) -> None:
    """No loop turn between a due request and its bytes, even when it needs a new connection:
    when the server falls behind, a turn holds thousands of reads, and a connect that took four
    turns made such requests 0.1-0.6 s late at 1000 req/s (the C reference sends on its first
    writable event)."""
    seen: list[float | None] = []
    f = loop_run(_one_fresh_request(f"http://127.0.0.1:{script_server.port}/crlf", Timeouts(),
                                    lambda f, tr: seen.append(f.sent)))
    assert seen[0] is not None, "the request was not written in the turn it was submitted"
    assert f.status == "ok" and len(f.chunks) == 3 and f.attempts == 1, (f.status, f.error)


@pytest.mark.parametrize("loop_run", _loops(), ids=["asyncio", "uvloop"])
def test_a_new_connection_sends_what_its_socket_did_not_take_at_once(script_server, loop_run) -> None:
    """A request larger than the socket's send buffer (a multimodal body) on a new connection:
    the rest goes out once the transport is made, and the server reads all of it."""
    left: list[int] = []
    f = loop_run(_one_fresh_request(f"http://127.0.0.1:{script_server.port}/crlf", Timeouts(),
                                    lambda f, tr: left.append(len(f.conn.tail)), prompt=b"x" * (32 << 20)))
    assert left[0] > 0, "the socket took the whole request: the test needs a larger body"
    assert f.status == "ok" and len(f.chunks) == 3, (f.status, f.error)


def _resolving(monkeypatch, name: str, addrs: list[tuple[int, str]]) -> None:
    """`name` resolves to `addrs` in this order, as a hosts file would say (the rest as usual)."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != name:
            return real(host, port, *args, **kwargs)
        return [(fam, socket.SOCK_STREAM, 6, "", (a, port) if fam == socket.AF_INET else (a, port, 0, 0))
                for fam, a in addrs]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("loop_run", _loops(), ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("order", ["v6-first", "v4-first"])
@pytest.mark.parametrize("spare", [0, 4], ids=["new-connection", "spares"])
def test_a_name_whose_first_address_refuses_is_served_at_the_one_that_answers(script_server, monkeypatch,
                                                                               loop_run, order, spare) -> None:
    """`localhost` resolves to ::1 first on many hosts, while vLLM, llama.cpp and `sim` listen on
    127.0.0.1 only: a run that took the first address had every request refused. The server here
    listens on 127.0.0.1 only; the name resolves to ::1 and 127.0.0.1 in either order."""
    addrs = [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")]
    _resolving(monkeypatch, "dual.test", addrs if order == "v6-first" else addrs[::-1])
    f = loop_run(_one_fresh_request(f"http://dual.test:{script_server.port}/crlf", Timeouts(), lambda f, tr: None,
                                    spare=spare))
    assert f.status == "ok" and len(f.chunks) == 3, (f.status, f.error)


class _Backlogged:
    """A server whose accept queue is full (listen(0), one connection queued, none accepted):
    a new connect's SYN is dropped and retried a second later, so its handshake is still under
    way when `connect` returns, as with any far server. Once `go` is set it accepts and answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))
        self.go = threading.Event()
        self.quit = False
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        self.go.wait(30)
        if self.quit:
            return
        self.sock.accept()[0].close()  # the filler
        self.sock.settimeout(10)
        c = self.sock.accept()[0]
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        n = int(next(v for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:])
                     if k.lower() == b"content-length"))
        while len(body) < n:
            body += c.recv(65536)
        c.sendall(HEAD_CHUNKED + _chunked(EVENTS))
        c.close()

    def close(self) -> None:
        self.quit = not self.go.is_set()
        self.go.set()
        self.thread.join(15)
        self.filler.close()
        self.sock.close()


@pytest.mark.parametrize("loop_run", _loops(), ids=["asyncio", "uvloop"])
def test_a_request_waits_for_a_handshake_still_under_way(loop_run) -> None:
    """A far server (here: one whose SYN is retried) has not finished the handshake when the
    connect returns: the request waits for it and goes out once it completes, on that connection."""
    server = _Backlogged()
    state: list[tuple[float | None, bool]] = []

    def check(f: Flight, tr: RawTransport) -> None:
        state.append((f.sent, f in tr.waiting))
        server.go.set()

    t0 = time.perf_counter()
    try:
        f = loop_run(_one_fresh_request(f"http://127.0.0.1:{server.port}", Timeouts(), check))
    finally:
        server.close()
    assert state == [(None, True)], state
    assert f.status == "ok" and len(f.chunks) == 3 and f.attempts == 1, (f.status, f.error)
    assert f.sent is not None and f.sent - t0 > 0.5  # after the SYN retry, not before


@pytest.mark.parametrize("loop_run", _loops(), ids=["asyncio", "uvloop"])
def test_a_handshake_that_never_ends_is_a_connect_timeout(loop_run) -> None:
    server = _Backlogged()  # never told to serve
    try:
        f = loop_run(_one_fresh_request(f"http://127.0.0.1:{server.port}", Timeouts(connect=0.3),
                                        lambda f, tr: None))
    finally:
        server.close()
    assert f.status == "timeout" and f.error == "connect timeout after 0.3s" and f.sent is None, (f.status, f.error)


async def _one_aiohttp_request(url: str, timeouts: Timeouts) -> Flight:
    from servegen_load.dispatch.transports.aiohttp import AiohttpTransport

    hooks = _Hooks()
    tr = AiohttpTransport(Endpoint.parse(url), "completions", hooks, timeouts)
    await tr.open()
    f = Flight(make_requests([0.0])[0], tr.wire(b'{"model":"m","prompt":"x","stream":true}'))
    tr.submit(f)
    await asyncio.wait_for(hooks.done.wait(), 20)
    await tr.close()
    return f


def test_aiohttp_counts_connection_set_up_as_send_lag_not_ttft() -> None:
    """aiohttp stamped `sent` before its pool had a connection: a slow handshake (a far or busy
    server, TLS) was reported as the server's TTFT, and a connect timeout as a request sent."""
    server = _Backlogged()
    go = threading.Timer(0.3, server.go.set)  # after the first SYN was dropped: its retry (1 s) connects
    t0 = time.perf_counter()
    go.start()
    try:
        f = asyncio.run(_one_aiohttp_request(f"http://127.0.0.1:{server.port}", Timeouts()))
    finally:
        go.join()
        server.close()
    assert f.status == "ok" and f.attempts == 1, (f.status, f.error)
    assert f.sent is not None and f.sent - t0 > 0.5 and f.first_token is not None
    assert f.first_token - f.sent < 0.5
    server = _Backlogged()  # never told to serve
    try:
        f = asyncio.run(_one_aiohttp_request(f"http://127.0.0.1:{server.port}", Timeouts(connect=0.3)))
    finally:
        server.close()
    assert (f.status, f.error, f.sent, f.attempts) == ("timeout", "connect timeout after 0.3s", None, 0)


def test_connections_for_a_burst_are_open_before_it(script_server, tmp_path: Path) -> None:
    """One request, then 120 due at once 1.2 s later (what bursty arrivals do): the runner reads
    the burst in its look-ahead and opens connections ahead of it, so no request of the burst
    waits for a connect (16 spares alone would leave about 100 of them waiting)."""
    out = tmp_path / "burst.jsonl"
    before = len(script_server.arrivals)
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{script_server.port}/crlf", model="m", output=out,
                    api="completions", progress="off", handle_signals=False)
    run(make_requests([0.0] + [1.2] * 120, output_tokens=3), cfg)
    _, lines = read_lines(out)
    assert len(lines) == 121 and {d["status"] for d in lines} == {"ok"}
    burst = sorted(script_server.arrivals[before:])[1:]
    start = burst[0][0]
    late = sum(accepted > start for _, accepted in burst)
    assert late <= 6, f"{late} of 120 burst requests came on connections opened during the burst"


def test_keepalive_closed_under_a_request_is_never_resent_unasked(script_server, tmp_path: Path) -> None:
    """The server closes a kept-alive connection on the next request without a byte of answer.
    It may have read the request (worked on it, then crashed), so without --retries it is not
    re-sent: `disconnect`, one attempt, and the message says why."""
    lines = _run_script(script_server, "dropnext", tmp_path, n=4)
    dropped = [d for d in lines if d["status"] != "ok"]
    assert dropped, lines  # requests 2.. went on reused connections the server dropped
    for d in dropped:
        assert d["status"] == "disconnect" and d["retries"] == 0 and d["attempts"] == 1, d
        assert "before any byte of answer" in d["error"] and "--retries" in d["error"]
    assert all(d["attempts"] == 1 for d in lines)


def test_keepalive_closed_under_a_request_is_retried_when_asked(script_server, tmp_path: Path) -> None:
    """With --retries the same request is re-sent, and the result records both attempts and the
    first one's send time."""
    out = tmp_path / "retried.jsonl"
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{script_server.port}/dropnext", model="m", output=out,
                    api="completions", progress="off", handle_signals=False, retries=1, retry_max_wait=0.0)
    run(make_requests([0.02 * i for i in range(4)], output_tokens=3), cfg)
    _, lines = read_lines(out)
    assert len(lines) == 4 and {d["status"] for d in lines} == {"ok"}
    retried = [d for d in lines if d["retries"]]
    assert retried and all(d["attempts"] == 2 and d["retries"] == 1 for d in retried)


def test_sim_usage_placements_both_apis(tmp_path: Path) -> None:
    """The simulator: completions put usage on the last content chunk, chat in a final chunk."""
    from servegen_load.sim.process import SimProcess

    with SimProcess() as sim:
        for api in ("completions", "chat"):
            out = tmp_path / f"sim-{api}.jsonl"
            cfg = RunConfig(endpoint=sim.url, model="m", output=out, api=api, progress="off",  # type: ignore[arg-type]
                            handle_signals=False, payload=__import__("servegen_load.content.payload").content.payload.PayloadOptions("sim"))
            reqs = make_requests([0.01 * i for i in range(6)], input_tokens=40, output_tokens=12,
                                 reason_tokens=4 if api == "chat" else None)
            run(reqs, cfg)
            _, lines = read_lines(out)
            assert len(lines) == 6
            for d in lines:
                assert d["status"] == "ok", d
                assert d["completion_tokens"] == 12 and d["prompt_tokens"] == 40
                if api == "chat":
                    assert d["reasoning_tokens"] == 4 and d["first_answer_token"] > d["first_token"]


def test_feed_sse_split_anywhere_gives_the_same_events() -> None:
    """Unit check of the SSE splitter: every split point of a stream yields the same record."""
    from servegen_load.requests import Request

    stream = b"".join(EVENTS)
    req = Request(id="x", t=0, client="c", category="k", input_tokens=1, output_tokens=1)
    for cut in range(1, len(stream)):
        f = Flight(req, b"")
        feed_sse(f, stream[:cut], 1.0)
        feed_sse(f, stream[cut:], 2.0)
        assert len(f.chunks) == 3 and f.done and f.completion_tokens == 3 and f.status is None
