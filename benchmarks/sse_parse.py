"""CPU cost of one big SSE event, fed the way a socket delivers it (64 KiB reads).

Why: the SSE reader once re-copied its pending buffer on every read, so one event of n bytes cost
O(n^2 / read size): 5/10/20 MB took 0.22/0.85/3.46 s of CPU, and one 60 MB event among 300
requests pushed every other request's send lag p99 to 12.4 s. The pending event now grows in
place and only the new bytes are searched: the cost per MB should stay flat as the event grows.
Also prints the template fast path's cost per token chunk (the common case), one chunk per read
and eight per read.

    python benchmarks/sse_parse.py
"""

from __future__ import annotations

import argparse
import math
import time
import timeit

from servegen_load.dispatch.stream import Flight, feed_sse
from servegen_load.dispatch.transports import raw
from servegen_load.requests import Request


def big_event(mb: int, read: int) -> float:
    """Seconds of CPU to take one event of `mb` MB in reads of `read` bytes (cap off)."""
    f = Flight(Request("x", 0.0, "c", "k", 1, 1), b"")
    piece = b"y" * read
    n = (mb << 20) // read
    t = time.process_time()
    feed_sse(f, b'data: {"choices":[{"text":"', 0.0, cap=1 << 40)
    for _ in range(n):
        feed_sse(f, piece, 0.0, cap=1 << 40)
    feed_sse(f, b'"}]}\n\n', 0.0, cap=1 << 40)
    assert f.status is None and len(f.chunks) == 1
    return time.process_time() - t


class _Hooks:
    next_due = math.inf

    def tick(self, t: float) -> None:
        pass


class _Owner:
    hooks = _Hooks()
    idle: list = []  # noqa: RUF012
    api_key = None
    max_event_bytes = 4 << 20

    def finish(self, f: Flight) -> None:
        pass


def token_chunks(n: int = 200_000) -> tuple[float, float]:
    """ns per token chunk on the raw transport's template path: one chunk per read, eight per read."""
    ev = (b'data: {"id":"cmpl-1234567890","object":"text_completion","created":1700000000,"model":"m",'
          b'"choices":[{"index":0,"text":" hello","logprobs":null,"finish_reason":null}]}\n\n')
    chunk = b"%x\r\n%b\r\n" % (len(ev), ev)
    c = raw._Conn(_Owner())  # type: ignore[arg-type]
    f = Flight(Request("x", 0.0, "c", "k", 1, 1), b"")
    c.flight, c.state, c.ok = f, raw._CHUNKED, True
    c.data_received(chunk)  # learns the template
    batch = chunk * 8

    def one() -> None:
        for _ in range(n):
            c.data_received(chunk)
        del f.chunks[:]

    def eight() -> None:
        for _ in range(n // 8):
            c.data_received(batch)
        del f.chunks[:]

    t1 = min(timeit.repeat(one, number=1, repeat=5)) / n * 1e9
    t8 = min(timeit.repeat(eight, number=1, repeat=5)) / n * 1e9
    return t1, t8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5,10,20,60", help="event sizes in MB")
    ap.add_argument("--read", type=int, default=65536, help="bytes per read")
    a = ap.parse_args()
    for mb in (int(x) for x in a.sizes.split(",")):
        s = big_event(mb, a.read)
        print(f"one {mb:3d} MB event in {a.read // 1024} KiB reads: {s:6.3f} s CPU ({s / mb * 1e3:.1f} ms per MB)")
    t1, t8 = token_chunks()
    print(f"template fast path: {t1:.0f} ns per token chunk (one per read), {t8:.0f} ns (eight per read)")


if __name__ == "__main__":
    main()
