"""Generation speed: requests per second of core generation (numpy columns, merged and ordered,
no JSON) and of writing JSONL, for about 1,000,000 requests of m-large, plus peak memory.

    python benchmarks/generate.py [--requests 1000000] [--arrival renewal|servegen] [--repeat 3]

Targets: >= 1,000,000 req/s core, >= 300,000 req/s written, peak RSS < 500 MB. The machine is
shared, so the best of `--repeat` runs is reported next to the median.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servegen_load.requests_writer import RowFormatter  # noqa: E402
from servegen_load.scenario import parse_scenario  # noqa: E402
from servegen_load.workload.compose import prepare  # noqa: E402
from servegen_load.workload.resolve import CATEGORIES  # noqa: E402

M_LARGE_RATE_20H = 317.5  # m-large's mean rate 20:00-21:00 (req/s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--arrival", default="renewal", choices=("renewal", "servegen"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    duration = round(args.requests / M_LARGE_RATE_20H)
    scen = parse_scenario({"pool": "m-large", "start": "20:00", "duration": duration, "seed": 1,
                           "arrival": args.arrival}, path="<bench>")

    prepare(scen)  # load the pool once, outside the timings
    core, write = [], []
    n = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        gen = prepare(scen)
        n = sum(len(b) for b in gen.blocks())
        core.append(n / (time.perf_counter() - t0))

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "requests.jsonl"
            t0 = time.perf_counter()
            gen = prepare(scen)
            fmt = RowFormatter(gen.names, CATEGORIES)
            size = 0
            with open(out, "wb") as fh:
                for b in gen.blocks():
                    data = fmt.format(b)
                    size += len(data)
                    fh.write(data)
            write.append(n / (time.perf_counter() - t0))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"m-large 20:00 + {duration} s, arrival={args.arrival}: {n:,} requests, {size / 1e6:.0f} MB of JSONL")
    print(f"core generation (columns, merged, no JSON): best {max(core):,.0f} req/s, "
          f"median {statistics.median(core):,.0f} req/s")
    print(f"generate + write JSONL:                     best {max(write):,.0f} req/s, "
          f"median {statistics.median(write):,.0f} req/s")
    print(f"peak RSS: {rss:.0f} MB   (cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
