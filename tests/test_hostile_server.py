"""The client against a hostile server: every request ends with exactly one true status.

ONE small asyncio server on 127.0.0.1 (`Hostile`, in a thread) plays a mode chosen by the first
path segment (`http://127.0.0.1:P/<mode>/v1/...`): cut streams, corrupt SSE that a lenient fast
path would count as tokens (NUL, non-UTF-8, a backslash escaping the closing quote, a non-SSE line,
a lying chunk-size line), oversized events, redirects across origins, resets after work, a reused
connection closed after work, hangs at each stage, slow bytes, interim 1xx answers, a compressed
body, garbage instead of HTTP, a server that never reads. Each case runs through the runner `run`
uses, on both transports, and checks the accounting invariant: one line per scheduled request,
the expected status on every line, no `ok` that the bytes did not prove, tokens counted only up to
the corruption, one attempt per request unless --retries asked, the server saw what we say we
sent, and the error names the cause. The start-up probes meet the same server through the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hostile import run_cli
from test_dispatch_fixtures import make_requests, read_lines, write_requests

from servegen_load.dispatch.endpoint import Endpoint, discover_model
from servegen_load.dispatch.limits import Limits, Timeouts
from servegen_load.dispatch.runner import RunConfig, run
from servegen_load.errors import InputError

TRANSPORTS = ["raw", "aiohttp"]
N = 3  # requests per case
TOKENS = 3  # good token chunks every stream starts with
FAST = Timeouts(connect=2.0, first_token=1.5, total=8.0, idle=1.0)


def _event(text: bytes) -> bytes:
    # a plain completions token chunk, the same bytes around the text each time (the raw
    # transport learns this template and takes later chunks without a JSON parse)
    return b'data: {"id":"c1","object":"text_completion","choices":[{"index":0,"text":"' + text + \
        b'","finish_reason":null}]}\n\n'


def _chunk(payload: bytes, size: int | None = None) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload) if size is None else size, payload)


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3}}\n\n'
GOOD = [_event(b" a"), _event(b" b"), _event(b" c")]
TAIL = [USAGE, b"data: [DONE]\n\n"]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

_HEX = b"%x" % len(_event(b" d"))
# Corrupt chunks sent after the good ones, each in its own write (the template fast path's case)
CORRUPT: dict[str, bytes] = {
    "nul": _chunk(_event(b"x\x00y")),
    "nonutf8": _chunk(_event(b"\xff\xfe")),
    "backslash": _chunk(_event(b"abc\\")),  # escapes the closing quote: not JSON
    "newline": _chunk(_event(b"a\n\ngarbage line")),  # a non-SSE line inside a chunk
    "size_short": _chunk(_event(b" d"), size=len(_event(b" d")) - 3),  # the size line lies
    "size_long": _chunk(_event(b" d"), size=len(_event(b" d")) + 5),
    # "+5_b": Python's int(x, 16) takes it, HTTP does not
    "size_junk": b"+%b_%b\r\n%b\r\n" % (_HEX[:1], _HEX[1:], _event(b" d")),
    "notobject": _chunk(b"data: 5\n\n"),
    "notsse": _chunk(b"hello there\n\n"),
}


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Say nothing more until the client closes (at most 30 s)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(), 30)


class Hostile:
    """The hostile server: mode = first path segment; counts the requests it read per mode."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.received: Counter[str] = Counter()
        self.redirect_to = ""
        self.noread_port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        noread = self.loop.run_until_complete(asyncio.start_server(self._never_read, "127.0.0.1", 0))
        self.noread_port = noread.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        for srv in (server, noread):
            srv.close()
            self.loop.run_until_complete(srv.wait_closed())

    async def _never_read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts, never reads the request, never answers: only the client's timeout ends it."""
        await asyncio.sleep(30)
        writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                mode = await self._mode_of_next(reader, writer)
                if mode is None:
                    return
                if not await self._answer(mode, served, reader, writer):
                    return
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _mode_of_next(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """Read one request (head and body); its mode."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line = head.split(b"\r\n", 1)[0].split(b" ")
        method, path = line[0], line[1].decode()
        length = 0
        for h in head.split(b"\r\n")[1:]:
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if length:
            await reader.readexactly(length)
        mode = path.strip("/").split("/")[0]
        if method == b"GET":
            mode = "models-" + mode
        self.received[mode] += 1
        return mode

    async def _answer(self, mode: str, served: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False ends the connection."""
        w = writer.write

        async def send(*parts: bytes, pause: float = 0.0) -> None:
            for p in parts:
                w(p)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)

        good = [_chunk(e) for e in GOOD]
        if mode == "ok":
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return True
        after = _chunk(_event(b" e"))  # more bytes follow the corruption (a lying size line shows then)
        if mode in CORRUPT:  # good chunks one read each (template learned), then the corruption
            await send(HEAD, *good, CORRUPT[mode], after, pause=0.01)
            await _until_closed(reader)  # and then nothing: only a strict parser ends it promptly
            return False
        if mode.endswith("-batch") and mode[:-6] in CORRUPT:  # all in one write: the chunked fast loop
            await send(HEAD + b"".join(good) + CORRUPT[mode[:-6]] + after)
            await _until_closed(reader)
            return False
        if mode == "bigevent":  # one event of 1 MiB, trickled in 16 KiB writes, never ending
            await send(HEAD, *good, pause=0.005)
            big = b'data: {"choices":[{"text":"' + b"x" * (1 << 20)
            for i in range(0, len(big), 16384):
                await send(_chunk(big[i:i + 16384]))
            await _until_closed(reader)
            return False
        if mode == "closeafter":  # a whole valid answer, then a close (llama.cpp does this after streams)
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return False
        if mode == "cut":  # two tokens, then a clean close mid-stream
            await send(HEAD + b"".join(good[:2]))
            return False
        if mode == "reset":  # works on it, then resets the connection
            await asyncio.sleep(0.2)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "dropafterwork":  # reads it, works, closes cleanly without a byte of answer
            await asyncio.sleep(0.3)
            return False
        if mode == "hanghead":  # reads the request, never answers
            await _until_closed(reader)
            return False
        if mode == "hangmid":  # head and one token, then silence
            await send(HEAD + good[0])
            await _until_closed(reader)
            return False
        if mode == "hangbody":  # the head promises a body that never comes
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
            await _until_closed(reader)
            return False
        if mode == "slow":  # a valid stream, a few bytes at a time
            data = HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n"
            await send(*(data[i:i + 7] for i in range(0, len(data), 7)), pause=0.0005)
            return True
        if mode == "interim":  # 100 Continue and 103 Early Hints before the real answer
            await send(b"HTTP/1.1 100 Continue\r\n\r\n", pause=0.01)
            await send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", pause=0.01)
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return True
        if mode == "gzip":  # a compressed stream nobody asked for
            body = gzip.compress(b"".join(GOOD + TAIL))
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            return True
        if mode == "garbage":  # not HTTP at all, then silence
            await send(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
            await _until_closed(reader)
            return False
        if mode == "twolengths":
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789")
            await _until_closed(reader)
            return False
        if mode == "redirect":  # to another origin, which must never see the request (nor the key)
            await send(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n"
                       % self.redirect_to.encode())
            return True
        if mode == "models-cut":  # /v1/models cut short: http.client.IncompleteRead, aiohttp payload error
            await send(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"data":[')
            return False
        if mode == "models-garbage":
            await send(b"\x00\xffgarbage\r\n\r\n")
            return False
        if mode == "models-redirect":
            await send(b"HTTP/1.1 302 Found\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n" % self.redirect_to.encode())
            return True
        if mode == "models-hang":
            await _until_closed(reader)
            return False
        if mode == "models-reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode.startswith("models-"):
            body = orjson.dumps({"data": [{"id": "m"}]})
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                       % (len(body), body))
            return True
        if mode == "tokenize":  # POST /tokenize (any prefix) cut short: http.client.IncompleteRead
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"tok")
            return False
        await send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    s, other = Hostile(), Hostile()
    s.redirect_to = f"{other.url}/ok/v1/completions"
    s.other = other  # type: ignore[attr-defined]
    yield s
    s.stop()
    other.stop()


def _run(hostile: Hostile, mode: str, tmp_path: Path, transport: str, n: int = N, **cfg: Any) -> list[dict[str, Any]]:
    """Run n requests (one every 50 ms) against `mode`; check the accounting invariant; the lines."""
    out = tmp_path / f"{mode}-{transport}.jsonl"
    before = hostile.received[mode]
    base = f"http://127.0.0.1:{hostile.noread_port}" if mode == "noread" else hostile.url
    config = RunConfig(endpoint=f"{base}/{mode}", model="m", output=out, api="completions",
                       progress="off", handle_signals=False, transport=transport,
                       timeouts=cfg.pop("timeouts", FAST), **cfg)
    reqs = make_requests([0.05 * i for i in range(n)], output_tokens=TOKENS)
    outcome = run(reqs, config)
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs), lines  # one line each
    assert outcome.scheduled == n and sum(outcome.by_status.values()) == n
    for d in lines:
        assert d["status"] is not None and (d["status"] == "ok") == (d["error"] is None), d
        assert d["attempts"] == d["retries"] + (1 if d["sent"] is not None else 0), d
        if d["status"] == "ok":  # the bytes proved it: every token and the usage were read
            assert len(d["chunk_times"]) == TOKENS and d["completion_tokens"] == TOKENS, d
    if mode != "noread":  # the server read exactly the attempts we recorded
        assert hostile.received[mode] - before == sum(d["attempts"] for d in lines), (mode, lines)
    return lines


def _all(lines: list[dict[str, Any]], status: str, text: str) -> None:
    for d in lines:
        assert d["status"] == status, d
        assert text in d["error"], d


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_valid_stream_is_ok_slow_bytes_and_interim_answers_too(hostile: Hostile, tmp_path: Path,
                                                                  transport: str) -> None:
    for mode in ("ok", "slow", "interim"):
        for d in _run(hostile, mode, tmp_path, transport):
            assert d["status"] == "ok", (mode, d)
            assert d["attempts"] == 1 and d["prompt_tokens"] == 20


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", [*sorted(CORRUPT), "nul-batch", "size_short-batch", "newline-batch"])
def test_corrupt_stream_ends_promptly_as_protocol_error(hostile: Hostile, tmp_path: Path, transport: str,
                                                        mode: str) -> None:
    """Corruption after the template was learned: never counted, never `ok`, and the request ends
    on the corrupt bytes (the server then hangs: a lenient reader would end as `timeout`)."""
    lines = _run(hostile, mode, tmp_path, transport)
    for d in lines:
        assert d["status"] == "protocol_error", d  # not `ok`, and not `timeout`: ended by the bytes
        # the corrupt chunk is never a token (a lying size line is found one read later)
        assert len(d["chunk_times"]) <= TOKENS + mode.startswith("size_long"), d


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_oversized_event_is_cut_at_the_cap(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    lines = _run(hostile, "bigevent", tmp_path, transport, limits=Limits(max_event_bytes=256 << 10))
    _all(lines, "protocol_error", "over 262144 bytes")
    assert all(len(d["chunk_times"]) == TOKENS for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("mode", "status", "text"), [
    ("cut", "disconnect", "closed"),
    ("reset", "disconnect", ""),
    ("hanghead", "timeout", "no first token within 1.5s"),
    ("noread", "timeout", "no first token within 1.5s"),
    ("hangmid", "timeout", "no token for 1s"),
    ("hangbody", "timeout", "no first token"),
    ("gzip", "protocol_error", "compressed"),
    ("garbage", "protocol_error", ""),
    ("twolengths", "protocol_error", ""),
])
def test_failures_have_their_true_status(hostile: Hostile, tmp_path: Path, transport: str, mode: str,
                                         status: str, text: str) -> None:
    lines = _run(hostile, mode, tmp_path, transport)
    _all(lines, status, text)
    if mode in ("reset", "hanghead", "noread", "gzip", "garbage"):
        assert all(d["first_token"] is None and not d["chunk_times"] for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_redirect_across_origins_is_not_followed(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    other = hostile.other  # type: ignore[attr-defined]
    seen = other.received["ok"]
    lines = _run(hostile, "redirect", tmp_path, transport, api_key="sk-hostile-test-key")
    _all(lines, "http_error", "redirect to " + hostile.redirect_to)
    assert all(d["http_status"] == 307 for d in lines)
    assert other.received["ok"] == seen  # the other origin never saw the request (nor the key)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_the_server_worked_on_is_never_resent_unasked(hostile: Hostile, tmp_path: Path,
                                                                 transport: str) -> None:
    """Read, worked on for 0.3 s, connection closed cleanly without a byte: `disconnect`, one
    attempt, and the server saw each request once (it used to see 2 of them, the client's TTFT
    then timing the second attempt)."""
    lines = _run(hostile, "dropafterwork", tmp_path, transport)
    _all(lines, "disconnect", "closed by server")
    assert all(d["attempts"] == 1 and d["retries"] == 0 and d["first_token"] is None for d in lines)


@pytest.mark.parametrize("transport", ["raw"])  # aiohttp's pool reuses at once: docs/reliability.md
def test_a_server_that_closes_after_each_answer_loses_no_request(hostile: Hostile, tmp_path: Path,
                                                                 transport: str) -> None:
    """Back-to-back requests (one at a time, all due at once) to a server that closes every
    connection right after a complete answer while its head allows keep-alive (llama.cpp's
    server does this after every stream): the next request must never be written to the closing
    connection (that would be a `disconnect` the server did not cause, or a hidden resend). This
    server is a thread of the test process, so its close comes late (it waits for the GIL)."""
    n = 12
    out = tmp_path / f"closeafter-{transport}.jsonl"
    before = hostile.received["closeafter"]
    config = RunConfig(endpoint=f"{hostile.url}/closeafter", model="m", output=out, api="completions",
                       progress="off", handle_signals=False, transport=transport, timeouts=FAST,
                       max_concurrency=1)
    run(make_requests([0.0] * n, output_tokens=TOKENS), config)
    _, lines = read_lines(out)
    assert len(lines) == n
    _all_ok = [d for d in lines if d["status"] == "ok" and d["attempts"] == 1]
    assert len(_all_ok) == n, [d["error"] for d in lines]
    assert hostile.received["closeafter"] - before == n


def test_with_retries_a_stale_connection_drop_is_retried_and_recorded(hostile: Hostile, tmp_path: Path) -> None:
    """--retries 1: the same case is re-sent once, both attempts in the result, `sent` the first."""
    lines = _run(hostile, "dropafterwork", tmp_path, "raw", retries=1, retry_max_wait=0.0)
    for d in lines:
        assert d["status"] == "disconnect" and d["attempts"] == 2 and d["retries"] == 1, d
        assert d["sent"] - d["scheduled"] < 0.3  # the first attempt's send: the retry went 0.3 s after it


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_prompt_over_the_cap_is_never_built_nor_sent(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    """input_tokens 2^31-1 once grew to 22 GB: now the request is refused before its body is built."""
    from servegen_load.requests import Request

    out = tmp_path / f"cap-{transport}.jsonl"
    before = hostile.received["ok"]
    reqs = [*make_requests([0.0, 0.05], output_tokens=TOKENS),
            Request(id="huge", t=0.02, client="a", category="language", input_tokens=2**31 - 1, output_tokens=3)]
    run(reqs, RunConfig(endpoint=f"{hostile.url}/ok", model="m", output=out, api="completions", progress="off",
                        handle_signals=False, transport=transport, timeouts=FAST))
    _, lines = read_lines(out)
    by_id = {d["id"]: d for d in lines}
    assert len(lines) == 3 and by_id["r0"]["status"] == by_id["r1"]["status"] == "ok"
    huge = by_id["huge"]
    assert huge["status"] == "client_error" and "--max-prompt-tokens" in huge["error"]
    assert huge["sent"] is None and huge["attempts"] == 0
    assert hostile.received["ok"] - before == 2


def test_sse_parsing_is_linear_in_the_bytes() -> None:
    """A 16 MB event in 4 KiB reads: the pending buffer grows in place (the old copy-per-read cost
    16 MB x 4096 reads / 2 = 32 GB of copying; here one pass). Checked by the bytes copied, not by
    a clock: the buffer is a bytearray extended in place."""
    from servegen_load.dispatch.stream import Flight, feed_sse

    f = Flight(make_requests([0.0])[0], b"")
    feed_sse(f, b'data: {"choices":[{"text":"', 0.0)
    first = f.sse_buf
    piece = b"y" * 4096
    for _ in range(4096):
        feed_sse(f, piece, 0.0, cap=64 << 20)
    assert type(f.sse_buf) is bytearray and len(f.sse_buf) == len(first) + (16 << 20)
    buf = f.sse_buf
    feed_sse(f, piece, 0.0, cap=64 << 20)
    assert f.sse_buf is buf  # extended in place, not re-copied
    feed_sse(f, b'"}]}\n\n', 1.0, cap=64 << 20)
    assert f.status is None and len(f.chunks) == 1 and f.sse_buf == b""


# --- the start-up probes, through the CLI -----------------------------------------------------


def _one_line(r: Any, *texts: str) -> str:
    assert "Traceback" not in r.err, r
    lines = [x for x in r.err.strip().splitlines() if x.startswith("servegen-load: error:")]
    assert len(lines) == 1, r
    for t in texts:
        assert t in lines[0], r
    return lines[0]


@pytest.mark.parametrize("mode", ["cut", "garbage", "redirect", "reset"])
def test_model_listing_probe_fails_in_one_line(hostile: Hostile, tmp_path: Path, mode: str) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    other = hostile.other  # type: ignore[attr-defined]
    seen = other.received["models-ok"]
    r = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--endpoint", f"{hostile.url}/{mode}",
                "--api", "completions", "--progress", "off")
    assert r.code == 2, r
    line = _one_line(r, "pass --model", "/models")
    if mode == "redirect":
        assert "redirect" in line and "not followed" in line
        assert other.received["models-ok"] == seen


def test_model_listing_probe_that_hangs_ends_at_its_timeout(hostile: Hostile) -> None:
    with pytest.raises(InputError, match=r"no complete answer within 0\.5s"):
        asyncio.run(discover_model(Endpoint.parse(f"{hostile.url}/hang"), None, timeout=0.5))


def test_tokenize_probe_cut_short_is_a_warning_not_a_crash(hostile: Hostile, tmp_path: Path) -> None:
    """/tokenize and the overhead probes answered with a cut body (http.client.IncompleteRead,
    not an OSError): the run warns and goes on; its requests (also cut) end as one line each."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0, 0.05]))
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/tokenize", "--model", "m",
                "--api", "chat", "--server-family", "vllm", "--tokenizer", "server", "--progress", "off",
                "--timeout-first-token", "2")
    assert "Traceback" not in r.err, r
    assert "tokenize" in r.err, r
    _, lines = read_lines(out)
    assert len(lines) == 2 and all(d["status"] == "disconnect" for d in lines), lines


def test_caps_come_from_the_command_line(hostile: Hostile, tmp_path: Path) -> None:
    """`--max-event-bytes` and `--max-prompt-tokens` reach the runner through `servegen-load run`."""
    from servegen_load.requests import Request

    reqs = [*make_requests([0.0, 0.05], output_tokens=TOKENS),
            Request(id="big", t=0.1, client="a", category="language", input_tokens=5000, output_tokens=3)]
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/bigevent", "--model", "m",
                "--api", "completions", "--server-family", "sim", "--progress", "off",
                "--max-event-bytes", "65536", "--max-prompt-tokens", "4096")
    assert "Traceback" not in r.err and r.code == 3, r  # not one request succeeded
    _, lines = read_lines(out)
    by_id = {d["id"]: d for d in lines}
    assert len(lines) == 3
    assert by_id["big"]["status"] == "client_error" and "4096" in by_id["big"]["error"]
    for i in ("r0", "r1"):
        assert by_id[i]["status"] == "protocol_error" and "over 65536 bytes" in by_id[i]["error"]
