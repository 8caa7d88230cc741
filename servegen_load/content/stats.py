"""Summary blocks about request content: prefix caching, reasoning, multi-turn sessions.

`metrics.stats.summarize` adds them (keys `cache`, `reasoning`, `sessions`; None when the run has
nothing to say). Definitions, over requests with status ok:

- cache: `cached_tokens` (server usage `prompt_tokens_details.cached_tokens`) summed and as a
  share of the prompt tokens of the requests that report it; `hit_requests` have > 0.
- reasoning: reasoning tokens from usage (`completion_tokens_details.reasoning_tokens`), else
  estimated from the stream as completion_tokens x (reasoning chunks / all chunks), a reasoning
  chunk being one before `first_answer_token` (servers stream the thinking first); answer tokens
  = completion - reasoning. Time to first answer token is `latency.first_answer`.
- sessions: turns per session, session duration = last turn's `last_token` - first turn's `sent`,
  TTFT by turn index (turns >= `MAX_TURN_ROWS` - 1 pooled), and `gap` = sent(k+1) - last_token(k)
  for consecutive turns (think time as sent; never negative when turns wait for responses;
  `early_turns` counts those that went before their predecessor ended).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_TURN_ROWS = 10


def cache_summary(c: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, Any] | None:
    cached = c["cached_tokens"]
    m = ok & np.isfinite(cached) & np.isfinite(c["prompt_tokens"])
    if not m.any():
        return None
    tot_c, tot_p = float(cached[m].sum()), float(c["prompt_tokens"][m].sum())
    return {"n": int(m.sum()), "cached_tokens": tot_c, "prompt_tokens": tot_p,
            "share": tot_c / tot_p if tot_p else None, "hit_requests": int((cached[m] > 0).sum()),
            "mean_cached_per_request": tot_c / int(m.sum())}


def reasoning_summary(c: dict[str, np.ndarray], ok: np.ndarray, chunk_times: np.ndarray,
                      offsets: np.ndarray) -> dict[str, Any] | None:
    want = c["reason_tokens"]
    rep = c["reasoning_tokens"]
    first, fa = c["first_token"], c["first_answer_token"]
    thinks = ok & ((np.isfinite(want) & (want > 0)) | (np.isfinite(rep) & (rep > 0))
                   | (np.isfinite(first) & (fa != first)))
    if not thinks.any():
        return None
    comp = c["completion_tokens"]
    from_usage = np.isfinite(rep) & (rep > 0)
    counts = np.diff(offsets)
    row = np.repeat(np.arange(len(counts)), counts)  # row of each chunk
    cut = np.where(np.isfinite(fa), fa - first, np.inf)  # chunk offsets are from the first token
    before = np.bincount(row, weights=(chunk_times < cut[row] - 1e-9).astype(np.float64), minlength=len(counts))
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where((counts > 0) & thinks & ~from_usage, comp * before / counts, np.nan)
    reason = np.where(from_usage, rep, est)
    m = thinks & np.isfinite(reason) & np.isfinite(comp)
    if not m.any():
        return None
    answer = comp[m] - reason[m]
    return {"n": int(m.sum()), "source": "usage" if from_usage[m].all() else
            ("chunks" if not from_usage[m].any() else "usage+chunks"),
            "reasoning_tokens": float(reason[m].sum()), "answer_tokens": float(answer.sum()),
            "mean_reasoning_tokens": float(reason[m].mean()), "mean_answer_tokens": float(answer.mean()),
            "intended_reasoning_tokens": float(np.nansum(np.where(m, want, np.nan)))}


def session_summary(c: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, Any] | None:
    from ..metrics.distribution import dist

    sess = c["session"]
    has = np.not_equal(sess, None).astype(bool) if len(sess) else np.zeros(0, dtype=bool)
    if not has.any():
        return None
    idx = np.flatnonzero(has)
    names = np.array([str(s) for s in sess[idx]])
    turn = np.nan_to_num(c["turn"][idx], nan=0.0).astype(np.int64)
    order = np.lexsort((turn, names))
    idx, names, turn = idx[order], names[order], turn[order]
    new = np.concatenate([[True], names[1:] != names[:-1]])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(idx))
    sent, last, first = c["sent"][idx], c["last_token"][idx], c["first_token"][idx]
    ok_s = ok[idx]
    dur = []
    for a, b in zip(starts, ends, strict=True):
        if ok_s[a:b].all():
            dur.append(float(last[b - 1] - sent[a]))
    same = ~new[1:] & (turn[1:] == turn[:-1] + 1)
    gap = (sent[1:] - last[:-1])[same]
    gap = gap[np.isfinite(gap)]
    ttft = np.where(ok_s, first - sent, np.nan)
    by_turn = {}
    for k in range(MAX_TURN_ROWS):
        sel = turn == k if k < MAX_TURN_ROWS - 1 else turn >= k
        if sel.any():
            by_turn[str(k) if k < MAX_TURN_ROWS - 1 else f"{k}+"] = dist(ttft[sel])
    return {"sessions": len(starts), "requests": len(idx), "turns": dist(np.diff(np.append(starts, len(idx)))),
            "duration": dist(np.array(dur)), "ttft_by_turn": by_turn, "gap": dist(gap),
            "early_turns": int((gap < 0).sum())}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def summary_lines(s: dict[str, Any]) -> list[str]:
    """Text lines for the summary printout (metrics.render): prompt error, cache, reasoning, sessions."""
    lines = []
    pt = (s.get("fidelity") or {}).get("prompt_tokens")
    if pt and "p50_abs_error" in pt:
        lines.append(f"prompt tokens error: p50 {pt['p50_abs_error']:g} / p99 {pt['p99_abs_error']:g} tokens, "
                     f"p50 {pt['p50_abs_rel_error'] * 100:.2f}% / p99 {pt['p99_abs_rel_error'] * 100:.2f}%")
    ca = s.get("cache")
    if ca:
        share = "-" if ca["share"] is None else f"{ca['share'] * 100:.1f}%"
        lines.append(f"prefix cache: {ca['cached_tokens']:.0f} cached prompt tokens ({share} of "
                     f"{ca['prompt_tokens']:.0f}), {ca['hit_requests']} of {ca['n']} requests hit")
    re_ = s.get("reasoning")
    if re_:
        fa = (s.get("latency") or {}).get("first_answer") or {}
        lines.append(f"reasoning: {re_['mean_reasoning_tokens']:.1f} reasoning + {re_['mean_answer_tokens']:.1f} "
                     f"answer tokens per request ({re_['source']}); time to first answer p50 {_ms(fa.get('p50'))} "
                     f"ms, p99 {_ms(fa.get('p99'))} ms")
    se = s.get("sessions")
    if se:
        d = se["duration"]
        lines.append(f"sessions: {se['sessions']} ({se['requests']} turns), duration p50 {d['p50'] or 0:.2f} s, "
                     f"p99 {d['p99'] or 0:.2f} s" + (f"; {se['early_turns']} turns sent before the previous "
                                                      "response ended" if se["early_turns"] else ""))
        lines.append("  TTFT by turn (p50 ms): " + ", ".join(
            f"{k}: {_ms(v['p50'])}" for k, v in se["ttft_by_turn"].items()))
    return lines
