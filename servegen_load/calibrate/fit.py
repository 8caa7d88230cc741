"""The engine model's step costs, fitted to measured per-chunk and per-request timings.

The simulator's engine (`sim.engine`) says a step lasts ``dt = t0 + a_p·P + a_d·B + a_c·C`` and
every decoding sequence gets one token per step. A results file does not show the steps, but every sequence decoding in a step gets one token
in it, so over any stretch (a, b] of one request's decode (``SEGMENT`` chunks of it):

    b - a = Σ_steps dt = t0·S + a_p·ΣP + a_d·ΣB + a_c·ΣC

- S = the request's own decode tokens in (a, b] (one per step);
- ΣB = decode tokens of *all* requests in (a, b] (each is one sequence in one step);
- ΣC = Σ over those tokens of the context they read (prompt + tokens before them);
- ΣP = uncached prompt tokens of the requests whose first token came in (a, b] (their
  prefill ran in those steps).

Tokens are counted from `usage` and placed on the chunk times evenly (a server may send a token
as no chunk, e.g. an incomplete UTF-8 byte, and several chunks may arrive in one read), so the
sums are exact at a request's ends and interpolated inside; ΣB and ΣC come for every row at once
from prefix sums over all chunk events sorted by time.

A request alone on the server (nothing else in flight between its send and its first token)
adds a row for its TTFT: ``ttft = o + t0·⌈Pu/M⌉ + a_p·Pu`` (o: `request_overhead_s`, HTTP and
tokenization outside the engine loop; M: the step token budget). Host noise shows up as long
gaps, never short ones: step rows are fitted on relative errors, TTFT rows on absolute ones
(`weights`), bounded at zero (`scipy.optimize.lsq_linear`), then refitted without rows further
than 4 robust sigmas (MAD) from their kind's median residual, then reweighted towards an L1 fit
(`_robust`: a busy host adds a long tail of slow steps that least squares would chase). Which
terms are fitted, and each parameter's spread (a jackknife over probe phases, not the in-sample
covariance, which said 1-5 % where calibrations moved 25-47 %), are `select`'s job, and so is
the entry point (`select.fit_results`).

Limits: `max_num_seqs` is the most sequences ever seen decoding together (99.5th percentile of
B) when more requests than that were in flight at once (the limit was reached), else not
identified. KV capacity, model length and step budget are not identifiable from latencies
unless the probe fills them; the caller takes them from the server where it says them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..results import Results

NAMES = ("request_overhead_s", "step_base_s", "prefill_token_s", "decode_seq_s", "context_token_s",
         "prefill_attention_s", "batch_context_s", "shared_attention_s", "multi_context_s")
# CPU-engine terms: never reported as unidentifiable. `shared_attention_s` is a_q again, for an
# engine whose prompts attend over one KV buffer shared by all sequences (`sim.engine`, shared_kv):
# its column adds to a prompt's own earlier tokens the context of the sequences decoding beside it.
EXTRA = ("prefill_attention_s", "batch_context_s", "shared_attention_s", "multi_context_s")
MIN_ROWS = 20
SEGMENT = 8
ISOLATION_SLACK = 0.002  # a request sent as the previous one ended (--max-concurrency 1) is alone


def term_values(params: Any) -> dict[str, float]:
    """An engine's parameters as the fit's terms (`NAMES`): a_q goes in the shared-KV column
    when its prompts attend over a shared buffer (`build_params` does the reverse)."""
    v = {n: float(getattr(params, n, 0.0)) for n in NAMES}
    if getattr(params, "shared_kv", False):
        v["shared_attention_s"], v["prefill_attention_s"] = v["prefill_attention_s"], 0.0
    return v


@dataclass
class Rows:
    """Regression rows: y (seconds), X (one column per name in NAMES), kind (0 ttft, 1 step)."""

    y: np.ndarray
    x: np.ndarray
    kind: np.ndarray
    max_decoding: int = 0
    max_in_flight: int = 0
    cached: list[tuple[float, float | None]] = field(default_factory=list)  # (prompt, cached or None) of ok rows
    phase: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # probe phase of each row
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # request of each row
    phase_names: list[str] = field(default_factory=list)
    family: str | None = None  # the server family every results file names (None: unknown or mixed)


@dataclass
class Fit:
    """Fitted parameters, their standard errors and the residuals of the fit."""

    values: dict[str, float]
    stderr: dict[str, float]
    residuals: dict[str, dict[str, float]]  # per row kind: n, median, p90 |rel|, rms rel
    rows_used: int
    rows_dropped: int
    max_num_seqs: int | None
    max_decoding: int
    max_in_flight: int
    notes: list[str]
    scale: float = 0.0  # median |relative residual| over all rows: the fit's robust error scale
    interval: dict[str, tuple[float, float]] = field(default_factory=dict)  # value +- 1.645 spreads, per fitted term
    selection: dict[str, Any] = field(default_factory=dict)  # terms kept, held-out error of each candidate

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "stderr": self.stderr, "residuals": self.residuals,
                "rows_used": self.rows_used, "rows_dropped": self.rows_dropped,
                "max_num_seqs": self.max_num_seqs, "max_decoding": self.max_decoding,
                "max_in_flight": self.max_in_flight, "notes": self.notes,
                "interval": {k: list(v) for k, v in self.interval.items()}, "selection": self.selection}


def _sorted_sums(keys: np.ndarray, *vals: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    order = np.argsort(keys, kind="stable")
    sums = []
    for v in vals:
        cs = np.zeros(len(keys) + 1)
        np.cumsum(v[order], out=cs[1:])
        sums.append(cs)
    return keys[order], sums


def decoding_context(first: np.ndarray, last: np.ndarray, prompt: np.ndarray, ntok: np.ndarray,
                     t: np.ndarray) -> np.ndarray:
    """Σ context (prompt + tokens so far) of the requests decoding at each time in `t`
    (first < t <= last; each request's tokens placed evenly between its first and last token).

    Linear in t while the set of decoding requests holds, so it is Σα + t·Σβ over the requests
    started and not yet ended, from prefix sums over sorted first and last times: O(n log n).
    """
    span = last - first
    beta = np.divide(np.maximum(ntok - 1, 0.0), span, out=np.zeros_like(span), where=span > 0)
    alpha = prompt + 1 - beta * first
    fs, (fa, fb) = _sorted_sums(first, alpha, beta)
    ls, (la, lb) = _sorted_sums(last, alpha, beta)
    i_f, i_l = np.searchsorted(fs, t, side="left"), np.searchsorted(ls, t, side="left")
    return np.maximum((fa[i_f] - la[i_l]) + t * (fb[i_f] - lb[i_l]), 0.0)


def rows_of(res: Results, step_budget: int = 2048, segment: int = SEGMENT) -> Rows:
    """Regression rows of every results file in `res` (each file is its own timeline)."""
    ys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    max_dec = 0
    max_fl = 0
    cached: list[tuple[float, float]] = []
    phases: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    phase_names: list[str] = []
    n_req = 0
    c = res.cols
    for f in np.unique(res.file_index) if res.n else []:
        sel = np.flatnonzero((res.file_index == f) & (c["status"] == "ok") & np.isfinite(c["first_token"])
                             & np.isfinite(c["last_token"]) & np.isfinite(c["sent"]))
        if not len(sel):
            continue
        name = str(res.headers[f].get("phase") or f"file {res.paths[f]}") if f < len(res.headers) else f"file {f}"
        if name not in phase_names:
            phase_names.append(name)
        ph = phase_names.index(name)
        req0 = n_req
        n_req += len(sel)
        sent, first, last = c["sent"][sel], c["first_token"][sel], c["last_token"][sel]
        media = np.nan_to_num(c["media_tokens"][sel])
        prompt = np.where(np.isfinite(c["prompt_tokens"][sel]), c["prompt_tokens"][sel],
                          c["input_tokens"][sel] + media)
        prompt = np.nan_to_num(prompt)
        cach = np.nan_to_num(c["cached_tokens"][sel])
        counts = res.chunk_counts[sel]
        ntok = np.where(np.isfinite(c["completion_tokens"][sel]), c["completion_tokens"][sel], counts)
        reported = np.isfinite(c["cached_tokens"][sel])  # vLLM says nothing without --enable-prompt-tokens-details
        cached += [(float(pr), float(ca) if rep else None)
                   for pr, ca, rep in zip(prompt.tolist(), cach.tolist(), reported.tolist(), strict=True)]
        # each request's decode tokens (after the first) spread evenly over its chunks after the
        # first; a request with one chunk emits them all at its last token
        starts = res.chunk_offsets[:-1][sel]
        ev_t: list[np.ndarray] = []
        ev_d: list[np.ndarray] = []
        ev_h: list[np.ndarray] = []
        seg_rows: list[tuple[int, np.ndarray, np.ndarray]] = []  # (request, chunk times, decode count)
        for i in range(len(sel)):
            n_c = int(counts[i])
            dec = max(0.0, ntok[i] - 1)
            if n_c >= 2:
                tt = res.chunk_times[starts[i]:starts[i] + n_c] + first[i]
                d = np.arange(n_c) * (dec / (n_c - 1))
            else:
                tt = np.array([first[i], last[i]])
                d = np.array([0.0, dec])
            h = prompt[i] * d + d * (d + 1) / 2  # Σ_{k<=d} (P + k): context read by those steps
            ev_t.append(tt[1:])
            ev_d.append(np.diff(d))
            ev_h.append(np.diff(h))
            if dec >= 1:
                seg_rows.append((i, tt, d))
        seg_req: list[np.ndarray] = []
        t_all = np.concatenate(ev_t) if ev_t else np.zeros(0)
        order = np.argsort(t_all, kind="stable")
        t_sorted = t_all[order]
        d_cum = np.concatenate([[0.0], np.cumsum(np.concatenate(ev_d)[order])]) if ev_t else np.zeros(1)
        h_sorted = np.concatenate(ev_h)[order] if ev_t else np.zeros(0)
        h_cum = np.concatenate([[0.0], np.cumsum(h_sorted)])
        pu_all = np.maximum(prompt - cach, 1.0)
        own_q = pu_all * (cach + pu_all / 2)
        f_sorted, (fU, fQ, fS) = _sorted_sums(first, prompt - cach, own_q,
                                              own_q + pu_all * decoding_context(first, last, prompt, ntok, first))
        l_sorted = np.sort(last)
        # tokens decoded beside another sequence (a step of two or more): Σ their context
        n_dec = np.searchsorted(f_sorted, t_sorted, side="left") - np.searchsorted(l_sorted, t_sorted, side="left")
        m_cum = np.concatenate([[0.0], np.cumsum(h_sorted * (n_dec >= 2))])

        def at(cum: np.ndarray, t: np.ndarray, ts: np.ndarray = t_sorted) -> np.ndarray:
            return cum[np.searchsorted(ts, t, side="right")]

        # in flight at once: sends against completions (the concurrency the server was offered)
        ev = np.concatenate([np.stack([sent, np.ones_like(sent)], 1), np.stack([last, -np.ones_like(last)], 1)])
        ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]
        max_fl = max(max_fl, int(np.cumsum(ev[:, 1]).max()))
        # decode segments: `segment` chunks of one request; every step in them had it decoding
        a_l, b_l, own_l = [], [], []
        for i_req, tt, d in seg_rows:
            cut = np.unique(np.r_[np.arange(0, len(tt) - 1, segment), len(tt) - 1])
            seg_req.append(np.full(len(cut) - 1, req0 + i_req, dtype=np.int64))
            a_l.append(tt[cut[:-1]])
            b_l.append(tt[cut[1:]])
            own_l.append(np.diff(d[cut]))
        if a_l:
            a, b, own = np.concatenate(a_l), np.concatenate(b_l), np.concatenate(own_l)
            y = b - a
            keep = (y > 0) & (own >= 0.5)
            a, b, own, y = a[keep], b[keep], own[keep], y[keep]
            groups.append(np.concatenate(seg_req)[keep])
            phases.append(np.full(len(y), ph, dtype=np.int32))
            ia, ib = np.searchsorted(f_sorted, a, side="right"), np.searchsorted(f_sorted, b, side="right")
            pf, q, shared = fU[ib] - fU[ia], fQ[ib] - fQ[ia], fS[ib] - fS[ia]
            bsum = at(d_cum, b) - at(d_cum, a)
            csum = at(h_cum, b) - at(h_cum, a)
            msum = at(m_cum, b) - at(m_cum, a)
            x = np.stack([np.zeros_like(y), own, pf, bsum, csum, q, bsum * csum / own, shared, msum], 1)
            ys.append(y)
            xs.append(x)
            kinds.append(np.ones(len(y), dtype=np.int8))
            m = (a + b) / 2
            bsz = np.searchsorted(f_sorted, m, side="right") - np.searchsorted(l_sorted, m, side="left")
            if len(bsz):
                max_dec = max(max_dec, int(np.rint(np.percentile(bsz, 99.5))))
        # isolated TTFT rows: nothing else in flight between send and first token
        for i in range(len(sel)):
            others = (sent < first[i]) & (last > sent[i] + ISOLATION_SLACK)
            others[i] = False
            if others.any():
                continue
            pu = max(1.0, prompt[i] - cach[i])
            ys.append(np.array([first[i] - sent[i]]))
            q_i = pu * (cach[i] + pu / 2)  # alone: its own earlier tokens are all there is to attend to
            xs.append(np.array([[1.0, np.ceil(pu / step_budget), pu, 0.0, 0.0, q_i, 0.0, q_i, 0.0]]))
            kinds.append(np.zeros(1, dtype=np.int8))
            groups.append(np.array([req0 + i], dtype=np.int64))
            phases.append(np.array([ph], dtype=np.int32))
    if not ys:
        return Rows(np.zeros(0), np.zeros((0, len(NAMES))), np.zeros(0, dtype=np.int8), max_dec, max_fl, cached)
    families = {h.get("server_family") for h in res.headers}
    return Rows(np.concatenate(ys), np.concatenate(xs), np.concatenate(kinds), max_dec, max_fl, cached,
                np.concatenate(phases), np.concatenate(groups), phase_names,
                families.pop() if len(families) == 1 else None)


def weights(y: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Step rows: relative errors (host noise scales with the step). TTFT rows: absolute errors
    (a few ms of jitter whatever the prompt), on the scale of the median TTFT, and the group
    weighted up to count as much as the step rows (there are far fewer of them)."""
    w = 1.0 / y
    t = kind == 0
    if t.any() and (~t).any():
        w[t] = np.sqrt((~t).sum() / t.sum()) / float(np.median(y[t]))
    return w


def _robust(y: np.ndarray, x: np.ndarray, w: np.ndarray, beta: np.ndarray, iters: int = 8) -> np.ndarray:
    """Weights of an L1 fit by iteratively reweighted least squares: a row's weight shrinks with
    its (weighted) residual, so the fit follows the typical row, not the tail a busy host adds."""
    w0 = w
    for _ in range(iters):
        r = np.abs((y - x @ beta) * w0)
        scale = float(np.median(r)) or 1e-9
        w = w0 / np.sqrt(np.maximum(r, 0.1 * scale))
        beta = _solve(y, x, w)
    return w


def _solve(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from scipy.optimize import lsq_linear

    return lsq_linear(x * w[:, None], y * w, bounds=(0.0, np.inf), method="bvls").x


def core(y: np.ndarray, x: np.ndarray, kind: np.ndarray, active: list[int],
         iters: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beta over `active`, rows kept, final weights): bounded weighted least squares, trimmed at
    4 robust sigmas per row kind, then reweighted towards an L1 fit."""
    xa = x[:, active]
    w = weights(y, kind)
    beta = _solve(y, xa, w)
    keep = np.ones(len(y), dtype=bool)
    for k in (0, 1):  # trim each kind on its own robust scale
        m = kind == k
        if m.sum() < 5:
            continue
        r = (y[m] - xa[m] @ beta) * w[m]
        med = float(np.median(r))
        mad = 1.4826 * float(np.median(np.abs(r - med))) or 1e-9
        keep[m] = np.abs(r - med) <= 4 * mad
    if keep.sum() < min(MIN_ROWS, len(y)):
        keep[:] = True
    w = weights(y[keep], kind[keep])
    beta = _solve(y[keep], xa[keep], w)
    w = _robust(y[keep], xa[keep], w, beta, iters)
    beta = _solve(y[keep], xa[keep], w)
    return beta, keep, w


def summarize(y: np.ndarray, x: np.ndarray, kind: np.ndarray, active: list[int], rows: Rows,
              notes: list[str]) -> Fit:
    """The fit on `active` with its residuals by row kind and covariance standard errors (the
    caller replaces these with bootstrap spreads)."""
    for j in range(x.shape[1]):
        if not np.any(x[:, j] != 0) and NAMES[j] not in EXTRA:
            notes.append(f"{NAMES[j]}: not identifiable from these timings (set to 0)")
    beta, keep, w = core(y, x, kind, active)
    xa = x[:, active]
    yk, xk = y[keep], xa[keep]
    r_k = (yk - xk @ beta) * w
    dof = max(1, len(yk) - len(active))
    s2 = float((r_k ** 2).sum() / dof)
    xw = xk * w[:, None]
    cov = s2 * np.linalg.pinv(xw.T @ xw)
    values = dict.fromkeys(NAMES, 0.0)
    stderr = dict.fromkeys(NAMES, 0.0)
    for pos, j in enumerate(active):
        values[NAMES[j]] = float(beta[pos])
        stderr[NAMES[j]] = float(np.sqrt(max(cov[pos, pos], 0.0)))
    residuals: dict[str, dict[str, float]] = {}
    rel_all = (y - xa @ beta) / y
    for k, label in ((0, "ttft"), (1, "step")):
        r = rel_all[kind == k]
        if len(r):
            residuals[label] = {"rows": len(r), "median": float(np.median(r)),
                                "p90_abs": float(np.percentile(np.abs(r), 90)),
                                "rms": float(np.sqrt(np.mean(r[np.abs(r) <= 1] ** 2))) if (np.abs(r) <= 1).any() else 1.0}
    # A limit shows as a plateau: decoding held well below what was in flight. A few requests in
    # flight beyond the decoders are prompts being prefilled: 41 in flight and 39 decoding, against
    # a simulator allowing 1,024, was taken for a limit of 39, and the twin's small batches kept
    # its TPOT p99 45 % low, its capacity 24 % high.
    reached = rows.max_in_flight >= rows.max_decoding + max(3, round(0.25 * rows.max_decoding))
    max_seqs = rows.max_decoding if reached and rows.max_decoding >= 1 else None
    if not reached:
        notes.append(f"max_num_seqs: not reached ({rows.max_in_flight} requests in flight, "
                     f"{rows.max_decoding} decoding together)")
    scale = float(np.median(np.abs(rel_all)))
    return Fit(values, stderr, residuals, int(keep.sum()), int((~keep).sum()), max_seqs, rows.max_decoding,
               rows.max_in_flight, notes, scale)


def cache_block(prompt_cached: list[tuple[float, float | None]], shared: int | None = None) -> tuple[bool | None, int | None]:
    """(caching seen?, block size) from the cached-token counts the server reported (None: it
    never reported any, so caching is not known).

    With a known shared prefix length, the block is the smallest power of two b with
    ⌊shared/b⌋·b = cached (vLLM: 16; llama.cpp: any length, 1); else the largest power of two
    dividing every positive count, at most 16.
    """
    if all(cached is None for _, cached in prompt_cached):
        return None, None  # the server never said: unknown
    hits = [int(cached) for _, cached in prompt_cached if cached and cached > 0]
    if not hits:
        return (False if shared else None), None
    if shared:
        best = max(hits)
        for e in range(0, 9):
            b = 1 << e
            if (shared // b) * b == best:
                return True, b
    g = 0
    for h in hits:
        g = int(np.gcd(g, h))
    b = 1
    while b < 16 and g % (b * 2) == 0:
        b *= 2
    return True, b
