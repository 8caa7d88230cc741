"""Scenario -> plan: the resolved per-client rate curves, gap shapes and length sources.

The plan is everything generation needs, computed once: for a realistic scenario one `Source`
per pool entry, holding for each selected client its rate (req/s of run time), gap family and
shape on run-time segments (cut at the pool's rate windows and data windows), and each segment's
data window; for a baseline one `BaselinePlan`; for a replay a `ReplayPlan` of trace columns.
Fidelity checks read the same plan, so "expected" always means what generation aimed at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..scenario import BaselineSpec, ClientFilter, LengthFrom, PoolEntry, Scenario, load_scenario
from . import continuation
from .arrivals import weibull_shape_for_cv
from .distributions import ONOFF_MIN_CV, Family, LengthTable
from .lengths import MODALITIES, TableSet, fixed_table, input_field, mixture
from .pool import SHIPPED, ClientPool, load_pool
from .replay import ReplayPlan, load_replay

CATEGORIES = ("language", "multimodal", "reason")


@dataclass
class Source:
    """One pool entry of a realistic scenario, resolved. Arrays are [client, segment]."""

    label: str
    pool: ClientPool
    category: str
    idx: np.ndarray            # pool client indices of the selected clients
    names: list[str]           # "<label>:<pool client id>"
    edges: np.ndarray          # (K+1,) run-time seconds
    pool_edges: np.ndarray     # (K+1,) pool-time seconds
    rate: np.ndarray           # (C, K) req/s of run time
    family: np.ndarray         # (C, K) int8
    shape: np.ndarray          # (C, K) shape used for sampling
    pool_cv: np.ndarray        # (C, K) the pool's (measured) gap CV
    target_cv: np.ndarray      # (C, K) CV of the family/shape used
    dwin: np.ndarray           # (K,) data window of each segment
    pwin: np.ndarray           # (K,) pool rate window of each segment (-1: none)
    batches: BatchModel | None = None  # fitted pools with batched clients (workload.arrival_fit)
    off_share: np.ndarray | None = None  # (C,) on/off share of extreme-CV windows chosen by `fit`
    on_cv: np.ndarray | None = None      # (C,) CV of the gaps inside those bursts

    @property
    def expected(self) -> np.ndarray:
        """Expected requests per client and segment."""
        return self.rate * np.diff(self.edges)[None, :]

    def dw_weights(self) -> np.ndarray:
        """Expected requests per (selected client, data window), in the pool's data-window grid."""
        out = np.zeros((self.idx.size, self.pool.data_start.size))
        exp = self.expected
        for d in np.unique(self.dwin):
            out[:, d] = exp[:, self.dwin == d].sum(axis=1)
        return out

    def aggregate(self) -> dict[str, LengthTable]:
        """Per field, the mixture of the selected clients' tables weighted by expected requests."""
        w = np.zeros(self.pool.table_index.shape[:2])
        w[self.idx] = self.dw_weights()
        return aggregate_tables(self.pool, w)


@dataclass
class BatchModel:
    """Per selected client: arrival model (0 renewal, 1 tick, 2 epochs, 3 quantised; `arrival_fit`) and its
    parameters in run time."""

    model: np.ndarray          # (C,) int8
    period: np.ndarray         # (C,) run-time seconds
    phase: np.ndarray          # (C,) run-time seconds of the first tick at or after 0
    dispersion: np.ndarray     # (C,)
    mean: np.ndarray           # (C,) mean batch size
    sizes: list[LengthTable | None]
    family: np.ndarray         # (C, K) epoch gap family
    shape: np.ndarray          # (C, K)
    quantum_shape: np.ndarray  # (C,) Gamma shape of the quantised model's renewal process


def _batch_model(pool: ClientPool, sel: np.ndarray, wsafe: np.ndarray, valid: np.ndarray, p0: float,
                 time_scale: float) -> BatchModel | None:
    model = pool.extra.get("arrival_model")
    if model is None or model.shape != (pool.n_clients,) or not np.any(model[sel] > 0):
        return None
    x = pool.extra
    period = x["batch_period"][sel].astype(np.float64)
    phase = np.where(period > 0, np.mod(x["batch_phase"][sel] - p0, np.where(period > 0, period, 1.0)), 0.0)
    sizes: list[LengthTable | None] = []
    for c in sel:
        b = int(x["batch_index"][c])
        sizes.append(None if b < 0 else LengthTable(pool.values[pool.offsets[b]:pool.offsets[b + 1]].astype(np.float64),
                                                    pool.cdf[pool.offsets[b]:pool.offsets[b + 1]].astype(np.float64)))
    ef = x.get("epoch_family")
    fam = (np.where(valid[None, :], ef[sel][:, wsafe], Family.NONE).astype(np.int8) if ef is not None
           else np.zeros((sel.size, wsafe.size), dtype=np.int8))
    es = x.get("epoch_shape")
    shp = es[sel][:, wsafe].astype(np.float64) if es is not None else np.ones((sel.size, wsafe.size))
    m = model[sel].astype(np.int8)
    m = np.where((m == 2) & (np.array([t is None for t in sizes]) | (ef is None)), 0, m).astype(np.int8)
    qs = x["quantum_shape"][sel].astype(np.float64) if "quantum_shape" in x else np.ones(sel.size)
    m = np.where((m == 3) & ~(period > 0), 0, m).astype(np.int8)
    return BatchModel(model=m, period=period / time_scale, phase=phase / time_scale,
                      dispersion=x["batch_dispersion"][sel].astype(np.float64),
                      mean=x["batch_mean"][sel].astype(np.float64), sizes=sizes, family=fam, shape=shp,
                      quantum_shape=qs)


def aggregate_tables(pool: ClientPool, w: np.ndarray) -> dict[str, LengthTable]:
    """Per field, the mixture of the pool's tables with request weights w [client, data window].

    Per-item fields (`image_tokens`, ...) are weighted by items, not requests: w times the mean of
    the same client's `image_count` table there, so the mixture is the distribution of an item
    drawn from all the requests' items."""
    out: dict[str, LengthTable] = {}
    for f in pool.fields:
        wf = w
        m_name = f[:-len("_tokens")] if f.endswith("_tokens") else ""
        if m_name in MODALITIES and f"{m_name}_count" in pool.fields:
            ci = pool.table_index[:, :, pool.fields.index(f"{m_name}_count")]
            wf = w * np.where(ci >= 0, _table_means(pool)[np.maximum(ci, 0)], 0.0)
        m = mixture(pool, f, wf)
        if m is not None:
            out[f] = m
    return out


@dataclass
class BaselinePlan:
    kind: str                  # naive | constant
    rate: float
    client: str
    options: list[tuple[float, str, TableSet]]   # (weight, category, tables)


@dataclass
class Resolved:
    scenario: Scenario
    duration: float            # run-time seconds
    sources: list[Source] = field(default_factory=list)
    baseline: BaselinePlan | None = None
    replay: ReplayPlan | None = None

    @property
    def kind(self) -> str:
        return self.scenario.kind

    def client_table(self) -> list[tuple[str, float, str]]:
        """(name, expected requests, category) of every client, in generation order (by name)."""
        rows: list[tuple[str, float, str]] = []
        for s in self.sources:
            exp = s.expected.sum(axis=1)
            rows += [(n, float(e), s.category) for n, e in zip(s.names, exp, strict=True)]
        if self.baseline is not None:
            cat = max(self.baseline.options, key=lambda o: o[0])[1]
            rows.append((self.baseline.client, self.baseline.rate * self.duration, cat))
        if self.replay is not None:
            counts = np.bincount(self.replay.client, minlength=len(self.replay.names))
            rows += [(n, float(c), self.replay.category) for n, c in zip(self.replay.names, counts, strict=True)]
        return sorted(rows)

    def names(self) -> dict[str, set[str]]:
        """The clients and categories that may have requests (an SLO scope must name one of them)."""
        rows = [(n, c) for n, e, c in self.client_table() if e > 0]
        return {"client": {n for n, _ in rows}, "category": {c for _, c in rows}}

    def expected_total(self) -> float:
        return sum(e for _, e, _ in self.client_table())

    def mean_rate(self) -> float:
        return self.expected_total() / self.duration if self.duration > 0 else 0.0


# --- pools ---

_POOLS: dict[str, ClientPool] = {}


def pool_ref(s: Scenario, name: str) -> str:
    """Cache key / loader argument for a pool named in a scenario (shipped name or resolved path)."""
    return name if name in SHIPPED and not (s.base_dir / name).exists() else str(s.resolve_path(name))


def get_pool(s: Scenario, name: str, field_path: str) -> ClientPool:
    """The pool a scenario names, loaded once per process and file version (path, size, mtime):
    a pool file rewritten under the same name is read again."""
    ref = pool_ref(s, name)
    try:
        st = Path(ref).stat()
        key = f"{ref}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        key = ref  # a shipped name, or missing (load_pool says so)
    if key not in _POOLS:
        try:
            pool = load_pool(ref)
        except InputError as e:
            raise InputError(f"{e}", path=s.path, field=field_path) from None
        for k in [k for k in _POOLS if k.split("|", 1)[0] == ref]:
            del _POOLS[k]  # an older version of the same file
        _POOLS[key] = pool
    return _POOLS[key]


_MEANS: dict[int, tuple[ClientPool, np.ndarray]] = {}


def _table_means(pool: ClientPool) -> np.ndarray:
    """Mean of every length table (indexed like `offsets[:-1]`)."""
    hit = _MEANS.get(id(pool))
    if hit is not None and hit[0] is pool:
        return hit[1]
    cdf = pool.cdf.astype(np.float64)
    pmf = np.diff(cdf, prepend=0.0)
    starts = pool.offsets[:-1]
    nonempty = pool.offsets[1:] > starts
    pmf[starts[nonempty]] = cdf[starts[nonempty]]
    sums = np.zeros(starts.size)
    if pool.values.size:
        sums[nonempty] = np.add.reduceat(pmf * pool.values.astype(np.float64), starts[nonempty])
    _MEANS[id(pool)] = (pool, sums)
    return sums


def _window_stat(pool: ClientPool, field_name: str, w: np.ndarray) -> np.ndarray:
    """Request-weighted mean of a field's table means per client over data-window weights w [C, D]."""
    fi = pool.fields.index(field_name)
    idx = pool.table_index[:, :, fi]
    means = np.where(idx >= 0, _table_means(pool)[np.maximum(idx, 0)], 0.0)
    ww = np.where(idx >= 0, w, 0.0)
    tot = ww.sum(axis=1)
    return np.where(tot > 0, (means * ww).sum(axis=1) / np.where(tot > 0, tot, 1.0), np.nan)


def _segments(pool: ClientPool, p0: float, p1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-time edges of the segments of [p0, p1), cut at rate and data windows, with each
    segment's rate window (-1 if none covers it) and data window."""
    ws = pool.window_start.astype(np.float64)
    cuts = np.concatenate([ws, ws + pool.window, pool.data_start.astype(np.float64)])
    cuts = cuts[(cuts > p0) & (cuts < p1)]
    edges = np.unique(np.concatenate([[p0, p1], cuts]))
    starts = edges[:-1]
    wi = np.searchsorted(ws, starts, side="right") - 1
    ok = (wi >= 0) & (starts < ws[np.maximum(wi, 0)] + pool.window)
    wi = np.where(ok, wi, -1)
    dw = pool.data_window_of(starts)
    return edges, wi.astype(np.int64), np.asarray(dw, dtype=np.int64)


def local_id(pool: ClientPool, cid: str) -> str:
    """A client id without its pool-name prefix ("m-large:34" -> "34"); client names are
    "<label>:<local id>" with the label defaulting to the pool's name."""
    pre = pool.name + ":"
    return cid[len(pre):] if cid.startswith(pre) else cid


def _select(pool: ClientPool, flt: ClientFilter | None, exp: np.ndarray, cv_w: np.ndarray,
            dw_w: np.ndarray, where: str, path: str | None) -> np.ndarray:
    keep = np.ones(pool.n_clients, dtype=bool)
    if flt is None:
        return np.flatnonzero(keep)
    ids = {c: i for i, c in enumerate(pool.clients)}
    ids.update({local_id(pool, c): i for i, c in enumerate(pool.clients)})
    if flt.ids is not None:
        unknown = [c for c in flt.ids if c not in ids]
        if unknown:
            raise InputError(f"unknown client ids {unknown[:5]} in pool {pool.name}", path=path, field=f"{where}.ids")
        keep[:] = False
        keep[[ids[c] for c in flt.ids]] = True
    if flt.exclude is not None:
        unknown = [c for c in flt.exclude if c not in ids]
        if unknown:
            raise InputError(f"unknown client ids {unknown[:5]} in pool {pool.name}", path=path,
                             field=f"{where}.exclude")
        keep[[ids[c] for c in flt.exclude]] = False
    if flt.cv is not None:
        keep &= (cv_w >= flt.cv[0]) & (cv_w <= flt.cv[1])
    if flt.input_mean is not None:
        m = _window_stat(pool, input_field(pool.fields), dw_w)
        keep &= (m >= flt.input_mean[0]) & (m <= flt.input_mean[1])
    if flt.output_mean is not None:
        m = _window_stat(pool, "output_tokens", dw_w)
        keep &= (m >= flt.output_mean[0]) & (m <= flt.output_mean[1])
    sel = np.flatnonzero(keep)
    if flt.top is not None and sel.size > flt.top:
        order = np.lexsort((sel, -exp[sel]))
        sel = np.sort(sel[order[:flt.top]])
    return sel


def _source(s: Scenario, e: PoolEntry, i: int, where: str) -> Source:
    pool = get_pool(s, e.pool, "pool" if where == "pool" else f"{where}.pool")
    p0 = s.pool_start()
    p1 = p0 + float(s.duration or 0.0)
    if continuation.has_profile(pool) and (s.arrival == "renewal" or p1 > pool.span + 1e-9):
        pool = continuation.view(pool, p1, shrink=s.arrival == "renewal")  # fitted: shrunk, continued
    lo, hi = float(pool.window_start[0]) if pool.window_start.size else 0.0, pool.span
    if p0 < lo - 1e-9 or p1 > hi + 1e-9:
        days = hi / 86400.0
        raise InputError(f"window {p0:g}..{p1:g} s of pool time lies outside pool {pool.name}'s span "
                         f"{lo:g}..{hi:g} s ({days:g} days); adjust start/day/duration (pools made by `fit` now "
                         "continue past their span)", path=s.path,
                         field="duration" if p0 < hi else "start")
    pedges, wi, dw = _segments(pool, p0, p1)
    valid = wi >= 0
    wsafe = np.maximum(wi, 0)
    d = np.diff(pedges)
    rate_all = np.where(valid[None, :], pool.rate[:, wsafe].astype(np.float64), 0.0)
    exp_all = rate_all * d[None, :]
    tot = exp_all.sum(axis=1)
    cv_all = pool.cv[:, wsafe].astype(np.float64)
    cv_w = np.where(tot > 0, (cv_all * exp_all).sum(axis=1) / np.where(tot > 0, tot, 1.0), np.nan)
    dw_w = np.zeros(pool.table_index.shape[:2])
    for dd in np.unique(dw):
        dw_w[:, dd] = exp_all[:, dw == dd].sum(axis=1)
    sel = _select(pool, e.clients, tot, cv_w, dw_w, f"{where}.clients" if s.pools else "clients", s.path)
    if sel.size == 0:
        raise InputError(f"no client of pool {pool.name} passes the filter", path=s.path,
                         field=f"{where}.clients" if s.pools else "clients")
    label = e.label or pool.name
    fam = np.where(valid[None, :], pool.family[sel][:, wsafe], Family.NONE).astype(np.int8)
    shape = pool.shape[sel][:, wsafe].astype(np.float64)
    pcv = cv_all[sel]
    rate = rate_all[sel] * s.time_scale
    if s.gap_cv == "measured":
        wb = (fam == Family.WEIBULL) & (pcv > 0) & np.isfinite(pcv)
        shape = np.where(wb, weibull_shape_for_cv(np.where(wb, pcv, 1.0)), shape)
    lim = pool.extra["onoff_cv"][sel].astype(np.float64)[:, None] if "onoff_cv" in pool.extra else ONOFF_MIN_CV
    extreme = (fam != Family.NONE) & np.isfinite(pcv) & (pcv >= lim)
    if extreme.any():  # on/off gaps realise an extreme CV at the window's count (workload.distributions)
        fam = np.where(extreme, Family.ONOFF, fam).astype(np.int8)
        shape = np.where(extreme, pcv, shape)
    target = _family_cv(fam, shape)
    return Source(
        label=label, pool=pool, category=pool.category, idx=sel,
        names=[f"{label}:{local_id(pool, pool.clients[c])}" for c in sel],
        edges=(pedges - p0) / s.time_scale, pool_edges=pedges, rate=rate, family=fam, shape=shape,
        pool_cv=pcv, target_cv=target, dwin=dw, pwin=wi,
        batches=_batch_model(pool, sel, wsafe, valid, p0, s.time_scale),
        off_share=pool.extra["onoff_share"][sel].astype(np.float64) if "onoff_share" in pool.extra else None,
        on_cv=pool.extra["onoff_on_cv"][sel].astype(np.float64) if "onoff_on_cv" in pool.extra else None,
    )


def _family_cv(fam: np.ndarray, shape: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    k = np.where(shape > 0, shape, 1.0)
    out = np.zeros(fam.shape)
    out = np.where(fam == Family.GAMMA, 1.0 / np.sqrt(k), out)
    with np.errstate(over="ignore", invalid="ignore"):
        wcv = np.sqrt(np.expm1(gammaln(1.0 + 2.0 / k) - 2.0 * gammaln(1.0 + 1.0 / k)))
        lcv = np.sqrt(np.expm1(k * k))
    out = np.where(fam == Family.WEIBULL, wcv, out)
    out = np.where(fam == Family.LOGNORMAL, lcv, out)
    out = np.where(fam == Family.EXPONENTIAL, 1.0, out)
    out = np.where(fam == Family.ONOFF, k, out)
    return out


def _levels(s: Scenario, entries: list[PoolEntry], srcs: list[Source], duration: float) -> None:
    """Apply the rate rules of the scenario module docstring, in place."""
    means = [float(x.expected.sum()) / duration for x in srcs]

    def set_mean(x: Source, target: float, where: str) -> None:
        cur = float(x.expected.sum()) / duration
        if cur <= 0:
            raise InputError("the pool window has no traffic to scale to a rate", path=s.path, field=where)
        x.rate *= target / cur

    explicit = 0.0
    for i, (e, x) in enumerate(zip(entries, srcs, strict=True)):
        if e.rate is not None:
            set_mean(x, e.rate, f"pools[{i}].rate")
            explicit += e.rate
    rest = [i for i, e in enumerate(entries) if e.rate is None]
    weighted = [i for i in rest if entries[i].weight is not None]
    if weighted:
        budget = (s.rate - explicit) if s.rate is not None else sum(means[i] for i in weighted)
        wsum = sum(float(entries[i].weight or 0.0) for i in weighted)
        for i in weighted:
            set_mean(srcs[i], budget * float(entries[i].weight or 0.0) / wsum, f"pools[{i}].weight")
    elif s.rate is not None and rest:
        cur = sum(means[i] for i in rest)
        if cur <= 0:
            raise InputError("the pool window has no traffic to scale to a rate", path=s.path, field="rate")
        for i in rest:
            srcs[i].rate *= (s.rate - explicit) / cur
    factor = 1.0
    if s.scale is not None:
        factor = s.scale
    elif s.peak_rate is not None:
        peak = _peak(srcs)
        if peak <= 0:
            raise InputError("the pool window has no traffic to scale to a peak rate", path=s.path, field="peak_rate")
        factor = s.peak_rate / peak
    if factor != 1.0:
        for x in srcs:
            x.rate *= factor


def _peak(srcs: list[Source]) -> float:
    """Largest total rate over the union of all sources' segments."""
    cuts = np.unique(np.concatenate([x.edges for x in srcs]))
    if cuts.size < 2:
        return 0.0
    mids = 0.5 * (cuts[:-1] + cuts[1:])
    total = np.zeros(mids.size)
    for x in srcs:
        j = np.clip(np.searchsorted(x.edges, mids, side="right") - 1, 0, x.rate.shape[1] - 1)
        total += x.rate.sum(axis=0)[j]
    return float(total.max())


# --- baselines ---

def _from_tables(s: Scenario, lf: LengthFrom, where: str) -> tuple[ClientPool, dict[str, LengthTable]]:
    pool = get_pool(s, lf.from_, f"{where}.from")
    p0 = (lf.day - 1) * 86400.0 + lf.start
    p1 = pool.span if lf.duration is None else p0 + lf.duration
    if p0 >= pool.span or p1 > pool.span + 1e-9:
        raise InputError(f"window {p0:g}..{p1:g} s lies outside pool {pool.name}'s span 0..{pool.span:g} s",
                         path=s.path, field=where)
    pedges, wi, dw = _segments(pool, p0, p1)
    d = np.diff(pedges)
    exp = np.where(wi[None, :] >= 0, pool.rate[:, np.maximum(wi, 0)].astype(np.float64), 0.0) * d[None, :]
    w = np.zeros(pool.table_index.shape[:2])
    for dd in np.unique(dw):
        w[:, dd] = exp[:, dw == dd].sum(axis=1)
    return pool, aggregate_tables(pool, w)


def _baseline(s: Scenario, spec: BaselineSpec, kind: str) -> tuple[BaselinePlan, float]:
    of_plan: Resolved | None = None
    if spec.of is not None:
        try:
            of_s = load_scenario(s.resolve_path(spec.of)) if isinstance(spec.of, str) else spec.of
        except InputError as e:  # name this scenario too: `of` is one of its fields
            raise InputError(f"{e}", path=s.path, field=f"{kind}.of") from None
        if of_s.kind != "realistic":
            raise InputError("expected a realistic scenario (pool/pools)", path=s.path, field=f"{kind}.of")
        of_plan = resolve(of_s)
    duration = float(s.duration) if s.duration is not None else (of_plan.duration if of_plan else 0.0)
    rate = spec.rate if spec.rate is not None else (of_plan.mean_rate() if of_plan else 0.0)
    if not rate > 0:
        raise InputError("expected a rate > 0 (the `of` scenario has no traffic)", path=s.path, field=f"{kind}.rate")
    if spec.input_tokens is None and spec.output_tokens is None and of_plan is not None:
        opts = [(float(src.expected.sum()), src.category, TableSet(src.aggregate())) for src in of_plan.sources]
        opts = [o for o in opts if o[0] > 0] or opts[:1]
        return BaselinePlan(kind, float(rate), spec.client, opts), duration
    tabs: dict[str, LengthTable] = {}
    cat = "language"
    for side in ("input_tokens", "output_tokens"):
        v = getattr(spec, side)
        if v is None and of_plan is not None:
            agg: dict[str, LengthTable] = {}
            tot = sum(float(x.expected.sum()) for x in of_plan.sources)
            src = max(of_plan.sources, key=lambda x: float(x.expected.sum())) if tot > 0 else of_plan.sources[0]
            agg = src.aggregate()
            pool_cat, pool = src.category, src.pool
        elif isinstance(v, LengthFrom):
            pool, agg = _from_tables(s, v, f"{kind}.{side}")
            pool_cat = pool.category
        else:
            tabs[side] = fixed_table(float(v or 1))
            continue
        if side == "input_tokens":
            f_in = input_field(pool.fields)
            if f_in not in agg:
                raise InputError(f"pool {pool.name} has no {f_in} data in the window", path=s.path, field=f"{kind}.{side}")
            tabs["input_tokens"] = agg[f_in]
            for m in MODALITIES:
                for f in (f"{m}_count", f"{m}_tokens"):
                    if f in agg:
                        tabs[f] = agg[f]
            if pool_cat == "multimodal":
                cat = "multimodal"
        else:
            if "output_tokens" not in agg:
                raise InputError(f"pool {pool.name} has no output_tokens data in the window", path=s.path,
                                 field=f"{kind}.{side}")
            tabs["output_tokens"] = agg["output_tokens"]
            if "reason_ratio" in agg:
                tabs["reason_ratio"] = agg["reason_ratio"]
            if pool_cat == "reason" and cat == "language":
                cat = "reason"
    cat = spec.category or cat
    return BaselinePlan(kind, float(rate), spec.client, [(1.0, cat, TableSet(tabs))]), duration


# --- replay ---

def _replay(s: Scenario) -> ReplayPlan:
    spec = s.replay
    assert spec is not None
    return load_replay(s, spec)


def resolve(s: Scenario) -> Resolved:
    """The plan of a scenario (pools loaded and cached per process)."""
    if s.kind == "realistic":
        entries = s.entries()
        duration = float(s.duration or 0.0) / s.time_scale
        srcs = [_source(s, e, i, f"pools[{i}]" if s.pools is not None else "pool") for i, e in enumerate(entries)]
        labels = [x.label for x in srcs]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise InputError(f"pool {dup[0]!r} appears twice; give the entries distinct `label`s", path=s.path,
                             field="pools")
        _levels(s, entries, srcs, duration)
        return Resolved(s, duration, sources=srcs)
    if s.kind in ("naive", "constant"):
        spec = s.naive if s.naive is not None else s.constant
        assert spec is not None
        bp, duration = _baseline(s, spec, s.kind)
        return Resolved(s, duration, baseline=bp)
    rplan = _replay(s)
    dur = s.replay.duration / s.replay.time_scale if s.replay and s.replay.duration else (
        float(rplan.t[-1]) if rplan.t.size else 0.0)
    return Resolved(s, dur, replay=rplan)


def client_seed(seed: int, name: str, stream: int) -> np.random.Generator:
    """A client's own generator from (seed, client name, stream): independent of other clients."""
    words = np.frombuffer(hashlib.sha256(name.encode()).digest()[:16], dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), *words])))


def describe_sources(plan: Resolved) -> list[dict[str, Any]]:
    return [{"pool": x.pool.name, "label": x.label, "category": x.category, "clients": len(x.names)}
            for x in plan.sources]
