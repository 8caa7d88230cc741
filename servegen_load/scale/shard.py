"""One shard of a run and its shared start instant: what `run --shard i/N --start-at T` adds.

Sharding is by client, so a client's sessions stay in one process and the N shards are disjoint.
A scenario is sharded by the generator itself (`workload.compose`, clients dealt by expected
traffic); a requests file is dealt the same way (`assign_shards`) with each client's request count
in the file as its traffic, so every shard of the same file computes the same assignment alone.

`--start-at` is a wall-clock instant (unix seconds) because that is the only clock separate
processes and machines share. It is converted to the monotonic clock once, when the run starts
its clock (`monotonic_at`); after that only `perf_counter` paces, so a wall-clock step (NTP)
mid-run does not shift the schedule. An instant already past is still t = 0: the shard starts at
once, everything already due goes out immediately and the lateness shows as send lag, so the
shards stay aligned instead of each starting its own clock.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from ..errors import InputError
from ..requests import Request

SETUP_LEAD_S = 2.0  # the runner wakes this long before a future start instant to connect and prefill


def parse_start_at(value: float | None) -> float | None:
    """Validate `--start-at` (unix seconds)."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"expected a unix timestamp in seconds, got {value!r}", field="--start-at")
    if value > 1e11:
        raise InputError(f"expected seconds since 1970, got {value:g} (milliseconds?)", field="--start-at")
    return float(value)


def monotonic_at(unix_ts: float) -> float:
    """The `perf_counter` reading that corresponds to wall-clock instant `unix_ts` (taken once)."""
    p1 = time.perf_counter()
    wall = time.time()
    p2 = time.perf_counter()
    return (p1 + p2) / 2 + (unix_ts - wall)


async def sleep_until_setup(unix_ts: float, lead: float = SETUP_LEAD_S) -> None:
    """Sleep until `lead` seconds before `unix_ts`, so connections are opened (and the look-ahead
    filled) just before the start instead of idling for minutes and being closed by the server."""
    wait = unix_ts - lead - time.time()
    if wait > 0:
        print(f"servegen-load: waiting {wait + lead:.1f} s for --start-at {unix_ts:.3f}", file=sys.stderr, flush=True)
        await asyncio.sleep(wait)
    elif unix_ts < time.time():
        print(f"servegen-load: --start-at is {time.time() - unix_ts:.2f} s in the past: starting at once, "
              "times stay relative to it (the lateness shows as send lag)", file=sys.stderr, flush=True)


def client_counts(path: str | Path) -> dict[str, int]:
    """Requests per client in a requests file (one pass; only the `client` field is used)."""
    counts: dict[str, int] = {}
    p = Path(path)
    with p.open("rb") as fh:
        fh.readline()
        for n, raw in enumerate(fh, start=2):
            if not raw.strip():
                continue
            try:
                c = orjson.loads(raw).get("client")
            except (orjson.JSONDecodeError, AttributeError):
                raise InputError("expected a JSON object per line", path=str(p), line=n) from None
            if not isinstance(c, str):
                raise InputError("expected a client name", path=str(p), line=n, field="client")
            counts[c] = counts.get(c, 0) + 1
    return counts


def file_shard_clients(path: str | Path, shard: tuple[int, int]) -> set[str]:
    """The clients of shard i/N of a requests file: the scenario's deal, traffic = request count."""
    from ..workload.compose import assign_shards

    i, n = shard
    counts = client_counts(path)
    assign = assign_shards([(c, float(k)) for c, k in counts.items()], n)
    return {c for c, j in assign.items() if j == i}


def iter_file_shard(path: str | Path, shard: tuple[int, int]) -> Iterator[Request]:
    """The requests of shard i/N of a requests file, in file order (validated as `iter_requests`)."""
    from ..requests import iter_requests

    mine = file_shard_clients(path, shard)
    return (r for r in iter_requests(path) if r.client in mine)


SNAPSHOT_ENV = "SERVEGEN_LOAD_METRICS_SNAPSHOT"


def snapshot_path() -> Path | None:
    """Where a worker of `run --workers` writes its final /metrics text (set by the parent only)."""
    import os

    v = os.environ.get(SNAPSHOT_ENV)
    return Path(v) if v else None
