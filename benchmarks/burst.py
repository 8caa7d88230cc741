"""Send lag of `servegen-load run` when the schedule bursts: are the burst's connections open in time?

    python benchmarks/burst.py [--rate 200] [--bursts 3] [--size 300] [--width 0.03] [--repeat 3]

Why: realistic traffic is bursty (ServeGen's clients have inter-arrival CVs far above 1), and an
open-loop request that finds no idle connection waits for a connect: several event-loop turns,
each longer on a busy machine. The runner reads bursts in its look-ahead and opens connections
ahead of them (`Runner._provision`); a request that still finds none takes the first connection
freed (`RawTransport.submit`). This measures what is left: Poisson arrivals at `--rate`, plus
`--bursts` bursts of `--size` requests within `--width` seconds, 2 s apart from t = 2 s, against
the C fake server (`shared/servers/fake_server.c`: 20 ms TTFT, 5 ms per token, 128 tokens), the
command run with its defaults. Prints send lag (sent - scheduled) p50/p99/max per burst and for the
baseline between bursts, per repeat.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from dispatch import ROOT, _env, start_fake_server


def _requests(path: Path, a: argparse.Namespace, seed: int) -> list[tuple[float, float]]:
    """Writes the requests file; returns the bursts' (start, end) times."""
    rng = np.random.default_rng(seed)
    end = 2.0 * (a.bursts + 1)
    t = np.cumsum(rng.exponential(1 / a.rate, int(a.rate * end * 1.5) + 16))
    spans = [(2.0 * (k + 1), 2.0 * (k + 1) + a.width) for k in range(a.bursts)]
    t = np.sort(np.concatenate([t[t < end], *[rng.uniform(s, e, a.size) for s, e in spans]]))
    header = {"format": "servegen-load/requests/v1", "seed": seed, "duration": end, "kind": "naive",
              "clients": 1, "expected_requests": float(len(t))}
    with path.open("w") as f:
        f.write(json.dumps(header) + "\n")
        for i, x in enumerate(t.tolist()):
            f.write(json.dumps({"id": f"burst#{i}", "t": round(x, 6), "client": "burst", "category": "language",
                                "input_tokens": 100, "output_tokens": 128}) + "\n")
    return spans


def _lags(results: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in results.open() if line.startswith('{"id"')]
    sched = np.array([r["scheduled"] for r in rows])
    sent = np.array([np.nan if r["sent"] is None else r["sent"] for r in rows])
    return sched, (sent - sched) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="Poisson baseline (req/s)")
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--size", type=int, default=300, help="requests per burst")
    ap.add_argument("--width", type=float, default=0.03, help="seconds each burst spans")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sgl-burst-"))
    server, _, url = start_fake_server(tmp / "fake_server")
    try:
        print(f"{a.bursts} bursts of {a.size} requests in {a.width * 1e3:g} ms over {a.rate:g} req/s; "
              f"load {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
        print(f"{'run':>4} {'what':<10} {'n':>5} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}   (ms)")
        for rep in range(a.repeat):
            req, res = tmp / f"requests-{rep}.jsonl", tmp / f"results-{rep}.jsonl"
            spans = _requests(req, a, seed=1 + rep)
            subprocess.run([sys.executable, "-m", "servegen_load.cli", "run", str(req), "--endpoint", url,
                            "--api", "completions", "-o", str(res), "--progress", "off"],
                           check=True, capture_output=True, env=_env(), cwd=ROOT)
            sched, lag = _lags(res)
            in_burst = np.zeros(len(sched), dtype=bool)
            for k, (s, e) in enumerate(spans):
                m = (sched >= s) & (sched <= e)
                in_burst |= m
                p50, p99, mx = np.nanpercentile(lag[m], [50, 99, 100])
                print(f"{rep + 1:>4} {f'burst {k + 1}':<10} {m.sum():>5} {p50:>8.2f} {p99:>8.2f} {mx:>8.2f}")
            p50, p99, mx = np.nanpercentile(lag[~in_burst], [50, 99, 100])
            print(f"{rep + 1:>4} {'between':<10} {(~in_burst).sum():>5} {p50:>8.2f} {p99:>8.2f} {mx:>8.2f}", flush=True)
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
