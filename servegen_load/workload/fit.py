"""Logs -> pool: characterise request logs as ServeGen-style per-client windows and tables.

What a fit measures, per client (after merging sparse clients, see below):

- Rate windows of `window` seconds (default 600, ServeGen's, or a finer one `_fit_auto` chooses
  where a main client bursts for less than that): rate = requests in the window /
  window, except the last window when the log ends inside it: requests / the part of it the log
  covers (to the end of `--range`, else to the last request plus the log's mean gap), so
  generating the log's own span reproduces its request count (dividing by the whole window lost
  about 1.8% of the requests of a half-hour Azure half).
- Gap family per rate window, among exponential, Gamma, Weibull and lognormal, by maximum
  likelihood with AIC's penalty (log-likelihood minus the number of parameters: 1 for the
  exponential, 2 for the others), so the exponential is kept unless a shape earns its keep.
  Gaps are those between consecutive requests of the client inside the window, normalised by
  their mean y = gap / mean; with s = mean(log y) the fits are vectorised over all windows:

      gamma      log k - digamma(k) = -s       Minka's closed-form start, 4 Newton steps
      lognormal  sigma^2 = var(log y)          closed form
      weibull    sum y^k log y / sum y^k - 1/k = s   bracketed Newton, 6 steps, log-sum-exp scaled
      exponential                              nothing to fit

  CV guard: the count variance a window produces (its Fano factor, ~CV^2 for a renewal process)
  is set by the gaps' CV, which likelihood barely looks at (it weighs the many short gaps), so
  a family whose implied CV is off the measured one by more than a factor `CV_TOLERANCE` (1.5)
  is not eligible; when none is (e.g. a lognormal with sigma 4 fitted to timestamps truncated to
  the microsecond: CV 10^4 where the data says 7), the window gets the Gamma with k = 1/CV^2.
  A pool stores per window the family code, its shape (Gamma/Weibull k, lognormal sigma, 1 for
  the exponential), the scale in seconds (scipy's: Gamma mean/k, Weibull lambda, lognormal
  exp(mu), exponential mean) and `cv`, the measured coefficient of variation of the window's
  gaps (what ServeGen's `iat_cv` is for its Weibull rows). Gaps of 0 (equal timestamps) are
  floored at half the log's smallest positive gap, clipped to [1 us, 1 ms].
- A window with 1..`MIN_WINDOW_REQUESTS - 1` requests (too few gaps to fit) gets the
  exponential at the window's rate (shape 1, cv 1); an empty window has rate 0, family NONE.
- Length tables per data window of `data_window` seconds (default 21600, ServeGen's): the
  exact empirical distribution of each field, `compress`ed to KS distance <= `ks_max`.
  Fields follow the columns present: language `input_tokens`, `output_tokens`; with a reasoning
  column `reason_ratio` = reasoning / output tokens in 1/500 steps (category reason); with image,
  audio or video columns (category multimodal) `text_tokens` (the input column), `output_tokens`,
  `m_count` (items per request) and `m_tokens` (tokens of one item = the request's m tokens /
  m_count, over requests with items). A client active in a data window whose rows carry no value
  for a field (e.g. no reasoning count) gets the table {0: 1}.
- `rank_corr` (optional pool array): Spearman correlation of input and output tokens over the
  client's requests (average ranks for ties; a random sample when the logs have more than
  `SPEARMAN_SAMPLE` rows, at least 5000 rows a client); on the same rows `reason_copula` (output
  tokens and reasoning share) and `m_copula` (an item count and its items' size), the log's own
  checkerboard copulas, which `generate` draws from (`lengths.coupled_uniforms`).
- Sessions (with a session column): per client (`SESSION_FIELDS`), turns per session, think time
  between turns, new input tokens per turn after the first, input tokens of first turns and of
  requests outside sessions. Think time is **arrival to arrival**: t(turn k+1) - t(turn k), what a
  log records (seconds, 1 ms steps); `generate` places turns that far apart and `run` keeps it
  (a turn never leaves before the previous response ended; `dispatch.sessions`). History: when
  >= 80% of consecutive turns satisfy input_k >= input_{k-1} + output_{k-1}, the log's inputs
  include the history and new tokens = input_k - input_{k-1} - output_{k-1} (meta
  `session_history: included`); else, with reasoning counts, when >= 80% satisfy it with the
  visible answer (output - reasoning: reasoning models' APIs do not send reasoning back) in place of
  the output, `answers`; else new tokens = input_k (`excluded`: the logged prompt of a later turn
  is its new tokens only, and generated turns are sent that way too). `session_output_copula`:
  the checkerboard copula of consecutive turns' output tokens; a session keeps its model and
  task, so `generate` draws each turn's output from the row of the last one's rank.

Arrival models (`arrival_fit`): per client, the count dispersion of the log at 1 s .. 3600 s, batches
and clock quantisation (zero gaps, a timestamp grid) with the `tick`, `epochs` and `quantised`
models, on/off shapes for extreme-CV windows, all chosen by simulating each candidate and matching
the log's counts; a rate profile across days with a level (so generation can continue past the
fitted span); and the shrinkage of noisy window rates `renewal` generation uses.

Clients with fewer than `min_requests` requests (default `MIN_REQUESTS` = 50, about what is
needed for a stable length table and a handful of fitted windows) are merged into one client
`other`, fitted like any client; a log without client ids is one client `all`. Clients are
ordered by request count, largest first, `other` last.

Time origin: the earliest request of all logs is pool time 0 (`start_of_day`: the local midnight
before it, for wall-clock logs, so windows line up with ServeGen's clock-aligned pools). Several
logs are merged on their absolute times (wall clock when they have one).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy.special import digamma, gammaln, polygamma

from ..errors import InputError
from . import session_model
from .arrival_fit import ARRIVAL_ARRAYS, fit_arrivals, grid_of, group_time_order
from .continuation import outage_windows
from .distributions import Family, LengthTable, compress
from .logs import MEDIA, BadRows, ColumnMap, LogChunk, log_clock, read_log
from .pool import CATEGORIES, COPULAS, ClientPool, build_tables

MIN_REQUESTS = 50
MIN_WINDOW_REQUESTS = 10
OTHER = "other"
REASON_BINS = 500
PINNED_SHARE = 0.01  # later turns at the longest prompt, from which on they are a context limit's pile-up
SESSION_FIELDS = ("turns", "think_time", "new_tokens", "first_input", "single_input")
CV_TOLERANCE = 1.5  # a family's implied gap CV must be within this factor of the measured CV
MAX_CELLS = 2e7  # client x rate windows (~50 bytes each while fitting): beyond is a unit mistake
SPEARMAN_SAMPLE = 1_000_000  # rows for the rank correlation (>= 5000 a client: standard error < 0.015)
_LOG2PI = float(np.log(2.0 * np.pi))


@dataclass
class FitOptions:
    """Knobs of `fit_chunks` (the CLI's options, same names)."""

    window: float | None = None  # None: DEFAULT_WINDOW, or a finer one where it fits clearly better (`_fit_auto`)
    data_window: float = 21600.0
    name: str | None = None
    category: str | None = None
    min_requests: int = MIN_REQUESTS
    min_window_requests: int = MIN_WINDOW_REQUESTS
    start_of_day: bool = False
    ks_max: float = 0.004
    time_range: tuple[float, float | None] | None = None  # seconds after the first request: [start, end)


@dataclass
class FitReport:
    """What was read and fitted, for the command's summary and the pool's provenance."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    requests: int = 0
    bad: BadRows = field(default_factory=BadRows)
    bad_by_file: dict[str, BadRows] = field(default_factory=dict)
    clients_seen: int = 0
    merged_clients: int = 0
    merged_requests: int = 0
    windows_fitted: int = 0
    windows_fallback: int = 0
    cv_guarded: int = 0
    families: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self, pool: ClientPool) -> str:
        fams = ", ".join(f"{k} {v}" for k, v in self.families.items() if v)
        merged = (f" ({self.merged_clients} sparse client(s), {self.merged_requests} requests, merged into "
                  f"'{pool.clients[-1]}')") if self.merged_clients else ""
        guard = f", {self.cv_guarded} by the CV guard" if self.cv_guarded else ""
        return (f"fitted {self.requests} requests from {len(self.files)} log(s) ({self.bad.count} bad rows skipped): "
                f"{pool.n_clients} client(s){merged}; {pool.window_start.size} windows of {pool.window:g} s, "
                f"{self.windows_fitted} fitted ({fams or 'none'}{guard}), {self.windows_fallback} with fewer than "
                f"{MIN_WINDOW_REQUESTS} requests use the exponential; {pool.data_start.size} data window(s) of "
                f"{pool.data_window:g} s; category {pool.category}, fields {', '.join(pool.fields)}"
                + "".join("\n" + line for line in session_model.describe(pool)))


MISFIT_SCORE = 0.3  # mean |log Fano ratio| (simulated vs log) from which the chosen model misses the counts
DEFAULT_WINDOW = 600.0  # ServeGen's
FINER_WINDOWS = (300.0, 120.0, 60.0)  # tried when a main client's counts miss at the default
AUTO_MIN_REQUESTS = 20  # mean requests a window a refined client keeps (rate noise ~ 1/sqrt(20) = 22%)
AUTO_MAX_CELLS = 100_000  # client x windows of a refined pool (~22 bytes each: about 2 MB of arrays)
SCORE_NOISE = 0.05  # scores closer than this are one (each is one simulation of the fitted span)
CLEARLY_BETTER = 0.7  # a finer window is kept when the missing clients' score falls at least this much


def _shape_notes(rate: np.ndarray, W: float, extra: dict[str, np.ndarray], n_req_by_client: np.ndarray,
                 names: list[str], suggest: bool = True) -> list[str]:
    """Notes on structure the windows cannot hold: outages (never replayed past the span) and count
    dispersion the chosen arrival model misses (bursts shorter than the window: a shorter --window)."""
    notes = []
    down = outage_windows(rate, W)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], down.astype(np.int8), [0]])))
    spans = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
    if spans and spans[0][0] == 0:  # silence from pool time 0: only --start-of-day puts the log's start later
        b = spans.pop(0)[1]
        notes.append(f"no request from midnight to {b * W / 3600:.4g} h: before the log begins (--start-of-day), "
                     "never replayed past the fitted span")
    if spans:
        runs = ", ".join(f"{a * W / 3600:.4g} h to {b * W / 3600:.4g} h" for a, b in spans)
        notes.append(f"no request at all from {runs} of pool time, where the traffic around predicts "
                     "hundreds: an outage (of the service or its log), kept as history inside the fitted span but "
                     "never replayed past it")
    if suggest and W > 60:  # (without --window, `_fit_auto` tries the shorter windows itself)
        bad, chosen = _misfits(extra, n_req_by_client)
        if bad.size:
            who = ", ".join(f"{names[c]} ({float(chosen[c]):.2f})" for c in bad[:5])
            notes.append(f"the best arrival model misses the log's count dispersion for {who} (mean |log Fano "
                         f"ratio|, simulated vs log): if it bursts for less than the {W:g} s --window, a shorter "
                         "one (--window 60) follows the bursts; without --window, fit tries it itself")
    return notes


@dataclass
class GapFit:
    """Per-group fit results (arrays over groups; see `fit_gaps`)."""

    family: np.ndarray
    shape: np.ndarray
    scale: np.ndarray
    cv: np.ndarray
    n: np.ndarray
    loglik: np.ndarray  # (groups, 4): exponential, gamma, weibull, lognormal (per gap, y units)
    guarded: np.ndarray  # no family was CV-consistent: Gamma with k = 1/cv^2


# --------------------------------------------------------------------------- entry points


def fit_logs(paths: Sequence[str | Path], fmt: str = "auto", columns: ColumnMap | None = None,
             options: FitOptions | None = None, chunk_rows: int = 1_000_000,
             stream: IO[str] | None = None) -> tuple[ClientPool, FitReport]:
    """Read the logs (streaming) and fit a pool; warnings and notes go to `stream` (stderr)."""
    opts = options or FitOptions()
    if opts.name is None:
        opts = FitOptions(**{**opts.__dict__, "name": Path(str(paths[0])).stem if paths else "fitted"})

    out = stream or sys.stderr
    read_as: list[str] = []  # what was detected, so a wrong guess is seen; printed once the fit worked
    # (bad input stays one error line)

    def chunks() -> Iterable[LogChunk]:
        for p in paths:
            said = False
            for c in read_log(p, fmt, columns, chunk_rows):
                if not said and len(c):
                    read_as.append(f"servegen-load: {p}: read as {c.describe()}")
                    said = True
                yield c

    pool, report = fit_chunks(chunks(), opts)
    for line in read_as:
        print(line, file=out)
    for path, bad in report.bad_by_file.items():
        print(f"servegen-load: warning: {path}: skipped {bad.count} bad row(s) ({bad.describe()})", file=out)
    for note in report.notes:
        print(f"servegen-load: note: {note}", file=out)
    return pool, report


def fit_chunks(chunks: Iterable[LogChunk], options: FitOptions | None = None) -> tuple[ClientPool, FitReport]:
    """Fit a pool from log chunks (one or several logs; see the module docstring)."""
    opts = options or FitOptions()
    if (opts.window is not None and not opts.window > 0) or not opts.data_window > 0:
        raise InputError("--window and --data-window must be positive")
    if opts.data_window < (opts.window or DEFAULT_WINDOW):
        raise InputError("--data-window must be at least --window")
    if not 0 < opts.ks_max < 0.5:  # nan too: `compress` would never meet its bound
        raise InputError(f"expected 0 < ks_max < 0.5, got {opts.ks_max}", field="--ks-max")
    if opts.category is not None and opts.category not in CATEGORIES:
        raise InputError(f"expected a category among {', '.join(CATEGORIES)}, got {opts.category!r}")
    report = FitReport()
    cols = _collect(chunks, report)
    _note_duplicates(cols, report)
    cols = _spread_clock(_drop_strays(cols, report), report)
    if opts.window is None:
        return _fit_auto(cols, opts, report)
    pool = _fit(cols, opts, report)
    pool.meta["fit"]["window_choice"] = {"auto": False, "window": float(opts.window),
                                         "line": f"{opts.window:g} s (--window)"}
    return pool, report


def _misfits(extra: dict[str, np.ndarray], n_req: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(main renewal clients whose best arrival model misses the log's counts, every client's chosen score).

    Main: >= 5% of the requests. Renewal only: batch models miss near-zero Fano factors of
    clockwork clients by a large log ratio that no window length would change."""
    scores, model = extra.get("arrival_score"), extra.get("arrival_model")
    if scores is None or model is None:
        return np.zeros(0, dtype=np.int64), np.full(n_req.size, np.nan)
    chosen = scores[np.arange(scores.shape[0]), model.astype(np.int64)].astype(np.float64)
    share = n_req / max(int(n_req.sum()), 1)
    bad = np.flatnonzero(np.isfinite(chosen) & (chosen > MISFIT_SCORE) & (share >= 0.05) & (model == 0))
    return bad, chosen


def _fit_auto(cols: _Columns, opts: FitOptions, report: FitReport) -> tuple[ClientPool, FitReport]:
    """Fit at `DEFAULT_WINDOW`; where a main client's counts miss (score > `MISFIT_SCORE`: it bursts for
    less than the window), refit at each finer window of `FINER_WINDOWS` the data supports (the
    missing clients keep >= `AUTO_MIN_REQUESTS` requests a window on average, the pool stays within
    `AUTO_MAX_CELLS` client-windows) and keep the refit whose scores, on the same scales and the same
    (fitted) log, are clearly better: the missing clients' request-weighted score at most
    `CLEARLY_BETTER` times the default's and every client's weighted score no worse. A high score
    alone never changes the window (a dominant tenant may score 0.4 at 600 s and hold its burstiness)."""
    t_orig = cols.t.copy() if opts.time_range is None else None  # `_fit` shifts cols.t in place

    def attempt(W: float, scales: list[float] | None) -> tuple[ClientPool, FitReport]:
        if t_orig is not None:
            cols.t = t_orig.copy()
        rep = copy.deepcopy(report)
        return _fit(cols, replace(opts, window=W), rep, scales=scales, suggest=False), rep

    pool, rep = attempt(DEFAULT_WINDOW, None)
    n_req = pool.requests_per_client().astype(np.float64)
    bad, chosen = _misfits(pool.extra, n_req)
    choice: dict[str, Any] = {"auto": True, "window": DEFAULT_WINDOW, "default": DEFAULT_WINDOW}
    if bad.size == 0:
        choice["line"] = f"{DEFAULT_WINDOW:g} s (default; the arrival models match every main client's counts)"
        pool.meta["fit"]["window_choice"] = choice
        return pool, rep
    scales = [float(x) for x in pool.meta["arrival"]["scales"]]
    span = float(pool.meta["arrival"]["span"])
    names = ", ".join(pool.clients[c] for c in bad[:3]) + (f" and {bad.size - 3} more" if bad.size > 3 else "")

    def weighted(ch: np.ndarray, who: np.ndarray) -> float:
        ok = who[np.isfinite(ch[who])]
        return float(np.average(ch[ok], weights=n_req[ok])) if ok.size and n_req[ok].sum() > 0 else float("nan")

    every = np.flatnonzero(np.isfinite(chosen))
    base_bad, base_all = weighted(chosen, bad), weighted(chosen, every)
    tried = {f"{DEFAULT_WINDOW:g}": round(base_bad, 3)}
    skipped: dict[str, str] = {}
    kept: list[tuple[float, ClientPool, FitReport]] = []
    for W in FINER_WINDOWS:
        n_w = int(np.ceil(max(span, W) / W))
        per_window = float(n_req[bad].min()) * W / max(span, W)
        if pool.n_clients * n_w > AUTO_MAX_CELLS:
            skipped[f"{W:g}"] = f"{pool.n_clients * n_w} client-windows > {AUTO_MAX_CELLS}"
            continue
        if per_window < AUTO_MIN_REQUESTS:
            skipped[f"{W:g}"] = f"{per_window:.3g} requests a window < {AUTO_MIN_REQUESTS}"
            continue
        p2, r2 = attempt(W, scales)
        _, ch2 = _misfits(p2.extra, n_req)
        w_bad, w_all = weighted(ch2, bad), weighted(ch2, every)
        tried[f"{W:g}"] = round(w_bad, 3)
        if w_bad <= CLEARLY_BETTER * base_bad and w_all <= base_all:
            kept.append((w_all, p2, r2))
    # the coarsest kept window whose score is within simulation noise of the best (fewer, steadier rates)
    best = next((k for k in kept if k[0] <= min(x[0] for x in kept) + SCORE_NOISE), None)
    ev = ", ".join(f"{w} s {v:.2f}" for w, v in tried.items())
    skip = "".join(f"; {w} s not tried: {why}" for w, why in skipped.items())
    if best is not None:
        pool, rep = best[1], best[2]
        choice["window"] = float(pool.window)
        head = (f"{pool.window:g} s: at {DEFAULT_WINDOW:g} s the arrival model misses the count dispersion of {names}, "
                f"which bursts for less than the window; its score ")
    else:
        head = (f"{DEFAULT_WINDOW:g} s: the arrival model misses the count dispersion of {names}, and no finer window "
                f"fits its counts clearly better; its score ")
    choice["line"] = (f"{head}(mean |log Fano ratio| at {', '.join(f'{x:g}' for x in scales)} s) by window: {ev}"
                      f"{skip}")
    choice.update(scores=tried, skipped=skipped, clients=[pool.clients[c] for c in bad.tolist()], scales=scales)
    rep.notes.append(f"rate window {choice['line']}")
    pool.meta["fit"]["window_choice"] = choice
    return pool, rep


# --------------------------------------------------------------------------- reading


@dataclass
class _Columns:
    t: np.ndarray
    client: np.ndarray
    names: list[str]
    has_client: bool
    input: np.ndarray
    output: np.ndarray
    reason: np.ndarray | None
    session: np.ndarray | None
    media: dict[str, np.ndarray]
    origin: float
    wall_clock: bool
    utc_offset: float = 0.0  # seconds east of UTC of the logs' local clock (`LogChunk.utc_offset`)


def _collect(chunks: Iterable[LogChunk], report: FitReport) -> _Columns:
    """Concatenate chunks of one or more logs on absolute time, with one client-name table."""
    names: dict[str, int] = {}
    parts: dict[str, list[Any]] = {k: [] for k in ("t", "client", "input", "output", "reason", "session",
                                                           *MEDIA)}
    seen = {"reason": False, "session": False, **dict.fromkeys(MEDIA, False)}
    has_client = False
    client_col = None
    offsets: set[float] = set()
    wall: set[bool] = set()
    files: dict[str, bool] = {}
    back = [0, 0]  # relative times earlier than the row before, of row-to-row steps
    back_col: str | None = None
    for c in chunks:
        if c.path not in files:
            files[c.path] = c.has_client
            report.files.append(c.path)
        report.rows += c.rows
        report.bad.merge(c.bad)
        if c.bad.count:
            report.bad_by_file.setdefault(c.path, BadRows()).merge(c.bad)
        n = len(c)
        if n == 0:
            continue
        wall.add(c.wall_clock)
        if c.wall_clock:
            offsets.add(c.utc_offset)
        elif n > 1:
            back[0] += int(np.count_nonzero(np.diff(c.t) < 0))
            back[1] += n - 1
            back_col = c.roles.get("time", back_col)
        has_client = has_client or c.has_client
        client_col = c.roles.get("client", client_col)
        lut = np.array([names.setdefault(nm, len(names)) for nm in c.clients], dtype=np.int32)
        parts["t"].append(c.origin + c.t)
        parts["client"].append(lut[c.client] if lut.size else np.zeros(n, dtype=np.int32))
        parts["input"].append(c.input)
        parts["output"].append(c.output)
        for k in ("reason", "session", *MEDIA):
            col = c.media.get(k) if k in MEDIA else getattr(c, k)
            if col is not None and np.any(col >= 0):
                seen[k] = True
                parts[k].append(col)
            else:  # absent here: a length placeholder, filled only if another chunk has the column
                parts[k].append(n)
    if not parts["t"]:
        raise InputError("no usable rows in the logs" + (f" ({report.bad.describe()})" if report.bad.count else ""),
                         path=", ".join(report.files) or None)
    for p, hc in files.items():
        if not hc:
            report.notes.append(f"{p} has no client column: its requests are one client 'all'")
    if "" in names:  # rows with an empty client value: one client named "" that may hold most of the log
        empty = sum(int(np.count_nonzero(c == names[""])) for c in parts["client"])
        total = sum(c.size for c in parts["client"])
        if empty > 0.2 * total:
            report.notes.append(f"WARNING: {empty / total:.0%} of rows have an empty client value ({client_col!r} "
                                "column): they are one client, merging whoever sent them; name a column every row "
                                "fills with --client-column")
    if len(wall) > 1:
        report.notes.append("some logs have wall-clock times and others relative times: merged as given")
    if back[1] >= 20 and back[0] > 0.2 * back[1]:  # arrivals are logged nearly in order; latencies are not
        report.notes.append(f"WARNING: time column {back_col!r} holds no date and {back[0] / back[1]:.0%} of its "
                            "values are earlier than the row before: a latency or duration, not an arrival time? "
                            "Name the arrival time with --time-column")

    def cat(k: str) -> np.ndarray | None:
        if not seen[k]:
            return None
        dtype = np.int64 if k == "session" else np.int32
        return np.concatenate([np.full(p, -1, dtype=dtype) if isinstance(p, int) else p for p in parts[k]])

    def take(k: str) -> np.ndarray:  # concatenate and drop the parts at once (peak memory)
        out = np.concatenate(parts[k])
        parts[k] = []
        return out

    t = take("t")
    origin = float(t.min())
    report.requests = int(t.size)
    output = take("output")
    zero = int(np.count_nonzero(output == 0))
    if zero:  # a log's failed or cancelled requests: their arrivals count, their length cannot be 0
        report.notes.append(f"{zero} request(s) ({zero / t.size:.1%}) have 0 output tokens (failed or cancelled "
                            "in the log?): kept as arrivals, and generated with 1 output token, the least a "
                            "request can ask for")
    return _Columns(t=t, client=take("client"), names=list(names), has_client=has_client,
                    input=take("input"), output=output, reason=cat("reason"), session=cat("session"),
                    media={k: v for k in MEDIA if (v := cat(k)) is not None}, origin=origin,
                    wall_clock=wall == {True}, utc_offset=_one_offset(offsets, report))


def _one_offset(offsets: set[float], report: FitReport) -> float:
    """The local clock's offset from UTC of the logs (hours of day and weekends are local)."""
    if not offsets:
        return 0.0
    off = min(offsets, key=abs)
    if len(offsets) > 1:
        report.notes.append(f"the logs' times carry different UTC offsets; hours of day are taken at "
                            f"{_offset_text(off)}")
    elif off:
        report.notes.append(f"times carry UTC offset {_offset_text(off)}: hours of day, days and weekends are "
                            "that local clock's")
    return off


def _offset_text(off: float) -> str:
    m = round(abs(off) / 60)
    return f"{'+' if off >= 0 else '-'}{m // 60:02d}:{m % 60:02d}"


# --------------------------------------------------------------------------- fitting


def _fit(cols: _Columns, opts: FitOptions, report: FitReport, scales: list[float] | None = None,
         suggest: bool = True) -> ClientPool:
    where = ", ".join(report.files) or None  # errors name the log(s)
    if not np.any(cols.input >= 0) or not np.any(cols.output >= 0):
        raise InputError("fit needs input and output token counts: name the columns with --input-column and "
                         "--output-column", path=where)
    t0 = cols.origin
    span = 0.0
    if opts.time_range is not None:
        a, b = opts.time_range
        cols = _select(cols, a, b, where)
        report.requests = int(cols.t.size)
        t0 += a
        span = (b - a) if b is not None else 0.0
    if opts.start_of_day:  # local midnight
        day0 = float(np.floor((t0 + cols.utc_offset) / 86400.0) * 86400.0) - cols.utc_offset
        span += t0 - day0
        t0 = day0
    t = cols.t
    t -= t0  # in place: the columns are ours
    client, names = _merge_sparse(cols, opts, report)
    n_clients = len(names)
    category, fields, values = _fields(cols, opts)

    W, D = float(opts.window or DEFAULT_WINDOW), float(opts.data_window)
    last = max(float(t.max()), span)
    if not last / W * n_clients <= MAX_CELLS:
        raise InputError(f"{n_clients} client(s) over {last:.4g} s in windows of {W:g} s would need "
                         f"{last / W * n_clients:.3g} client-windows (at most {MAX_CELLS:g}): check the time "
                         "unit (--time-unit), or use --range, a larger --window or --min-requests", path=where)
    n_w = max(int(t.max() // W) + 1, int(np.ceil(span / W - 1e-9)))
    n_d = max(int(t.max() // D) + 1, int(np.ceil(span / D - 1e-9)))
    rate, cv, family, shape, scale = _rate_windows(t, client, n_clients, n_w, W, opts, report)
    cover = _last_window_cover(t, span, n_w, W, opts.time_range is not None and opts.time_range[1] is not None)
    if cover < W:  # a rate is requests per second observed: the last window is partly outside the log
        n_last = np.rint(rate[:, -1].astype(np.float64) * W)
        rate[:, -1] *= np.float32(W / cover)
        few = (n_last > 0) & (n_last < max(2, opts.min_window_requests))  # exponential at the window's rate
        scale[few, -1] = (cover / n_last[few]).astype(np.float32)  # (fitted windows' gaps are the log's own)

    tables: list[LengthTable] = []
    gtype = np.int32 if n_clients * n_d < 2**31 else np.int64
    grp = client.astype(gtype) * gtype(n_d) + (t // D).astype(gtype)
    active = np.bincount(grp, minlength=n_clients * n_d).reshape(n_clients, n_d) > 0
    table_index = np.full((n_clients, n_d, len(fields)), -1, dtype=np.int32)
    zero: int | None = None
    for fi, f in enumerate(fields):
        v, scale_v = values[f]
        idx = _grouped_tables(v, grp, n_clients * n_d, tables, opts.ks_max, scale_v).reshape(n_clients, n_d)
        missing = active & (idx < 0)
        if missing.any():
            if zero is None:
                zero = len(tables)
                tables.append(LengthTable(np.array([0.0]), np.array([1.0])))
            idx[missing] = zero
        table_index[:, :, fi] = idx

    def epoch_windows(tu: np.ndarray, cu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, _, ef, es, _ = _rate_windows(tu, cu, n_clients, n_w, W, opts, FitReport())
        return ef, es

    arr = fit_arrivals(t, client, n_clients, last if span else float(t.max()), W, t0 + cols.utc_offset,
                       cols.wall_clock, rate, cv,
                       family, shape, epoch_windows, opts.ks_max, scales=scales)
    report.notes.extend(arr.notes)
    report.notes.extend(_shape_notes(rate, W, arr.extra, n_req_by_client=np.bincount(client, minlength=n_clients),
                                     names=list(names), suggest=suggest))
    if arr.batch_tables:
        arr.extra["batch_index"] = np.where(arr.extra["batch_index"] >= 0, arr.extra["batch_index"] + len(tables),
                                            -1).astype(np.int32)
        tables.extend(arr.batch_tables)

    x = values[fields[0]][0]
    sub = _per_group_sample(client, n_clients, SPEARMAN_SAMPLE)
    extra: dict[str, np.ndarray] = {
        "rank_corr": spearman_by_group(x[sub], cols.output[sub], client[sub], n_clients)}
    # what `TableSet.draw` couples besides: output with its reasoning share (bimodal reasoning
    # under answers of one length: drawn apart, answers came out 0.1x to 13x), an item count with
    # its items' size (one large image or four small ones: mean image tokens 82 % high)
    if "reason_ratio" in values:
        extra["reason_copula"] = copula_by_group(cols.output[sub], values["reason_ratio"][0][sub], client[sub], n_clients)
    for m in ("image", "audio", "video"):
        if f"{m}_count" in values and f"{m}_tokens" in values:
            extra[f"{m}_copula"] = copula_by_group(values[f"{m}_count"][0][sub], values[f"{m}_tokens"][0][sub],
                                                   client[sub], n_clients)
    extra.update(arr.extra)
    meta: dict[str, Any] = {"arrival": {**arr.meta, "utc_offset": cols.utc_offset}}
    if cols.session is not None:
        sidx, share, history, out_cop, cap = _sessions(t, client, n_clients, cols, tables, opts.ks_max)
        extra.update(session_index=sidx, session_share=share, session_output_copula=out_cop)
        _session_arrival_laws(t, client, n_clients, n_w, W, opts, cols, sidx, share, tables,
                              (rate, cv, family, shape, scale))
        meta.update(session_fields=list(SESSION_FIELDS), session_history=history)
        if cap is not None:
            meta["session_input_cap"] = cap
    flat_values, cdf, offsets = build_tables(tables)

    meta["fit"] = {
        "logs": report.files, "rows": report.rows, "requests": report.requests, "bad_rows": report.bad.count,
        "window": W, "data_window": D, "min_requests": opts.min_requests,
        "min_window_requests": opts.min_window_requests, "merged_clients": report.merged_clients,
        "merged_requests": report.merged_requests, "origin": t0, "wall_clock": cols.wall_clock,
        "start_of_day": opts.start_of_day, "families": report.families, "ks_max": opts.ks_max,
        "time_range": list(opts.time_range) if opts.time_range else None, "cv_guarded": report.cv_guarded,
    }
    if cols.wall_clock:
        meta["fit"]["origin_utc"] = str(np.datetime64(round(t0 * 1e6), "us")) + "Z"
    meta["source"] = "fit"
    meta["arrays"] = {"rank_corr": "per client: Spearman correlation of input and output tokens",
                      **ARRIVAL_ARRAYS}
    of = {"reason_copula": "output tokens and reasoning share",
          "session_output_copula": "consecutive session turns' output tokens"}
    meta["arrays"].update({k: f"per client: {COPULA_BINS}x{COPULA_BINS} checkerboard copula of "
                           + of.get(k, "an item count and its size") for k in extra if k in COPULAS})
    if "session_index" in extra:
        meta["arrays"].update(session_index="per client: table ids of session_fields (-1: no sessions)",
                              session_share="per client: share of requests with a session id")
    pool = ClientPool(
        name=str(opts.name or "fitted"), category=category, clients=names, window=W,
        window_start=np.arange(n_w, dtype=np.float64) * W, rate=rate, cv=cv, family=family, shape=shape,
        scale=scale, data_window=D, data_start=np.arange(n_d, dtype=np.float64) * D, fields=fields,
        table_index=table_index, values=flat_values, cdf=cdf, offsets=offsets, fallback=[], meta=meta,
        extra=extra,
    )
    pool.validate("<fit>")
    return pool


def _last_window_cover(t: np.ndarray, span: float, n_w: int, W: float, end_given: bool) -> float:
    """Seconds of the last rate window the log covers (see the module docstring), in (0, W]."""
    start = (n_w - 1) * W
    if end_given:
        end = max(span, float(t.max()))
    else:
        n = t.size
        mean_gap = (float(t.max()) - float(t.min())) / (n - 1) if n > 1 else W
        end = max(span, float(t.max()) + mean_gap)
    return float(min(W, max(end - start, 1e-3 * W)))


def _select(cols: _Columns, start: float, end: float | None, where: str | None = None) -> _Columns:
    """Rows with start <= t - origin < end; the origin (first request of the logs) is kept."""
    rel = cols.t - cols.origin
    keep = rel >= start
    if end is not None:
        keep &= rel < end
    if not keep.any():
        raise InputError(f"no requests in the range {start:g}..{'' if end is None else f'{end:g}'} s after the "
                         "first request", path=where)
    return replace(_keep(cols, keep), origin=cols.origin)


CLOCK_SHARE = 0.99  # of a client's times on a tick for it to be the client's clock (a few rows on a finer one)
MIN_CLOCK_ROWS = 20  # a client with fewer rows takes the log's clock
STRAY_SHARE = 0.001  # at most this share of the rows (and at least 1) may be dropped as stray times
STRAY_GAP = 10.0  # ... when a gap this many times the rest's span (and over a day) sets them apart


def _drop_strays(cols: _Columns, report: FitReport) -> _Columns:
    """The rows without a few whose times sit far from all the others (a clock at 0, 1970 or 2099).

    Why: one row at epoch 0 beside three hours of traffic made a pool of 56 years (3 million
    windows, a gigabyte, an `inspect` that never ended) and moved `--range`'s origin. A handful
    of rows (`STRAY_SHARE`), across a gap over `STRAY_GAP` times the span of the rest and over a
    day, are dropped and named in a note; two real captures a week apart stay (neither is a handful).
    """
    t = cols.t
    n = t.size
    limit = max(1, int(STRAY_SHARE * n))
    s = np.sort(t)
    lo, hi = 0, n  # the rows kept: s[lo:hi]
    for _ in range(4):
        if hi - lo < 3:
            break
        gaps = np.diff(s[lo:hi])
        i = int(np.argmax(gaps))
        left, right = i + 1, hi - lo - i - 1
        bulk = (s[hi - 1] - s[lo + i + 1]) if left < right else (s[lo + i] - s[lo])
        if min(left, right) > limit or gaps[i] <= max(STRAY_GAP * bulk, 86400.0):
            break
        if left < right:
            lo += left
        else:
            hi -= right
    if lo == 0 and hi == n:
        return cols
    keep = (t >= s[lo]) & (t <= s[hi - 1])
    gone = t[~keep]
    when = ", ".join(str(np.datetime64(round(x), "s")) if cols.wall_clock else f"{x:g} s"
                     for x in np.unique(gone)[:3])
    report.notes.append(f"dropped {gone.size} row(s) timed far from all the others ({when}): a stray clock, "
                        "not traffic")
    return _keep(cols, keep)


def _note_duplicates(cols: _Columns, report: FitReport) -> None:
    """Say how many rows repeat another exactly (time, client, lengths): a log shipped twice, or a
    collector retrying its writes, looks like requests sent together, and is fitted as batches.
    Kept, not dropped: an eval harness does send the same prompt several times at once."""
    n = cols.t.size
    if n < 2:
        return
    keys = [cols.output, cols.input, cols.client, cols.t]
    order = np.lexsort(keys)
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        ks = k[order]
        same &= ks[1:] == ks[:-1]
    dup = int(same.sum())
    if dup and dup >= 0.005 * n:
        report.notes.append(f"WARNING: {dup} row(s) ({dup / n:.1%}) repeat another row exactly (time, client, input and output "
                            "tokens): fitted as requests sent together; if the log was written twice, drop the copies "
                            "first")


def _spread_clock(cols: _Columns, report: FitReport) -> _Columns:
    """Times written on a coarse clock (`logs.log_clock`: whole seconds, say) spread uniformly
    inside their tick, client by client (each on its own clock: one gateway may log seconds and
    another milliseconds), unless the client's requests are batches.

    A log's clock is not traffic: 10 req/s logged in whole seconds was fitted as batches of ten sent
    at once (90 % of gaps exactly 0, Fano 10 at 100 ms where the traffic had 1). A client stays as
    logged where its requests are batches the clock cannot explain: its distinct times on a
    grid coarser than the clock (a gateway flushing every 5 s), or a share of same-tick gaps over
    twice (and 0.1 over) what Poisson arrivals at its rate would put in one tick (an eval harness
    sending 8 at once, a few times an hour). A fixed seed keeps fits deterministic."""
    t, client = cols.t, cols.client
    order = group_time_order(client, t)
    ts, cs = t[order], client[order]
    bounds = np.flatnonzero(np.concatenate([[True], cs[1:] != cs[:-1], [True]]))
    small = bool(np.any(np.diff(bounds) < MIN_CLOCK_ROWS))  # only they take the log's clock
    whole = log_clock(t, CLOCK_SHARE) if small else 0.0
    jitter = np.zeros(t.size)
    rng = np.random.default_rng(0)
    spread: dict[float, int] = {}
    kept = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        x = ts[a:b]
        clock = log_clock(x, CLOCK_SHARE) if b - a >= MIN_CLOCK_ROWS else whole
        if clock == 0.0:
            continue
        if b - a >= 2 and _batched(x, clock):
            kept += 1
            continue
        jitter[order[a:b]] = rng.uniform(0.0, clock, b - a)
        spread[clock] = spread.get(clock, 0) + 1
    said = ", ".join(f"{n} client(s) on a {c:g} s clock" for c, n in sorted(spread.items(), reverse=True))
    if spread:
        report.notes.append(f"times spread uniformly inside their tick ({said}: the log's clock, not batches)"
                            + (f"; {kept} client(s) kept as logged (batches)" if kept else ""))
    elif kept:
        report.notes.append(f"times on a coarse clock: {kept} client(s) kept as logged (batches the clock cannot "
                            "explain)")
    return replace(cols, t=t + jitter) if spread else cols


def _batched(x: np.ndarray, clock: float) -> bool:
    """Are one client's same-tick requests (times `x`, sorted) batches the clock cannot explain?"""
    gaps = np.diff(x)
    z = float(np.mean(gaps <= 0.5 * clock))
    w = (x // DEFAULT_WINDOW).astype(np.int64)
    _, inverse, counts = np.unique(w, return_inverse=True, return_counts=True)
    rate_tick = counts[inverse] / DEFAULT_WINDOW * clock  # requests a tick at the request's window rate
    expected = float(np.mean(1.0 - (-np.expm1(-rate_tick)) / rate_tick))  # Poisson: next one in the same tick
    if z > max(2.0 * expected, expected + 0.1):
        return True
    if x.size < 20:
        return False
    g = grid_of(np.unique(x), float(x[-1] - x[0]), [1.0])
    return g is not None and g[0] > 1.5 * clock


def _keep(cols: _Columns, keep: np.ndarray) -> _Columns:
    def k(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    t = cols.t[keep]
    return _Columns(t=t, client=cols.client[keep], names=cols.names, has_client=cols.has_client,
                    input=cols.input[keep], output=cols.output[keep], reason=k(cols.reason),
                    session=k(cols.session), media={m: v[keep] for m, v in cols.media.items()},
                    origin=float(t.min()), wall_clock=cols.wall_clock, utc_offset=cols.utc_offset)


def _merge_sparse(cols: _Columns, opts: FitOptions, report: FitReport) -> tuple[np.ndarray, list[str]]:
    """Client codes ordered by request count (largest first) with sparse clients merged into `other`."""
    counts = np.bincount(cols.client, minlength=len(cols.names))
    report.clients_seen = int(np.count_nonzero(counts))
    if not cols.has_client:
        return np.zeros(cols.t.size, dtype=np.int32), ["all"]
    big = counts >= max(1, opts.min_requests)
    sparse = (counts > 0) & ~big
    order = np.flatnonzero(big)[np.argsort(-counts[big], kind="stable")]
    lut = np.full(counts.size, -1, dtype=np.int32)
    lut[order] = np.arange(order.size, dtype=np.int32)
    names = [cols.names[i] for i in order]
    if sparse.any():
        other = OTHER if OTHER not in names else "__other__"
        lut[sparse] = len(names)
        names.append(other)
        report.merged_clients = int(sparse.sum())
        report.merged_requests = int(counts[sparse].sum())
        report.notes.append(f"{report.merged_clients} client(s) with fewer than {opts.min_requests} requests "
                            f"({report.merged_requests} requests in all) are merged into client '{other}'")
    return lut[cols.client], names


def _fields(cols: _Columns, opts: FitOptions) -> tuple[str, list[str], dict[str, tuple[np.ndarray, float]]]:
    """Category, field names and per-row integer values (-1 missing) with their value scale."""
    media = [m for m in ("image", "audio", "video") if f"{m}_count" in cols.media or f"{m}_tokens" in cols.media]
    # a reasoning column of zeros (every results file has `reasoning_tokens`) is no reasoning traffic
    reasons = cols.reason is not None and bool(np.any(cols.reason > 0))
    category = opts.category or ("multimodal" if media else "reason" if reasons else "language")
    vals: dict[str, tuple[np.ndarray, float]] = {}
    if category == "multimodal":
        vals["text_tokens"] = (cols.input, 1.0)
        for m in media:
            cnt = cols.media.get(f"{m}_count")
            tok = cols.media.get(f"{m}_tokens")
            if cnt is None and tok is not None:
                cnt = (tok > 0).astype(np.int32)
            assert cnt is not None
            cnt = np.maximum(cnt, 0)
            vals[f"{m}_count"] = (cnt, 1.0)
            if tok is not None:
                per = np.where((cnt > 0) & (tok >= 0), np.rint(tok / np.maximum(cnt, 1)), -1).astype(np.int64)
                vals[f"{m}_tokens"] = (per, 1.0)
        vals["output_tokens"] = (cols.output, 1.0)
        return category, list(vals), vals
    vals["input_tokens"] = (cols.input, 1.0)
    vals["output_tokens"] = (cols.output, 1.0)
    if category == "reason":
        if cols.reason is None:
            raise InputError("category reason needs a reasoning-token column (--reason-column)")
        r, o = cols.reason.astype(np.float64), cols.output.astype(np.float64)
        ratio = np.where(o > 0, np.clip(r / np.maximum(o, 1.0), 0.0, 1.0), 0.0)
        q = np.where((r >= 0) & (o >= 0), np.rint(ratio * REASON_BINS), -1).astype(np.int64)
        vals["reason_ratio"] = (q, 1.0 / REASON_BINS)
    return category, list(vals), vals


def _rate_windows(t: np.ndarray, client: np.ndarray, n_clients: int, n_w: int, W: float, opts: FitOptions,
                  report: FitReport) -> tuple[np.ndarray, ...]:
    """rate, cv, family, shape, scale arrays (clients x windows); see the module docstring."""
    order = group_time_order(client, t)
    ts = t[order]
    key = client[order].astype(np.int64)
    del order
    key *= n_w
    key += (ts // W).astype(np.int64)
    counts = np.bincount(key, minlength=n_clients * n_w)
    rate = counts / W
    family = np.where(counts > 0, int(Family.EXPONENTIAL), int(Family.NONE)).astype(np.int8)
    shape = np.where(counts > 0, 1.0, 0.0)
    scale = np.where(counts > 0, W / np.maximum(counts, 1), 0.0)
    cv = np.where(counts > 0, 1.0, 0.0)

    # gaps between consecutive requests of a client inside one window with enough requests to fit
    # (arrays are dropped as soon as they are used: this is the peak of the fit's memory)
    diff = np.diff(ts)
    del ts
    k1 = key[1:]
    sel = k1 == key[:-1]
    sel &= counts[k1] >= max(2, opts.min_window_requests)
    del key
    gaps = diff[sel]
    del diff
    gkey = k1[sel]
    del k1, sel
    report.windows_fallback = int(np.count_nonzero((counts > 0) & (counts < max(2, opts.min_window_requests))))
    report.families = {f.name.lower(): 0 for f in (Family.GAMMA, Family.WEIBULL, Family.LOGNORMAL,
                                                   Family.EXPONENTIAL)}
    if gaps.size:
        pos = gaps[gaps > 0]
        floor = float(np.clip(0.5 * pos.min(), 1e-6, 1e-3)) if pos.size else 1e-3
        np.maximum(gaps, floor, out=gaps)
        change = np.concatenate([[True], gkey[1:] != gkey[:-1]])
        starts = np.flatnonzero(change)
        where = gkey[starts]
        del gkey
        change[0] = False
        group = np.cumsum(change, dtype=np.int64)
        del change
        gf = fit_gaps(gaps, group, starts.size)
        family[where], shape[where], scale[where], cv[where] = gf.family, gf.shape, gf.scale, gf.cv
        report.windows_fitted = int(starts.size)
        report.cv_guarded = int(gf.guarded.sum())
        for f in (Family.GAMMA, Family.WEIBULL, Family.LOGNORMAL, Family.EXPONENTIAL):
            report.families[f.name.lower()] = int(np.count_nonzero(gf.family == f))
    shp = (n_clients, n_w)
    return (rate.reshape(shp).astype(np.float32), cv.reshape(shp).astype(np.float32), family.reshape(shp),
            shape.reshape(shp).astype(np.float32), scale.reshape(shp).astype(np.float32))


def fit_gaps(gaps: np.ndarray, group: np.ndarray, n_groups: int, weibull_steps: int = 6,
             cv_tolerance: float = CV_TOLERANCE) -> GapFit:
    """Maximum-likelihood gap family per group (AIC-penalised), vectorised over groups.

    `gaps` > 0 and `group` (0..n_groups-1) sorted ascending, every group with at least 2 gaps.
    Returns per group the chosen family code, its shape, its scale in the gaps' units, the
    measured CV and the number of gaps (equations in the module docstring).
    """
    g = np.asarray(group, dtype=np.int64)
    x = np.asarray(gaps, dtype=np.float64)
    G = int(n_groups)
    n = np.bincount(g, minlength=G).astype(np.float64)
    mean = np.bincount(g, x, G) / n
    y = x / mean[g]
    m2 = np.bincount(g, np.square(y), G) / n
    cv = np.sqrt(np.maximum(m2 - 1.0, 0.0) * n / np.maximum(n - 1.0, 1.0))
    ly = np.log(y, out=y)  # y is not needed any more
    s = np.bincount(g, ly, G) / n
    s2 = np.bincount(g, np.square(ly), G) / n

    # gamma: log k - digamma(k) = d, d = log(mean y) - mean(log y) = -s >= 0
    d = np.maximum(-s, 1e-9)
    k = (3.0 - d + np.sqrt((d - 3.0) ** 2 + 24.0 * d)) / (12.0 * d)
    for _ in range(4):
        f = np.log(k) - digamma(k) - d
        fp = 1.0 / k - polygamma(1, k)
        k = np.clip(k - f / fp, 1e-4, 1e4)
    kg = k
    ll_gamma = (kg - 1.0) * s - kg + kg * np.log(kg) - gammaln(kg)

    # lognormal
    sig = np.sqrt(np.maximum(s2 - s * s, 1e-12))
    ll_logn = -s - np.log(sig) - 0.5 * _LOG2PI - 0.5

    # weibull: bracketed Newton on h(k) = A/B - 1/k - s (increasing in k), sums scaled by max(log y)
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    mx = np.maximum.reduceat(ly, starts) if ly.size else np.zeros(G)
    ly_c = ly
    ly_c -= mx[g]  # <= 0, so y^k / max(y)^k = exp(k ly_c) never overflows
    del ly
    kw = np.clip(np.where(cv > 0, cv, 1.0) ** -1.086, 0.05, 20.0)
    lo, hi = np.full(G, 0.02), np.full(G, 50.0)
    for _ in range(weibull_steps):
        e = kw[g]
        e *= ly_c
        np.exp(e, out=e)
        B = np.bincount(g, e, G)
        e *= ly_c
        A = np.bincount(g, e, G) / B  # weighted mean of log y - mx
        e *= ly_c
        C = np.bincount(g, e, G) / B
        h = A + mx - 1.0 / kw - s
        dh = np.maximum(C - A * A, 0.0) + 1.0 / (kw * kw)
        lo = np.where(h < 0, kw, lo)
        hi = np.where(h > 0, kw, hi)
        kn = kw - h / dh
        kw = np.where((kn >= lo) & (kn <= hi), kn, np.sqrt(lo * hi))
    e = kw[g]
    e *= ly_c
    np.exp(e, out=e)
    log_mean_yk = np.log(np.bincount(g, e, G) / n) + kw * mx
    ll_weib = np.log(kw) - log_mean_yk + (kw - 1.0) * s - 1.0

    ll = np.stack([np.full(G, -1.0), ll_gamma, ll_weib, ll_logn], axis=1)
    aic = ll * n[:, None] - np.array([1.0, 2.0, 2.0, 2.0])
    aic[~np.isfinite(aic)] = -np.inf
    # CV guard: a family whose implied CV is off the measured one by more than `cv_tolerance`
    # would change the window's burstiness (counts' variance), whatever its likelihood
    with np.errstate(over="ignore", invalid="ignore"):
        implied = np.stack([np.ones(G), 1.0 / np.sqrt(kg),
                            np.sqrt(np.expm1(gammaln(1.0 + 2.0 / kw) - 2.0 * gammaln(1.0 + 1.0 / kw))),
                            np.sqrt(np.expm1(sig * sig))], axis=1)
        ratio = implied / np.maximum(cv, 1e-9)[:, None]
    consistent = (ratio <= cv_tolerance) & (ratio >= 1.0 / cv_tolerance)
    aic[~consistent] = -np.inf
    guard = ~consistent.any(axis=1)
    best = np.argmax(aic, axis=1)
    best[guard] = 1
    k_guard = 1.0 / np.maximum(cv, 1e-2) ** 2
    kg = np.where(guard, k_guard, kg)
    codes = np.array([Family.EXPONENTIAL, Family.GAMMA, Family.WEIBULL, Family.LOGNORMAL], dtype=np.int8)
    fam = codes[best]
    shape = np.choose(best, [np.ones(G), kg, kw, sig])
    scale_y = np.choose(best, [np.ones(G), 1.0 / kg, np.exp(log_mean_yk / kw), np.exp(s)])
    return GapFit(family=fam, shape=shape, scale=scale_y * mean, cv=cv, n=n, loglik=ll, guarded=guard)


# --------------------------------------------------------------------------- tables


def _grouped_tables(v: np.ndarray, grp: np.ndarray, n_groups: int, tables: list[LengthTable], ks_max: float,
                    value_scale: float = 1.0) -> np.ndarray:
    """One compressed table per group from integer values (-1 = missing); appends to `tables` and
    returns each group's table id (-1: no values). Tokens as well as requests are held to `ks_max`
    (`compress(mass=True)`): the rare long prompts carry much of a server's work."""
    valid = v >= 0
    key = (grp[valid].astype(np.int64) << 32) | v[valid].astype(np.int64)
    out = np.full(n_groups, -1, dtype=np.int32)
    if key.size == 0:
        return out
    uk, cnt = np.unique(key, return_counts=True)
    g = uk >> 32
    val = (uk & 0xFFFFFFFF).astype(np.float64) * value_scale
    bounds = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1], [True]]))
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        out[int(g[a])] = len(tables)
        tables.append(compress(LengthTable.from_pmf(val[a:b], cnt[a:b].astype(np.float64)), ks_max, mass=True))
    return out


def _per_group_sample(group: np.ndarray, n_groups: int, budget: int) -> np.ndarray | slice:
    """Rows for the rank correlation: all of them when there are at most `budget`, else each group
    keeps a row with probability cap / rows (cap = max(5000, budget / groups); a fixed seed, so
    a fit is deterministic). No sort, 4 bytes a row."""
    if group.size <= budget:
        return slice(None)
    counts = np.bincount(group, minlength=n_groups)
    cap = max(5000, budget // max(1, n_groups))
    p = np.minimum(1.0, cap / np.maximum(counts, 1)).astype(np.float32)
    u = np.random.default_rng(0).random(group.size, dtype=np.float32)
    return np.flatnonzero(u < p[group])


COPULA_BINS = 16
COPULA_MIN = 50  # pairs a client needs for a copula (fewer: the fields are drawn independently)


def copula_by_group(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the share of (x, y) pairs with x's rank in bin i and y's in bin j of
    `COPULA_BINS`, ties at their average rank; NaN for groups under `COPULA_MIN` pairs. Rows where
    x or y is negative are ignored."""
    k = COPULA_BINS
    ok = (x >= 0) & (y >= 0)
    g = group[ok].astype(np.int64)
    n = np.bincount(g, minlength=n_groups)

    def bins(rank: np.ndarray) -> np.ndarray:
        return np.minimum((rank / np.maximum(n[g], 1) * k).astype(np.int64), k - 1)

    # average ranks: a value's ties share one bin (x is drawn first, and conditioned on through
    # `LengthTable.mid_rank`; y's draw in its tie's bin then lands on that value)
    rx, ry = _group_ranks(x[ok], g) - 0.5, _group_ranks(y[ok], g) - 0.5
    cells = np.bincount((g * k + bins(rx)) * k + bins(ry), minlength=n_groups * k * k).reshape(n_groups, k, k)
    out = (cells / np.maximum(n, 1)[:, None, None]).astype(np.float32)
    out[n < COPULA_MIN] = np.nan
    return out


def spearman_by_group(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Spearman rank correlation of x and y per group (average ranks for ties); NaN when a group has
    fewer than 3 pairs or a constant column. Rows where x or y is negative are ignored."""
    ok = (x >= 0) & (y >= 0)
    g = group[ok].astype(np.int64)
    rx, ry = _group_ranks(x[ok], g), _group_ranks(y[ok], g)
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    sx, sy = np.bincount(g, rx, n_groups), np.bincount(g, ry, n_groups)
    sxx, syy, sxy = (np.bincount(g, rx * rx, n_groups), np.bincount(g, ry * ry, n_groups),
                     np.bincount(g, rx * ry, n_groups))
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1.0)
        cov = sxy - sx * sy / nn
        vx, vy = sxx - sx * sx / nn, syy - sy * sy / nn
        r = cov / np.sqrt(vx * vy)
    r[(n < 3) | ~(vx > 1e-9 * nn) | ~(vy > 1e-9 * nn)] = np.nan
    return np.clip(r, -1.0, 1.0).astype(np.float32)


def _group_ranks(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Average (tie-corrected) ranks of v within each group, 1-based."""
    n = v.size
    if n == 0:
        return np.zeros(0)
    vmax = int(v.max()) + 1
    n_groups = int(g.max()) + 1
    if n_groups * vmax <= max(4 * n, 1 << 20):
        # small integer values: a dense per-group histogram gives the ranks without sorting
        cell = g * vmax + v.astype(np.int64)
        cnt = np.bincount(cell, minlength=n_groups * vmax).reshape(n_groups, vmax)
        below = np.cumsum(cnt, axis=1) - cnt
        avg = below + (cnt + 1) / 2.0
        return avg.ravel()[cell]
    key = (g << 32) | v.astype(np.int64)
    order = np.argsort(key)
    ks = key[order]
    new = np.concatenate([[True], ks[1:] != ks[:-1]])
    run_start = np.flatnonzero(new)
    run_len = np.diff(np.append(run_start, n))
    run_id = np.cumsum(new) - 1
    gs = ks >> 32
    gnew = np.concatenate([[True], gs[1:] != gs[:-1]])
    gstart = np.flatnonzero(gnew)[np.cumsum(gnew) - 1]
    avg = (run_start[run_id] - gstart) + (run_len[run_id] + 1) / 2.0
    out = np.empty(n)
    out[order] = avg
    return out


def _sessions(t: np.ndarray, client: np.ndarray, n_clients: int, cols: _Columns, tables: list[LengthTable],
              ks_max: float) -> tuple[np.ndarray, np.ndarray, str, np.ndarray, int | None]:
    """Session tables per client (`SESSION_FIELDS`), share, history, output copula and the prompt
    later turns pile up at (a context limit), if any; see the module docstring."""
    assert cols.session is not None
    has = cols.session >= 0
    idx = np.flatnonzero(has)
    sidx = np.full((n_clients, len(SESSION_FIELDS)), -1, dtype=np.int32)
    share = (np.bincount(client[idx], minlength=n_clients)
             / np.maximum(np.bincount(client, minlength=n_clients), 1)).astype(np.float32)
    o = idx[np.lexsort((t[idx], cols.session[idx]))]
    ss = cols.session[o]
    new = np.concatenate([[True], ss[1:] != ss[:-1]])
    starts = np.flatnonzero(new)
    turns = np.diff(np.append(starts, o.size))
    same = ~new[1:]
    to, co = t[o], client[o]
    think_ms = np.rint(np.diff(to)[same] * 1000.0).astype(np.int64)
    inp, out = cols.input[o].astype(np.int64), cols.output[o].astype(np.int64)
    prev_in, prev_out, cur_in = inp[:-1][same], out[:-1][same], inp[1:][same]
    valid = (prev_in >= 0) & (prev_out >= 0) & (cur_in >= 0)
    # turns at a model's context (a pile-up at the longest prompt: old turns dropped) grow no more
    top = int(cur_in[valid].max()) if valid.any() else -1
    pinned = cur_in == top if valid.any() and np.mean(cur_in[valid] == top) >= PINNED_SHARE else np.zeros_like(valid)
    grew = valid & ~pinned
    carried = prev_out  # what the next prompt carries of an answer
    history = "included" if _grows(cur_in, prev_in, carried, grew) else "excluded"
    if history == "excluded" and cols.reason is not None:
        # A reasoning model's reasoning is not sent back (OpenAI's and DeepSeek's APIs drop it):
        # prompts grow by the visible answer, output - reasoning.
        prev_r = np.clip(cols.reason[o].astype(np.int64)[:-1][same], 0, None)
        answer = prev_out - np.minimum(prev_r, np.maximum(prev_out, 0))
        if np.any(prev_r[valid] > 0) and _grows(cur_in, prev_in, answer, grew):
            history, carried = "answers", answer
    new_tok = np.where(grew, np.maximum(cur_in - prev_in - carried, 0), -1) if history != "excluded" else \
        np.where(valid, cur_in, -1)
    cap = top if history != "excluded" and pinned.any() else None
    pair_client = co[1:][same]
    # how a session's next answer follows its last (one model, one task): their copula per client
    out_cop = copula_by_group(out[:-1][same], out[1:][same], pair_client, n_clients)
    sidx[:, 0] = _grouped_tables(turns, co[starts], n_clients, tables, ks_max)
    sidx[:, 1] = _grouped_tables(np.minimum(think_ms, 2**31 - 1), pair_client, n_clients, tables, ks_max, 1e-3)
    sidx[:, 2] = _grouped_tables(np.minimum(new_tok, 2**31 - 1), pair_client, n_clients, tables, ks_max)
    sidx[:, 3] = _grouped_tables(inp[starts], co[starts], n_clients, tables, ks_max)
    single = np.flatnonzero(~has)
    sidx[:, 4] = _grouped_tables(cols.input[single], client[single], n_clients, tables, ks_max)
    return sidx, share, history, out_cop, cap


def _grows(cur_in: np.ndarray, prev_in: np.ndarray, carried: np.ndarray, valid: np.ndarray) -> bool:
    """Whether >= 80% of consecutive turns' prompts hold the previous prompt and what is carried."""
    g = cur_in[valid] >= prev_in[valid] + carried[valid]
    return bool(g.size) and float(g.mean()) >= 0.8


def _session_arrival_laws(t: np.ndarray, client: np.ndarray, n_clients: int, n_w: int, W: float, opts: FitOptions,
                          cols: _Columns, sidx: np.ndarray, share: np.ndarray, tables: list[LengthTable],
                          windows: tuple[np.ndarray, ...]) -> None:
    """Gap laws of clients with sessions, so their turns' clustering is not counted twice.

    A session client's requests are a stream of *arrivals* (session starts and single requests)
    plus the later turns each session brings (`workload.conversation`): the clustering of turns
    is added by the session model. `generate` draws arrivals at the request rate and keeps each
    with probability q = 1 - share + share / E[K] (the rest are the room later turns take), so the
    kept stream is an independent thinning, whose count Fano factor is q F + (1 - q). Hence, per
    window with enough arrivals, the law drawn is the Gamma whose CV^2 = F solves that for the
    measured CV^2 of the arrival stream: CV_gen^2 = (CV_arr^2 - (1 - q)) / q (at least 0.01).
    Rates stay the requests' (rate windows count every request). In place on `windows`.
    """
    assert cols.session is not None
    rate, cv, family, shape, scale = windows
    has = np.flatnonzero(cols.session >= 0)
    o = has[np.lexsort((t[has], cols.session[has]))]
    ss = cols.session[o]
    later = np.zeros(t.size, dtype=bool)
    later[o[1:][ss[1:] == ss[:-1]]] = True
    keep = ~later
    scratch = FitReport()
    _, cv_a, fam_a, _, _ = _rate_windows(t[keep], client[keep], n_clients, n_w, W, opts, scratch)
    for c in range(n_clients):
        tid = int(sidx[c, 0])
        if tid < 0:
            continue
        mean_k = max(1.0, float(tables[tid].mean()))
        q = 1.0 - float(share[c]) + float(share[c]) / mean_k
        renewal = np.isin(family[c], [int(Family.EXPONENTIAL), int(Family.GAMMA), int(Family.WEIBULL),
                                      int(Family.LOGNORMAL)])  # other arrival models are left as chosen
        fitted = (fam_a[c] != int(Family.NONE)) & renewal & (rate[c] > 0)
        if q >= 0.999 or not fitted.any():
            continue
        cv2 = np.maximum((np.square(cv_a[c].astype(np.float64)) - (1.0 - q)) / q, 0.01)
        k = np.clip(1.0 / cv2, 1e-3, 1e4)
        mean_gap = 1.0 / np.maximum(rate[c].astype(np.float64), 1e-300)
        family[c] = np.where(fitted, int(Family.GAMMA), family[c])
        shape[c] = np.where(fitted, k, shape[c])
        scale[c] = np.where(fitted, mean_gap / k, scale[c])
        cv[c] = np.where(fitted, np.sqrt(1.0 / k), cv[c])
