"""Realism statistics of a request stream, and the side-by-side comparison behind `compare`.

A stream is anything `workload.logs.read_log` reads (a log, a requests file, a results file);
both streams are aligned to start at 0 (their first request). B is the reference: relative
deviations divide by B's value. Rows, their statistic and the deviation that enters the summary:

| key                    | statistic                                                  | deviation               |
|------------------------|------------------------------------------------------------|-------------------------|
| requests, duration     | request count, first-to-last request span (s)              | none (information)      |
| rate.mean              | requests / duration                                        | abs(a - b) / b          |
| rate.corr              | Pearson r of counts per minute over the common minutes     | 1 - r                   |
| rate.maxdev            | max over minutes abs(a_i - b_i) / mean(b_i)                | none: Poisson noise     |
|                        |                                                            | alone makes it large    |
| burst.cv.<s>           | CV of counts per s-second window (s = 1, 10, 60, 600)      | abs(a - b) / b          |
| burst.fano.<s>         | Fano factor var/mean of counts per s-second window         | abs(a - b) / b          |
| gap.cv                 | CV of all gaps between consecutive requests                | abs(a - b) / b          |
| gap.cv_window          | median over 60 s windows (>= 10 requests, weighted by      | abs(a - b) / b          |
|                        | requests) of the CV of the gaps inside the window          |                         |
| clients.count          | clients with requests (both streams need client ids)       | none (information)      |
| clients.top<k>         | share of requests of the k largest clients (k = 1, 5, 10)  | abs(a - b)              |
| <f>.p10 .p50 .p90 .p99 | quantiles of f = input, output, reason tokens              | abs(a - b) / b          |
| <f>.ks                 | Kolmogorov-Smirnov distance of the two distributions       | the distance            |
| <f>.w1                 | Wasserstein-1 distance / mean of B                         | the distance            |
| lengths.rank_corr      | Spearman correlation of input and output tokens            | abs(a - b)              |
| session.share          | share of requests that carry a session id                  | abs(a - b)              |
| session.turns          | mean turns per session                                     | abs(a - b) / b          |
| session.think_p50      | median think time between turns (s, arrival to arrival)    | abs(a - b) / b          |
| session.think.ks       | KS distance of the think times                             | the distance            |
| session.later_input.ks | KS distance of later turns' input tokens                   | the distance            |

A window scale enters only when both streams have at least `MIN_BINS` and at most `MAX_BINS`
whole windows of it. Gap rows are taken on the coarser clock of the two streams (`logs.log_clock`):
a log written in whole seconds has most gaps at 0, which a stream timed to the microsecond
could only match by sending batches (the other stream's times floored to that clock).
The summary `distance` is the largest deviation over the rows (minus the ones the caller
ignores, by glob on the key); it is what `compare --max-distance` gates.
"""

from __future__ import annotations

import fnmatch
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..workload.distributions import LengthTable, ks_distance
from ..workload.logs import CLOCKS, LogChunk, log_clock

SCALES = (1.0, 10.0, 60.0, 600.0, 3600.0)
QUANTILES = (0.10, 0.50, 0.90, 0.99)
TOP = (1, 5, 10)
MIN_BINS = 5
MIN_SUPPORT = 30          # windows a burstiness row needs in both streams to count
MIN_WINDOW_COUNT = 0.5    # B's mean requests per window a burstiness row needs to count
CURVE_BIN = 60.0
CURVE_BINS = (60.0, 600.0, 3600.0, 21600.0)  # rate-curve bins, finest first
CURVE_MIN_COUNT = 10.0    # B's mean requests per rate-curve bin (Poisson noise <= 32% a bin)
CURVE_MIN_BINS = 10
GAP_WINDOW = 60.0
GAP_WINDOW_MIN = 10
RANK_SAMPLE = 1_000_000
MAX_DEVIATION = 2.0       # a row's deviation counts at most this much in the distance
MAX_BINS = 10_000_000  # windows of one count series; a stream longer than that at a scale skips it


@dataclass
class StreamStats:
    """The statistics of one stream (see the module docstring)."""

    name: str
    requests: int
    duration: float
    per_minute: np.ndarray
    curves: dict[float, np.ndarray]  # rate-curve bin (s) -> counts per whole bin
    burst: dict[float, tuple[float, float, int, float]]  # scale -> (cv, fano, windows, mean count)
    gap_cv: float
    gap_cv_window: float
    clients: int | None
    top: dict[int, float] | None
    lengths: dict[str, np.ndarray]  # field -> values (>= 0)
    rank_corr: float
    session: dict[str, Any] | None  # share, turns, sessions, think_p50; arrays think, later_input
    clock: float = 0.0  # the stream's clock (`logs.log_clock`; 0: finer than any of `CLOCKS`)
    gaps_on: dict[float, tuple[float, float]] = field(default_factory=dict)  # coarser clock -> (gap_cv, gap_cv_window)

    @property
    def mean_rate(self) -> float:
        return self.requests / self.duration if self.duration > 0 else math.nan


@dataclass
class Row:
    key: str
    label: str
    a: float | None
    b: float | None
    deviation: float | None
    fmt: str = "{:.3g}"
    weight: float = 1.0   # statistical support in [0, 1]: 0 = shown, not counted
    note: str = ""        # why the weight is below 1 (or the bin was coarsened)

    def cell(self, v: float | None) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return self.fmt.format(v)


@dataclass
class Comparison:
    a: str
    b: str
    rows: list[Row]
    ignored: list[str] = field(default_factory=list)

    @property
    def gated(self) -> list[Row]:
        """Rows that count: a deviation, some support, not ignored."""
        return [r for r in self.rows if r.deviation is not None and not math.isnan(r.deviation)
                and r.weight > 0 and not any(fnmatch.fnmatchcase(r.key, p) for p in self.ignored)]

    def group_weights(self) -> dict[str, float]:
        """Each counted row's share of the distance: support x 1 / (rows of its group)."""
        g = self.gated
        size: dict[str, int] = {}
        for r in g:
            size[_group(r.key)] = size.get(_group(r.key), 0) + 1
        return {r.key: r.weight / size[_group(r.key)] for r in g}

    @property
    def distance(self) -> float:
        """Support-weighted mean of the counted rows' deviations (each capped at `MAX_DEVIATION`)."""
        w = self.group_weights()
        total = sum(w.values())
        if total <= 0:
            return 0.0
        return sum(w[r.key] * min(MAX_DEVIATION, float(r.deviation)) for r in self.gated) / total  # type: ignore[arg-type]

    @property
    def worst_deviation(self) -> float:
        return max((float(r.deviation) for r in self.gated), default=0.0)  # type: ignore[arg-type]

    @property
    def worst(self) -> str | None:
        g = self.gated
        return max(g, key=lambda r: r.deviation).key if g else None  # type: ignore[arg-type,return-value]

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    def to_dict(self, max_distance: float | None = None) -> dict[str, Any]:
        def clean(v: float | None) -> float | str | None:
            """JSON has no NaN or infinity: NaN -> null, infinity -> "inf"."""
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            return ("inf" if v > 0 else "-inf") if math.isinf(v) else float(v)

        d: dict[str, Any] = {
            "a": self.a, "b": self.b, "distance": clean(self.distance), "worst": self.worst,
            "worst_deviation": clean(self.worst_deviation), "ignored": self.ignored,
            "rows": [{"key": r.key, "label": r.label, "a": clean(r.a), "b": clean(r.b),
                      "deviation": clean(r.deviation), "weight": round(r.weight, 4), "note": r.note}
                     for r in self.rows],
        }
        if max_distance is not None:
            d["max_distance"] = max_distance
            d["pass"] = self.distance <= max_distance
        return d


# --------------------------------------------------------------------------- statistics


def stream_stats(log: LogChunk, name: str | None = None, start: float | None = None,
                 end: float | None = None) -> StreamStats:
    """All the statistics of one stream over [start, end) of its time axis (default: its first
    request to its last). Give them where they are known (a `--range`, a requests file's
    schedule): aligned to its own first request, a stream missing its first 10 minutes, or one
    that starts late, compared as if it had not (37 % fewer requests passed as 5 % off in rate)."""
    ta = np.sort(log.t)  # absolute: the clock rows floor these
    if ta.size == 0:
        raise ValueError("a stream needs at least one request")
    t0 = float(ta[0]) if start is None or not math.isfinite(start) else min(float(start), float(ta[0]))
    t = ta - t0
    dur = float(t[-1]) if end is None or not math.isfinite(end) else max(float(end) - t0, float(t[-1]))
    curves = {b: _counts(t, b, dur) for b in CURVE_BINS}
    per_minute = curves[CURVE_BIN]
    burst: dict[float, tuple[float, float, int, float]] = {}
    for s in SCALES:
        c = curves[s] if s in curves else _counts(t, s, dur)
        if c.size >= MIN_BINS and c.mean() > 0:
            burst[s] = (float(c.std() / c.mean()), float(c.var() / c.mean()), int(c.size), float(c.mean()))
    gap_cv = _gap_cv(t)
    clock = log_clock(ta)
    gaps_on: dict[float, tuple[float, float]] = {}
    for c in CLOCKS:
        if c > clock:  # floored on the absolute clock, as a log written on it would be
            tc = np.maximum(np.floor(ta / c) * c - t0, 0.0)
            gaps_on[c] = (_gap_cv(tc), _gap_cv_window(tc))
    top: dict[int, float] | None = None
    n_clients: int | None = None
    if log.has_client:
        cnt = np.sort(np.bincount(log.client))[::-1]
        cnt = cnt[cnt > 0]
        n_clients = int(cnt.size)
        top = {k: float(cnt[:k].sum() / cnt.sum()) for k in TOP}
    lengths: dict[str, np.ndarray] = {}
    for f, col in (("input", log.input), ("output", log.output), ("reason", log.reason)):
        if col is not None and np.any(col >= 0):
            lengths[f] = col[col >= 0]
    return StreamStats(
        name=name or log.path, requests=int(t.size), duration=dur, per_minute=per_minute, curves=curves, burst=burst,
        gap_cv=gap_cv, gap_cv_window=_gap_cv_window(t), clients=n_clients, top=top, lengths=lengths,
        rank_corr=_rank_corr(log.input, log.output), session=_session_stats(log), clock=clock, gaps_on=gaps_on,
    )


def _gap_cv(t: np.ndarray) -> float:
    gaps = np.diff(t)
    return float(gaps.std() / gaps.mean()) if gaps.size > 1 and gaps.mean() > 0 else math.nan


def _counts(t: np.ndarray, scale: float, dur: float) -> np.ndarray:
    """Counts per whole window of `scale` seconds from 0 (a last partial window is left out); none
    when the stream spans more than `MAX_BINS` windows (the row is left out, memory stays bounded)."""
    if not dur / scale <= MAX_BINS:
        return np.zeros(0)
    n = int(dur // scale)
    if n <= 0:
        return np.zeros(0)
    idx = (t // scale).astype(np.int64)
    return np.bincount(idx[idx < n], minlength=n).astype(np.float64)


def _gap_cv_window(t: np.ndarray) -> float:
    w = (t // GAP_WINDOW).astype(np.int64)
    same = w[1:] == w[:-1]
    gaps, gw = np.diff(t)[same], w[1:][same]
    if gaps.size == 0:
        return math.nan
    n = np.bincount(gw).astype(np.float64)
    s1, s2 = np.bincount(gw, gaps), np.bincount(gw, gaps * gaps)
    ok = n >= GAP_WINDOW_MIN - 1
    if not ok.any():
        return math.nan
    mean = s1[ok] / n[ok]
    var = np.maximum(s2[ok] / n[ok] - mean * mean, 0.0) * n[ok] / np.maximum(n[ok] - 1, 1)
    cv = np.sqrt(var) / np.where(mean > 0, mean, np.inf)
    return _weighted_median(cv, n[ok] + 1)


def _weighted_median(v: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(v)
    c = np.cumsum(w[o])
    return float(v[o][np.searchsorted(c, 0.5 * c[-1])])


def _rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = (x >= 0) & (y >= 0)
    if ok.sum() < 3:
        return math.nan
    xs, ys = x[ok], y[ok]
    if xs.size > RANK_SAMPLE:
        step = -(-xs.size // RANK_SAMPLE)
        xs, ys = xs[::step], ys[::step]
    from scipy.stats import rankdata

    rx, ry = rankdata(xs), rankdata(ys)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _session_stats(log: LogChunk) -> dict[str, Any] | None:
    """Share, mean turns, think times (arrival to arrival) and later turns' inputs of the sessions."""
    if log.session is None or not np.any(log.session >= 0):
        return None
    has = log.session >= 0
    s, t, inp = log.session[has], log.t[has], log.input[has]
    o = np.lexsort((t, s))
    s, t, inp = s[o], t[o], inp[o]
    new = np.concatenate([[True], s[1:] != s[:-1]])
    think = np.diff(t)[~new[1:]]
    later = inp[~new]
    return {"share": float(has.mean()), "turns": float(s.size / new.sum()), "sessions": int(new.sum()),
            "think_p50": float(np.median(think)) if think.size else math.nan,
            "think": think, "later_input": later[later >= 0]}


# --------------------------------------------------------------------------- comparison


def compare_streams(a: LogChunk | StreamStats, b: LogChunk | StreamStats,
                    ignore: Sequence[str] = ()) -> Comparison:
    """Side-by-side rows of two streams; B is the reference (see the module docstring)."""
    sa = a if isinstance(a, StreamStats) else stream_stats(a)
    sb = b if isinstance(b, StreamStats) else stream_stats(b)
    rows: list[Row] = [
        Row("requests", "requests", sa.requests, sb.requests, None, "{:.0f}"),
        Row("duration", "duration (s)", sa.duration, sb.duration, None, "{:.1f}"),
        Row("rate.mean", "mean rate (req/s)", sa.mean_rate, sb.mean_rate, _rel(sa.mean_rate, sb.mean_rate)),
    ]
    rows.extend(_curve_rows(sa, sb))
    for s in SCALES:
        if s in sa.burst and s in sb.burst:
            (cva, fa, na, _), (cvb, fb, nb, mb) = sa.burst[s], sb.burst[s]
            n = min(na, nb)
            note = ""
            if n < MIN_SUPPORT:
                note = f"{n} windows (< {MIN_SUPPORT}): not counted"
            elif mb < MIN_WINDOW_COUNT:
                note = f"B has {mb:.2g} requests a window (< {MIN_WINDOW_COUNT:g}): not counted"
            w = 0.0 if note else 1.0
            rows.append(Row(f"burst.cv.{s:g}s", f"count CV per {s:g} s", cva, cvb, _rel(cva, cvb), weight=w, note=note))
            rows.append(Row(f"burst.fano.{s:g}s", f"Fano factor per {s:g} s", fa, fb, _rel(fa, fb), weight=w,
                            note=note))
    clock = max(sa.clock, sb.clock)
    (ga, gwa), (gb, gwb) = ((s.gaps_on.get(clock, (s.gap_cv, s.gap_cv_window))) for s in (sa, sb))
    on = f", on a {clock:g} s clock" if clock else ""
    rows.append(Row("gap.cv", f"gap CV (whole stream{on})", ga, gb, _rel(ga, gb)))
    rows.append(Row("gap.cv_window", f"gap CV inside {GAP_WINDOW:g} s windows{on}", gwa, gwb, _rel(gwa, gwb)))
    if sa.top is not None and sb.top is not None:
        rows.append(Row("clients.count", "clients", sa.clients, sb.clients, None, "{:.0f}"))
        for k in TOP:
            rows.append(Row(f"clients.top{k}", f"top-{k} client share", sa.top[k], sb.top[k],
                            abs(sa.top[k] - sb.top[k]), "{:.3f}"))
    for f in ("input", "output", "reason"):
        if f in sa.lengths and f in sb.lengths:
            rows.extend(_length_rows(f, sa.lengths[f], sb.lengths[f]))
    if not (math.isnan(sa.rank_corr) or math.isnan(sb.rank_corr)):
        rows.append(Row("lengths.rank_corr", "input/output rank correlation", sa.rank_corr, sb.rank_corr,
                        abs(sa.rank_corr - sb.rank_corr), "{:.3f}"))
    if sa.session is not None and sb.session is not None:
        rows.append(Row("session.share", "share of requests in sessions", sa.session["share"],
                        sb.session["share"], abs(sa.session["share"] - sb.session["share"]), "{:.3f}"))
        rows.append(Row("session.turns", "turns per session (mean)", sa.session["turns"], sb.session["turns"],
                        _rel(sa.session["turns"], sb.session["turns"])))
        rows.append(Row("session.think_p50", "think time p50 (s)", sa.session["think_p50"],
                        sb.session["think_p50"], _rel(sa.session["think_p50"], sb.session["think_p50"])))
        for key, label in (("think", "think time (arrival to arrival)"), ("later_input", "later turns' input")):
            va, vb = sa.session[key], sb.session[key]
            if va.size and vb.size:
                ks = ks_distance(LengthTable.from_samples(va), LengthTable.from_samples(vb))
                rows.append(Row(f"session.{key}.ks", f"{label} KS distance", ks, None, ks, "{:.4f}"))
    return Comparison(a=sa.name, b=sb.name, rows=rows, ignored=list(ignore))


def _curve_rows(sa: StreamStats, sb: StreamStats) -> list[Row]:
    """Rate-curve rows on the finest bin where B has >= `CURVE_MIN_COUNT` requests a bin and both
    streams >= `CURVE_MIN_BINS` common bins (finer bins correlate Poisson noise); the row's weight
    is the reliability of B's curve, max(0, 1 - mean/var) of its bin counts: the share of its
    variance that is not Poisson noise (a flat B curve has nothing to correlate with)."""
    for b in CURVE_BINS:
        ca, cb = sa.curves.get(b, np.zeros(0)), sb.curves.get(b, np.zeros(0))
        m = min(ca.size, cb.size)
        if m < CURVE_MIN_BINS or cb[:m].mean() < CURVE_MIN_COUNT:
            continue
        ca, cb = ca[:m], cb[:m]
        r = float(np.corrcoef(ca, cb)[0, 1]) if ca.std() > 0 and cb.std() > 0 else math.nan
        rel = max(0.0, 1.0 - float(cb.mean() / cb.var())) if cb.var() > 0 else 0.0
        bin_txt = f"{b / 60:g}-min" if b < 3600 else f"{b / 3600:g}-h"
        note = "" if b == CURVE_BIN else (f"{bin_txt} bins: B has {sb.requests / max(sb.duration, 1e-9) * 60:.2g} "
                                          f"requests a minute, too few for finer bins")
        if rel < 0.9:
            note = (note + "; " if note else "") + f"weight {rel:.2f}: share of B's curve variance beyond Poisson noise"
        rows = [Row("rate.corr", f"rate curve r ({bin_txt}, {m} bins)", r, None,
                    None if math.isnan(r) else float(min(2.0, 1.0 - r)), "{:.3f}", weight=rel, note=note)]
        maxdev = float(np.max(np.abs(ca - cb)) / cb.mean()) if cb.mean() > 0 else math.nan
        rows.append(Row("rate.maxdev", f"rate curve max deviation / mean ({bin_txt})", maxdev, None, None,
                        "{:.3f}"))
        return rows
    if sa.duration > 0 and sb.duration > 0:
        return [Row("rate.corr", "rate curve r", None, None, None, "{:.3f}", weight=0.0,
                    note=f"not computed: fewer than {CURVE_MIN_BINS} bins with {CURVE_MIN_COUNT:g} requests each "
                         f"at every bin up to {CURVE_BINS[-1] / 3600:g} h")]
    return []


def _group(key: str) -> str:
    """The aspect a row belongs to (each aspect weighs the same in the distance)."""
    head = key.split(".", 1)[0]
    return key if head in ("requests", "duration") else head


def _rel(a: float, b: float) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return abs(a - b) / abs(b)


def _length_rows(f: str, va: np.ndarray, vb: np.ndarray) -> list[Row]:
    rows = []
    qa, qb = np.quantile(va, QUANTILES), np.quantile(vb, QUANTILES)
    for q, x, y in zip(QUANTILES, qa, qb, strict=True):
        rows.append(Row(f"{f}.p{round(q * 100)}", f"{f} tokens p{round(q * 100)}", float(x), float(y),
                        _rel(float(x), float(y)), "{:.0f}"))
    ta, tb = LengthTable.from_samples(va), LengthTable.from_samples(vb)
    ks = ks_distance(ta, tb)
    rows.append(Row(f"{f}.ks", f"{f} tokens KS distance", ks, None, ks, "{:.4f}"))
    w1 = wasserstein(ta, tb) / max(tb.mean(), 1e-12)
    rows.append(Row(f"{f}.w1", f"{f} tokens Wasserstein / mean(B)", w1, None, w1, "{:.4f}"))
    return rows


def wasserstein(a: LengthTable, b: LengthTable) -> float:
    """W1 = integral of |F_a - F_b| (exact for step CDFs)."""
    xs = np.union1d(a.values, b.values)
    if xs.size < 2:
        return 0.0
    ia = np.searchsorted(a.values, xs, side="right") - 1
    ib = np.searchsorted(b.values, xs, side="right") - 1
    fa = np.where(ia >= 0, a.cdf[np.maximum(ia, 0)], 0.0)
    fb = np.where(ib >= 0, b.cdf[np.maximum(ib, 0)], 0.0)
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(xs)))


# --------------------------------------------------------------------------- rendering


def render_text(c: Comparison, max_distance: float | None = None) -> str:
    """Plain-text table (for pipes, logs and CI)."""
    head = ("statistic", "A", "B", "deviation")
    marks = _footnotes(c)
    body = [(r.label + (" *" if _ignored(c, r) else "") + marks.get(r.key, ("", ""))[0], r.cell(r.a), r.cell(r.b),
             _dev(r)) for r in c.rows]
    w = [max(len(x[i]) for x in [head, *body]) for i in range(4)]
    lines = [f"A: {c.a}", f"B: {c.b} (reference)", ""]
    fmt = f"{{:<{w[0]}}}  {{:>{w[1]}}}  {{:>{w[2]}}}  {{:>{w[3]}}}"
    lines.append(fmt.format(*head))
    lines.append("  ".join("-" * x for x in w))
    lines.extend(fmt.format(*x) for x in body)
    lines.append("")
    lines.extend(_notes(marks))
    lines.append(_verdict(c, max_distance))
    return "\n".join(lines)


def _footnotes(c: Comparison) -> dict[str, tuple[str, str]]:
    """Row key -> (" [n]", note) for rows with a note (coarser bins, low support)."""
    out: dict[str, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    for r in c.rows:
        if r.note:
            n = seen.setdefault(r.note, len(seen) + 1)
            out[r.key] = (f" [{n}]", r.note)
    return out


def _notes(marks: dict[str, tuple[str, str]]) -> list[str]:
    seen: dict[str, str] = {}
    for mark, note in marks.values():
        seen.setdefault(mark.strip(), note)
    return [f"{m} {n}" for m, n in seen.items()]


def render_rich(c: Comparison, max_distance: float | None = None) -> Any:
    """A rich Table (printed by the caller on a terminal)."""
    from rich.table import Table

    tbl = Table(title=f"A: {c.a}\nB: {c.b} (reference)", title_justify="left")
    tbl.add_column("statistic")
    tbl.add_column("A", justify="right")
    tbl.add_column("B", justify="right")
    tbl.add_column("deviation", justify="right")
    worst = c.worst
    marks = _footnotes(c)
    for r in c.rows:
        style = ("bold red" if r.key == worst else "dim" if r.deviation is None or _ignored(c, r) or r.weight <= 0
                 else None)
        tbl.add_row(r.label + (" *" if _ignored(c, r) else "") + marks.get(r.key, ("", ""))[0], r.cell(r.a),
                    r.cell(r.b), _dev(r), style=style)
    tbl.caption = "\n".join([*_notes(marks), _verdict(c, max_distance)])
    tbl.caption_justify = "left"
    return tbl


def render_html(c: Comparison, max_distance: float | None = None) -> str:
    """A small self-contained HTML page: inline CSS, no scripts, no network."""
    e = html.escape
    worst = c.worst
    rows = []
    for r in c.rows:
        cls = ("worst" if r.key == worst else "info" if r.deviation is None or _ignored(c, r) or r.weight <= 0
               else "")
        rows.append(f'<tr class="{cls}"><td>{e(r.label)}</td><td><code>{e(r.key)}</code></td>'
                    f"<td>{e(r.cell(r.a))}</td><td>{e(r.cell(r.b))}</td><td>{e(_dev(r))}</td>"
                    f"<td>{e(r.note)}</td></tr>")
    verdict = e(_verdict(c, max_distance))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>servegen-load compare</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){{text-align:left}}
tr.worst{{background:#fde2e2;font-weight:bold}} tr.info{{color:#888}} code{{font-size:12px}}
p.verdict{{font-size:16px;font-weight:bold}}
</style></head><body>
<h1>Realism comparison</h1>
<p>A: <code>{e(c.a)}</code><br>B (reference): <code>{e(c.b)}</code></p>
<table><thead><tr><th>statistic</th><th>key</th><th>A</th><th>B</th><th>deviation</th><th>note</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<p class="verdict">{verdict}</p>
<p>Deviations: relative |A-B|/B for rates, burstiness and quantiles; absolute for shares and correlations;
KS and Wasserstein/mean(B) for length distributions; grey rows are information, ignored or without the
support to count. The distance is the mean of the counted rows' deviations (each at most 2), every aspect
(rate, burstiness, gaps, clients, each length field, sessions) weighing the same and each row its support.</p>
</body></html>
"""


def _ignored(c: Comparison, r: Row) -> bool:
    return any(fnmatch.fnmatchcase(r.key, p) for p in c.ignored)


def _dev(r: Row) -> str:
    if r.deviation is None or math.isnan(r.deviation):
        return ""
    return "inf" if math.isinf(r.deviation) else f"{r.deviation:.3f}"


def _verdict(c: Comparison, max_distance: float | None) -> str:
    s = (f"distance {c.distance:.3f} (support-weighted mean of {len(c.gated)} rows; worst: {c.worst or '-'}"
         + (f" {c.worst_deviation:.3f}" if c.worst else "") + ")")
    if c.ignored:
        s += f"; ignored: {', '.join(c.ignored)}"
    if max_distance is not None:
        s += f"; {'PASS' if c.distance <= max_distance else 'FAIL'} against --max-distance {max_distance:g}"
    return s
