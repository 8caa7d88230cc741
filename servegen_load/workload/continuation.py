"""A fitted pool's windows as generation uses them: shrunk towards its rate profile, continued past its span.

Pools made by `fit` carry a rate profile (`profile`, per hour of week), a `level` and a shrinkage
factor B per client (`arrival_fit`). `view(pool, end, shrink)` returns a pool whose rate
windows cover [0, end):

- inside the fitted span, with `shrink` (renewal mode), r'_w = p_w + B_w (r_w - p_w)
  (`arrival_fit.shrunk_rates`): the window's count noise is not generated a second time around
  a rate that already holds it;
  `servegen` mode (fixed counts) keeps the raw rates;
- past the span, window w takes a source window s: the latest fitted window at the same phase
  of the profile's period (the same hour of the week with a weekly profile; the same time of day,
  and day type when weekdays and weekends were told apart, otherwise), or cyclically the fitted
  windows in order when the log is shorter than that period. Its rate is the profile at w's own
  wall-clock phase plus the source's shrunk deviation, r_w = p_w + (r'_s - p_s) (>= 0), and its
  gap family and shape are the source's. A phase the log never saw (a log shorter than a day)
  has the profile interpolated around the cycle from the seen ones (`arrival_fit.rate_profile`):
  the level goes on from the latest seen towards the earliest. So the level and the daily and weekly cycles follow the
  profile, and burstiness at every scale (within and across windows) that of the fitted log.
- tenants that left or arrived (`_recent`): the last `RECENT_S` of the log against what the
  continuation would have predicted for them from a period earlier; a client that clearly stopped
  is continued at ~0, one that clearly began at least at its recent median rate; any smaller
  change is left to the profile and the source windows.
- outages (`outage_windows`: at least `OUTAGE_MIN` seconds in which no client sent anything,
  between windows whose rate predicts at least `OUTAGE_EXPECTED` requests there) are a service or
  its log being down, not traffic: past the span no window takes one as its source (the latest
  window at the same phase that was up, else the nearest fitted window that was up). Inside the
  fitted span they stay, as history.
- windows with a rate but no fitted family (a quiet window lifted by the profile) take the
  client's busiest window's family; data windows past the span take the latest fitted one at
  the same time of day, and a client's missing length tables the nearest one it has.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .arrival_fit import DAY, WEEK, profile_at, shrunk_rates, window_cover
from .distributions import Family
from .pool import ClientPool

_VIEWS: dict[tuple[int, int, bool], tuple[ClientPool, ClientPool]] = {}
_WINDOWED = ("epoch_family", "epoch_shape")
OUTAGE_MIN = 1800.0  # seconds of silence from every client before it can be an outage
OUTAGE_EXPECTED = 100.0  # requests the neighbouring windows' rate predicts over the silence
OUTAGE_EDGE = 0.05  # a window next to the silence below this share of the rate around is part of it
RECENT_S = 3 * 3600.0  # the end of the log a client's current level is read from (at most a quarter of it)
RECENT_PRIOR = 2.0  # requests (over the count noise) of prior belief that the level goes on as the model says
RECENT_Z = 6.0  # a departure or arrival must stand this many noise deviations out of the prediction
GONE_SHARE = 0.1  # sent under this share of the prediction: gone (and predicted under it of what was sent: new)
SHIFT = 2.5  # a level this many times above or below the prediction for two stretches in a row moved for good


def outage_windows(rate: np.ndarray, W: float) -> np.ndarray:
    """Windows (bool, per window) in runs of total silence that the traffic around them makes implausible.

    A run of windows where every client's rate is 0, lasting >= `OUTAGE_MIN` seconds, whose
    flanking windows' mean total rate (those that exist, up to 3 each side) times its length
    exceeds `OUTAGE_EXPECTED` (Poisson odds of such a silence: e^-100), with the windows next to
    it that hold under `OUTAGE_EDGE` of that rate (it began or ended inside them). A quiet night of a
    low-rate service, or an on/off client's off time, does not qualify: the rate around it is low.
    """
    total = np.asarray(rate, dtype=np.float64).sum(axis=0)
    n = total.size
    out = np.zeros(n, dtype=bool)
    zero = np.concatenate([[False], total <= 0, [False]])
    starts = np.flatnonzero(zero[1:] & ~zero[:-1])
    ends = np.flatnonzero(~zero[1:] & zero[:-1])  # exclusive
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if (b - a) * W < OUTAGE_MIN:
            continue
        around = np.concatenate([total[max(0, a - 3):a], total[b:b + 3]])
        ref = float(around.mean()) if around.size else 0.0
        if ref * (b - a) * W >= OUTAGE_EXPECTED:
            # the windows where it began and ended hold a few stragglers: part of the outage too
            while a > 0 and total[a - 1] < OUTAGE_EDGE * ref:
                a -= 1
            while b < n and total[b] < OUTAGE_EDGE * ref:
                b += 1
            out[a:b] = True
    return out


def has_profile(pool: ClientPool) -> bool:
    return all(k in pool.extra for k in ("profile", "level", "rate_shrink")) and isinstance(
        pool.meta.get("arrival"), dict)


def view(pool: ClientPool, end: float, shrink: bool) -> ClientPool:
    """The pool's windows for generation up to pool time `end` (see the module docstring)."""
    W = pool.window
    n0 = pool.window_start.size
    n1 = max(n0, int(np.ceil(end / W - 1e-9)))
    key = (id(pool), n1, shrink)
    hit = _VIEWS.get(key)
    if hit is not None and hit[0] is pool:
        return hit[1]
    meta = pool.meta["arrival"]
    wall = meta.get("profile_clock") == "utc"
    origin = float(meta.get("origin", 0.0))
    kind = str(meta.get("profile_kind", "day"))
    level = pool.extra["level"].astype(np.float64)
    prof_src = pool.extra["profile"]
    starts = np.arange(n1, dtype=np.float64) * W
    src = _sources(n0, n1, W, origin, kind, wall, outage_windows(pool.rate, W))
    p_src = profile_at(prof_src, level, origin + starts[src] + 0.5 * W, wall)
    p_new = profile_at(prof_src, np.full(level.shape, np.nan), origin + starts + 0.5 * W, wall)
    prof = np.where(np.isfinite(p_new), p_new, p_src)
    r_src = pool.rate.astype(np.float64)
    if shrink and "rate_signal_var" in pool.extra:
        covered = window_cover(n0, W, float(meta.get("span", n0 * W)))
        p_fit = profile_at(prof_src, level, origin + starts[:n0] + 0.5 * W, wall)
        r_src = shrunk_rates(r_src, p_fit, pool.extra["rate_signal_var"].astype(np.float64), _count_noise(pool),
                             covered)
    elif shrink:
        B = pool.extra["rate_shrink"].astype(np.float64)[:, None]
        r_src = p_src[:, :n0] + B * (r_src - p_src[:, :n0])
    rate = np.maximum(prof + (r_src[:, src] - p_src), 0.0)
    moved = np.zeros(pool.n_clients, dtype=bool)
    if n1 > n0:
        factor, floor, shift, since = _recent(pool, r_src, prof_src, level, origin, kind, wall)
        rate[:, n0:] = np.maximum(factor[:, None] * rate[:, n0:], floor[:, None])
        moved = np.isfinite(shift)  # a level that moved for good: windows continued from before the move follow it
        for c in np.flatnonzero(moved):
            before = src[n0:] < since[c]
            rate[c, n0:][before] *= shift[c]
    fam = pool.family[:, src].copy()
    shape = pool.shape[:, src].copy()
    cv = pool.cv[:, src].copy()
    scale = pool.scale[:, src].copy()
    extra = dict(pool.extra)
    for k in _WINDOWED:
        if k in extra:
            extra[k] = extra[k][:, src].copy()
    busiest = np.argmax(pool.rate, axis=1)
    lift = (rate > 0) & (fam == Family.NONE)
    if lift.any():
        ci = np.nonzero(lift)[0]
        wb = busiest[ci]
        fam[lift] = pool.family[ci, wb]
        shape[lift], cv[lift], scale[lift] = pool.shape[ci, wb], pool.cv[ci, wb], pool.scale[ci, wb]
        for k in _WINDOWED:
            if k in extra:
                extra[k][lift] = pool.extra[k][ci, wb]
        dead = lift & (fam == Family.NONE)  # a client with no fitted window at all
        rate[dead] = 0.0
    data_start, table_index = _data_windows(pool, float(n1 * W))
    d0 = pool.data_start.size
    if moved.any() and table_index.shape[1] > d0:  # and its lengths: those since the move, not a day back
        table_index[moved, d0:, :] = table_index[moved, d0 - 1:d0, :]
    out = replace(pool, window_start=starts, rate=rate.astype(np.float32), family=fam, shape=shape, cv=cv,
                  scale=scale, data_start=data_start, table_index=table_index, extra=extra)
    _VIEWS[key] = (pool, out)
    return out


def _count_noise(pool: ClientPool) -> np.ndarray:
    """Count variance per expected request, clients x fitted windows: the client's arrival model's
    (`rate_noise`), else the window's max(CV, 1)^2 (`arrival_fit`'s shrinkage)."""
    gain = pool.extra.get("rate_noise", np.zeros(pool.n_clients)).astype(np.float64)[:, None]
    return np.where(gain > 0, gain, np.maximum(pool.cv.astype(np.float64), 1.0) ** 2)


def _recent(pool: ClientPool, r_src: np.ndarray, prof_src: np.ndarray, level: np.ndarray, origin: float,
            kind: str, wall: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per client (factor, floor rate, move factor, move start) for windows past the span, from its last
    `RECENT_S` of log (when a whole period of the profile precedes them: a shorter log is continued
    by its profile's latest level already).

    The continuation is run as if the log had ended `RECENT_S` earlier, and what it predicts for
    the last hours is set against what the client sent there. Tenants come and go, and a source
    window a day back knows nothing of it: a client that stopped 8 h before the end was continued
    at its full rate, one that began 5 h before at none. Only those two are acted on, where the
    count stands far out of the client's count noise (`RECENT_Z`; the noise per request is its
    model's, else its windows' CV^2): a client that sent under `GONE_SHARE` of the prediction has
    left (factor: the posterior mean of the ratio under a Gamma(`RECENT_PRIOR`) prior, ~0), one
    whose prediction was under `GONE_SHARE` of what it sent has arrived (floor: the median rate
    of its recent windows, so a spike in them is not carried on); neither for a client whose log
    already went as quiet and came back, or woke and went quiet again (`_habitual`): that is its
    habit. Anything between (a 2-3 h surge, a quiet evening, a trend) is the traffic's own
    variation: carried on at full strength for days, such changes lost to Poisson on
    production-like logs. Except a level that moved for good (`_moved`): the factor on windows
    continued from before the move and its first window (NaN and n0 for every other client)."""
    W = pool.window
    n0 = pool.window_start.size
    meta = pool.meta["arrival"]
    span = float(meta.get("span", n0 * W))
    m = round(min(RECENT_S, span / 4) / W)
    ones, none, nan = np.ones(pool.n_clients), np.zeros(pool.n_clients), np.full(pool.n_clients, np.nan)
    step = round((WEEK if kind == "week" else DAY) / W)
    if m < 1 or n0 - m < step:  # no period before the last hours to predict them from
        return ones, none, nan, np.full(pool.n_clients, n0)
    predicted = _continued(pool, r_src, prof_src, level, origin, kind, wall, n0 - m)
    cover_all = window_cover(n0, W, span)
    cover = cover_all[n0 - m:]
    seen = pool.rate[:, n0 - m:].astype(np.float64)
    n, pred = seen @ cover, predicted @ cover
    busy = pool.rate[:, :n0] > 0
    noise = np.ones(pool.n_clients)  # per client: its windows' count noise, the median over those with traffic
    some = busy.any(axis=1)
    noise[some] = np.nanmedian(np.where(busy, _count_noise(pool)[:, :n0], np.nan)[some], axis=1)
    noise = np.maximum(noise, 1e-3)
    gone, new = _left_or_began(n, pred, noise)
    gone_before, new_before = _habitual(pool.rate[:, :n0 - m] * cover_all[:n0 - m], m, step, noise)
    gone &= ~gone_before
    new &= ~new_before
    factor = np.where(gone, (n / noise + RECENT_PRIOR) / (pred / noise + RECENT_PRIOR), 1.0)
    full = cover >= 0.5 * W
    median = np.median(seen[:, full], axis=1) if full.any() else n / max(cover.sum(), 1e-9)
    moved, since = _moved(pool, r_src, prof_src, level, origin, kind, wall, m, step, noise)
    moved[gone | new] = np.nan
    return factor, np.where(new, median, 0.0), moved, since


def _moved(pool: ClientPool, r_src: np.ndarray, prof_src: np.ndarray, level: np.ndarray, origin: float,
           kind: str, wall: bool, m: int, step: int, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per client whose rate moved for good: (the factor on its continuation from windows before
    the move, the first window of the move), else (NaN, n0). Moved: the last stretches of `m`
    windows, at least two, each at least `SHIFT` times above (or below) what the log up to it
    predicts there, far out of the count noise (`RECENT_Z`), with no such move earlier in its log
    that came back (`_habitual`). The factor is the posterior ratio (`RECENT_PRIOR`) of what it
    sent since the move to what the log before it predicted.

    Why: a tenant whose rate rose 5x (and prompts 30x) 8 h before the end of the log was continued
    from the day before, at its old rate and lengths: -49 % rate, input p50 -77 %, and Poisson at
    the last 6 h's rate came closer to the held-out traffic than the fit. Six hours and more of a
    new level is a move, not the 2-3 h surges a day of production traffic holds."""
    W = pool.window
    n0 = pool.window_start.size
    span = float(pool.meta["arrival"].get("span", n0 * W))
    cover_all = window_cover(n0, W, span)
    seen_all = pool.rate.astype(np.float64) * cover_all

    counts: dict[int, np.ndarray] = {}

    def predicted(a: int) -> np.ndarray:
        """Counts of windows a..n0-1 as the log up to `a` continues into them (each `a` once)."""
        if a not in counts:
            counts[a] = _continued(pool, r_src, prof_src, level, origin, kind, wall, a) * cover_all[a:]
        return counts[a]

    k = pool.n_clients
    since = np.full(k, n0)
    up, down = np.ones(k, dtype=bool), np.ones(k, dtype=bool)
    for j in range(1, n0 // m + 1):  # stretch j: [n0 - j m, n0 - (j - 1) m), predicted from the log before it
        a = n0 - j * m
        if a < step:
            break
        d, u = _left_or_began(seen_all[:, a:a + m].sum(axis=1), predicted(a)[:, :m].sum(axis=1), noise, 1 / SHIFT)
        up &= u
        down &= d
        since = np.where(up | down, a, since)
        if not (up | down).any():
            break
    factor = np.full(k, np.nan)
    for c in np.flatnonzero(since <= n0 - 2 * m):
        a = int(since[c])
        was_down, was_up = _habitual(seen_all[c:c + 1, :a], m, step, noise[c:c + 1], 1 / SHIFT)
        if not (was_up if up[c] else was_down)[0]:
            p = predicted(a)[c].sum()
            factor[c] = (seen_all[c, a:].sum() / noise[c] + RECENT_PRIOR) / (p / noise[c] + RECENT_PRIOR)
    return factor, np.where(np.isfinite(factor), since, n0)


def _continued(pool: ClientPool, r_src: np.ndarray, prof_src: np.ndarray, level: np.ndarray, origin: float,
               kind: str, wall: bool, a: int) -> np.ndarray:
    """Rates of the fitted windows a..n0-1 as `view` would continue the log had it ended at window `a`."""
    W = pool.window
    n0 = pool.window_start.size
    src = _sources(a, n0, W, origin, kind, wall, outage_windows(pool.rate[:, :a], W))[a:]
    own = profile_at(prof_src, level, origin + np.arange(a, n0) * W + 0.5 * W, wall)
    back = profile_at(prof_src, level, origin + src * W + 0.5 * W, wall)
    return np.maximum(own + (r_src[:, src] - back), 0.0)


def _left_or_began(sent: np.ndarray, expected: np.ndarray, noise: np.ndarray,
                   share: float = GONE_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """(departures, arrivals): counts far (`RECENT_Z` noise deviations) out of what was expected,
    under `share` of it, or it under that share of them."""
    big = np.abs(sent - expected) / np.sqrt(noise * np.maximum(expected, 1.0)) >= RECENT_Z
    return big & (sent < share * expected), big & (expected < share * sent)


def _habitual(counts: np.ndarray, m: int, step: int, noise: np.ndarray,
              share: float = GONE_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Per client: whether its log, before the last hours, already went quiet and came back (and
    woke and went quiet again). A stretch of `m` windows that fell as far below the same stretch a
    period earlier as a departure does, with the client sending again after it, is a silence it
    keeps as a habit: jobs that run for minutes every few hours, on no daily clock (12 such jobs,
    silent 3-9 h before the split as many times earlier, were continued at nothing). A silence
    that has not ended (a tenant that left before the last hours) is no habit."""
    k, n = counts.shape
    none = np.zeros(k, dtype=bool)
    if n < step + 2 * m:
        return none, none
    c = np.concatenate([np.zeros((k, 1)), np.cumsum(counts, axis=1)], axis=1)
    sums = c[:, m:] - c[:, :-m]  # the stretch starting at each window
    now, back = sums[:, step:], sums[:, :-step]
    drop, rise = _left_or_began(now, back, noise[:, None], share)

    def reverted(event: np.ndarray, then: np.ndarray) -> np.ndarray:
        """`then` in a stretch wholly after a client's first `event`."""
        first = np.where(event.any(axis=1), event.argmax(axis=1), now.shape[1])
        return (then & (np.arange(now.shape[1])[None, :] >= (first + m)[:, None])).any(axis=1)

    peak = np.where(rise, now, 0.0).max(axis=1, keepdims=True)
    return reverted(drop, (now > 0) & ~drop), reverted(rise, now < share * peak)


def _sources(n0: int, n1: int, W: float, origin: float, kind: str, wall: bool,
             down: np.ndarray | None = None) -> np.ndarray:
    """Source window of every window 0..n1-1 (itself inside the span; module docstring past it);
    `down` marks fitted windows that are outages (never a source past the span)."""
    src = np.arange(n1)
    if n1 == n0:
        return src
    down = np.zeros(n0, dtype=bool) if down is None or down.all() else down
    up = np.flatnonzero(~down)
    w = np.arange(n0, n1)
    period = WEEK if kind == "week" else DAY
    step = round(period / W)
    if abs(step * W - period) < 1e-6 and step <= n0:
        back = np.ceil((w - n0 + 1) / step).astype(np.int64)
        s = w - back * step
        if kind == "day+weekend" and wall:
            def weekend(i: np.ndarray) -> np.ndarray:
                return ((np.floor((origin + (i + 0.5) * W) / DAY).astype(np.int64) + 3) % 7) >= 5
            want = weekend(w)
            for _ in range(7):  # step back a day at a time until the day type matches (if seen)
                bad = (weekend(s) != want) & (s - step >= 0)
                if not bad.any():
                    break
                s = np.where(bad, s - step, s)
        for _ in range(n0 // step + 1):  # an outage: the same phase a period earlier, while there is one
            bad = down[s] & (s - step >= 0)
            if not bad.any():
                break
            s = np.where(bad, s - step, s)
        if down[s].any():  # no period was up at that phase: the nearest window that was
            s = np.where(down[s], up[np.clip(np.searchsorted(up, s), 0, up.size - 1)], s)
        src[n0:] = s
    else:
        src[n0:] = up[(w - n0) % up.size]
    return src


def _data_windows(pool: ClientPool, end: float) -> tuple[np.ndarray, np.ndarray]:
    D = pool.data_window
    d0 = pool.data_start.size
    d1 = max(d0, int(np.ceil(end / D - 1e-9)))
    starts = np.arange(d1, dtype=np.float64) * D
    if d1 > d0 and np.allclose(pool.data_start, starts[:d0]):
        src = np.arange(d1)
        step = round(DAY / D)
        for d in range(d0, d1):
            s = d - step if step >= 1 and abs(step * D - DAY) < 1e-6 else d0 - 1
            src[d] = src[s] if 0 <= s < d else d0 - 1
        ti = pool.table_index[:, src, :].copy()
    else:
        starts, ti = pool.data_start.astype(np.float64), pool.table_index.copy()
    # a client's missing tables: the nearest earlier one it has, else the nearest later one
    for direction in (1, -1):
        rng = range(1, ti.shape[1]) if direction == 1 else range(ti.shape[1] - 2, -1, -1)
        for d in rng:
            miss = ti[:, d, :] < 0
            ti[:, d, :][miss] = ti[:, d - direction, :][miss]
    return starts, ti
