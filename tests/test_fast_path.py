"""The raw transport's token fast paths are as strict as the full parse, one chunk per read or many.

A read that carries several token chunks (the loop ran late) goes through `transports.raw._fast_reads`
(one split at the template suffix, a lookup and a compare per chunk) and, when any chunk in it is
not a template chunk, whole through the strict loop; a read of one chunk through `data_received`'s
comparison. Both must accept exactly what the strict reader would: here a small asyncio server on
127.0.0.1 sends three token chunks one write each (the template is learned), then ONE write holding
good chunks around a corruption, so the corruption sits inside a batch. Every case checks the
status, the number of chunks counted (only those before the corruption) and that the valid
variants (uppercase hex, escapes, non-ASCII text) are taken, not rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dispatch_fixtures import make_requests, read_lines

from servegen_load.dispatch.limits import Timeouts
from servegen_load.dispatch.runner import RunConfig, run

FAST = Timeouts(connect=2.0, first_token=2.0, total=8.0, idle=2.0)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":%d}}\n\n'


def _event(text: bytes) -> bytes:
    return b'data: {"id":"c1","object":"text_completion","choices":[{"index":0,"text":"' + text + \
        b'","finish_reason":null}]}\n\n'


def _chunk(payload: bytes, size: int | None = None, hexfmt: bytes = b"%x") -> bytes:
    return (hexfmt % (len(payload) if size is None else size)) + b"\r\n" + payload + b"\r\n"


GOOD = [_chunk(_event(b" w%d" % i)) for i in range(4)]
# (batch written in one go after three learned chunks, expected status, chunks counted in all)
CASES: dict[str, tuple[bytes, str, int]] = {
    "clean": (b"".join(GOOD * 2), "ok", 3 + 8),
    "uppercase_hex": (b"".join(GOOD) + _chunk(_event(b" up"), hexfmt=b"%X") + GOOD[0], "ok", 3 + 6),
    "escaped_and_unicode": (GOOD[0] + _chunk(_event(b'\\" \\u00e9')) + _chunk(_event(" é".encode())) + GOOD[1],
                            "ok", 3 + 4),
    "nul": (b"".join(GOOD) + _chunk(_event(b" a\x00b")) + GOOD[0], "protocol_error", 3 + 4),
    "non_utf8": (b"".join(GOOD) + _chunk(_event(b" \xff\xfe")) + GOOD[0], "protocol_error", 3 + 4),
    "size_lie": (b"".join(GOOD[:2]) + _chunk(_event(b" lie"), size=len(_event(b" lie")) + 1) + GOOD[0],
                 "protocol_error", 3 + 2),
    "escaped_close_quote": (b"".join(GOOD[:3]) + _chunk(_event(b" x\\")) + GOOD[0], "protocol_error", 3 + 3),
    "not_sse": (GOOD[0] + _chunk(b"garbage line\n\n") + GOOD[1], "protocol_error", 3 + 1),
    # a client far behind reads 100+ chunks at once: reads over 8 KiB, judged the same way
    "large_batch": (b"".join(GOOD * 20), "ok", 3 + 80),
    "large_batch_size_lie": (b"".join(GOOD * 20) + _chunk(_event(b" lie"), size=len(_event(b" lie")) - 1) + GOOD[0],
                             "protocol_error", 3 + 80),
}


class Server:
    """Answers every request of case `mode` (the first path segment) with its bytes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        srv = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = srv.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        srv.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                batch, _, total = CASES[head.split(b" ")[1].split(b"/")[1].decode()]
                writer.write(HEAD)
                for c in GOOD[:3]:  # one write each: the template is learned on the way
                    writer.write(c)
                    await writer.drain()
                writer.write(batch + _chunk(USAGE % total) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.mark.parametrize("mode", list(CASES))
def test_batched_token_chunks_are_judged_like_the_full_parse(server: Server, tmp_path: Path, mode: str) -> None:
    out = tmp_path / f"{mode}.jsonl"
    cfg = RunConfig(endpoint=f"http://127.0.0.1:{server.port}/{mode}", model="m", output=out, api="completions",
                    progress="off", handle_signals=False, timeouts=FAST)
    run(make_requests([0.0, 0.01, 0.02], output_tokens=96), cfg)
    _, lines = read_lines(out)
    _, status, counted = CASES[mode]
    assert [d["status"] for d in lines] == [status] * 3, [d["error"] for d in lines]
    assert [len(d["chunk_times"]) for d in lines] == [counted] * 3


def test_a_read_of_many_chunks_takes_the_fast_path_whatever_its_size() -> None:
    """80 token chunks in one read (9 KiB, a loop 400 ms late on a 5 ms stream) are taken in one
    pass: reads over 8 KiB used to go through the strict loop at twice the cost per chunk, so a
    client that fell behind fell further behind. A size lie anywhere in such a read is refused."""
    from array import array

    from servegen_load.dispatch.transports.raw import _fast_reads

    pre = _event(b"")[:_event(b"").index(b'"text":"') + 8]
    suf = _event(b"")[len(pre):] + b"\r\n"
    read = b"".join(GOOD * 20)
    assert len(read) > 8192
    chunks = array("d")
    assert _fast_reads(read, 1.5, (pre, len(pre), suf, -len(suf), chunks))
    assert list(chunks) == [1.5] * 80
    lie = b"".join(GOOD * 20) + _chunk(_event(b" lie"), size=len(_event(b" lie")) - 1) + GOOD[0]
    assert not _fast_reads(lie, 2.0, (pre, len(pre), suf, -len(suf), chunks)) and len(chunks) == 80


def test_a_stream_that_began_while_the_loop_ran_late_reads_its_first_batch_in_one_pass(monkeypatch) -> None:
    """Head, first token and 80 more chunks in the stream's first read (the loop was 400 ms late
    when its answer began): once the first chunk's parse has taught the template, the other 80 go
    through `_fast_reads` in one pass (they went a chunk at a time, at twice the cost: 0.83-0.96
    against 0.64 µs a token in `benchmarks/client_cost.py --chunks-per-read 16 --first-read 64`),
    and a size lie among them still ends the request."""
    from servegen_load.dispatch.endpoint import Endpoint
    from servegen_load.dispatch.stream import Flight
    from servegen_load.dispatch.transports import raw

    passes: list[int] = []
    fast = raw._fast_reads

    def spy(data: bytes, t: float, tpl: tuple) -> bool:
        taken = fast(data, t, tpl)
        passes.append(len(tpl[4]) if taken else -1)
        return taken

    monkeypatch.setattr(raw, "_fast_reads", spy)

    class Hooks:
        next_due = float("inf")

        def tick(self, now: float) -> None:
            pass

        def on_done(self, f: Flight) -> None:
            pass

    class Socket:  # the asyncio transport the connection writes to: nothing to send anywhere
        def write(self, data: bytes) -> None:
            pass

        def abort(self) -> None:
            pass

        def close(self) -> None:
            pass

        def get_extra_info(self, name: str) -> None:
            return None

    async def first_read(batch: bytes) -> Flight:
        tr = raw.RawTransport(Endpoint.parse("http://127.0.0.1:9"), "completions", Hooks(), FAST)
        conn = raw._Conn(tr)
        conn.connection_made(Socket())  # type: ignore[arg-type]
        f = Flight(make_requests([0.0], output_tokens=81)[0], b"")
        tr.active.add(f)
        conn.start(f, False)
        conn.data_received(HEAD + batch)
        return f

    f = asyncio.run(first_read(b"".join(GOOD * 20) + GOOD[0]))
    assert len(f.chunks) == 81 and f.status is None and passes == [81], (passes, f.error)
    passes.clear()
    lie = _chunk(_event(b" lie"), size=len(_event(b" lie")) - 1)
    f = asyncio.run(first_read(b"".join(GOOD * 10) + lie + b"".join(GOOD * 10)))
    assert f.status == "protocol_error" and len(f.chunks) == 40 and passes == [-1], (passes, f.status, len(f.chunks))
