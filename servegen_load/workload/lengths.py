"""Per-request token counts drawn from a client's length tables, and pools' aggregate tables.

Fields by pool category (`ClientPool.fields`): language `input_tokens`, `output_tokens`;
reasoning adds `reason_ratio`; multimodal has `text_tokens` (the request's `input_tokens`),
`output_tokens` and per modality m in image/audio/video `m_count` (items per request) and
`m_tokens` (tokens of one item).

Each field is drawn by inverse CDF from its own uniform (ServeGen's release draws every field of
a request from one shared uniform, which makes input and output perfectly rank-correlated; we do
not copy that). `length_correlation` = rho couples input and output through a Gaussian copula:
(z1, z2) standard normals with Pearson r = 2 sin(pi rho / 6), u = Phi(z); r is chosen so the rank
(Spearman) correlation of continuous margins is rho; ties of discrete tables pull the realised
value slightly towards 0. Where a fitted pool measured them, output and its reasoning share, and
an item count and its items' size, are coupled by the log's own (checkerboard) copula; elsewhere
they are independent. A request's items of one modality share one size (a fitted pool's item
size is its request's tokens over its items).

Clipping, because a server needs it: input (text) tokens >= 1 (a prompt has at least one token),
output tokens >= 1 (max_tokens must be positive), each multimodal item >= 1 token, item counts
>= 0; `reason_tokens = round(reason_ratio * output_tokens)` within [0, output_tokens].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from .distributions import LengthTable
from .pool import ClientPool

MODALITIES = ("image", "audio", "video")


@dataclass
class Lengths:
    """Token columns of n requests; `reason` is -1 where the request has none; multimodal items
    are `mm[m] = (counts (n,), items (counts.sum(),))` in request order."""

    inp: np.ndarray
    out: np.ndarray
    reason: np.ndarray | None = None
    mm: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def input_field(fields: list[str]) -> str:
    return "text_tokens" if "text_tokens" in fields and "input_tokens" not in fields else "input_tokens"


def copula_uniforms(n: int, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two uniform columns with Spearman correlation ~rho (independent when rho == 0)."""
    if rho == 0.0:
        u = rng.random((n, 2))
        return u[:, 0], u[:, 1]
    r = 2.0 * np.sin(np.pi * rho / 6.0)
    z = rng.standard_normal((n, 2))
    z2 = r * z[:, 0] + np.sqrt(max(0.0, 1.0 - r * r)) * z[:, 1]
    return ndtr(z[:, 0]), ndtr(z2)


def coupled_uniforms(u: np.ndarray, joint: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A uniform column coupled to `u` by a fitted checkerboard copula `joint` (K x K: the share
    of requests with the first field's rank in bin i and the second's in bin j); independent
    draws without one. Why not a Gaussian copula: a bimodal reasoning share under answers of one
    length, or one large image against four small ones, is a coupling of blocks that no single
    correlation holds (a Gaussian one at the measured Spearman still put 4 large images where
    the log had 4 small ones)."""
    if joint is None:
        return rng.random(u.size)
    return conditional_uniforms(u, joint, rng.random(u.size), rng.random(u.size))


def conditional_uniforms(u: np.ndarray, joint: np.ndarray, u_bin: np.ndarray, u_in: np.ndarray) -> np.ndarray:
    """`coupled_uniforms` from given uniforms: the column bin drawn by `u_bin` from the row of
    `u`'s bin, the place inside it `u_in` (hashed uniforms make a session's turns shard-invariant)."""
    k = joint.shape[0]
    rows = joint[np.minimum((u * k).astype(np.int64), k - 1)]
    mass = rows.sum(axis=1, keepdims=True)
    rows = np.where(mass > 0, rows / np.maximum(mass, 1e-300), 1.0 / k)  # a bin the log never filled: independent
    col = np.minimum((np.cumsum(rows, axis=1) < u_bin[:, None]).sum(axis=1), k - 1)
    return (col + u_in) / k


class TableSet:
    """The tables one request draws from: field -> (values float64, cdf float64)."""

    __slots__ = ("tables",)

    def __init__(self, tables: dict[str, LengthTable]) -> None:
        self.tables = tables

    def draw(self, n: int, rng: np.random.Generator, rho: float,
             coupling: dict[str, np.ndarray] | None = None) -> Lengths:
        """`coupling`: the copulas (`coupled_uniforms`) a fitted pool measured, of output and
        reasoning share (`reason_ratio`) and of an item count and its items' size (`image_tokens`, ...)."""
        t = self.tables
        c = coupling or {}
        f_in = "text_tokens" if "text_tokens" in t and "input_tokens" not in t else "input_tokens"
        u_in, u_out = copula_uniforms(n, rho, rng)
        inp = np.maximum(np.rint(t[f_in].sample(u_in)), 1).astype(np.int64)
        out = np.maximum(np.rint(t["output_tokens"].sample(u_out)), 1).astype(np.int64)
        res = Lengths(inp, out)
        if "reason_ratio" in t:
            ratio = t["reason_ratio"].sample(coupled_uniforms(t["output_tokens"].mid_rank(u_out), c.get("reason_ratio"), rng))
            res.reason = np.clip(np.rint(ratio * out), 0, out).astype(np.int64)
        for m in MODALITIES:
            if f"{m}_count" not in t:
                continue
            u_cnt = rng.random(n)
            cnt = np.maximum(np.rint(t[f"{m}_count"].sample(u_cnt)), 0).astype(np.int64)
            if f"{m}_tokens" in t:
                # one size per request, for all its items: what a fitted pool measured (a request's
                # tokens over its items); drawn per item, one large image and four small ones became
                # four mostly large ones (mean image tokens 82 % high)
                has = cnt > 0
                tc = t[f"{m}_count"]
                p0 = float(tc.cdf[np.flatnonzero(tc.values < 0.5)[-1]]) if tc.values[0] < 0.5 else 0.0
                u_has = (tc.mid_rank(u_cnt[has]) - p0) / max(1.0 - p0, 1e-12)  # rank among requests with items
                size = t[f"{m}_tokens"].sample(coupled_uniforms(u_has, c.get(f"{m}_tokens"), rng))
                items = np.repeat(np.maximum(np.rint(size), 1).astype(np.int64), cnt[has])
            else:
                cnt = np.zeros(n, dtype=np.int64)
                items = np.zeros(0, dtype=np.int64)
            res.mm[m] = (cnt, items)
        return res


def fixed_table(v: float) -> LengthTable:
    return LengthTable(np.array([float(v)]), np.array([1.0]))


def mixture(pool: ClientPool, field_name: str, weights: np.ndarray) -> LengthTable | None:
    """Mixture of the pool's tables of one field with weights [client, data window] (e.g. expected
    request counts); tables that are missing (-1) are skipped and the rest renormalised."""
    fi = pool.fields.index(field_name)
    idx = pool.table_index[:, :, fi]
    sel = (weights > 0) & (idx >= 0)
    if not sel.any():
        return None
    tids = idx[sel].astype(np.int64)
    w = weights[sel].astype(np.float64)
    # several (client, window) pairs may share a table (fallback mixtures): sum their weights
    tids, inv = np.unique(tids, return_inverse=True)
    w = np.bincount(inv, weights=w)
    starts, ends = pool.offsets[tids], pool.offsets[tids + 1]
    sizes = (ends - starts).astype(np.int64)
    flat = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(sizes.sum())
    vals = pool.values[flat].astype(np.float64)
    cdf = pool.cdf[flat].astype(np.float64)
    # pmf of each table from its cdf, weighted by that table's share
    first = np.zeros(flat.size, dtype=bool)
    first[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = True
    pmf = np.diff(cdf, prepend=0.0)
    pmf[first] = cdf[first]
    pmf *= np.repeat(w / w.sum(), sizes)
    u, inv2 = np.unique(vals, return_inverse=True)
    return LengthTable.from_pmf(u, np.bincount(inv2, weights=pmf))


class ClientTables:
    """A client's tables per data window, with the documented fallback for missing ones.

    A data window where the client has no table (it had no traffic there in the data, yet the
    scenario asks for requests, e.g. through a gap in the length data) uses the client's nearest
    data window that has one, else the pool's aggregate over all windows.
    """

    def __init__(self, pool: ClientPool, client: int, pool_mix: dict[str, LengthTable] | None = None) -> None:
        self.pool, self.client = pool, client
        self._cache: dict[int, TableSet] = {}
        self._pool_mix = pool_mix

    def at(self, dw: int) -> TableSet:
        ts = self._cache.get(dw)
        if ts is None:
            if len(self._cache) > 4:
                self._cache.clear()
            ts = self._cache[dw] = TableSet({f: self._table(dw, f) for f in self.pool.fields})
        return ts

    def _table(self, dw: int, f: str) -> LengthTable:
        fi = self.pool.fields.index(f)
        have = np.flatnonzero(self.pool.table_index[self.client, :, fi] >= 0)
        if have.size:
            near = int(have[np.argmin(np.abs(have - dw))])
            t = self.pool.table(self.client, near, f)
            if t is not None:
                return t
        if self._pool_mix is None:
            self._pool_mix = {}
        if f not in self._pool_mix:
            w = self.pool.rate.astype(np.float64)
            dwin = self.pool.data_window_of(self.pool.window_start)
            wd = np.zeros(self.pool.table_index.shape[:2])
            for d in range(wd.shape[1]):
                wd[:, d] = w[:, dwin == d].sum(axis=1)
            m = mixture(self.pool, f, wd + 1e-300)
            self._pool_mix[f] = m if m is not None else fixed_table(1.0)
        return self._pool_mix[f]
