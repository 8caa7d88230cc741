"""Arrival processes of one client over a piecewise-constant rate curve.

A client's curve is given on segments j = 0..K-1 of run time, `edges[j] <= t < edges[j+1]`,
each with a rate `rate[j]` (req/s), a gap family `family[j]` and its shape `shape[j]`
(`distributions.unit_mean_gaps`: unit-mean gaps, the shape sets the burstiness alone).
Every process here is a generator of chunks `(t, seg)`: arrival times (float64 seconds of run
time, ascending) and the segment each falls in. Chunk sizes depend only on the process state,
never on how a caller slices time, so a client's arrivals are the same whatever the block size,
shard or other clients, given its random generator.

renewal (default)
    One renewal process per client in operational time u = Λ(t) = ∫_0^t rate(s) ds, in which
    the expected number of arrivals per unit is 1. Arrivals are u_1 < u_2 < ... with
    u_{i+1} = u_i + X_i, X_i a unit-mean gap of the family of the segment where arrival i fell
    (so a gap is the family of its window, scaled by that window's mean gap 1/rate), and
    t_i = Λ^{-1}(u_i). Inside a segment Λ is linear, so gaps there are exactly the window's
    family with mean 1/rate[j]. A gap that crosses a boundary keeps its drawn operational length:
    the part left over is consumed at the next window's rate, i.e. the residual is carried in
    units of expected arrivals, which is what keeps the mean right: E[N(t)] = Λ(t) for a
    stationary start. Zero-rate segments have zero operational length, so no arrival falls in
    them and a gap spanning them simply resumes when the rate does (collection gaps need no
    special case and nothing divides by a zero rate). The first arrival is drawn from the
    equilibrium residual of the first active segment's family (U * X', X' length-biased), not a
    whole gap, so the process is stationary from t = 0: a bursty client (CV c) otherwise starts
    with a deficit of (1 + c^2)/2 - 1 arrivals. Counts in a window of Λ-length m have mean ≈ m
    and variance ≈ c^2 m (renewal CLT), larger than Poisson when CV > 1. When the family changes
    at a boundary the straddling gap's residual belongs to the old family (mean (1 + c_old^2)/2),
    so a window following a burstier one starts with a deficit of ≈ (c_old^2 - c_new^2)/2
    arrivals, repaid at the next change: over the run these differences telescope.

servegen
    ServeGen's own scheme: each active segment gets a fixed count n = rate * length (randomly
    rounded to floor or ceil with the probability that keeps the mean exact when it is not an
    integer; at scale 1 a 600 s window's count is the data's own), and n + 1 unit gaps of the
    segment's family are rescaled to sum to the segment length; the arrivals are the first n
    partial sums. Counts are exact, gaps within a window have the family's shape; the process
    restarts at every boundary.

tick (batched on a period, or timestamps quantised to a tick)
    Epochs at fixed times phase + k P (P the fitted period, k = 0, 1, ...); every request of an
    epoch carries the epoch's time. The count at an epoch in segment j is mixed Poisson with
    mean m = rate[j] P and dispersion D = Var / mean (fitted per client): D > 1 negative binomial
    (Poisson of a Gamma(m / (D - 1), D - 1) intensity), D < 1 binomial(ceil(m / (1 - D)), .),
    D = 1 Poisson. Counts over T >> P then have Fano factor D, and over T < P the Fano factor
    of a whole batch, D + m: the two regimes a renewal process cannot show at once.

epochs (batches at renewal epochs)
    Epochs are the renewal process above at rate rate[j] / b (b the mean batch size) with the
    window's epoch gap family; each epoch emits B requests at its time, B drawn from the client's
    batch-size table (B >= 1). The request rate stays rate[j].

quantised
    Any process above with its times floored to a grid phase + k P (a log written on a coarse
    clock): t -> phase + P floor((t - phase) / P) (t itself before the first tick at or after 0).

poisson / constant
    Baselines: exponential gaps of mean 1/rate (rate constant), or fixed gaps t_k = k / rate.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.special import gammaln

from .distributions import ONOFF_OFF_SHARE, Family, LengthTable, family_cv, onoff_params, unit_mean_gaps

CHUNK_MAX = 16384

Chunk = tuple[np.ndarray, np.ndarray]


def equilibrium_residual(family: int, shape: float, rng: np.random.Generator,
                         off_share: float = ONOFF_OFF_SHARE, on_cv: float = 1.0) -> float:
    """Forward recurrence time of a stationary renewal process with unit-mean gaps of `family`.

    Its density is (1 - F(x)) / mean; a draw is U * Y with Y length-biased (density x f(x)):
    gamma(k, 1/k) -> gamma(k + 1, 1/k); Weibull(k)/G(1+1/k) -> Gamma(1 + 1/k)^(1/k)/G(1+1/k);
    lognormal exp(N(-s^2/2, s)) -> exp(N(s^2/2, s)); exponential -> gamma(2, 1).
    """
    v = rng.random()
    if family == Family.GAMMA:
        y = rng.gamma(shape + 1.0, 1.0 / shape)
    elif family == Family.WEIBULL:
        y = rng.gamma(1.0 + 1.0 / shape) ** (1.0 / shape) / np.exp(gammaln(1.0 + 1.0 / shape))
    elif family == Family.LOGNORMAL:
        y = np.exp(rng.normal(0.5 * shape * shape, shape))
    elif family == Family.EXPONENTIAL:
        y = rng.gamma(2.0, 1.0)
    elif family == Family.ONOFF:  # length-biased mixture: an off gap w.p. f (its share of time)
        p, big, small = onoff_params(shape, off_share, on_cv)
        k = 1.0 / (on_cv * on_cv)
        y = rng.gamma(5.0, big / 4.0) if rng.random() < p * big else rng.gamma(k + 1.0, small / k)
    else:
        raise ValueError(f"cannot sample gaps for family code {family}")
    return float(v * y)


_WGRID = np.exp(np.linspace(np.log(0.08), np.log(50.0), 4000))
_WCV = np.array([family_cv(Family.WEIBULL, k) for k in _WGRID])  # decreasing in k


def weibull_shape_for_cv(cv: np.ndarray) -> np.ndarray:
    """Weibull shape whose unit-mean gap has coefficient of variation `cv` (monotone inversion on a
    log grid; CV above ~430 maps to shape 0.08, below ~0.03 to shape 50)."""
    c = np.asarray(cv, dtype=np.float64)
    lc = np.log(np.clip(c, _WCV[-1], _WCV[0]))
    return np.exp(np.interp(lc, np.log(_WCV[::-1]), np.log(_WGRID[::-1])))


def renewal(edges: np.ndarray, rate: np.ndarray, family: np.ndarray, shape: np.ndarray,
            rng: np.random.Generator, chunk_max: int = CHUNK_MAX, off_share: float = ONOFF_OFF_SHARE,
            on_cv: float = 1.0) -> Iterator[Chunk]:
    """Renewal process in operational time over the segments (see the module docstring)."""
    lam = rate * np.diff(edges)
    lam = np.where(rate > 0, lam, 0.0)
    L = np.concatenate([[0.0], np.cumsum(lam)])
    end = L[-1]
    active = np.flatnonzero(lam > 0)
    if active.size == 0:
        return
    kk = lam.size - 1
    j = int(active[0])
    u = L[j] + equilibrium_residual(int(family[j]), float(shape[j]), rng, off_share, on_cv)
    if u >= end:
        return
    first = np.array([u])
    pending: np.ndarray | None = first
    while True:
        cur = min(int(np.searchsorted(L, u, side="right")) - 1, kk)
        room = L[cur + 1] - u
        m = int(min(max(np.ceil(room * 1.05) + 8, 8), chunk_max))
        us = u + np.cumsum(unit_mean_gaps(int(family[cur]), float(shape[cur]), m, rng, off_share, on_cv))
        n_in = int(np.searchsorted(us, L[cur + 1], side="left"))
        keep = us if n_in >= m else us[:n_in + 1]
        u = float(keep[-1])
        if pending is not None:
            keep = np.concatenate([pending, keep])
            pending = None
        if u >= end:
            keep = keep[keep < end]
            if keep.size:
                yield _to_time(keep, L, edges, rate)
            return
        yield _to_time(keep, L, edges, rate)


def _to_time(us: np.ndarray, L: np.ndarray, edges: np.ndarray, rate: np.ndarray) -> Chunk:
    seg = np.searchsorted(L, us, side="right") - 1
    seg = np.clip(seg, 0, rate.size - 1)
    r = rate[seg]
    t = edges[seg] + (us - L[seg]) / np.where(r > 0, r, 1.0)
    t = np.minimum(t, np.nextafter(edges[seg + 1], -np.inf))
    return t, seg


def servegen(edges: np.ndarray, rate: np.ndarray, family: np.ndarray, shape: np.ndarray,
             rng: np.random.Generator, chunk_max: int = CHUNK_MAX, off_share: float = ONOFF_OFF_SHARE,
            on_cv: float = 1.0) -> Iterator[Chunk]:
    """ServeGen's per-window scheme: fixed counts, gaps rescaled to fill each window.

    A window with more than `chunk_max` arrivals is made in two passes over the same random
    stream (the generator's state is saved and restored), so memory stays one chunk.
    """
    d = np.diff(edges)
    for j in np.flatnonzero(rate > 0):
        x = float(rate[j] * d[j])
        n = int(np.floor(x))
        if rng.random() < x - n:
            n += 1
        if n == 0:
            continue
        fam, k = int(family[j]), float(shape[j])
        if n + 1 <= chunk_max:
            g = unit_mean_gaps(fam, k, n + 1, rng, off_share, on_cv)
            c = np.cumsum(g)
            t = edges[j] + c[:n] * (d[j] / c[-1])
            yield np.minimum(t, _below(edges[j + 1])), np.full(n, j, dtype=np.int64)
            continue
        state = rng.bit_generator.state
        total, left = 0.0, n + 1
        while left:
            m = min(left, chunk_max)
            total += float(unit_mean_gaps(fam, k, m, rng, off_share, on_cv).sum())
            left -= m
        rng.bit_generator.state = state
        acc, left, emitted = 0.0, n + 1, 0
        while left:
            m = min(left, chunk_max)
            c = acc + np.cumsum(unit_mean_gaps(fam, k, m, rng, off_share, on_cv))
            acc = float(c[-1])
            left -= m
            take = min(m, n - emitted)
            if take > 0:
                yield (np.minimum(edges[j] + c[:take] * (d[j] / total), _below(edges[j + 1])),
                       np.full(take, j, dtype=np.int64))
                emitted += take


def _below(x: float) -> float:
    """The largest float below x: a rescaled arrival whose last gaps underflow stays in its window."""
    return float(np.nextafter(x, -np.inf))


def mixed_poisson(mean: np.ndarray, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Counts with the given means and Var/mean = `dispersion` (see `tick`)."""
    m = np.maximum(np.asarray(mean, dtype=np.float64), 0.0)
    if dispersion > 1.001:
        lam = rng.gamma(np.maximum(m / (dispersion - 1.0), 1e-300), dispersion - 1.0)
        return rng.poisson(np.where(m > 0, lam, 0.0))
    if dispersion < 0.999:
        n = np.ceil(m / max(1.0 - dispersion, 1e-3))
        return rng.binomial(n.astype(np.int64), np.where(n > 0, m / np.maximum(n, 1.0), 0.0))
    return rng.poisson(m)


def tick(edges: np.ndarray, rate: np.ndarray, period: float, phase: float, dispersion: float,
         rng: np.random.Generator, chunk_max: int = CHUNK_MAX) -> Iterator[Chunk]:
    """Batches on a fixed period (see the module docstring)."""
    end = float(edges[-1])
    if not (period > 0 and end > 0):
        return
    k0 = int(np.ceil((float(edges[0]) - phase) / period - 1e-12))
    k_end = int(np.ceil((end - phase) / period - 1e-12))
    per_tick = max(float(np.max(rate, initial=0.0)) * period, 1.0)
    step = int(max(1, min(chunk_max, chunk_max // per_tick)))
    for a in range(k0, k_end, step):
        tt = phase + period * np.arange(a, min(a + step, k_end), dtype=np.float64)
        tt = tt[(tt >= edges[0]) & (tt < end)]
        seg = np.clip(np.searchsorted(edges, tt, side="right") - 1, 0, rate.size - 1)
        n = mixed_poisson(rate[seg] * period, dispersion, rng)
        if n.sum():
            yield np.repeat(tt, n), np.repeat(seg, n)


def epochs(edges: np.ndarray, rate: np.ndarray, family: np.ndarray, shape: np.ndarray, batch_mean: float,
           batch_sizes: LengthTable, rng: np.random.Generator, chunk_max: int = CHUNK_MAX,
           off_share: float = ONOFF_OFF_SHARE, on_cv: float = 1.0) -> Iterator[Chunk]:
    """Batches at renewal epochs (see the module docstring)."""
    for t, seg in renewal(edges, rate / max(batch_mean, 1.0), family, shape, rng, chunk_max, off_share, on_cv):
        b = np.maximum(batch_sizes.sample(rng.random(t.size)), 1.0).astype(np.int64)
        yield np.repeat(t, b), np.repeat(seg, b)


def quantised(chunks: Iterator[Chunk], period: float, phase: float) -> Iterator[Chunk]:
    """Times of `chunks` floored to the grid phase + k period (see the module docstring)."""
    for t, seg in chunks:
        q = phase + period * np.floor((t - phase) / period)
        yield np.where(q >= 0.0, q, t), seg


def poisson(rate: float, duration: float, rng: np.random.Generator,
            chunk_max: int = CHUNK_MAX) -> Iterator[Chunk]:
    """Homogeneous Poisson arrivals on [0, duration): exponential gaps of mean 1/rate."""
    t0 = 0.0
    m = int(min(max(rate * duration * 1.05 + 8, 8), chunk_max))
    while True:
        t = t0 + np.cumsum(rng.exponential(1.0 / rate, m))
        if t[-1] >= duration:
            t = t[t < duration]
            if t.size:
                yield t, np.zeros(t.size, dtype=np.int64)
            return
        t0 = float(t[-1])
        yield t, np.zeros(t.size, dtype=np.int64)


def constant(rate: float, duration: float, chunk_max: int = CHUNK_MAX) -> Iterator[Chunk]:
    """Fixed gaps: arrivals at k / rate for k = 0, 1, ... while < duration."""
    n = int(np.ceil(duration * rate - 1e-9))
    for a in range(0, n, chunk_max):
        k = np.arange(a, min(a + chunk_max, n), dtype=np.float64)
        yield k / rate, np.zeros(k.size, dtype=np.int64)
