"""Benchmark `servegen-load inspect REQUESTS --scenario S`: requests per second end to end and peak memory.

For each rate (default 300 and 1700 req/s: about 1.08 and 6.1 million m-large requests over one
hour from 20:00) it generates a requests file with the real command, then runs
`servegen-load inspect FILE --scenario S --json` in a child process and prints its wall time, CPU
time (user + sys: what the machine's other load does not inflate), requests/s of each, and the
child's peak resident memory (ru_maxrss of that child alone, from `os.wait4`). The
command streams the file (`workload.request_scan` blocks folded into `workload.stream_stats`
accumulators), so peak memory should not grow with the file; the fixed part is the process start
and imports (numpy, scipy for the scenario's plan), also printed (`inspect SCENARIO` alone).

    python benchmarks/inspect_requests.py [--rates 300,1700] [--keep DIR]

Target: >= 1,000,000 requests/s, memory independent of the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(args: list[str]) -> tuple[float, float, float]:
    """(wall s, cpu s, peak RSS MB) of one child process, its output discarded."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="300,1700", help="mean req/s of each generated hour, comma-separated")
    ap.add_argument("--keep", type=Path, default=None, help="directory to keep the files in")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "servegen_load.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        print(f"load average at start: {os.getloadavg()[0]:.1f} (2-core machine)")
        for rate in (float(r) for r in args.rates.split(",")):
            scen, req = d / f"bench{rate:g}.yaml", d / f"bench{rate:g}.jsonl"
            scen.write_text(f"pool: m-large\nstart: 72000\nduration: 3600\nseed: 1\nrate: {rate}\n")
            subprocess.run([*cli, "generate", str(scen), "-o", str(req)], check=True, capture_output=True)
            n = sum(1 for _ in req.open("rb")) - 1
            _, fc, fm = _child([*cli, "inspect", str(scen), "--json"])
            wall, cpu, peak = _child([*cli, "inspect", str(req), "--scenario", str(scen), "--json"])
            size_mb = req.stat().st_size / 1e6
            print(f"inspect --scenario: {n:,} requests ({size_mb:.0f} MB): wall {wall:.2f} s = "
                  f"{n / wall:,.0f} requests/s, cpu {cpu:.2f} s = {n / cpu:,.0f} requests/s (process start "
                  f"included); peak RSS {peak:.0f} MB. Fixed part (inspect SCENARIO alone): cpu {fc:.2f} s, "
                  f"{fm:.0f} MB; beyond it: {n / max(cpu - fc, 1e-9):,.0f} requests/s of cpu")
            if args.keep is None:
                req.unlink()
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
