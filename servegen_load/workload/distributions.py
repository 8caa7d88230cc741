"""Sampling families for inter-arrival gaps and compact discrete tables for lengths.

Gaps. Every family is parameterised by a shape `k` and sampled with unit mean, then scaled
to the window's mean gap `m = 1/rate`, so a client's burstiness (shape) and its rate stay
separate knobs, as in ServeGen's per-window fits:

    exponential   X ~ Exp(1)                          CV = 1                (k unused)
    gamma         X ~ Gamma(k, 1/k)                   CV = 1/sqrt(k)
    weibull       X ~ Weibull(k) / Gamma(1 + 1/k)     CV = sqrt(G(1+2/k)/G(1+1/k)^2 - 1)
    lognormal     X ~ exp(N(-k^2/2, k))               CV = sqrt(exp(k^2) - 1)
    on/off        X ~ Gamma(4, L/4) w.p. p, else s Gamma(1/v^2, v^2)   CV = k   (k = the target CV)

The on/off family is never stored in a pool: generation uses it for windows whose measured gap CV
is at least `ONOFF_MIN_CV` (10). A Gamma of shape 1/CV^2 = 0.01 puts its CV in gaps so rare and
so long that a window of a few hundred requests seldom holds one (the realised CV falls to about
half the target); the on/off mixture puts the same second moment in a handful of "off" gaps per
window. With f of the time spent in off gaps (`ONOFF_OFF_SHARE` = 0.95 unless `fit` chose another
share by matching the log's count dispersion) (f = p L, (1 - p) s = 1 - f),
the second moment p 1.25 L^2 + (1 - p) (1 + v^2) s^2 = 1 + k^2 fixes p ~ 1.25 f^2 / (1 + k^2)
(on gaps of CV v, 1 unless `fit` chose 3 for bursts that are bursty inside): about
1.2 n / k^2 off gaps in a window of n requests, at least one wherever k <= sqrt(n), which is the
largest CV n gaps can show.

Lengths. A `LengthTable` is a discrete distribution (sorted support, cumulative probability)
sampled by inverse CDF. `compress` merges neighbouring atoms into bins of small mass, each
represented by the atom at the bin's probability midpoint, which bounds the Kolmogorov-Smirnov
distance to the original by half the largest merged bin mass; it halves the bin width until
the bound `ks_max` holds exactly (checked, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import gammaln


class Family(IntEnum):
    """Gap family codes stored in pools (0 = no traffic in the window)."""

    NONE = 0
    GAMMA = 1
    WEIBULL = 2
    EXPONENTIAL = 3
    LOGNORMAL = 4
    ONOFF = 5  # generation only (never stored in a pool): extreme-CV windows, shape = target CV

    @classmethod
    def parse(cls, name: str) -> Family:
        key = name.strip().upper()
        if not key:
            return cls.NONE
        try:
            return cls[key]
        except KeyError:
            raise ValueError(f"unknown gap family {name!r}; expected one of gamma, weibull, exponential, lognormal") from None


# Shapes a pool may carry per family (validated on load and import). Outside them sampling breaks
# down: a lognormal sigma of 8 or a Weibull k of 0.01 has a mean gap of 1 only in theory (a finite
# sample almost never shows it: a client of 1 req/s gets no request at all in 600 s), and a
# non-positive or non-finite shape has no distribution at all. Every shape fitted to real gaps lies
# far inside (ServeGen: Gamma 0.0099..45230, Weibull 0.16..7.9; `fit`: Gamma 1e-4..1e4, lognormal
# sigma < 4 for any measurable CV).
SHAPE_RANGE: dict[int, tuple[float, float]] = {
    Family.GAMMA: (1e-4, 1e6), Family.WEIBULL: (0.05, 1e4), Family.LOGNORMAL: (1e-6, 5.0)}


ONOFF_MIN_CV = 10.0
ONOFF_OFF_SHARE = 0.95
_OFF_SHAPE = 4.0  # off gaps Gamma(4): second moment 1.25 L^2


def onoff_params(cv: float, off_share: float = ONOFF_OFF_SHARE, on_cv: float = 1.0) -> tuple[float, float, float]:
    """(p, L, s) of the unit-mean on/off mixture with coefficient of variation `cv`, a share
    `off_share` of the time in off gaps and on gaps of CV `on_cv` (module doc)."""
    f = off_share
    c2 = 1.0 + cv * cv
    m2 = (_OFF_SHAPE + 1.0) / _OFF_SHAPE
    mon = 1.0 + on_cv * on_cv
    p = m2 * f * f / c2
    for _ in range(20):  # fixed point of p = m2 f^2 / (c2 - mon (1 - f)^2 / (1 - p)); converges in a few steps
        p = m2 * f * f / max(c2 - mon * (1.0 - f) ** 2 / (1.0 - p), 1e-12)
    p = min(p, 0.5)
    return p, f / p, (1.0 - f) / (1.0 - p)


def unit_mean_gaps(family: int, shape: float, n: int, rng: np.random.Generator,
                   off_share: float = ONOFF_OFF_SHARE, on_cv: float = 1.0) -> np.ndarray:
    """`n` gaps of the family with mean 1 (see the module docstring for the equations)."""
    if family == Family.ONOFF:
        p, big, small = onoff_params(shape, off_share, on_cv)
        off = rng.random(n) < p
        k = 1.0 / (on_cv * on_cv)
        on = rng.exponential(small, n) if on_cv == 1.0 else rng.gamma(k, small / k, n)
        return np.where(off, rng.gamma(_OFF_SHAPE, big / _OFF_SHAPE, n), on)
    if family == Family.GAMMA:
        return rng.gamma(shape, 1.0 / shape, n)
    if family == Family.WEIBULL:
        return rng.weibull(shape, n) / np.exp(gammaln(1.0 + 1.0 / shape))
    if family == Family.LOGNORMAL:
        return np.exp(rng.normal(-0.5 * shape * shape, shape, n))
    if family == Family.EXPONENTIAL:
        return rng.exponential(1.0, n)
    raise ValueError(f"cannot sample gaps for family code {family}")


def family_cv(family: int, shape: float) -> float:
    """Coefficient of variation of a unit-mean gap of the family (the burstiness it encodes)."""
    if family == Family.GAMMA:
        return float(1.0 / np.sqrt(shape))
    if family == Family.WEIBULL:
        g1, g2 = gammaln(1.0 + 1.0 / shape), gammaln(1.0 + 2.0 / shape)
        return float(np.sqrt(np.expm1(g2 - 2.0 * g1)))
    if family == Family.LOGNORMAL:
        return float(np.sqrt(np.expm1(shape * shape)))
    if family == Family.EXPONENTIAL:
        return 1.0
    if family == Family.ONOFF:
        return float(shape)
    return 0.0


@dataclass(frozen=True, slots=True)
class LengthTable:
    """A discrete distribution: `values` sorted ascending, `cdf` non-decreasing ending at 1."""

    values: np.ndarray
    cdf: np.ndarray

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Inverse-CDF draw for uniforms `u` in [0, 1)."""
        idx = np.searchsorted(self.cdf, u, side="right")
        return self.values[np.minimum(idx, len(self.values) - 1)]

    def mid_rank(self, u: np.ndarray) -> np.ndarray:
        """The middle of the CDF step `sample(u)` lands on: the rank (in [0, 1]) every draw of that
        value shares, as a fit's average ranks of ties give it (`fit.copula_by_group`)."""
        idx = np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.values) - 1)
        return 0.5 * (np.where(idx > 0, self.cdf[np.maximum(idx - 1, 0)], 0.0) + self.cdf[idx])

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        idx = np.searchsorted(self.cdf, np.asarray(q, dtype=np.float64), side="left")
        return self.values[np.minimum(idx, len(self.values) - 1)]

    def mean(self) -> float:
        pmf = np.diff(self.cdf, prepend=0.0)
        return float(np.dot(pmf, self.values))

    @classmethod
    def from_pmf(cls, values: np.ndarray, probs: np.ndarray) -> LengthTable:
        """Normalised, sorted table from atoms; zero-probability atoms are dropped."""
        v = np.asarray(values, dtype=np.float64)
        p = np.asarray(probs, dtype=np.float64)
        keep = p > 0
        v, p = v[keep], p[keep]
        if v.size == 0:
            raise ValueError("a length distribution needs at least one atom with positive probability")
        order = np.argsort(v, kind="stable")
        v, p = v[order], p[order]
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        return cls(v, cdf)

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> LengthTable:
        v, counts = np.unique(np.asarray(samples, dtype=np.float64), return_counts=True)
        return cls.from_pmf(v, counts.astype(np.float64))


def ks_distance(a: LengthTable, b: LengthTable) -> float:
    """sup_x |F_a(x) - F_b(x)| over the union of both supports (exact for discrete tables)."""
    xs = np.union1d(a.values, b.values)
    fa = _cdf_at(a, xs)
    fb = _cdf_at(b, xs)
    return float(np.max(np.abs(fa - fb)))


def _cdf_at(t: LengthTable, xs: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(t.values, xs, side="right") - 1
    return np.where(idx >= 0, t.cdf[np.maximum(idx, 0)], 0.0)


def compress(table: LengthTable, ks_max: float = 0.004, mass: bool = False) -> LengthTable:
    """Fewest-ish atoms with KS distance to `table` at most `ks_max` (see module docstring).

    `mass`: the token-weighted distribution (atom x probability) is held to the same bound. A
    count bound alone lets any tail under 2 `ks_max` of the requests fold into one atom: 0.1 % of
    prompts at 100-128k tokens (a tenth of all prefill tokens) came out at 8.7k."""
    if table.values.size <= 1:
        return table
    pmf = np.diff(table.cdf, prepend=0.0)
    weighted = _token_weighted(table) if mass and float(table.values.min()) >= 0 else None
    width = 2.0 * ks_max
    if float((pmf[1:] + pmf[:-1]).min()) >= 2.0 * width:  # each atom's mid alone in its bin: nothing merges
        return table  # (a client's few requests in a data window: 78k such tables took 12 s of a fit)
    mid = table.cdf - 0.5 * pmf
    if weighted is not None:  # bins narrow in both counts and tokens
        mid = 0.5 * (mid + weighted.cdf - 0.5 * np.diff(weighted.cdf, prepend=0.0))
    while True:
        bins = np.floor(mid / width).astype(np.int64)
        starts = np.flatnonzero(np.diff(bins, prepend=bins[0] - 1))
        bin_mass = np.add.reduceat(pmf, starts)
        # representative: first atom whose within-bin cumulative mass reaches half the bin mass
        before = np.repeat(table.cdf[starts] - pmf[starts], np.diff(np.append(starts, pmf.size)))
        half = np.repeat(bin_mass / 2.0, np.diff(np.append(starts, pmf.size)))
        reached = (table.cdf - before) >= half - 1e-15
        bin_of = np.repeat(np.arange(starts.size), np.diff(np.append(starts, pmf.size)))
        first_reach = np.full(starts.size, pmf.size, dtype=np.int64)
        np.minimum.at(first_reach, bin_of[reached], np.flatnonzero(reached))
        out = LengthTable(table.values[first_reach], np.cumsum(bin_mass) / np.sum(bin_mass))
        ok = ks_distance(out, table) <= ks_max
        if ok and weighted is not None:
            out_weighted = _token_weighted(out)
            ok = out_weighted is not None and ks_distance(out_weighted, weighted) <= ks_max
        if ok or width < 1e-9:
            return out
        width /= 2.0


def _token_weighted(t: LengthTable) -> LengthTable | None:
    """The size-biased table (atom x probability: where the tokens are), None when it holds none."""
    q = t.values * np.diff(t.cdf, prepend=0.0)
    total = float(q.sum())
    return LengthTable(t.values, np.cumsum(q) / total) if total > 0 else None
