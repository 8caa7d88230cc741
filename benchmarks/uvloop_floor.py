"""The floor of any Python client on uvloop protocols: what `benchmarks/dispatch.py --floor` runs.

    python benchmarks/uvloop_floor.py --rate 1000 --duration 10 --max-tokens 128 --port 8000 [--seed 1]

Why: most of a streaming client's CPU here is the kernel's (a read and an ACK per token) and the
event loop's per-read dispatch, which no Python code on uvloop avoids. This client does only that:
the C reference client's request on keep-alive connections at Poisson instants, and a
`data_received` that appends a timestamp and spots the end of the chunked answer. No validation,
no results, no timeouts: not a load generator, a yardstick. Prints JSON like `ref_client.c`
(sent, done, cpu_s of the dispatch window from getrusage).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import time

import uvloop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    body = (b'{"model":"fake-model","prompt":"' + b" ".join(b"w%d" % i for i in range(100))
            + b'","max_tokens":%d,"stream":true,"ignore_eos":true,"stream_options":{"include_usage":true}}'
            % a.max_tokens)
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % (a.port, len(body))) + body
    pc = time.perf_counter
    idle: list[Conn] = []
    done = [0]

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.tr: asyncio.Transport = transport  # type: ignore[assignment]
            self.times: list[float] = []

        def data_received(self, data: bytes) -> None:
            self.times.append(pc())
            if data.endswith(b"0\r\n\r\n"):
                done[0] += 1
                self.times = []
                idle.append(self)

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        rnd = random.Random(a.seed)
        t = pc() + 0.1
        sched = []
        while True:
            t += rnd.expovariate(a.rate)
            if sched and t > sched[0] + a.duration:
                break
            sched.append(t)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for s in sched:
            d = s - pc()
            if d > 0:
                await asyncio.sleep(d)
            if idle:
                idle.pop().tr.write(req)
            else:
                tr, _ = await loop.create_connection(Conn, "127.0.0.1", a.port)
                tr.write(req)
        deadline = pc() + 60
        while done[0] < len(sched) and pc() < deadline:
            await asyncio.sleep(0.01)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        return {"scheduled": len(sched), "done": done[0], "cpu_s": round(cpu, 3),
                "user_s": round(r1.ru_utime - r0.ru_utime, 3), "sys_s": round(r1.ru_stime - r0.ru_stime, 3)}

    gc.freeze()
    print(json.dumps(uvloop.run(run())))


if __name__ == "__main__":
    main()
