"""Benchmark `servegen-load fit`: rows per second end to end (CSV parsing included) and peak memory.

Writes a synthetic gateway log to a temporary CSV: 2,000,000 rows (default), 200 tenants with
Zipf-like shares of the traffic, each a renewal process with Gamma gaps of CV 2-4 (bursty), lengths
lognormal with per-tenant medians, a header `time,tenant,prompt_tokens,completion_tokens` and
epoch-second times with microseconds (`--iso` writes ISO-8601 timestamps instead). Then runs the
real command, `servegen-load fit LOG -o POOL --client-column tenant`, in a child process and
prints its wall time, rows/s and peak resident memory (ru_maxrss of the child).

    python benchmarks/fit.py [--rows 2000000] [--clients 200] [--iso] [--keep DIR]

Target: >= 500,000 rows/s on one core of the development machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_log(path: Path, rows: int, clients: int, iso: bool, seed: int = 7) -> float:
    """Write the synthetic log; returns its duration in seconds."""
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, clients + 1) ** 1.1
    counts = rng.multinomial(rows, share / share.sum())
    duration = 6 * 3600.0
    t_parts, c_parts = [], []
    for c, n in enumerate(counts):
        if n == 0:
            continue
        cv = rng.uniform(2.0, 4.0)
        k = 1.0 / cv**2
        gaps = rng.gamma(k, 1.0 / k, n)
        t = np.cumsum(gaps)
        t = t / t[-1] * duration * rng.uniform(0.6, 1.0)
        t_parts.append(t)
        c_parts.append(np.full(n, c, dtype=np.int32))
    t = np.concatenate(t_parts)
    c = np.concatenate(c_parts)
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    med_in = np.exp(rng.uniform(np.log(50), np.log(3000), clients))
    med_out = np.exp(rng.uniform(np.log(5), np.log(800), clients))
    inp = np.maximum(1, rng.lognormal(np.log(med_in[c]), 1.0)).astype(np.int64)
    out = np.maximum(1, rng.lognormal(np.log(med_out[c]), 0.8)).astype(np.int64)
    epoch = 1_700_000_000.0
    with path.open("w") as fh:
        fh.write("time,tenant,prompt_tokens,completion_tokens\n")
        step = 200_000
        for a in range(0, t.size, step):
            b = min(a + step, t.size)
            if iso:
                stamps = (np.datetime64(int(epoch), "s") + (t[a:b] * 1e6).astype("timedelta64[us]")).astype(str)
                ts = [str(s) for s in stamps]
            else:
                ts = [f"{x:.6f}" for x in (epoch + t[a:b]).tolist()]
            fh.write("".join(f"{x},tenant-{ci:03d},{i},{o}\n" for x, ci, i, o in
                             zip(ts, c[a:b].tolist(), inp[a:b].tolist(), out[a:b].tolist(), strict=True)))
    return duration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--iso", action="store_true", help="ISO-8601 timestamps instead of epoch seconds")
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--keep", help="directory to keep the log and pool in (default: a temp dir, removed)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        log, pool = d / "gateway.csv", d / "fitted.npz"
        t0 = time.perf_counter()
        write_log(log, args.rows, args.clients, args.iso)
        size = log.stat().st_size
        print(f"wrote {log} ({args.rows:,} rows, {size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        cmd = [sys.executable, "-m", "servegen_load.cli", "fit", str(log), "-o", str(pool),
               "--client-column", "tenant", "--window", f"{args.window:g}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"fit failed ({proc.returncode}): {proc.stderr.strip()}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(proc.stderr.strip().splitlines()[-2])
        print(f"fit: {wall:.2f} s end to end (process start, CSV parse, fit, write) = "
              f"{args.rows / wall:,.0f} rows/s; peak memory {peak:.0f} MB; "
              f"pool {pool.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
