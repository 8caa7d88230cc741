"""Arrival models a fit chooses by what a server sees: count dispersion, batches, a periodic rate profile.

`fit` measures per-window gap families by likelihood (`fit.fit_gaps`); a server sees counts. This
module adds, per client (all stored as optional pool arrays, see `pool`):

- Count dispersion of the log at scales `SCALES` (1 s .. 3600 s, those holding >= `MIN_BINS`
  bins in the span): Fano factor F(T) = Var N_T / E N_T of the counts in bins of T seconds
  (`fano_obs`, clients x scales; `meta.arrival.scales`).
- Batches: the share z of gaps that are exactly 0 (equal timestamps). Where z >= `BATCH_ZERO_SHARE`
  the client is a batching candidate with two batch models beside the renewal one:
  `tick` when the distinct timestamps lie on a grid (>= 90% of their gaps within 0.1 P of a
  multiple of P, P their smallest gap: a gateway that logs on a tick or flushes batches on a
  period), with phase and count dispersion D = sum (n_k - m_k)^2 / sum m_k over the ticks
  (m_k = the window's rate x P); `epochs` (any batching): renewal epochs with per-window gap
  families fitted to the distinct timestamps and a batch-size table.
  `quantised` on such a grid too: a renewal process (Gamma, CV^2 = the log's Fano factor at the
  largest scale) whose times are floored to the grid (a gateway that logs on a coarse clock).
  Each candidate is simulated over the fitted windows (the generator `generate` runs) and scored
  by the mean |log(F_sim(T) / F_obs(T))| over the scales; the lowest score wins (`arrival_model`
  0 renewal, 1 tick, 2 epochs, 3 quantised; `arrival_score` clients x 4, NaN where not a candidate). Renewal
  clients are scored too where the simulation budget allows, as evidence for `inspect`.
- A rate profile across days, on hour-of-week bins (Monday 00:00 UTC = bin 0 for wall-clock logs;
  hours since pool time 0 otherwise): with >= 14 days, the mean rate of each hour of the week; else,
  with both weekdays and weekend days seen (>= 24 h each) and weekends standing out beyond a trend
  across the days (`weekend_stands_out`), per hour of day and day type; else per hour of day; each client's bins shrunk towards its level by their share of counting noise
  (`_shrunk_profile`). Bins seen for less than `MIN_EXPOSURE` take the circular linear interpolation of the
  seen bins around them (within each day type): a log shorter than the cycle is continued from
  its latest level towards its earliest, not by replaying its start (a 3-hour ramp from 1 to 8
  req/s was continued at 2.5 req/s, where Poisson at the mean did better). NaN only where no
  bin was seen.
- Extreme-CV windows (gap CV >= 10) are generated with on/off gaps (`distributions`), whose free
  parameter, the share of time spent off, sets how dense the bursts are and so the Fano factor at
  short scales for the same gap CV: per client the share among `OFF_SHARES` whose simulation best
  matches the log's counts (`onoff_share`), with gaps inside a burst of CV 1 or 3 (`onoff_on_cv`).
  Alternatives are simulated only while the default scores worse than `GOOD_SCORE` and within a
  budget of `SIM_BUDGET` simulated requests per fit (batch candidates and clients with windows of
  CV >= 3 first, then the others as evidence, largest first). Windows from CV 3 up may take on/off gaps too where
  that matches the counts better (`onoff_cv`: the client's CV threshold, 10 by default): a Gamma
  or Weibull of the same CV spreads its long gaps more evenly than bursts do.
- Shrinkage: how much of a window's deviation from the profile is signal. A window's rate
  r_w = n_w / covered_w is a noisy draw around its true rate: variance v_w = g p_w / covered_w,
  g = max(c, 1)^2 for gap CV c (renewal), D for ticks, 1 / k for quantised, Var B / b + b for
  epochs (`rate_noise`). The signal variance s^2 = mean_w((r_w - p_w)^2 - v_w) (>= 0,
  `rate_signal_var`) gives each window B_w = sqrt(s^2 / (s^2 + v_w)) and renewal generation uses
  r'_w = p_w + B_w (r_w - p_w): the rates' spread becomes the signal's alone, to which generation
  adds its own count noise once (the square root keeps the variance; the point-estimate factor
  s^2 / (s^2 + v) would leave it under-dispersed), and a short or sparse window (large v_w, such
  as a partial last window) falls back towards the profile. `rate_shrink` is the client's median
  B_w over full windows, for `inspect`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arrivals
from .distributions import ONOFF_MIN_CV, ONOFF_OFF_SHARE, Family, LengthTable, compress

SCALES = (1.0, 10.0, 60.0, 600.0, 3600.0)
MIN_BINS = 30
MIN_EXPOSURE = 1800.0  # seconds of log a profile bin needs (a few seconds of an hour say nothing of it)
OFF_SHARES = (0.5, 0.7, 0.85, 0.95)
ON_CVS = (1.0, 3.0)  # CV of the gaps inside a burst
LOW_ONOFF_CV = 3.0  # on/off may also be chosen for windows from this CV up, where counts say so  # on/off candidates for extreme-CV windows (distributions.onoff_params)
BATCH_ZERO_SHARE = 0.2
MIN_BATCH_REQUESTS = 200
SIM_BUDGET = 1_000_000  # requests simulated for model scores per fit (about half a second)
DENSE_BINS = 20_000_000  # client x bin cells counted densely (160 MB at most) rather than sorted
MIN_PERIOD_SHARE = 0.01  # a tick grid finer than this share of the smallest scale is the log's clock (`grid_of`)
FANO_FLOOR = 0.1  # Fano factors below are one "near deterministic" value to `score`
GOOD_SCORE = 0.1  # a default that matches the log's counts this well is kept without alternatives
HOUR, DAY, WEEK = 3600.0, 86400.0, 604800.0
EPOCH_DOW = 3  # 1970-01-01 was a Thursday (Monday = 0)
MODELS = ("renewal", "tick", "epochs", "quantised")
PROFILE_NAMES = {"week": "hour of week", "day+weekend": "hour of day and weekday/weekend", "day": "hour of day"}
ARRIVAL_ARRAYS = {
    "arrival_model": "per client: 0 renewal, 1 tick (batches on a period), 2 epochs (batches at renewal epochs), "
                     "3 quantised (a renewal process logged on a tick)",
    "arrival_score": "per client x model: mean |log Fano ratio| simulated vs the log over meta.arrival.scales "
                     "(NaN: not a candidate)",
    "zero_gap_share": "per client: share of gaps that are exactly 0",
    "batch_period": "per client: tick period (s)", "batch_phase": "per client: tick phase (s of pool time)",
    "batch_dispersion": "per client: Var/mean of the count per tick",
    "batch_mean": "per client: mean batch size (requests per distinct timestamp)",
    "batch_index": "per client: table id of the batch-size table (-1: none)",
    "quantum_shape": "per client: Gamma shape of the renewal under quantised timestamps (quantised model)",
    "fano_obs": "per client x scale: Fano factor of the log's counts at meta.arrival.scales",
    "profile": "per client x hour of week: mean rate (req/s; NaN: never seen)",
    "level": "per client: mean rate over the fitted span (req/s)",
    "rate_shrink": "per client: median share B_w of a full window's deviation from the profile kept in renewal mode",
    "rate_signal_var": "per client: variance of the window rates around the profile that is not count noise ((req/s)^2)",
    "rate_noise": "per client: count variance per expected request of its model (0: the window's max(CV, 1)^2)",
    "onoff_share": "per client: share of time off in on/off gaps of extreme-CV windows",
    "onoff_cv": "per client: gap CV from which windows use on/off gaps (10 unless counts chose 3)",
    "onoff_on_cv": "per client: CV of the gaps inside on/off bursts (1 or 3)",
    "epoch_family": "per client x window: gap family of the distinct timestamps (epochs model)",
    "epoch_shape": "per client x window: its shape",
}


@dataclass
class ArrivalFit:
    extra: dict[str, np.ndarray]
    meta: dict[str, Any]
    batch_tables: list[LengthTable]   # appended to the pool's tables; `batch_index` is relative to them
    notes: list[str]


def hour_of_week(abs_t: np.ndarray, wall_clock: bool) -> np.ndarray:
    """Hour-of-week bin (0..167) of absolute times (Monday 00:00 UTC = 0; pool hours if relative)."""
    h = np.floor(np.asarray(abs_t, dtype=np.float64) / HOUR).astype(np.int64)
    return (h + (EPOCH_DOW * 24 if wall_clock else 0)) % 168


def scales_for(span: float, window: float) -> list[float]:
    return [s for s in SCALES if s <= max(window, 60.0) * 6 and span / s >= MIN_BINS]


def fano_by_client(t: np.ndarray, client: np.ndarray, n_clients: int, span: float,
                   scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Fano factor and CV of counts per client in bins of each scale over [0, span) (NaN: no data)."""
    fano = np.full((n_clients, len(scales)), np.nan, dtype=np.float32)
    cvs = np.full((n_clients, len(scales)), np.nan, dtype=np.float32)
    for i, s in enumerate(scales):
        nb = int(span // s)
        if nb < 2:
            continue
        keep = t < nb * s
        key = client[keep].astype(np.int64) * nb + (t[keep] // s).astype(np.int64)
        if n_clients * nb <= DENSE_BINS:  # dense counts: no sort
            cnt = np.bincount(key, minlength=n_clients * nb).astype(np.float64).reshape(n_clients, nb)
            s1, s2 = cnt.sum(axis=1), np.square(cnt).sum(axis=1)
        else:
            uk, cnt = np.unique(key, return_counts=True)
            cl = uk // nb
            s1 = np.bincount(cl, cnt.astype(np.float64), n_clients)
            s2 = np.bincount(cl, cnt.astype(np.float64) ** 2, n_clients)
        m = s1 / nb
        var = np.maximum(s2 / nb - m * m, 0.0) * nb / (nb - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fano[:, i] = np.where(m > 0, var / m, np.nan)
            cvs[:, i] = np.where(m > 0, np.sqrt(var) / m, np.nan)
    return fano, cvs


def fano_of(t: np.ndarray, span: float, scales: list[float]) -> np.ndarray:
    return fano_by_client(np.asarray(t, dtype=np.float64), np.zeros(np.size(t), dtype=np.int64), 1, span,
                          scales)[0][0]


def score(f_sim: np.ndarray, f_obs: np.ndarray) -> float:
    """Mean |log ratio| of Fano factors over the scales both define. Factors below `FANO_FLOOR` count as
    that floor: near-deterministic counts (a cron job's 3 requests every minute: F = 0) differ from a
    model's F = 0.02 by a huge ratio a server never sees."""
    ok = np.isfinite(f_sim) & np.isfinite(f_obs)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(np.log(np.maximum(f_sim[ok], FANO_FLOOR) / np.maximum(f_obs[ok], FANO_FLOOR)))))


def rate_profile(t: np.ndarray, client: np.ndarray, n_clients: int, origin: float, span: float,
                 wall_clock: bool) -> tuple[np.ndarray, str]:
    """(clients x 168 hour-of-week rates, kind); see the module docstring."""
    o = origin if wall_clock else 0.0
    hours = np.arange(np.floor(o / HOUR), np.ceil((o + span) / HOUR))
    lo = np.maximum(hours * HOUR, o)
    hi = np.minimum((hours + 1) * HOUR, o + span)
    expo_h = np.maximum(hi - lo, 0.0)
    how_h = hour_of_week(hours * HOUR, wall_clock)
    how = hour_of_week(o + t, wall_clock)
    cnt = np.bincount(client.astype(np.int64) * 168 + how, minlength=n_clients * 168).reshape(n_clients, 168)
    expo = np.bincount(how_h, expo_h, 168)
    day = (np.arange(168) // 24)
    weekend = day >= 5
    expo_we, expo_wd = float(expo[weekend].sum()), float(expo[~weekend].sum())
    if span >= 14 * DAY:
        kind, groups = "week", np.arange(168)
    elif wall_clock and expo_we >= DAY and expo_wd >= DAY and weekend_stands_out(o + t, hours, expo_h):
        kind, groups = "day+weekend", (np.arange(168) % 24) + 24 * weekend
    else:
        kind, groups = "day", np.arange(168) % 24
    g_cnt = np.zeros((n_clients, int(groups.max()) + 1))
    np.add.at(g_cnt.T, groups, cnt.T)
    g_expo = np.bincount(groups, expo, int(groups.max()) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = np.where(g_expo >= MIN_EXPOSURE, g_cnt / g_expo, np.nan)
    prof = _shrunk_profile(prof, g_cnt, g_expo)
    period = 24 if kind != "week" else 168  # day+weekend: two cycles of 24 side by side
    for a in range(0, prof.shape[1], period):
        prof[:, a:a + period] = _fill_circular(prof[:, a:a + period])
    return prof[:, groups].astype(np.float32), kind


WEEKEND_MIN = 0.1  # log-rate difference (about 10 %) below which weekends are not worth a profile of their own


def weekend_stands_out(abs_t: np.ndarray, hours: np.ndarray, expo_h: np.ndarray) -> bool:
    """Whether weekend days differ from weekdays beyond a trend across the days.

    Why: with one weekend in a short log, a weekend is also a stretch of days at one end of it;
    a service falling 25 % a day from Thursday had a "weekend" half the weekdays' rate, and its
    Monday and Tuesday were continued from the Thursday and Friday before (2.8x their rate). Each
    day's level (its count over what the all-days hour-of-day profile expects for its hours) is
    fitted as log level = a + b day + c weekend (weighted by the day's exposure): weekends stand out
    when |c| >= `WEEKEND_MIN` and two standard errors. Under four days of at least 6 h, trend and
    weekend cannot be told apart and the weekend is taken as seen."""
    hod = (hours % 24).astype(np.int64)
    cnt_h = np.bincount(np.clip(np.floor(abs_t / HOUR).astype(np.int64) - int(hours[0]), 0, hours.size - 1),
                        minlength=hours.size).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        hod_rate = np.bincount(hod, cnt_h, 24) / np.bincount(hod, expo_h, 24)
    expected_h = np.nan_to_num(hod_rate)[hod] * expo_h
    day_h = (hours // 24).astype(np.int64)
    day_h -= day_h[0]
    n_d = int(day_h[-1]) + 1
    cnt, exp_, expo = (np.bincount(day_h, x, n_d) for x in (cnt_h, expected_h, expo_h))
    days = np.arange(n_d)
    keep = (expo >= DAY / 4) & (cnt > 0) & (exp_ > 0)
    we = (((days + int(hours[0] // 24) + EPOCH_DOW) % 7) >= 5).astype(np.float64)
    if keep.sum() < 4 or we[keep].min() == we[keep].max():
        return True
    X = np.column_stack([np.ones(n_d), days - days[keep].mean(), we])[keep]
    y = np.log(cnt[keep] / exp_[keep])
    sw = np.sqrt(expo[keep] / DAY)
    beta, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    dof = int(keep.sum()) - 3
    resid = (y - X @ beta) * sw
    s2 = float(resid @ resid) / dof if dof > 0 else 0.0
    try:
        cov = s2 * np.linalg.inv((X * sw[:, None]).T @ (X * sw[:, None]))
    except np.linalg.LinAlgError:
        return True
    c = float(beta[2])
    return abs(c) >= WEEKEND_MIN and abs(c) >= 2.0 * float(np.sqrt(max(cov[2, 2], 0.0)))


def _shrunk_profile(prof: np.ndarray, cnt: np.ndarray, expo: np.ndarray) -> np.ndarray:
    """Each client's seen bins pulled towards its level by how much of their spread is counting
    noise: p'_b = L + tau^2 / (tau^2 + v_b) (p_b - L), v_b = L / exposure_b (Poisson), tau^2 = the
    bins' variance around L less the mean noise (>= 0).

    Why: a bin seen for one weekend day holds a few dozen requests of a sparse client; its noise,
    taken as the profile, came back as hour-to-hour swings the traffic never had (7 days of
    0.01 req/s Poisson were continued with Fano 1.7 at 3600 s; the log's is 1)."""
    seen = np.isfinite(prof[0]) if prof.shape[0] else np.zeros(0, dtype=bool)
    if seen.sum() < 24:  # under a day of bins, their spread says too little of tau^2 (and a short log's
        return prof      # level, continued from its latest bins, is the profile's main job)
    level = cnt[:, seen].sum(axis=1) / expo[seen].sum()
    v = level[:, None] / expo[seen][None, :]
    dev = prof[:, seen] - level[:, None]
    tau2 = np.maximum((dev**2).mean(axis=1) - v.mean(axis=1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.where(tau2[:, None] + v > 0, tau2[:, None] / (tau2[:, None] + v), 1.0)
    out = prof.copy()
    out[:, seen] = level[:, None] + keep * dev
    return out


def _fill_circular(p: np.ndarray) -> np.ndarray:
    """NaN columns of `p` (clients x bins of one cycle) by linear interpolation between the seen
    bins on either side, around the cycle; all-NaN stays NaN."""
    if p.shape[0] == 0:
        return p
    seen = np.flatnonzero(np.isfinite(p[0]))  # exposure is per bin, the same for every client
    if seen.size == 0 or seen.size == p.shape[1]:
        return p
    n = p.shape[1]
    x = np.concatenate([seen - n, seen, seen + n])
    miss = np.flatnonzero(~np.isfinite(p[0]))
    right = np.searchsorted(x, miss)
    left = right - 1
    w = (miss - x[left]) / (x[right] - x[left])
    y = np.tile(p[:, seen], 3)
    out = p.copy()
    out[:, miss] = y[:, left] * (1 - w) + y[:, right] * w
    return out


def profile_at(profile: np.ndarray, level: np.ndarray, abs_t: np.ndarray, wall_clock: bool) -> np.ndarray:
    """Profile rates (clients x times) at absolute times; NaN bins fall back to the level."""
    p = profile[:, hour_of_week(abs_t, wall_clock)].astype(np.float64)
    return np.where(np.isfinite(p), p, level[:, None])


def fit_arrivals(t: np.ndarray, client: np.ndarray, n_clients: int, span: float, W: float, origin: float,
                 wall_clock: bool, rate: np.ndarray, cv: np.ndarray, family: np.ndarray, shape: np.ndarray,
                 epoch_windows: Any, ks_max: float, scales: list[float] | None = None) -> ArrivalFit:
    """Arrival models, evidence, profile and shrinkage (module docstring). `t` is pool time;
    `epoch_windows(t, client)` fits per-window gap families to distinct timestamps (fit's own).
    `scales`: those the models are scored at (default `scales_for(span, W)`); fits of one log at
    different windows are compared on the same scales."""
    notes: list[str] = []
    n_w = rate.shape[1]
    level = (np.bincount(client, minlength=n_clients) / max(span, W)).astype(np.float32)
    profile, kind = rate_profile(t, client, n_clients, origin, span, wall_clock)
    scales = scales_for(span, W) if scales is None else list(scales)
    fano, _ = fano_by_client(t, client, n_clients, span, scales)

    order = group_time_order(client, t)
    ts, cs = t[order], client[order]
    same = cs[1:] == cs[:-1]
    zero = same & (np.diff(ts) <= 1e-9)
    n_gaps = np.bincount(cs[1:][same], minlength=n_clients)
    z = np.bincount(cs[1:][zero], minlength=n_clients) / np.maximum(n_gaps, 1)
    n_req = np.bincount(client, minlength=n_clients)

    model = np.zeros(n_clients, dtype=np.int8)
    scores = np.full((n_clients, len(MODELS)), np.nan, dtype=np.float32)
    qshape = np.ones(n_clients, dtype=np.float32)
    period = np.zeros(n_clients, dtype=np.float32)
    phase = np.zeros(n_clients, dtype=np.float32)
    disp = np.ones(n_clients, dtype=np.float32)
    bmean = np.ones(n_clients, dtype=np.float32)
    bindex = np.full(n_clients, -1, dtype=np.int32)
    tables: list[LengthTable] = []
    cand = np.flatnonzero((z >= BATCH_ZERO_SHARE) & (n_req >= MIN_BATCH_REQUESTS))
    is_cand = np.zeros(n_clients, dtype=bool)
    is_cand[cand] = True
    edges = np.arange(n_w + 1, dtype=np.float64) * W
    ef = np.zeros((0, 0), dtype=np.int8)
    es = np.zeros((0, 0), dtype=np.float32)
    if cand.size:
        first = np.concatenate([[True], ~((cs[1:] == cs[:-1]) & (np.diff(ts) <= 1e-9))])
        uniq = first & np.isin(cs, cand)
        ef, es = epoch_windows(ts[uniq], cs[uniq])
    budget = SIM_BUDGET
    bounds = np.concatenate([[0], np.cumsum(n_req)])
    off = np.full(n_clients, ONOFF_OFF_SHARE, dtype=np.float32)
    onoff_cv = np.full(n_clients, ONOFF_MIN_CV, dtype=np.float32)
    on_cv = np.ones(n_clients, dtype=np.float32)
    active = family != Family.NONE
    prof_w = profile_at(profile, level, origin * wall_clock + (np.arange(n_w) + 0.5) * W, wall_clock)
    covered = window_cover(n_w, W, span)
    wkey = client.astype(np.int64) * n_w + np.minimum((t // W).astype(np.int64), n_w - 1)
    r_obs = np.bincount(wkey, minlength=n_clients * n_w).reshape(n_clients, n_w) / np.maximum(covered, 1e-9)
    g0 = np.maximum(cv.astype(np.float64), 1.0) ** 2
    s2_0 = signal_variance(r_obs, prof_w, g0, covered)
    sim_rate = shrunk_rates(rate.astype(np.float64), prof_w, s2_0, g0, covered)  # what renewal mode generates
    needy = is_cand | np.any(active & (cv >= LOW_ONOFF_CV), axis=1)  # clients with a choice to make first
    for c in np.lexsort((-n_req, ~needy)):
        if n_req[c] == 0 or not np.isfinite(fano[c]).any():
            continue
        if not is_cand[c] and n_req[c] > budget:
            continue
        rng = np.random.default_rng(int(c) + 1)
        best = np.inf
        r_c = sim_rate[c]
        fam_c, shape_c, cv_c = _lifted(family[c], shape[c], cv[c], r_c)
        for lim, f, v in _onoff_candidates(cv[c][active[c]]):
            if best <= GOOD_SCORE or (budget <= 0 and np.isfinite(best)):
                break
            ext = (fam_c != Family.NONE) & (cv_c >= lim)
            sim = _collect(arrivals.renewal(edges, r_c, np.where(ext, Family.ONOFF, fam_c).astype(np.int8),
                                            np.where(ext, cv_c, shape_c).astype(np.float64), rng, off_share=f,
                                            on_cv=v))
            budget -= sim.size
            sc = score(fano_of(sim, span, scales), fano[c])
            if sc < best - 0.02:  # a candidate must earn its place over the default (listed first)
                best, off[c], onoff_cv[c], on_cv[c] = sc, f, lim, v
        scores[c, 0] = best
        if not is_cand[c]:
            continue
        tc = ts[bounds[c]:bounds[c + 1]]
        tu, bsz = np.unique(tc, return_counts=True)
        bmean[c] = float(bsz.mean())
        tables.append(compress(LengthTable.from_samples(bsz.astype(np.float64)), ks_max))
        bindex[c] = len(tables) - 1
        ef_c, es_c, _ = _lifted(ef[c], es[c], es[c], sim_rate[c])
        sim = _collect(arrivals.epochs(edges, sim_rate[c], ef_c, es_c,
                                       float(bmean[c]), tables[-1], rng, off_share=float(off[c]),
                                       on_cv=float(on_cv[c])))
        scores[c, 2] = score(fano_of(sim, span, scales), fano[c])
        grid = grid_of(tu, span, scales)
        if grid is not None:
            period[c], phase[c] = grid
            disp[c] = _tick_dispersion(tc, float(period[c]), float(phase[c]), rate[c].astype(np.float64), W)
            sim = _collect(arrivals.tick(edges, sim_rate[c], float(period[c]), float(phase[c]),
                                         float(disp[c]), rng))
            scores[c, 1] = score(fano_of(sim, span, scales), fano[c])
            big = fano[c][np.isfinite(fano[c])]
            qshape[c] = 1.0 / float(np.clip(big[-1], 0.05, 1e4))  # Gamma shape 1 / CV^2 with CV^2 = F at large T
            sim = _collect(arrivals.quantised(arrivals.renewal(
                edges, sim_rate[c], np.where(sim_rate[c] > 0, Family.GAMMA, Family.NONE).astype(np.int8),
                np.full(n_w, float(qshape[c])), rng), float(period[c]), float(phase[c])))
            scores[c, 3] = score(fano_of(sim, span, scales), fano[c])
        s = np.where(np.isfinite(scores[c]), scores[c], np.inf)
        model[c] = int(np.argmin(s)) if np.isfinite(s).any() else 0
    used = ", ".join(f"{m} {int(np.count_nonzero(model == i))}" for i, m in enumerate(MODELS) if np.any(model == i))
    why = (f"chosen by count dispersion at {', '.join(f'{x:g}' for x in scales)} s scales" if scales
           else "the log is too short to compare count dispersions: renewal gaps")
    notes.append(f"arrival models: {used} client(s) ({why}; `inspect POOL` shows the evidence); "
                 f"rate profile by {PROFILE_NAMES[kind]}")
    for c in np.flatnonzero(model > 0)[:20]:
        notes.append(f"client {c}: {z[c]:.0%} of gaps are 0: batched arrivals ({MODELS[model[c]]}"
                     + (f", mean batch {bmean[c]:.3g}" if model[c] == 2 else f", period {period[c]:.4g} s") + ")")

    # shrinkage of window rates towards the profile: count variance per expected request, per model
    gain = np.zeros(n_clients)  # 0: the window's own max(CV, 1)^2 (renewal)
    for c in np.flatnonzero(bindex >= 0):
        tb = tables[bindex[c]]
        pm = np.diff(tb.cdf, prepend=0.0)
        if model[c] == 2:
            gain[c] = float(np.dot(pm, (tb.values - tb.mean()) ** 2)) / max(float(bmean[c]), 1.0) + float(bmean[c])
    gain = np.where(model == 1, disp, gain)
    gain = np.where(model == 3, 1.0 / qshape, gain)
    g = np.where(gain[:, None] > 0, gain[:, None], g0)
    s2 = signal_variance(r_obs, prof_w, g, covered)
    full = covered >= W - 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        b_full = np.sqrt(s2[:, None] / (s2[:, None] + g * prof_w / W))
    shrink = np.array([float(np.median(b_full[c, full & (prof_w[c] > 0)])) if np.any(full & (prof_w[c] > 0)) else 0.0
                       for c in range(n_clients)], dtype=np.float32)

    extra: dict[str, np.ndarray] = {
        "arrival_model": model, "arrival_score": scores, "zero_gap_share": z.astype(np.float32),
        "batch_period": period, "batch_phase": phase, "batch_dispersion": disp, "batch_mean": bmean,
        "batch_index": bindex, "quantum_shape": qshape, "fano_obs": fano, "profile": profile, "level": level, "rate_shrink": shrink, "rate_signal_var": s2.astype(np.float32),
        "rate_noise": gain.astype(np.float32), "onoff_share": off,
        "onoff_cv": onoff_cv, "onoff_on_cv": on_cv,
    }
    if np.any(model == 2):
        extra["epoch_family"] = ef.astype(np.int8)
        extra["epoch_shape"] = es.astype(np.float32)
    meta = {"version": 2, "models": list(MODELS), "scales": scales, "profile_kind": kind, "profile_bin": HOUR,
            "profile_clock": "utc" if wall_clock else "pool", "origin": float(origin) if wall_clock else 0.0,
            "span": float(span)}
    return ArrivalFit(extra=extra, meta=meta, batch_tables=tables, notes=notes)


def window_cover(n_w: int, W: float, span: float) -> np.ndarray:
    """Seconds of the fitted span inside each rate window (the last one may be partial)."""
    i = np.arange(n_w, dtype=np.float64)
    return np.maximum(np.minimum((i + 1) * W, max(span, 1e-9)) - i * W, 0.0)


def signal_variance(r: np.ndarray, prof: np.ndarray, g: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """s^2 per client: mean over windows of (r_w - p_w)^2 - v_w, v_w = g_w p_w / covered_w, floored at 0."""
    ok = covered > 0
    v = g[:, ok] * prof[:, ok] / covered[ok]
    return np.maximum(((r[:, ok] - prof[:, ok]) ** 2 - v).mean(axis=1), 0.0) if ok.any() else np.zeros(r.shape[0])


def shrunk_rates(rate: np.ndarray, prof: np.ndarray, s2: np.ndarray, g: np.ndarray,
                 covered: np.ndarray) -> np.ndarray:
    """r'_w = p_w + B_w (r_w - p_w), B_w = sqrt(s^2 / (s^2 + v_w)) (module docstring), >= 0."""
    v = g * prof / np.maximum(covered, 1e-9)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(s2[:, None] + v > 0, np.sqrt(s2[:, None] / (s2[:, None] + v)), 1.0)
    return np.maximum(prof + b * (rate - prof), 0.0)


def _lifted(fam: np.ndarray, shape: np.ndarray, cv: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, ...]:
    """A client's windows as `continuation.view` lifts them: a quiet window given a rate by the
    shrinkage takes the family of the client's busiest window."""
    lift = (rate > 0) & (fam == Family.NONE)
    if not lift.any():
        return fam, shape.astype(np.float64), cv.astype(np.float64)
    b = int(np.argmax(np.where(fam != Family.NONE, rate, -1.0)))
    return (np.where(lift, fam[b], fam).astype(np.int8), np.where(lift, shape[b], shape).astype(np.float64),
            np.where(lift, cv[b], cv).astype(np.float64))


def _onoff_candidates(cvs: np.ndarray) -> list[tuple[float, float, float]]:
    """(CV threshold, off share, on-gap CV) to simulate: the default first, then the other shapes
    for windows at or above 10 (if any), then on/off from CV 3 up (if any window is that bursty)."""
    out = [(ONOFF_MIN_CV, ONOFF_OFF_SHARE, 1.0)]
    shapes = [(f, v) for v in ON_CVS for f in OFF_SHARES]
    if np.any(cvs >= ONOFF_MIN_CV):
        out += [(ONOFF_MIN_CV, f, v) for f, v in shapes if (f, v) != (ONOFF_OFF_SHARE, 1.0)]
    if np.any(cvs >= LOW_ONOFF_CV):
        out += [(LOW_ONOFF_CV, f, v) for f, v in shapes]
    return out


def _collect(chunks: Any) -> np.ndarray:
    parts = [t for t, _ in chunks]
    return np.concatenate(parts) if parts else np.zeros(0)


def grid_of(tu: np.ndarray, span: float, scales: list[float]) -> tuple[float, float] | None:
    """(period, phase) when distinct timestamps lie on a grid (module docstring), else None.

    Not a grid a model could use: one finer than `MIN_PERIOD_SHARE` of the smallest scale scored
    (a log's own time resolution, 1 ms say: quantising to it moves no count at those scales, and
    batches on it are `epochs`), or with more than `DENSE_BINS` periods in the span (the tick
    models count and simulate every period: a day of 1 ms ticks took 35 s and 3.5 GB)."""
    if tu.size < 20:
        return None
    d = np.diff(tu)
    p0 = float(np.quantile(d, 0.02))
    if not p0 > 0:
        return None
    r = d / p0
    on = np.abs(r - np.rint(r)) < 0.1
    if float(on.mean()) < 0.9:
        return None
    one = d[on & (np.rint(r) == 1)]
    period = float(np.median(one)) if one.size else p0
    if period < MIN_PERIOD_SHARE * min(scales, default=SCALES[0]) or span / period > DENSE_BINS:
        return None
    k = np.rint((tu - tu[0]) / period)
    ph = float(np.median(tu - k * period)) % period
    return period, ph


def _tick_dispersion(tc: np.ndarray, period: float, phase: float, rate: np.ndarray, W: float) -> float:
    k = np.rint((tc - phase) / period).astype(np.int64)
    k0 = int(k.min())
    n = np.bincount(k - k0).astype(np.float64)
    tt = phase + period * (np.arange(n.size) + k0)
    w = np.clip((tt // W).astype(np.int64), 0, rate.size - 1)
    m = rate[w] * period
    sm = float(m.sum())
    # 0 allowed: clockwork batches (a cron job's fixed count each period) are drawn with the least variance
    return float(np.clip(((n - m) ** 2).sum() / sm, 0.0, 1e6)) if sm > 0 else 1.0


def group_time_order(group: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Indices sorting rows by (group, t). Logs are nearly time-sorted, so: a (cheap) stable sort by
    time unless already sorted, then a stable sort by group (radix sort for 16-bit codes)."""
    if t.size > 1 and not bool(np.all(t[1:] >= t[:-1])):
        by_t = np.argsort(t, kind="stable")
        return by_t[_stable_group_sort(group[by_t])]
    return _stable_group_sort(group)


def _stable_group_sort(group: np.ndarray) -> np.ndarray:
    g = group.astype(np.uint16) if group.size and int(group.max()) < 65536 else group
    return np.argsort(g, kind="stable")


def describe(pool: Any, top: int = 10) -> dict[str, Any] | None:
    """The arrival models of a fitted pool and their evidence, for `inspect` (None: not fitted here)."""
    x = pool.extra
    meta = pool.meta.get("arrival")
    if "arrival_model" not in x or not isinstance(meta, dict):
        return None
    model = x["arrival_model"]
    scales = [float(s) for s in meta.get("scales", [])]
    counts = {m: int(np.count_nonzero(model == i)) for i, m in enumerate(MODELS) if np.any(model == i)}
    reqs = pool.requests_per_client()
    lines = [f"arrival models: {', '.join(f'{m} {n}' for m, n in counts.items())} client(s); rate profile "
             f"{meta.get('profile_kind')} ({meta.get('profile_clock')} clock), scored at "
             f"{', '.join(f'{s:g} s' for s in scales)} (score = mean |log Fano ratio|, simulated vs log)"]
    choice = (pool.meta.get("fit") or {}).get("window_choice")
    if isinstance(choice, dict) and choice.get("line"):
        lines.append(f"rate window: {choice['line']}")
    rows = []
    for c in np.argsort(-reqs, kind="stable")[:top]:
        m = int(model[c])
        sc = x["arrival_score"][c]
        ev = " ".join(f"{MODELS[i]} {float(v):.3f}" for i, v in enumerate(sc) if np.isfinite(v))
        fano = " ".join(f"{s:g}s:{float(v):.3g}" for s, v in zip(scales, x["fano_obs"][c], strict=False) if np.isfinite(v))
        extra = ""
        if m == 1:
            extra = f" period {float(x['batch_period'][c]):.4g} s, Var/mean per tick {float(x['batch_dispersion'][c]):.3g}"
        elif m == 2:
            extra = f" mean batch {float(x['batch_mean'][c]):.3g}"
        elif m == 3:
            extra = f" tick {float(x['batch_period'][c]):.4g} s"
        on = ""
        if "onoff_cv" in x and np.any((pool.cv[c] >= float(x["onoff_cv"][c])) & (pool.rate[c] > 0)):
            on = (f"; on/off from CV {float(x['onoff_cv'][c]):g} (off {float(x['onoff_share'][c]):.0%} of the time, "
                  f"burst gap CV {float(x['onoff_on_cv'][c]):g})")
        rows.append({"client": pool.clients[c], "model": MODELS[m], "zero_gap_share": float(x["zero_gap_share"][c]),
                     "scores": {MODELS[i]: float(v) for i, v in enumerate(sc) if np.isfinite(v)},
                     "fano": {f"{s:g}": float(v) for s, v in zip(scales, x["fano_obs"][c], strict=False) if np.isfinite(v)},
                     "rate_shrink": float(x["rate_shrink"][c])})
        lines.append(f"  {pool.clients[c]}: {MODELS[m]}{extra}; zero gaps {float(x['zero_gap_share'][c]):.0%}; "
                     f"log Fano {fano or '-'}; scores {ev or '-'}; window-rate shrink {float(x['rate_shrink'][c]):.2f}{on}")
    return {"models": counts, "profile": meta.get("profile_kind"), "scales": scales, "clients": rows, "lines": lines,
            "window_choice": choice if isinstance(choice, dict) else None}
