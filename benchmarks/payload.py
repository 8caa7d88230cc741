"""Body-building cost per request (what the runner's look-ahead pays), by workload and API.

    python benchmarks/payload.py [--seconds 10]

Generates the mm-image, m-large and m-large-with-sessions workloads at 100 req/s and prints
per-request `build_body` times (µs, p50/p99/max) for chat and completions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from servegen_load.content.media import deflate_zeros
from servegen_load.content.payload import Content, PayloadOptions, build_body
from servegen_load.workload.compose import iter_scenario_requests

SCENARIOS = {
    "m-large text": "pool: m-large\nstart: \"20:00\"\nduration: {d}\nrate: 100\nseed: 1\n",
    "m-large sessions+prefix": ("pool: m-large\nstart: \"20:00\"\nduration: {d}\nrate: 100\nseed: 1\n"
                                "sessions: {{share: 0.5, turns: {{mean: 4}}, think_time: {{mean: 2}}}}\n"
                                "prefix: {{share: 0.6, tokens: 1024, variants: 4}}\n"),
    "mm-image": "pool: mm-image\nstart: \"20:00\"\nduration: {d}\nrate: 100\nseed: 1\n",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    deflate_zeros(1)  # the one-time zero pieces (~10 ms), as a run pays them before its clock starts
    with tempfile.TemporaryDirectory() as d:
        for name, text in SCENARIOS.items():
            p = Path(d) / "s.yaml"
            p.write_text(text.format(d=a.seconds))
            reqs = list(iter_scenario_requests(p))
            for api in ("chat", "completions"):
                opts = PayloadOptions("sim", content=Content())
                ts = np.empty(len(reqs))
                size = 0
                for i, r in enumerate(reqs):
                    t = time.perf_counter()
                    size += len(build_body(r, api, "m", opts))  # type: ignore[arg-type]
                    ts[i] = time.perf_counter() - t
                us = ts * 1e6
                print(f"{name:<24} {api:<12} n={len(reqs):<5} p50 {np.percentile(us, 50):6.1f} µs  "
                      f"p99 {np.percentile(us, 99):7.1f} µs  max {us.max():7.1f} µs  "
                      f"mean body {size / len(reqs) / 1024:6.1f} KiB")


if __name__ == "__main__":
    main()
