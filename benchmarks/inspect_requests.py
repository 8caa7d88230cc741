"""Benchmark `servegen-load inspect REQUESTS --scenario S`: requests per second end to end and peak memory.

Generates a requests file with the real command (m-large, one hour from 20:00 at `--rate` req/s,
about `rate x 3600` requests: 1,080,000 at the default 300), then runs
`servegen-load inspect FILE --scenario S --json` in a child process and prints its wall time,
requests/s and peak resident memory (ru_maxrss of the child). The reading is
`workload.request_scan` (a million lines a second and more on one core, no Python object per
line); the statistics and the fidelity to the scenario are numpy over the columns.

    python benchmarks/inspect_requests.py [--rate 300] [--keep DIR]

Target: >= 1,000,000 requests/s.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=300.0, help="mean req/s of the generated hour")
    ap.add_argument("--keep", type=Path, default=None, help="directory to keep the files in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        scen, req = d / "bench.yaml", d / "bench.jsonl"
        scen.write_text(f"pool: m-large\nstart: 72000\nduration: 3600\nseed: 1\nrate: {args.rate}\n")
        subprocess.run([sys.executable, "-m", "servegen_load.cli", "generate", str(scen), "-o", str(req)],
                       check=True, capture_output=True)
        n = sum(1 for _ in req.open("rb")) - 1
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "servegen_load.cli", "inspect", str(req), "--scenario", str(scen),
                        "--json"], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size_mb = req.stat().st_size / 1e6
        print(f"inspect --scenario: {n:,} requests ({size_mb:.0f} MB) in {wall:.2f} s = {n / wall:,.0f} requests/s "
              f"(process start included); peak memory {peak_mb:.0f} MB (the largest child: generate or inspect)")


if __name__ == "__main__":
    main()
