"""One dispatcher process vs `run --workers N`, against the C fake server, at rates where one falls behind.

    python benchmarks/workers.py [--rates 1000,2000,3000] [--duration 10] [--workers 2] [--repeat 1]

Compiles shared/servers/fake_server.c and starts it (TTFT 20 ms, ITL 5 ms, 16 tokens: any TTFT
above 20 ms is the client's own error), writes a Poisson requests file per rate (40 clients, so
the shards are even) and runs `servegen-load run FILE --endpoint FAKE` as a user would, once
plain and once with `--workers N`, alternately. Per run it prints the achieved rate (sent /
span of scheduled times), send lag p50/p99, TTFT error p99 (TTFT p99 - 20 ms) and wall seconds,
from the run's own `--summary-json`, plus the machine's `cpu wait` (Linux PSI `some` share over
the run: high means the machine, other people's work included, was short of CPU).

Read it with the machine in mind: N workers need N cores besides the fake server's; on a 2-core
machine the fake server, the workers and anything else running share two cores, so `--workers 2`
can only show what is left once they all compete. `servegen_load.run.workers.PROCESS_RATE` (what
`--workers auto` assumes one process sustains) comes from the single-process rows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT.parent / "shared" / "servers"
TTFT = 0.020
CLI = [sys.executable, "-m", "servegen_load.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def psi_cpu_some() -> float | None:
    """Total microseconds some task waited for a CPU (Linux PSI), or None."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return float(line.rsplit("total=", 1)[1])


def write_requests(path: Path, rate: float, duration: float, seed: int) -> int:
    import numpy as np
    import orjson

    from servegen_load.requests import REQUESTS_FORMAT

    rng = np.random.default_rng(seed)
    t = 0.2 + np.cumsum(rng.exponential(1 / rate, int(rate * duration * 1.3) + 100))
    t = t[t < duration + 0.2]
    with path.open("wb") as fh:
        fh.write(orjson.dumps({"format": REQUESTS_FORMAT, "seed": seed, "source": "benchmarks/workers.py"}) + b"\n")
        for i, x in enumerate(t.tolist()):
            fh.write(orjson.dumps({"id": f"r{i}", "t": round(x, 6), "client": f"c{i % 40}", "category": "language",
                                   "input_tokens": 64, "output_tokens": 16}) + b"\n")
    return len(t)


def one_run(source: Path, url: str, workers: int | None, tmp: Path) -> dict:
    out, summ = tmp / "res.jsonl", tmp / "summary.json"
    cmd = [*CLI, "run", str(source), "-o", str(out), "--endpoint", url, "--model", "fake", "--progress", "off",
           "--api", "completions", "--summary-json", str(summ), "--lag-threshold-ms", "1000000"]
    if workers:
        cmd += ["--workers", str(workers)]
    psi0, t0 = psi_cpu_some(), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    psi1 = psi_cpu_some()
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {p.stderr[-2000:]}")
    s = json.loads(summ.read_text())
    lat = s["latency"]
    return {"achieved": s["fidelity"]["achieved_rate"], "scheduled": s["requests"]["scheduled"],
            "ok": s["requests"].get("ok", s["requests"]["scheduled"]),
            "lag_p50": lat["send_lag"]["p50"], "lag_p99": lat["send_lag"]["p99"],
            "ttft_err_p99": lat["ttft"]["p99"] - TTFT, "wall": wall,
            "cpu_wait": None if psi0 is None or psi1 is None else (psi1 - psi0) / 1e6 / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000,2000,3000")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of schedule per run (default 10)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    env_note = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as d:
        tmp = Path(d)
        fake = tmp / "fake_server"
        subprocess.run(["gcc", "-O2", "-o", str(fake), str(SERVERS / "fake_server.c")], check=True)
        port = free_port()
        srv = subprocess.Popen([str(fake), "--port", str(port), "--ttft-ms", "20", "--itl-ms", "5",
                                "--max-tokens", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print(f"# fake server TTFT 20 ms, ITL 5 ms, 16 tokens; {a.duration:g} s of Poisson arrivals; {env_note}")
            print(f"{'rate':>6} {'mode':<10} {'sched':>6} {'ok':>6} {'achieved':>9} {'lag p50 ms':>10} {'lag p99 ms':>10} "
                  f"{'ttft-err p99 ms':>15} {'wall s':>7} {'cpu wait':>8}")
            for rate in [float(x) for x in a.rates.split(",")]:
                src = tmp / f"reqs-{rate:g}.jsonl"
                write_requests(src, rate, a.duration, a.seed)
                for _ in range(a.repeat):
                    for workers in (None, a.workers):
                        r = one_run(src, url, workers, tmp)
                        mode = "1 process" if workers is None else f"--workers {workers}"
                        cw = "-" if r["cpu_wait"] is None else f"{r['cpu_wait']:.0%}"
                        print(f"{rate:6.0f} {mode:<10} {r['scheduled']:6d} {r['ok']:6d} {r['achieved']:9.1f} "
                              f"{r['lag_p50'] * 1e3:10.3f} {r['lag_p99'] * 1e3:10.3f} {r['ttft_err_p99'] * 1e3:15.3f} "
                              f"{r['wall']:7.1f} {cw:>8}", flush=True)
        finally:
            srv.terminate()
            srv.wait(5)


if __name__ == "__main__":
    main()
