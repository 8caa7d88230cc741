#!/usr/bin/env python3
"""Client cost of many open streams: `servegen-load run` holding 1,000 and 5,000 streams at once.

    python benchmarks/concurrency.py                  # 1000 and 5000
    python benchmarks/concurrency.py --n 5000 --ramp 5 --hold 10

For each N: the simulator (its own process) gets a batch big enough for every stream
(max_num_seqs > N, a KV budget to match) and a slow decode step, so each answer streams for
`ramp + hold` seconds; N requests arrive evenly over `ramp` seconds, so all N are open at once
for about `hold` seconds. The client is the real CLI (`servegen-load run`, raw transport) in a
subprocess; this script samples its /proc entries every 0.1 s and prints:

- peak concurrent streams (the simulator's `max_concurrent_streams`) and results by status;
- client peak RSS, RSS before the first request (after start-up and pre-connecting), and
  memory per in-flight request = (peak - before) / peak streams;
- client open file descriptors at the peak;
- client CPU: seconds in all, and % of one core while all streams were open (the hold);
- the send lag p99 (did the client keep its schedule while holding N streams).

Figures depend on the machine (and on what else runs on it); the numbers in the docs are what
this script printed on the machine named there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servegen_load.requests import REQUESTS_FORMAT, Request  # noqa: E402
from servegen_load.sim import SimProcess  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> tuple[int, float, int] | None:
    """(RSS bytes, CPU seconds, open fds) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            rss = int(fh.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    return rss, cpu, fds


def write_requests(path: Path, n: int, ramp: float, output_tokens: int) -> None:
    with path.open("wb") as fh:
        fh.write(json.dumps({"format": REQUESTS_FORMAT, "seed": 0, "source": "benchmarks/concurrency.py"}).encode()
                 + b"\n")
        for i in range(n):
            r = Request(id=f"r{i}", t=0.2 + ramp * i / n, client=f"c{i % 50}", category="language",
                        input_tokens=32, output_tokens=output_tokens)
            fh.write(r.to_json() + b"\n")


def one(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    step = args.step
    output_tokens = int((args.ramp + args.hold) / step) + 2
    params = {"max_num_seqs": n + 1000, "max_num_batched_tokens": 1 << 20,
              "kv_cache_tokens": (n + 1000) * (output_tokens + 64), "prefix_cache_tokens": 0,
              "step_base_s": step, "decode_seq_s": 0.0, "prefill_token_s": 1e-7, "context_token_s": 0.0}
    src = tmp / f"req{n}.jsonl"
    out = tmp / f"res{n}.jsonl"
    summ = tmp / f"sum{n}.json"
    write_requests(src, n, args.ramp, output_tokens)
    with SimProcess("tiny-cpu", params=params, seed=1) as sim:
        cmd = [sys.executable, "-m", "servegen_load.cli", "run", str(src), "-o", str(out), "--endpoint", sim.url,
               "--model", "m", "--api", "completions", "--server-family", "sim", "--progress", "off",
               "--summary-json", str(summ), "--timeout-idle", str(max(30.0, 10 * step))]
        t_start = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        peak_rss = peak_fds = 0
        before_rss: int | None = None
        cpu_hold0 = cpu_hold1 = None
        last: tuple[int, float, int] | None = None
        hold_from, hold_to = args.ramp + 1.0, args.ramp + args.hold - 0.5  # seconds after the first request
        t_first: float | None = None
        while p.poll() is None:
            s = proc_sample(p.pid)
            if s is not None:
                last = s
                peak_rss = max(peak_rss, s[0])
                peak_fds = max(peak_fds, s[2])
                st = sim.stats() if t_first is None else None
                if st is not None and st["requests_received"] > 0:
                    t_first = time.monotonic()
                elif t_first is None:
                    before_rss = s[0]
                if t_first is not None:
                    el = time.monotonic() - t_first
                    if cpu_hold0 is None and el >= hold_from:
                        cpu_hold0 = (time.monotonic(), s[1])
                    if cpu_hold1 is None and el >= hold_to:
                        cpu_hold1 = (time.monotonic(), s[1])
            time.sleep(0.1)
        err = p.stderr.read().decode() if p.stderr else ""
        wall = time.monotonic() - t_start
        st = sim.stats()
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {err[-2000:]}")
    summary = json.loads(summ.read_text())
    streams = st["max_concurrent_streams"]
    hold_cpu = ((cpu_hold1[1] - cpu_hold0[1]) / (cpu_hold1[0] - cpu_hold0[0])
                if cpu_hold0 and cpu_hold1 and cpu_hold1[0] > cpu_hold0[0] else float("nan"))
    return {
        "n": n, "streams": streams, "ok": summary["requests"]["ok"],
        "not_ok": summary["requests"]["scheduled"] - summary["requests"]["ok"],
        "peak_rss_mb": peak_rss / 2**20, "before_rss_mb": (before_rss or 0) / 2**20,
        "per_request_kb": (peak_rss - (before_rss or 0)) / max(streams, 1) / 1024,
        "peak_fds": peak_fds, "cpu_s": last[1] if last else float("nan"), "hold_cpu_pct": 100 * hold_cpu,
        "wall_s": wall, "send_lag_p99_ms": (summary["latency"]["send_lag"]["p99"] or 0) * 1e3,
        "chunks_per_s": streams / step,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 5000], help="concurrent streams to hold")
    ap.add_argument("--ramp", type=float, default=5.0, help="seconds over which the N requests arrive")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds all N streams stay open together")
    ap.add_argument("--step", type=float, default=0.25, help="simulator decode step (s): one token per stream per step")
    ap.add_argument("--keep", type=Path, help="keep the requests/results/summary files in this folder")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="servegen-conc-") as d:
        folder = args.keep or Path(d)
        folder.mkdir(parents=True, exist_ok=True)
        for n in args.n:
            r = one(n, args, folder)
            rows.append(r)
            print(f"N={r['n']}: {r['streams']} concurrent streams, {r['ok']} ok / {r['not_ok']} not ok; "
                  f"client peak RSS {r['peak_rss_mb']:.0f} MB (before the first request {r['before_rss_mb']:.0f} MB, "
                  f"{r['per_request_kb']:.1f} KB per in-flight request); peak fds {r['peak_fds']}; "
                  f"CPU {r['cpu_s']:.1f} s in all, {r['hold_cpu_pct']:.0f}% of a core while holding "
                  f"{r['streams']} streams ({r['chunks_per_s']:.0f} chunks/s); send lag p99 "
                  f"{r['send_lag_p99_ms']:.2f} ms; wall {r['wall_s']:.1f} s", flush=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        if b["streams"] > a["streams"]:
            marginal = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 1024 / (b["streams"] - a["streams"])
            print(f"marginal memory per in-flight request ({a['streams']} -> {b['streams']} streams): "
                  f"{marginal:.1f} KB")


if __name__ == "__main__":
    main()
