"""One shard of a run and its shared start instant: what `run --shard i/N --start-at T` adds.

Sharding is by client, so a client's sessions stay in one process and the N shards are disjoint.
A scenario is sharded by the generator itself (`workload.compose`, clients dealt by expected
traffic); a requests file is dealt the same way (`assign_shards`) with each client's request count
in the file as its traffic, so every shard of the same file computes the same assignment alone.
A workload with fewer clients than shards (a `naive:` baseline, a replay without a client
column: one client) is split by request instead (`by_request`): request k goes to shard k mod N,
so no worker idles while "N workers started" is printed.

`--start-at` is a wall-clock instant (unix seconds) because that is the only clock separate
processes and machines share; the engine converts it to its monotonic clock once
(`dispatch.clock.monotonic_at`). An instant already past is still t = 0: the shard starts at
once, everything already due goes out immediately and the lateness shows as send lag, so the
shards stay aligned instead of each starting its own clock.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..requests import Request, iter_requests

SETUP_LEAD_S = 2.0  # the runner wakes this long before a future start instant to connect and prefill
SNAPSHOT_ENV = "SERVEGEN_LOAD_METRICS_SNAPSHOT"
BY_REQUEST = "r"  # a shard spec "i/Nr": split by request (see the module docstring)


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
    """Requests per client in a requests file (one validating pass)."""
    counts: dict[str, int] = {}
    for r in iter_requests(path):
        counts[r.client] = counts.get(r.client, 0) + 1
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
    mine = file_shard_clients(path, shard)
    return (r for r in iter_requests(path) if r.client in mine)


def by_request(reqs: Iterator[Request], i: int, n: int) -> Iterator[Request]:
    """Request k of the stream goes to shard k mod n (sessions stay whole: a session's turns
    follow its first turn's shard)."""
    owner: dict[str, int] = {}
    for k, r in enumerate(reqs):
        j = owner.setdefault(r.session, k % n) if r.session is not None else k % n
        if j == i:
            yield r


def snapshot_path() -> Path | None:
    """Where a worker of `run --workers` writes its final /metrics text (set by the parent only)."""
    v = os.environ.get(SNAPSHOT_ENV)
    return Path(v) if v else None
