"""The client's own Python work per streamed token, without sockets: a figure a loaded machine cannot blur.

    python benchmarks/client_cost.py [--requests 2000] [--tokens 128] [--api completions|chat] [--repeat 5]
    for r in 1 3; do valgrind --tool=callgrind --callgrind-out-file=/dev/null python3.11 \
        benchmarks/client_cost.py --requests 200 --repeat $r 2>&1 | grep Collected; done

Why: `benchmarks/dispatch.py` measures the whole client against the C reference, but wall-clock
and even CPU-time figures move with whatever else the machine runs. This replays, through the
same code the `run` command uses, the exact bytes the C fake server writes (`shared/servers/
fake_server.c`: response head, one chunk per token in its own read, then the last token, usage
chunk, `[DONE]` and the chunked terminator in one read) and times each stage: building the
request (look-ahead: body + HTTP bytes), reading the response (raw transport's protocol), and
completing it (the runner's result line). Kernel work (socket reads, epoll) is the same for any
client and is not here. Prints the best of `--repeat` rounds in µs per token and per request;
under callgrind, (instructions at --repeat 3 - at --repeat 1) / (2 x requests x tokens) is the
deterministic version of the figure: instructions per streamed token (use the real interpreter binary,
not a shim script).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from servegen_load.content.payload import PayloadOptions, build_body
from servegen_load.dispatch.endpoint import Endpoint
from servegen_load.dispatch.limits import Timeouts
from servegen_load.dispatch.stream import Flight
from servegen_load.dispatch.transports.raw import RawTransport, _Conn
from servegen_load.requests import Request
from servegen_load.results import result_line

WORDS = ["the", "of", "and", "to", "in", "is", "was", "he", "for", "it", "with", "as", "his", "on"]


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def response_reads(rid: int, n: int, chat: bool) -> list[bytes]:
    """The reads a client gets for one streamed response from the fake server, in order."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
    reads = [head]
    created = 1796500000
    for i in range(n):
        w = WORDS[i % len(WORDS)].encode()
        fin = b'"length"' if i == n - 1 else b"null"
        if chat:
            role = b'"role":"assistant",' if i == 0 else b""
            p = (b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":%d,"model":"fake-model",'
                 b'"choices":[{"index":0,"delta":{%b"content":" %b"},"logprobs":null,"finish_reason":%b}]}\n\n'
                 % (rid, created, role, w, fin))
        else:
            p = (b'data: {"id":"cmpl-%d","object":"text_completion","created":%d,"model":"fake-model",'
                 b'"choices":[{"index":0,"text":" %b","logprobs":null,"finish_reason":%b}]}\n\n' % (rid, created, w, fin))
        reads.append(_chunk(p))
    usage = (b'data: {"id":"cmpl-%d","object":"text_completion","created":%d,"model":"fake-model","choices":[],'
             b'"usage":{"prompt_tokens":100,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (rid, created, n, n + 100))
    reads[-1] += _chunk(usage) + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    return reads


def batched(reads: list[bytes], k: int, first: int = 0) -> list[bytes]:
    """The same bytes with the token chunks after the first two joined `k` to a read (the head,
    the first chunks that teach the stream's template and the last read stay as they are); with
    `first`, the head and the first `first` chunks come in one read (the stream began while the
    loop ran late), the rest `k` to a read."""
    if first:
        return [b"".join(reads[:first + 1]), *batched(reads[first - 2:], k)[3:]] if first >= 2 else reads
    if k <= 1:
        return reads
    mid = reads[3:-1]
    return reads[:3] + [b"".join(mid[i:i + k]) for i in range(0, len(mid), k)] + reads[-1:]


class _Hooks:
    next_due = float("inf")

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def tick(self, now: float) -> None:
        pass

    def on_done(self, f: Flight) -> None:
        self.lines.append(result_line(f, 0.0))


class _Tr:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return None


def one_round(reqs: list[Request], reads: list[list[bytes]], api: str) -> dict[str, float]:
    """Build, read and complete every request once; seconds per stage."""
    hooks = _Hooks()
    transport = RawTransport(Endpoint.parse("http://127.0.0.1:8000"), api, hooks, Timeouts())
    opts = PayloadOptions(server_family="vllm")
    pc = time.perf_counter
    t = pc()
    flights = [Flight(r, transport.wire(build_body(r, api, "fake-model", opts))) for r in reqs]  # type: ignore[arg-type]
    t_build = pc() - t
    conn = _Conn(transport)
    conn.connection_made(_Tr())  # type: ignore[arg-type]
    t_read = 0.0
    n_tok = 0
    for f, rs in zip(flights, reads, strict=True):
        transport.idle.clear()
        conn.start(f, True)
        dr = conn.data_received
        t = pc()
        for data in rs:
            dr(data)
        t_read += pc() - t
        if f.status != "ok" or len(f.chunks) != f.req.output_tokens:
            raise SystemExit(f"replay failed: {f.status} {f.error} ({len(f.chunks)} chunks)")
        n_tok += len(f.chunks)
    # completion (result lines) ran inside the reads; time it alone to split it out
    t = pc()
    for f in flights:
        result_line(f, 0.0)
    t_done = pc() - t
    return {"build": t_build, "read": t_read - t_done, "done": t_done, "tokens": n_tok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--api", default="completions", choices=["completions", "chat"])
    ap.add_argument("--repeat", type=int, default=5, help="rounds over the same responses (best is printed)")
    ap.add_argument("--chunks-per-read", type=int, default=1,
                    help="token chunks a read carries after the first two (a loop running late reads several)")
    ap.add_argument("--first-read", type=int, default=0,
                    help="the head and this many first chunks in one read (a stream that began while the loop ran late)")
    a = ap.parse_args()
    reqs = [Request(id=str(i), t=i * 1e-3, client="c", category="bench", input_tokens=100, output_tokens=a.tokens)
            for i in range(a.requests)]
    reads = [batched(response_reads(i, a.tokens, a.api == "chat"), a.chunks_per_read, a.first_read)
             for i in range(a.requests)]

    async def rounds_in_a_loop() -> list[dict[str, float]]:  # the transport schedules on the running loop
        return [one_round(reqs, reads, a.api) for _ in range(a.repeat)]

    rounds = asyncio.run(rounds_in_a_loop())
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    n, ntok = a.requests, best["tokens"]
    print(f"{Path(__file__).name}: {n} requests x {a.tokens} tokens, {a.api}, {a.chunks_per_read} chunks per read, "
          + (f"head and {a.first_read} chunks in the first read, " if a.first_read else "") + f"best of {a.repeat}")
    print(f"  build (body + HTTP bytes)   {best['build'] / n * 1e6:8.2f} µs/request")
    print(f"  read (protocol, per token)  {best['read'] / ntok * 1e6:8.3f} µs/token")
    print(f"  complete (result line)      {best['done'] / n * 1e6:8.2f} µs/request")
    total = best["build"] + best["read"] + best["done"]
    print(f"  all Python work             {total / ntok * 1e6:8.3f} µs/token ({total / n * 1e6:.0f} µs/request)")


if __name__ == "__main__":
    main()
