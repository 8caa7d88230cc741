"""Per-client generation merged into one time-ordered request stream: deterministic, shardable, streaming.

How a scenario becomes requests:

1. `plan.resolve` turns the scenario into per-client rate curves, gap shapes and length tables.
2. Each client is a generator of `Batch`es (arrivals from `arrivals`, lengths from `lengths`),
   with its own random generators seeded from (seed, client name) only: a client's requests do
   not depend on which other clients exist, on the shard, or on how time is cut into blocks.
3. Time is cut into blocks of run time sized for about `BLOCK_REQUESTS` requests; each block
   takes every client's arrivals before the block's end, merges them by (t, client, k) with one
   stable sort (clients enter in name order, each client's rows in arrival order) and is
   written or yielded before the next block is made. Memory is one block plus at most one
   pending chunk per client, so a 14-day workload never sits in memory.

Order and ids: `t` is truncated to the microsecond (`t_us`; truncation keeps every arrival
inside the window it was drawn for), the file is ordered by
(t_us, client name, k), and ids are "<client>#<k>" with k the client's own arrival index, so ids
and order are shard-invariant: the union of the N shards, merged by that key
(`merge_requests`), is byte for byte the unsharded file.

Sharding: clients are dealt to N shards largest expected traffic first, each to the shard with
the least expected traffic so far (ties: lower shard index, clients by name), so shards carry
near-equal load whatever the skew (m-large's top client alone is ~20% of its requests).
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import InputError
from ..requests import MAX_TIME, REQUESTS_FORMAT, Request
from ..scenario import Scenario, load_scenario, scenario_digest
from . import arrivals
from .lengths import ClientTables, Lengths
from .resolve import CATEGORIES, Resolved, Source, client_seed, describe_sources, resolve

BLOCK_REQUESTS = 1 << 17
US = 1_000_000
MAX_REQUESTS = 1e10      # expected requests of one generation (~1 TB of JSONL): beyond is a typo
MAX_PEAK_RATE = 1e8      # req/s of the busiest window: a block of 1 ms must fit in memory


@dataclass(slots=True)
class Batch:
    """Requests as columns. `reason` is -1 where absent; `mm[m] = (counts, flat items)`."""

    t_us: np.ndarray
    client: np.ndarray
    k: np.ndarray
    cat: np.ndarray
    inp: np.ndarray
    out: np.ndarray
    reason: np.ndarray | None = None
    mm: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t_us.size)

    def slice(self, a: int, b: int) -> Batch:
        mm = {}
        for m, (cnt, items) in self.mm.items():
            off = np.concatenate([[0], np.cumsum(cnt)])
            mm[m] = (cnt[a:b], items[off[a]:off[b]])
        return Batch(self.t_us[a:b], self.client[a:b], self.k[a:b], self.cat[a:b], self.inp[a:b],
                     self.out[a:b], None if self.reason is None else self.reason[a:b], mm)

    def take(self, order: np.ndarray) -> Batch:
        mm = {}
        for m, (cnt, items) in self.mm.items():
            off = np.concatenate([[0], np.cumsum(cnt)])
            c2 = cnt[order]
            mm[m] = (c2, items[_ragged_index(off[:-1][order], c2)])
        return Batch(self.t_us[order], self.client[order], self.k[order], self.cat[order], self.inp[order],
                     self.out[order], None if self.reason is None else self.reason[order], mm)

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        reason = None
        if any(p.reason is not None for p in parts):
            reason = np.concatenate([p.reason if p.reason is not None else np.full(len(p), -1, np.int64)
                                     for p in parts])
        mods = sorted({m for p in parts for m in p.mm})
        mm = {}
        for m in mods:
            cnts = [p.mm[m][0] if m in p.mm else np.zeros(len(p), np.int64) for p in parts]
            items = [p.mm[m][1] if m in p.mm else np.zeros(0, np.int64) for p in parts]
            mm[m] = (np.concatenate(cnts), np.concatenate(items))
        return Batch(cat("t_us"), cat("client"), cat("k"), cat("cat"), cat("inp"), cat("out"), reason, mm)


def _ragged_index(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Flat indices of the ranges [starts[i], starts[i] + lens[i]) in order."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    excl = np.cumsum(lens) - lens
    return np.repeat(starts - excl, lens) + np.arange(total)


def _concat_lengths(parts: list[Lengths]) -> Lengths:
    out = Lengths(np.concatenate([p.inp for p in parts]), np.concatenate([p.out for p in parts]))
    if parts[0].reason is not None:
        out.reason = np.concatenate([p.reason for p in parts if p.reason is not None])
    for m in parts[0].mm:
        out.mm[m] = (np.concatenate([p.mm[m][0] for p in parts]), np.concatenate([p.mm[m][1] for p in parts]))
    return out


def _batch(t: np.ndarray, gid: int, k0: int, cat: int, ln: Lengths) -> Batch:
    n = t.size
    return Batch(np.floor(t * US).astype(np.int64), np.full(n, gid, np.int32), np.arange(k0, k0 + n, dtype=np.int64),
                 np.full(n, cat, np.int8), ln.inp, ln.out, ln.reason, ln.mm)


# --- per-client streams ---

def _realistic_client(plan: Resolved, src: Source, ci: int, gid: int) -> Iterator[Batch]:
    s = plan.scenario
    name = src.names[ci]
    rng_a, rng_l = client_seed(s.seed, name, 0), client_seed(s.seed, name, 1)
    tables = ClientTables(src.pool, int(src.idx[ci]))
    rho = client_rho(s.length_correlation, src, ci)
    coupling = src.pool.copulas(int(src.idx[ci]))
    cat = CATEGORIES.index(src.category)
    k0 = 0
    for t, seg in _arrivals(s.arrival, src, ci, rng_a):
        dw = src.dwin[seg]
        if dw[0] == dw[-1]:
            ln = tables.at(int(dw[0])).draw(t.size, rng_l, rho, coupling)
        else:
            cuts = np.flatnonzero(np.diff(dw)) + 1
            bounds = [0, *cuts.tolist(), t.size]
            ln = _concat_lengths([tables.at(int(dw[a])).draw(b - a, rng_l, rho, coupling)
                                  for a, b in itertools.pairwise(bounds)])
        yield _batch(t, gid, k0, cat, ln)
        k0 += t.size


def _arrivals(mode: str, src: Source, ci: int, rng: np.random.Generator) -> Iterator[arrivals.Chunk]:
    """The client's arrival process: its fitted batch model in renewal mode, else per-window gaps."""
    bm = src.batches
    m = int(bm.model[ci]) if bm is not None and mode == "renewal" else 0
    off = float(src.off_share[ci]) if src.off_share is not None else arrivals.ONOFF_OFF_SHARE
    von = float(src.on_cv[ci]) if src.on_cv is not None else 1.0
    if m == 1 and bm is not None:
        return arrivals.tick(src.edges, src.rate[ci], float(bm.period[ci]), float(bm.phase[ci]),
                             float(bm.dispersion[ci]), rng)
    if m == 2 and bm is not None and (sizes := bm.sizes[ci]) is not None:
        return arrivals.epochs(src.edges, src.rate[ci], bm.family[ci], bm.shape[ci], float(bm.mean[ci]), sizes, rng,
                               off_share=off, on_cv=von)
    if m == 3 and bm is not None:
        rate = src.rate[ci]
        fam = np.where(rate > 0, arrivals.Family.GAMMA, arrivals.Family.NONE).astype(np.int8)
        return arrivals.quantised(arrivals.renewal(src.edges, rate, fam, np.full(rate.size, bm.quantum_shape[ci]), rng),
                                  float(bm.period[ci]), float(bm.phase[ci]))
    proc = arrivals.renewal if mode == "renewal" else arrivals.servegen
    return proc(src.edges, src.rate[ci], src.family[ci], src.shape[ci], rng, off_share=off, on_cv=von)


def client_rho(setting: float | str, src: Source, ci: int) -> float:
    """The copula correlation of one client: the scenario's number, or with `pool` the pool's
    per-client `rank_corr` (fitted pools; 0 where it is missing or undefined)."""
    if setting != "pool":
        return float(setting)
    rc = src.pool.extra.get("rank_corr")
    if rc is None or rc.shape != (src.pool.n_clients,):
        return 0.0
    v = float(rc[int(src.idx[ci])])
    return float(np.clip(v, -1.0, 1.0)) if np.isfinite(v) else 0.0


def _baseline_client(plan: Resolved, gid: int) -> Iterator[Batch]:
    bp = plan.baseline
    assert bp is not None
    s = plan.scenario
    rng_a, rng_l = client_seed(s.seed, bp.client, 0), client_seed(s.seed, bp.client, 1)
    proc = arrivals.poisson(bp.rate, plan.duration, rng_a) if bp.kind == "naive" else \
        arrivals.constant(bp.rate, plan.duration)
    w = np.array([o[0] for o in bp.options], dtype=np.float64)
    cum = np.cumsum(w / w.sum())
    k0 = 0
    for t, _ in proc:
        n = t.size
        if len(bp.options) == 1:
            _, cat, ts = bp.options[0]
            yield _batch(t, gid, k0, CATEGORIES.index(cat), ts.draw(n, rng_l, 0.0))
        else:
            pick = np.minimum(np.searchsorted(cum, rng_l.random(n), side="right"), len(cum) - 1)
            parts = []
            for j, (_, cat, ts) in enumerate(bp.options):
                rows = np.flatnonzero(pick == j)
                if rows.size:
                    b = _batch(t[rows], gid, 0, CATEGORIES.index(cat), ts.draw(rows.size, rng_l, 0.0))
                    b.k = rows + k0
                    parts.append(b)
            merged = Batch.concat(parts)
            yield merged.take(np.argsort(merged.k, kind="stable"))
        k0 += n


def _replay_client(plan: Resolved, ci: int, gid: int) -> Iterator[Batch]:
    rp = plan.replay
    assert rp is not None
    rows = np.flatnonzero(rp.client == ci)
    cat = CATEGORIES.index(rp.category)
    for a in range(0, rows.size, arrivals.CHUNK_MAX):
        r = rows[a:a + arrivals.CHUNK_MAX]
        yield _batch(rp.t[r], gid, a, cat, Lengths(rp.inp[r], rp.out[r]))


class _Stream:
    """A client's batches, cut at block ends."""

    __slots__ = ("gen", "pending")

    def __init__(self, gen: Iterator[Batch]) -> None:
        self.gen: Iterator[Batch] | None = gen
        self.pending: Batch | None = None

    def take_until(self, end_us: int, out: list[Batch]) -> None:
        while True:
            p = self.pending
            if p is None:
                if self.gen is None:
                    return
                p = next(self.gen, None)
                if p is None:
                    self.gen = None
                    return
            if p.t_us[-1] < end_us:
                out.append(p)
                self.pending = None
                continue
            i = int(np.searchsorted(p.t_us, end_us, side="left"))
            if i:
                out.append(p.slice(0, i))
                self.pending = p.slice(i, len(p))
            else:
                self.pending = p
            return


# --- sharding ---

def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """"i/N" (0 <= i < N) or (i, N) -> (i, N); None -> None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            a, b = shard.split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise InputError(f"expected i/N with 0 <= i < N, got {shard!r}", field="--shard") from None
    else:
        i, n = int(shard[0]), int(shard[1])
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"expected i/N with 0 <= i < N, got {i}/{n}", field="--shard")
    return i, n


def assign_shards(expected: list[tuple[str, float]], n: int) -> dict[str, int]:
    """Greedy largest-first: each client (by expected requests, then name) to the least-loaded shard."""
    load = np.zeros(n)
    out: dict[str, int] = {}
    for name, e in sorted(expected, key=lambda x: (-x[1], x[0])):
        j = int(np.argmin(load))
        out[name] = j
        load[j] += e
    return out


# --- the stream ---

@dataclass
class Generation:
    """A resolved generation: the plan, the shard's clients and the block grid."""

    plan: Resolved
    shard: tuple[int, int] | None
    names: list[str]                 # every client of the scenario, in order (gid = index)
    members: list[int]               # gids generated in this shard
    block_us: int

    @property
    def duration(self) -> float:
        return self.plan.duration

    def header(self) -> dict[str, Any]:
        s = self.plan.scenario
        head: dict[str, Any] = {
            "format": REQUESTS_FORMAT,
            "seed": s.seed,
            "scenario_digest": scenario_digest(s),
            "source": Path(s.path).name if s.path else "<scenario>",
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "duration": round(self.plan.duration, 6),
            "scenario_duration": s.replay.duration if s.replay is not None else s.duration,
            "kind": s.kind,
            "order": "t,client,k",
            "clients": len(self.members),
            "expected_requests": round(sum(self.plan_expected[g] for g in self.members), 1),
            "generator": "servegen-load/compose/v1",
        }
        if s.kind == "realistic":
            head.update(arrival=s.arrival, time_scale=s.time_scale, pool_start=s.pool_start(),
                        pools=describe_sources(self.plan))
        return head

    @property
    def plan_expected(self) -> list[float]:
        return [e for _, e, _ in self.plan.client_table()]

    def streams(self) -> list[_Stream]:
        plan = self.plan
        want = set(self.members)
        gid_of = {n: i for i, n in enumerate(self.names)}
        gens: list[tuple[int, Iterator[Batch]]] = []
        for src in plan.sources:
            for ci, name in enumerate(src.names):
                g = gid_of[name]
                if g in want:
                    gens.append((g, _realistic_client(plan, src, ci, g)))
        if plan.baseline is not None:
            g = gid_of[plan.baseline.client]
            if g in want:
                gens.append((g, _baseline_client(plan, g)))
        if plan.replay is not None:
            for ci, name in enumerate(plan.replay.names):
                g = gid_of[name]
                if g in want:
                    gens.append((g, _replay_client(plan, ci, g)))
        gens.sort(key=lambda x: x[0])
        return [_Stream(gen) for _, gen in gens]

    def blocks(self) -> Iterator[Batch]:
        """Time-ordered blocks of this shard's requests."""
        streams = self.streams()
        end_us = int(np.ceil(self.plan.duration * US)) + 1
        edge = 0
        while edge < end_us:
            edge = min(edge + self.block_us, end_us)
            stop = edge if edge < end_us else np.iinfo(np.int64).max
            parts: list[Batch] = []
            for st in streams:
                st.take_until(stop, parts)
            if not parts:
                continue
            b = Batch.concat(parts)
            b = b.take(np.argsort(b.t_us, kind="stable"))
            if self.plan.scenario.max_context is not None:
                clip_context(b, self.plan.scenario.max_context)
            yield b


def clip_context(b: Batch, limit: int) -> None:
    """Fit every request of `b` into a context of `limit` tokens, in place (scenario `max_context`).

    prompt = text + media tokens; when prompt + output > limit the output is cut to
    max(1, limit - prompt), then the text input to max(1, limit - media - output); reasoning
    tokens stay <= output. Media items keep their sizes (an image is as large as it is): where they
    alone leave no room for one input and one output token, the items past that point are dropped.
    """
    n = len(b)
    media = np.zeros(n, dtype=np.int64)
    for m in sorted(b.mm):
        cnt, items = b.mm[m]
        row = np.repeat(np.arange(n), cnt)
        total = np.bincount(row, weights=items, minlength=n)
        within = np.cumsum(items) - np.repeat(np.cumsum(total) - total, cnt)  # running sum inside each row
        keep = media[row] + within <= limit - 2
        if not keep.all():
            b.mm[m] = (np.bincount(row[keep], minlength=n).astype(cnt.dtype), items[keep])
            cnt, items, row = b.mm[m][0], items[keep], row[keep]
        media += np.bincount(row, weights=items, minlength=n).astype(np.int64)
    over = b.inp + media + b.out > limit
    if not over.any():
        return
    b.out = np.where(over, np.maximum(1, limit - b.inp - media), b.out)
    b.inp = np.where(b.inp + media + b.out > limit, np.maximum(1, limit - media - b.out), b.inp)
    if b.reason is not None:
        b.reason = np.where(b.reason >= 0, np.minimum(b.reason, b.out), b.reason)


def prepare(scenario: str | Path | Scenario, shard: str | tuple[int, int] | None = None,
            seed: int | None = None, duration: float | None = None,
            block_requests: int = BLOCK_REQUESTS) -> Generation:
    """Resolve a scenario (path or object) for generation, with the CLI overrides applied."""
    s = load_scenario(scenario) if not isinstance(scenario, Scenario) else scenario
    if seed is not None or duration is not None:
        s = s.with_overrides(seed=seed, duration=duration)
    plan = resolve(s)
    _check_size(plan)
    if plan.replay is not None and plan.replay.warning:  # after the checks: a failure stays one line
        print(plan.replay.warning, file=sys.stderr)
    table = plan.client_table()
    names = [n for n, _, _ in table]
    if len(set(names)) != len(names):
        raise InputError("two clients share a name; give the pool entries distinct labels", path=s.path,
                         field="pools")
    sh = parse_shard(shard)
    if sh is None:
        members = list(range(len(names)))
    else:
        assign = assign_shards([(n, e) for n, e, _ in table], sh[1])
        members = [i for i, n in enumerate(names) if assign[n] == sh[0]]
    rate = max(plan.mean_rate(), peak_rate(plan) / 8.0)  # a block holds <= 8 blocks' worth at the peak
    block_us = int(max(1000, min(3600 * US, block_requests / max(rate, 1e-9) * US)))
    return Generation(plan, sh, names, members, block_us)


def peak_rate(plan: Resolved) -> float:
    """An upper bound of the total rate (req/s) of the busiest segment: the sum of each source's peak."""
    peak = sum(float(src.rate.sum(axis=0).max(initial=0.0)) for src in plan.sources)
    if plan.baseline is not None:
        peak += plan.baseline.rate
    return peak


def _check_size(plan: Resolved) -> None:
    """Refuse plans no machine can generate (a rate or duration off by orders of magnitude) with one
    line, instead of running out of memory or time: run duration, expected requests, peak rate."""
    s = plan.scenario
    where = "duration" if s.replay is None else "replay.duration"
    if not 0 <= plan.duration <= MAX_TIME:
        raise InputError(f"the run would last {plan.duration:g} s of run time (at most {MAX_TIME:g} s); "
                         "check duration and time_scale", path=s.path, field=where)
    total = plan.expected_total()
    if not total <= MAX_REQUESTS:
        raise InputError(f"the scenario would generate about {total:.3g} requests (at most {MAX_REQUESTS:g}); "
                         "lower rate/scale/peak_rate or duration", path=s.path)
    peak = peak_rate(plan)
    if not peak <= MAX_PEAK_RATE:
        raise InputError(f"the busiest window asks for {peak:.3g} req/s (at most {MAX_PEAK_RATE:g}); "
                         "lower rate/scale/peak_rate", path=s.path)


def iter_scenario_requests(path_or_scenario: str | Path | Scenario, shard: str | tuple[int, int] | None = None,
                           seed: int | None = None) -> Iterator[Request]:
    """The scenario's requests in time order as `Request` objects, generated block by block.

    This is what `run scenario.yaml` consumes: the first request is available after one block
    (about `BLOCK_REQUESTS` requests) is made, and memory stays one block.
    """
    gen = prepare(path_or_scenario, shard=shard, seed=seed)
    yield from iter_generation(gen)


def iter_generation(gen: Generation) -> Iterator[Request]:
    from .conversation import expand  # content hook: sessions and shared system prompts (if any)

    names = gen.names
    yield from expand((r for b in gen.blocks() for r in batch_requests(b, names)), gen.plan)


def batch_requests(b: Batch, names: list[str]) -> Iterator[Request]:
    t = (b.t_us / US).tolist()
    cl, kk, ct = b.client.tolist(), b.k.tolist(), b.cat.tolist()
    inp, out = b.inp.tolist(), b.out.tolist()
    reason = b.reason.tolist() if b.reason is not None else None
    lists: dict[str, list[list[int]]] = {}
    for m, (cnt, items) in b.mm.items():
        off = np.concatenate([[0], np.cumsum(cnt)]).tolist()
        it = items.tolist()
        lists[m] = [it[off[i]:off[i + 1]] for i in range(len(b))]
    for i in range(len(b)):
        nm = names[cl[i]]
        r = Request(id=f"{nm}#{kk[i]}", t=t[i], client=nm, category=CATEGORIES[ct[i]],
                    input_tokens=inp[i], output_tokens=out[i])
        if reason is not None and reason[i] >= 0:
            r.reason_tokens = reason[i]
        if lists:
            for m, key in (("image", "images"), ("audio", "audio"), ("video", "video")):
                if m in lists and lists[m][i]:
                    setattr(r, key, lists[m][i])
        yield r


def generate_to_file(scenario: str | Path | Scenario, out: str | Path, *, shard: str | tuple[int, int] | None = None,
                     seed: int | None = None, duration: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Write the scenario's requests as JSONL (header line, then one request per line), atomically.

    Returns a summary: requests written, clients (of the shard) and those with requests, run
    duration, expected requests, seconds taken.
    """
    from ..atomic import atomic_write
    from ..requests_writer import RowFormatter

    t0 = time.perf_counter()
    gen = prepare(scenario, shard=shard, seed=seed, duration=duration)
    fmt = RowFormatter(gen.names, CATEGORIES)
    n = 0
    seen = np.zeros(len(gen.names), dtype=bool)
    with atomic_write(out, "wb") as fh:
        fh.write(orjson.dumps(gen.header()) + b"\n")
        from .conversation import needs_expand

        by_request = needs_expand(gen.plan.scenario, gen.plan)  # content hook: sessions, shared prefixes
        if by_request:
            gid = {nm: i for i, nm in enumerate(gen.names)}
            for r in iter_generation(gen):
                fh.write(r.to_json() + b"\n")
                seen[gid[r.client]] = True
                n += 1
        for b in (() if by_request else gen.blocks()):
            fh.write(fmt.format(b))
            seen[b.client] = True
            n += len(b)
            if progress:
                print(f"\rgenerated {n} requests ({b.t_us[-1] / US:.0f}/{gen.duration:.0f} s)", end="",
                      file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return {"requests": n, "clients": len(gen.members), "active_clients": int(seen.sum()), "duration": gen.duration,
            "expected_requests": round(sum(gen.plan_expected[g] for g in gen.members), 1),
            "seconds": time.perf_counter() - t0, "output": str(out)}


def merge_requests(paths: list[str | Path]) -> Iterator[bytes]:
    """Merge shard files by the generation order (t, client, k) into one body (header lines dropped)."""
    import heapq

    from ..requests import iter_request_lines

    def keyed(p: str | Path) -> Iterator[tuple[float, str, int, int, bytes]]:
        for r, line in iter_request_lines(p):
            c, _, k = r.id.rpartition("#")
            k, _, turn = k.partition("/")  # session turns are "<client>#<k>/<turn>" (workload.conversation)
            yield r.t, c, int(k), int(turn or 0), line

    for _, _, _, _, line in heapq.merge(*(keyed(p) for p in paths)):
        yield line


def naive_of(scenario: Scenario) -> Scenario:
    """The Poisson baseline of a realistic scenario: the same mean rate and run duration, lengths
    from its pools' aggregate over the same clients and window, the same seed."""
    from ..scenario import BaselineSpec

    if scenario.kind != "realistic":
        raise InputError("expected a realistic scenario (pool/pools) to derive the naive baseline from",
                         path=scenario.path)
    plan = resolve(scenario)
    spec = BaselineSpec(rate=plan.mean_rate(), of=scenario)
    out = Scenario(naive=spec, duration=plan.duration, seed=scenario.seed)
    out._base_dir, out._path = scenario.base_dir, scenario.path
    return out


def content_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
