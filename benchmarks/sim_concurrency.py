#!/usr/bin/env python3
"""How many concurrent streams the embedded simulator holds: N streaming requests at once.

    python benchmarks/sim_concurrency.py --n 2000 --max-tokens 64

Starts the simulator in its own process (`SimProcess`, by default with max_num_seqs large enough
for every stream to decode in the same batch), opens N streaming /v1/completions requests at
once with one aiohttp session, counts the token chunks of each (bytes only, no JSON parsing) and
prints: completed streams, wall time, tokens/s, the simulator's CPU seconds and its engine
lateness (how far its step deadlines slipped because the host was busy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servegen_load.sim import SimProcess


async def one(session: aiohttp.ClientSession, url: str, i: int, args: argparse.Namespace) -> tuple[bool, int, float]:
    body = {"model": "m", "prompt": f"r{i} " + "w " * (args.prompt_tokens - 1), "max_tokens": args.max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    n, tail, first = 0, b"", -1.0
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            if r.status != 200:
                return False, 0, -1.0
            async for data in r.content.iter_any():
                if first < 0:
                    first = time.monotonic() - t0
                n += data.count(b'"text":"')
                tail = (tail + data)[-32:]
    except (TimeoutError, aiohttp.ClientError):
        return False, n, first
    return tail.endswith(b"data: [DONE]\n\n") and n == args.max_tokens, n, first


async def attack(url: str, args: argparse.Namespace) -> dict[str, float]:
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        t0 = time.monotonic()
        c0 = time.process_time()
        res = await asyncio.gather(*(one(s, url, i, args) for i in range(args.n)))
        wall = time.monotonic() - t0
        cpu = time.process_time() - c0
    ok = sum(r[0] for r in res)
    firsts = sorted(r[2] for r in res if r[2] >= 0)
    return {"completed": ok, "wall_s": wall, "client_cpu_s": cpu, "tokens": sum(r[1] for r in res),
            "first_byte_p50_s": firsts[len(firsts) // 2] if firsts else -1,
            "first_byte_max_s": firsts[-1] if firsts else -1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="concurrent streams")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--preset", default="llama3-8b-h100")
    ap.add_argument("--param", action="append", default=[], help="engine override NAME=VALUE")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    params = {"max_num_seqs": max(args.n, 1024), "max_num_batched_tokens": max(8192, 2 * args.n)}
    params.update(dict(p.split("=", 1) for p in args.param))
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with SimProcess(args.preset, params=params) as sim:
        before = sim.stats()
        with runner:
            out = runner.run(attack(sim.url, args))
        after = sim.stats()
    eng = after["engine"]
    out.update(n=args.n, max_tokens=args.max_tokens, preset=args.preset,
               tokens_per_s=out["tokens"] / out["wall_s"],
               sim_cpu_s=after["cpu_seconds"] - before["cpu_seconds"],
               sim_max_concurrent_streams=after["max_concurrent_streams"], sim_max_running=eng["max_running"],
               sim_steps=eng["steps"], sim_mean_step_ms=1e3 * eng["mean_step_seconds"],
               sim_late_steps=eng["late_steps"], sim_max_lateness_ms=1e3 * eng["max_lateness_seconds"],
               sim_catchup_resets=eng["catchup_resets"])
    print(f"{out['completed']}/{args.n} streams completed in {out['wall_s']:.2f} s "
          f"({out['tokens_per_s']:,.0f} tokens/s); simulator CPU {out['sim_cpu_s']:.2f} s, "
          f"client CPU {out['client_cpu_s']:.2f} s; max concurrent streams {out['sim_max_concurrent_streams']}, "
          f"engine max lateness {out['sim_max_lateness_ms']:.1f} ms")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
