"""Which step-cost terms a probe actually determines, and how far each one could move.

A term the timings barely constrain still takes a value in a least-squares fit, and two terms
that trade off (a_d per decoding sequence against a_c per context token, when batch and context
grow together) take values that swing between calibrations of the same server while the in-sample
residuals hardly change. So the model is chosen on what matters for a twin, predicting phases it
has not seen:

1. o, t0, a_p, a_d and a_c are always fitted: every engine pays per step, per prompt token, per
   decoding sequence and per context token read, and a probe too noisy to see one of them must
   not turn it off (letting held-out error drop a_d or a_c too, one of three vLLM calibrations on
   a busy host, held-out error 36-38 % for every model, kept a_d alone and predicted a 16 x 1000
   decode step at 8.8 ms instead of 23). The terms some CPU engines add, causal prefill
   attention a_q then llama.cpp's batch x context a_bc, come in one at a time: each of these
   nested models is fitted with one probe phase left out and scored on that phase's rows (mean
   relative error, each row capped at 100 %); its score is the mean over the phases;
2. the smallest model within one standard error (of the paired per-phase difference) plus `TOL`
   of the best one wins: a term must buy a held-out improvement larger than the phase-to-phase
   noise. Nested models, not every subset: with all subsets, near-ties between different sets
   of the same size flipped between three calibrations of one llama.cpp server. Each set that
   holds a_q has a twin where prompts attend over a KV buffer shared by every sequence
   (llama.cpp's unified KV cache: a prompt arriving beside decoding sequences reads their cells
   too); of the two, the one whose prediction of the steady phase's total time is nearer the
   measured one is kept, unless it predicts the held-out phases much worse (`shared_or_own`).
   Where the server family says what its engine pays, that comes first (`structure`): llama.cpp
   always gets a_q over the shared buffer, a_bc and a_m (context read dearer once two or more
   sequences decode), vLLM and SGLang never the shared buffer or a_m;
3. each parameter's spread is the jackknife over those leave-one-phase-out fits. Phases, not
   requests, are the unit: a busy neighbour slows a whole phase at once, so resampling requests
   (tried first) reported 3-5 % spreads on vLLM where three calibrations moved 25-40 %; the
   phase jackknife reported 9-38 %. Terms whose held-out error does not earn them a place are
   already out (step 2); a kept term within `Z_KEEP` spreads of zero goes if the model without it
   predicts the held-out phases no worse (possible for a term inside the nested order), else it
   stays and is named in the notes, as are loosely determined terms that trade off (correlated
   beyond `TRADE_OFF` across the left-out fits): read their combined effect, not each value;
4. the step costs are then scaled to the mean (`mean_scale`): the robust fit finds the typical
   step, but measured steps have a long tail of slow ones under load, and queueing, TTFT and
   capacity follow the mean step time. On real vLLM CPU the check scenario's steps averaged 8 %
   over the typical step the fit found while their median was within 3 %, and the twin's TTFT
   came out 20-30 % low; its own data refitted and scaled to its mean predicted it within 6 %.
   The scale comes from the probe's `steady` phase (sustained load, as plans are) when it has
   one, else from every step row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..results import Results
from .fit import MIN_ROWS, NAMES, Fit, Rows, core, rows_of, summarize

OPTIONAL = ("prefill_attention_s", "batch_context_s", "shared_attention_s")
Q, BC, SHARED = (NAMES.index(n) for n in OPTIONAL)  # a_q over the prompt's own tokens, a_bc, a_q shared
PAGED = ("vllm", "sglang")  # families whose KV is paged per sequence
Z_KEEP = 2.0  # an optional term within two jackknife spreads of zero is not determined
TRADE_OFF = 0.9
LOOSE = 0.2  # ... and one of the pair spreads by more than 20 % of its value
CV_ITERS = 4
TOL = 0.02
Z90 = 1.645
BLOCKS = 6
LAYOUT_SLACK = 1.25  # a KV layout chosen for steady load may be this much worse on short phases
STALL = 4.0  # a step this many times the model's counts as this much in the mean: a stall, not a step
STEP_TERMS = tuple(n for n in NAMES if n != "request_overhead_s")  # what a step costs: scaled by `mean_scale`


def step_rows(y: np.ndarray, x: np.ndarray, kind: np.ndarray, values: dict[str, float],
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(measured, predicted) durations of the step rows (those in `mask`) the model predicts > 0."""
    rows = kind == 1 if mask is None else (kind == 1) & mask
    pred = x[rows] @ np.array([values[n] for n in NAMES])
    good = pred > 0
    return y[rows][good], pred[good]


def capped_mean(y: np.ndarray, pred: np.ndarray) -> float:
    """Σ measured / Σ predicted, each row capped at `STALL` times its prediction."""
    return float(np.minimum(y, STALL * pred).sum() / pred.sum())


def mean_scale(y: np.ndarray, x: np.ndarray, kind: np.ndarray, steady: np.ndarray,
               values: dict[str, float]) -> tuple[float, str]:
    """`capped_mean` over the step rows (the steady phase's when it has `MIN_ROWS`); and which
    rows it came from."""
    use_steady = ((kind == 1) & steady).sum() >= MIN_ROWS
    where = "steady phase's step rows" if use_steady else "step rows (no steady phase)"
    ys, pred = step_rows(y, x, kind, values, steady if use_steady else None)
    return (capped_mean(ys, pred) if len(pred) >= MIN_ROWS else 1.0), where


def _scale(y: np.ndarray, x: np.ndarray, kind: np.ndarray, steady: np.ndarray, active: list[int]) -> float:
    """`mean_scale` of the fit on `active` over all rows."""
    beta, _, _ = core(y, x, kind, active)
    return mean_scale(y, x, kind, steady, {NAMES[j]: float(b) for j, b in zip(active, beta, strict=True)}
                      | {n: 0.0 for j, n in enumerate(NAMES) if j not in active})[0]


def candidates(present: list[int]) -> list[list[int]]:
    """The nested term sets (none, + a_q, + a_bc), then each one holding a_q again with a_q over a
    shared KV buffer in its place (`shared_or_own` chooses between those twins)."""
    out: list[list[int]] = [[]]
    for j in (Q, BC):
        if j in present:
            out.append([*out[-1], j])
    if SHARED in present:
        out += [_swap(c, Q, SHARED) for c in out if Q in c]
    return out


def _swap(terms: list[int], a: int, b: int) -> list[int]:
    """`terms` with term `a` replaced by `b` (a set's twin over the other KV layout)."""
    return [b if j == a else j for j in terms]


def structure(x: np.ndarray, family: str | None) -> tuple[list[int], list[list[int]], set[int]]:
    """(terms always fitted, candidate sets of the rest, terms never dropped).

    What the server family says about its engine comes first. llama.cpp (one decode thread, a
    unified KV cache) always pays a_q, a_bc and a_m, so they are fitted whatever a noisy probe's
    held-out errors say (three probes of one server here kept {}, {} and {a_q, a_bc} by them, and
    their twins were 21-48 % off), and its prompts attend over the shared buffer: a probe cannot
    be trusted to say so. Three calibrations of one llama.cpp server chose by the steady phase
    (`shared_or_own`) took per-sequence, per-sequence and shared; on the held-out run the shared
    twin's TTFT was within 3 % at p50/p90/p99, the others 20-56 % low (and one over-stated
    capacity by 49 %). vLLM and SGLang page their KV per sequence: no shared buffer, and no a_m;
    but their prompts pay causal attention like any transformer's, so a_q is always fitted there
    too (a_bc still by held-out error): one vLLM calibration in three dropped a_q on held-out
    error (21.1 % against 20.1 % with it), charged long and short prompts alike, and its twin put
    the m-large knee at 2.07 req/s against the real 7.47, where the two with a_q were within 5 %.
    Any other family: the nested choice, each layout's twin included.
    """
    present = [j for j in range(x.shape[1]) if np.any(x[:, j] != 0)]
    if family != "llamacpp":
        present = [j for j in present if NAMES[j] != "multi_context_s"]
    if family in PAGED:
        present = [j for j in present if NAMES[j] != "shared_attention_s"]
    if family == "llamacpp" and Q in present:
        fixed = {j for j in present if NAMES[j] in (*OPTIONAL, "multi_context_s")}
        a_q = SHARED if SHARED in present else Q
        return sorted([j for j in present if j not in (Q, SHARED)] + [a_q]), [[]], fixed
    base = [j for j in present if NAMES[j] not in OPTIONAL]
    if family in PAGED and Q in present:
        return sorted([*base, Q]), [[]] + ([[BC]] if BC in present else []), {Q}
    return base, candidates(present), set()


def shared_or_own(err: np.ndarray, cands: list[list[int]], ci: int,
                  scale_of: Callable[[list[int]], float]) -> tuple[int, str]:
    """The chosen set or its twin over the other KV layout (a_q over the prompt's own tokens, or
    over a buffer shared by every sequence): the one whose steady-phase time is nearer its
    measured total (`scale_of`: Σ measured / Σ predicted, 1 is exact), unless its held-out error
    is over `LAYOUT_SLACK` times the other's. With why, for the notes.

    Why the total: the layouts differ only where a prompt arrives beside decoding sequences,
    which sustained load does all the time and the short probe phases hardly. Those steps are
    few but long, and mean relative error, which the many short decode rows dominate, could
    not tell the layouts apart (llama.cpp here: 21 % against 24 % on one probe, the wrong way
    round on the next). Their share of the time can: on four probes of one llama.cpp server the
    per-sequence layout left the steady phase 13-39 % slower than predicted, the shared one
    within 9 % (0.91-1.01), and prompts sent beside 2-4 decoding sequences took 1.6-2.6 times
    as long as the same prompts alone, as the shared layout says, while the shared layout's
    held-out error was 1-2 points higher on every short phase (22.3 % against 20.6 %): a paired
    test on those errors (`equivalent`) kept the layout that left steady load 39 % short.
    """
    a, b = (Q, SHARED) if Q in cands[ci] else (SHARED, Q)
    twin = _swap(cands[ci], a, b)
    if a not in cands[ci] or twin not in cands:
        return ci, ""
    tj = cands.index(twin)
    mine, theirs = scale_of(cands[ci]), scale_of(twin)
    shared, own = (theirs, mine) if b == SHARED else (mine, theirs)
    why = f"the steady phase took x{own:.2f} the time the per-sequence layout predicts, x{shared:.2f} the shared one's"
    if abs(np.log(theirs)) < abs(np.log(mine)) and err[tj].mean() <= LAYOUT_SLACK * err[ci].mean():
        return tj, why
    return ci, why


def held_out(y: np.ndarray, x: np.ndarray, kind: np.ndarray, phase: np.ndarray,
             actives: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Leave-one-phase-out fits of each term set: ([set, phase] mean capped relative error of the
    left-out phase's rows, per set the [phase, term] coefficients fitted without it)."""
    phases = [int(p) for p in np.unique(phase)]
    err = np.full((len(actives), len(phases)), np.nan)
    betas = [np.full((len(phases), len(a)), np.nan) for a in actives]
    for pi, p in enumerate(phases):
        test = phase == p
        train = ~test
        if train.sum() < 10:
            continue
        for ci, active in enumerate(actives):
            beta, _, _ = core(y[train], x[train], kind[train], active, CV_ITERS)
            rel = np.abs(y[test] - x[test][:, active] @ beta) / y[test]
            err[ci, pi] = float(np.mean(np.minimum(rel, 1.0)))
            betas[ci][pi] = beta
    cols = ~np.isnan(err).any(0)
    return err[:, cols], [b[cols] for b in betas]


def equivalent(err: np.ndarray, a: int, b: int) -> bool:
    """Is set `a` as good as set `b` on held-out phases: its mean error above b's by at most one
    paired standard error, plus `TOL` of b's error (a difference nobody could use)."""
    d = err[a] - err[b]
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(d.mean()) <= se + TOL * float(err[b].mean()) + 1e-12


def pick(err: np.ndarray) -> tuple[int, int]:
    """(chosen, best) rows of `err`: the first candidate as good as the best (`equivalent`)."""
    best = int(np.argmin(err.mean(1)))
    return next(ci for ci in range(len(err)) if equivalent(err, ci, best)), best


def jackknife(betas: np.ndarray) -> np.ndarray:
    """Spread of each coefficient from its leave-one-phase-out fits."""
    n = len(betas)
    return np.sqrt((n - 1) / n * ((betas - betas.mean(0)) ** 2).sum(0))


def choose(rows: Rows, ok: np.ndarray) -> Fit:
    """The fit on the terms the probe determines (see the module doc), with phase-jackknife spreads."""
    y, x, kind = rows.y[ok], rows.x[ok], rows.kind[ok]
    phase = rows.phase[ok] if len(rows.phase) == len(rows.y) else np.zeros(len(y), dtype=np.int32)
    notes: list[str] = []
    if len(np.unique(phase)) < 3 and len(rows.group) == len(rows.y):
        # not a probe (e.g. one run of the user's own traffic): blocks of requests in file order
        _, g = np.unique(rows.group[ok], return_inverse=True)
        phase = (g * BLOCKS // max(1, int(g.max()) + 1)).astype(np.int32)
        notes.append(f"no probe phases: {BLOCKS} blocks of requests in file order held out instead")
    steady = np.zeros(len(y), dtype=bool)
    if "steady" in rows.phase_names and len(rows.phase) == len(rows.y):
        steady = rows.phase[ok] == rows.phase_names.index("steady")
    base, cands, fixed = structure(x, rows.family)
    if fixed:
        notes.append(f"{rows.family}: {', '.join(NAMES[j] for j in sorted(fixed) if j != SHARED)} "
                     "always fitted (its engine pays them)"
                     + ("; its prompts attend over its unified KV cache, a shared KV buffer (shared_kv)"
                        if SHARED in base else ""))
    table: list[dict[str, object]] = []
    ci = max((i for i, c in enumerate(cands) if SHARED not in c), default=0)
    largest = ci
    chosen = cands[ci]  # too few phases to hold any out: every present term (a_q over its own prompt)
    draws: np.ndarray | None = None
    err = np.zeros((0, 0))
    if len(np.unique(phase)) >= 3:
        err, betas = held_out(y, x, kind, phase, [sorted(base + c) for c in cands])
        if err.shape[1] >= 3:
            ci, best = pick(err)
            ci, why = shared_or_own(err, cands, ci, lambda c: _scale(y, x, kind, steady, sorted(base + c)))
            if why:
                layout = "a shared KV buffer (shared_kv)" if SHARED in cands[ci] else "their own KV cells"
                notes.append(f"prompts attend over {layout}: {why}")
            chosen, draws = cands[ci], betas[ci]
            for c, e in zip(cands, err.mean(1), strict=True):
                table.append({"terms": [NAMES[j] for j in c], "held_out_error": float(e)})
            notes.append(f"terms chosen by leave-one-phase-out error ({err.shape[1]} phases): "
                         f"{_terms(chosen)} {err.mean(1)[ci]:.1%} (best {_terms(cands[best])} "
                         f"{err.mean(1)[best]:.1%}; all {err.mean(1)[largest]:.1%})" if len(cands) > 1 else
                         f"leave-one-phase-out error ({err.shape[1]} phases): {err.mean(1)[ci]:.1%}")
    if draws is None:
        notes.append("fewer than 3 probe phases: every term fitted, no spreads")
    active = sorted(base + chosen)
    held: set[int] = set()
    while draws is not None:
        full, _, _ = core(y, x, kind, active)
        se = jackknife(draws)
        weak = [j for k, j in enumerate(active)
                if NAMES[j] in OPTIONAL and j not in fixed and full[k] <= Z_KEEP * se[k] and j not in held]
        if not weak:
            break
        j = weak[0]
        rest = [c for c in chosen if c != j]
        if rest in cands:
            e_rest, b_rest = err[cands.index(rest)], betas[cands.index(rest)]
        else:
            e_r, (b_rest,) = held_out(y, x, kind, phase, [sorted(base + rest)])
            e_rest = e_r[0]
        e_with = float(err[ci].mean()) if len(err) else float("nan")
        if float(e_rest.mean()) <= e_with:
            notes.append(f"{NAMES[j]}: within {Z_KEEP:g} spreads of 0 and no better on held-out phases "
                         f"({e_rest.mean():.1%} without it, {e_with:.1%} with it): dropped")
            chosen, draws, active = rest, b_rest, sorted(base + rest)
            err = np.vstack([err, e_rest[None]])  # keep `ci` pointing at the current choice's errors
            ci = len(err) - 1
            continue
        held.add(j)
        notes.append(f"{NAMES[j]}: loosely determined (within {Z_KEEP:g} spreads of 0), kept for its "
                     f"held-out error: {e_rest.mean():.1%} without it, {e_with:.1%} with it")
    fit = summarize(y, x, kind, active, rows, notes)
    fit.selection = {"terms": [NAMES[j] for j in active], "candidates": table}
    scale, where = mean_scale(y, x, kind, steady, fit.values)
    fit.selection["mean_scale"] = scale
    if draws is not None:
        se = jackknife(draws)
        for k, j in enumerate(active):
            v = fit.values[NAMES[j]]
            fit.stderr[NAMES[j]] = float(se[k])
            fit.interval[NAMES[j]] = (max(0.0, v - Z90 * float(se[k])), v + Z90 * float(se[k]))
        if len(active) > 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.corrcoef(draws.T)
            med = np.abs(draws.mean(0))
            for a in range(len(active)):
                for b in range(a + 1, len(active)):
                    loose = max(se[a] / max(med[a], 1e-15), se[b] / max(med[b], 1e-15))
                    if abs(corr[a, b]) > TRADE_OFF and loose > LOOSE:
                        fit.notes.append(f"{NAMES[active[a]]} and {NAMES[active[b]]} trade off "
                                         f"(correlation {corr[a, b]:+.2f} across left-out phases): "
                                         "read their sum, not each")
        fit.notes.append(f"spreads: jackknife over {len(draws)} leave-one-phase-out refits")
    for k in STEP_TERMS:
        fit.values[k] *= scale
        fit.stderr[k] *= scale
        if k in fit.interval:
            lo, hi = fit.interval[k]
            fit.interval[k] = (lo * scale, hi * scale)
    fit.notes.append(f"step costs x {scale:.3f}: the mean of the {where} over the fitted typical step "
                     "(queues and capacity follow the mean; the table shows the scaled values)")
    return fit


def _terms(c: list[int]) -> str:
    return "{" + ", ".join(NAMES[j] for j in c) + "}" if c else "{}"


def fit_rows(rows: Rows) -> Fit:
    """Weighted, bounded, outlier-trimmed least squares of the step model (see the module doc),
    on the terms `select.choose` finds the probe determines, with their spreads across phases."""
    y, x = rows.y, rows.x
    ok = np.isfinite(y) & (y > 0) & np.isfinite(x).all(1)
    if ok.sum() < MIN_ROWS:
        raise InputError(f"only {int(ok.sum())} usable timings (need {MIN_ROWS}): streamed results with several "
                         "chunks per request are needed")
    return choose(rows, ok)


def fit_results(res: Results, step_budget: int = 2048) -> tuple[Fit, Rows]:
    rows = rows_of(res, step_budget)
    return fit_rows(rows), rows
