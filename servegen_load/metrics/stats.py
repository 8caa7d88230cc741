"""The metric definitions, written once: every report, gate and exporter computes them here.

All times are seconds on the run's monotonic clock (see `results`). Over requests with
status `ok` unless said otherwise:

- TTFT       = first_token - sent
- E2E        = last_token - sent
- TPOT       = (E2E - TTFT) / (completion_tokens - 1)       (requests with > 1 token)
- ITL        = gaps between consecutive token-bearing chunks; a chunk holding k tokens counts as
               k tokens spread evenly, with k = completion_tokens / number of chunks (servers merge
               tokens into chunks): each gap g enters the distribution as the value g/k with
               weight k
- send lag   = sent - scheduled - queue_time: the dispatcher's own lateness (all sent requests;
               includes connection set-up). Without --max-concurrency queue_time is 0.
- queue time = time waiting for a --max-concurrency slot
- user-felt TTFT = first_token - scheduled = TTFT + send lag + queue time; user-felt E2E alike.
               Latency as a user feels it includes the client's lateness; both are reported.
- token counts come from the server's `usage`; when a server gives none, the number of chunks
  stands in (and `fidelity.usage_coverage` says how often that happened).

Rates: the scheduled rate is n_scheduled / (last - first scheduled time); the achieved rate is
n_sent / (last - first sent time) over the same requests, overall and per category. Every group
(category, client, a `slo` scope) divides by the run's spans, never its own: 3 requests of one
client at one instant are 3 / run span, not 3 / 0 s. An interrupted run (requests cancelled before
they were sent) compares like with like: its scheduled rate counts only the requests that were due
before the last send. Throughput divides by the run's span: first scheduled time to the last
observed event.

Errors are grouped by (status, HTTP code, message with numbers and ids replaced by `N`), most
frequent first, so 16 near-identical messages are one row with a count.

Percentiles are p50/p90/p99 (linear interpolation; ITL uses the weighted inverted CDF), plus mean
and max. Everything is vectorised over the result columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import printable
from ..results import STATUSES, Results, intended_of, missing_shards
from .distribution import dist
from .summary import CategoryRates, Dist, ErrorGroup, Fidelity, Requests, Summary, Throughput

DEFAULT_LAG_THRESHOLD = 0.010


# --- definitions (vectorised) ---
def ttft(first_token: np.ndarray, sent: np.ndarray) -> np.ndarray:
    return first_token - sent


def e2e(last_token: np.ndarray, sent: np.ndarray) -> np.ndarray:
    return last_token - sent


def tpot(e2e_s: np.ndarray, ttft_s: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tokens > 1, (e2e_s - ttft_s) / (tokens - 1), np.nan)


def send_lag(sent: np.ndarray, scheduled: np.ndarray, queue_time: np.ndarray) -> np.ndarray:
    return sent - scheduled - np.nan_to_num(queue_time)


def output_tokens(completion_tokens: np.ndarray, chunk_counts: np.ndarray) -> np.ndarray:
    """Server-reported completion tokens, or the chunk count where the server gave no usage."""
    return np.where(np.isnan(completion_tokens), chunk_counts, completion_tokens)


def itl(chunk_times: np.ndarray, counts: np.ndarray, tokens: np.ndarray,
        rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inter-token latencies from ragged chunk times: (values, weights, row of each gap).

    `chunk_times` holds each row's chunk times back to back (`counts` per row, any origin);
    `tokens` is each row's token count. `rows` (bool mask) selects the rows to include.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if len(chunk_times) < 2:
        z = np.zeros(0)
        return z, z, np.zeros(0, dtype=np.int64)
    gaps = np.diff(chunk_times)
    row = np.repeat(np.arange(len(counts)), counts)[1:]  # row of the later chunk of each gap
    same = np.ones(len(gaps), dtype=bool)
    starts = np.cumsum(counts) - counts
    first_of_row = starts[(counts > 0) & (starts > 0)]
    same[first_of_row - 1] = False
    if rows is not None:
        same &= rows[row]
    row = row[same]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.maximum(np.where(counts > 0, tokens / np.maximum(counts, 1), 1.0), 1.0)
    kk = np.nan_to_num(k[row], nan=1.0)
    return gaps[same] / kk, kk, row


def request_metrics(res: Results) -> dict[str, np.ndarray]:
    """Per-request latencies, the one place they are computed (summary, gate, SLOs, CSV, HTML).

    Keys: ok (bool), ttft, e2e, tpot (NaN where not ok / one token), tokens (output tokens),
    send_lag (every sent request), queue_time, user_ttft and user_e2e (= first/last token -
    scheduled: the server's latency + send lag + queue time, as the user felt it).
    """
    c = res.cols
    ok = c["status"] == "ok"
    sched, sent, qt = c["scheduled"], c["sent"], c["queue_time"]
    first, last = c["first_token"], c["last_token"]
    toks = output_tokens(c["completion_tokens"], res.chunk_counts)
    ttft_s = np.where(ok, ttft(first, sent), np.nan)
    e2e_s = np.where(ok, e2e(last, sent), np.nan)
    lag = send_lag(sent, sched, qt)
    felt = lag + np.nan_to_num(qt)
    return {"ok": ok, "ttft": ttft_s, "e2e": e2e_s, "tpot": tpot(e2e_s, ttft_s, toks), "tokens": toks,
            "send_lag": lag, "queue_time": qt, "user_ttft": ttft_s + felt, "user_e2e": e2e_s + felt}


# --- distributions: `dist` lives in metrics.distribution (shared with content.stats) ---


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _token_error(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> dict[str, Any] | None:
    m = mask & np.isfinite(got) & np.isfinite(want) & (want > 0)
    if not m.any():
        return None
    rel = (got[m] - want[m]) / want[m]
    ab = np.abs(got[m] - want[m])
    return {"n": int(m.sum()), "exact": float(np.mean(got[m] == want[m])), "mean_rel_error": float(rel.mean()),
            "mean_abs_rel_error": float(np.abs(rel).mean()), "p99_abs_rel_error": float(np.percentile(np.abs(rel), 99)),
            "p50_abs_rel_error": float(np.percentile(np.abs(rel), 50)),
            "p50_abs_error": float(np.percentile(ab, 50)), "p99_abs_error": float(np.percentile(ab, 99))}


@dataclass(frozen=True, slots=True)
class Spans:
    """The run's time spans (seconds) that every rate divides by, groups included."""

    scheduled: float | None   # first to last scheduled time of the requests due before the stop
    sent: float | None        # first to last sent time
    due_before: float         # scheduled times after this were never due (interrupted run: the last send)
    duration: float           # first scheduled time to the last observed event (throughput's span)

    @staticmethod
    def of(res: Results) -> Spans:
        c = res.cols
        sched, sent = c["scheduled"], c["sent"]
        unsent_cancelled = (c["status"] == "cancelled") & ~np.isfinite(sent)
        fin = sent[np.isfinite(sent)]
        stop = float(fin.max()) if unsent_cancelled.any() and len(fin) else np.inf
        ends = np.concatenate([sent, c["first_token"], c["last_token"]])
        ends = ends[np.isfinite(ends)]
        start = float(np.nanmin(sched)) if res.n else 0.0
        duration = float(ends.max() - start) if len(ends) else 0.0
        return Spans(_span(sched[sched <= stop]), _span(sent), stop, duration)


_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{4,})*|\d+(?:\.\d+)?")


def normalise_error(text: str | None) -> str:
    """An error message with numbers, hex ids and uuids replaced by `N` (so messages group)."""
    return _NUMBERS.sub("N", printable((text or "").strip()))[:200]


def error_groups(status: np.ndarray, http_status: np.ndarray, error: np.ndarray, limit: int = 20) -> list[dict[str, Any]]:
    """Not-ok, not-cancelled requests grouped by (status, HTTP code, normalised message), largest first."""
    bad = (status != "ok") & (status != "cancelled")
    groups: dict[tuple[str, int | None, str], int] = {}
    for st, code, err in zip(status[bad].tolist(), http_status[bad].tolist(), error[bad].tolist(), strict=True):
        key = (str(st), None if code is None or code != code else int(code), normalise_error(err))
        groups[key] = groups.get(key, 0) + 1
    rows = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][2]))
    out = [{"status": k[0], "http_status": k[1], "message": k[2], "count": v} for k, v in rows[:limit]]
    if len(rows) > limit:
        out.append({"status": "other", "http_status": None, "message": f"{len(rows) - limit} more kinds",
                    "count": sum(v for _, v in rows[limit:])})
    return out


# --- the summary ---
def summarize(res: Results, lag_threshold: float = DEFAULT_LAG_THRESHOLD,
              spans: Spans | None = None) -> dict[str, Any]:
    """The run's summary as its JSON dict (`summary(...).to_dict()`)."""
    return summary(res, lag_threshold, spans).to_dict()


def summary(res: Results, lag_threshold: float = DEFAULT_LAG_THRESHOLD, spans: Spans | None = None) -> Summary:
    """The run's typed summary (see the module docstring for every definition).

    `spans`: the whole run's spans when `res` is a group of it (a category, a client, an SLO
    scope), so the group's rates are shares of the run's; default: `res`'s own.
    """
    c = res.cols
    status = c["status"]
    ok = status == "ok"
    sched, sent = c["scheduled"], c["sent"]
    sp = spans or Spans.of(res)
    qt = c["queue_time"]
    counts = res.chunk_counts
    rm = request_metrics(res)
    toks, ttft_s, e2e_s, tpot_s, lag_s = rm["tokens"], rm["ttft"], rm["e2e"], rm["tpot"], rm["send_lag"]
    user_ttft, user_e2e = rm["user_ttft"], rm["user_e2e"]
    itl_v, itl_w, _ = itl(res.chunk_times, counts, toks, rows=ok)
    first_answer = np.where(ok, c["first_answer_token"] - sent, np.nan)

    by_status = {s: int(np.sum(status == s)) for s in STATUSES}
    n, n_ok = res.n, by_status["ok"]
    n_sent = int(np.isfinite(sent).sum())

    duration = sp.duration
    out_tok = float(np.nansum(np.where(ok, toks, np.nan)))
    in_tok = float(np.nansum(np.where(ok, c["prompt_tokens"], np.nan)))

    def per_s(x: float) -> float | None:
        return x / duration if duration > 0 else None

    span_sched, span_sent = sp.scheduled, sp.sent
    n_due = int((sched <= sp.due_before).sum())
    sched_rate = n_due / span_sched if span_sched else None
    sent_rate = n_sent / span_sent if span_sent else None
    by_cat: dict[str, Any] = {}
    cats = c["category"].astype(str) if n else np.zeros(0, dtype=str)
    for cat in sorted(set(cats.tolist())):
        m = cats == cat
        ns, nt = int(m.sum()), int(np.isfinite(sent[m]).sum())
        sr = int((m & (sched <= sp.due_before)).sum()) / span_sched if span_sched else None
        ar = nt / span_sent if span_sent else None
        by_cat[cat] = {"scheduled": ns, "sent": nt, "ok": int((ok & m).sum()), "scheduled_rate": sr,
                       "achieved_rate": ar, "rate_ratio": _ratio(ar, sr)}

    lag_d = dist(lag_s)
    fell_behind = lag_d["p99"] is not None and lag_d["p99"] > lag_threshold
    has_usage = ok & np.isfinite(c["completion_tokens"])
    warnings = list(res.warnings)
    if fell_behind:
        warnings.append(f"CLIENT FELL BEHIND: send lag p99 {lag_d['p99'] * 1e3:.1f} ms > "
                        f"{lag_threshold * 1e3:g} ms; the load sent is not the load scheduled")
    if by_status["cancelled"]:
        warnings.append(f"{by_status['cancelled']} requests cancelled (run interrupted)")
    if n_ok and has_usage.sum() < n_ok:
        warnings.append(f"{int(n_ok - has_usage.sum())} ok requests carried no usage; chunk counts stand in")

    head = res.headers[0] if res.headers else {}
    intended = intended_of(res.headers)  # what the scenario meant to schedule (the run header's, or its shards')
    gap = missing_shards(res.headers)
    if gap:
        warnings.append(gap)
    return Summary(
        sources=list(res.paths), endpoint=head.get("endpoint"), model=head.get("model"), api=head.get("api"),
        intended=intended if isinstance(intended, dict) else None,
        requests=Requests(scheduled=n, sent=n_sent, ok=n_ok, errors=n - n_ok - by_status["cancelled"],
                          by_status=by_status, due=n_due,
                          # re-sends (--retries, keep-alive re-send), counted apart: never extra requests
                          retries=int(c["retries"].sum()), retried=int((c["retries"] > 0).sum())),
        duration_s=duration,
        throughput=Throughput(requests_per_s=per_s(n_ok), output_tokens_per_s=per_s(out_tok),
                              input_tokens_per_s=per_s(in_tok), total_tokens_per_s=per_s(out_tok + in_tok)),
        latency={k: Dist(**d) for k, d in {
            "ttft": dist(ttft_s), "tpot": dist(tpot_s), "itl": dist(itl_v, itl_w), "e2e": dist(e2e_s),
            "first_answer": dist(first_answer), "user_ttft": dist(user_ttft), "user_e2e": dist(user_e2e),
            "send_lag": lag_d, "queue_time": dist(qt[np.isfinite(sent)])}.items()},
        fidelity=Fidelity(
            scheduled_rate=sched_rate, achieved_rate=sent_rate, rate_ratio=_ratio(sent_rate, sched_rate),
            lag_threshold_s=lag_threshold, fell_behind=bool(fell_behind),
            usage_coverage=float(has_usage.sum() / n_ok) if n_ok else None,
            # intended prompt = text tokens + media tokens (payload hook: results' media_tokens)
            prompt_tokens=_token_error(c["prompt_tokens"], c["input_tokens"] + np.nan_to_num(c["media_tokens"]),
                                       np.isfinite(sent)),
            completion_tokens=_token_error(c["completion_tokens"], c["output_tokens"], ok),
            by_category={k: CategoryRates(**v) for k, v in by_cat.items()}),
        errors=[ErrorGroup(**g) for g in error_groups(status, c["http_status"], c["error"])],
        warnings=warnings,
        **_content_blocks(res, ok),  # payload hook: cache, reasoning, sessions (content.stats)
    )


def _content_blocks(res: Results, ok: np.ndarray) -> dict[str, Any]:
    from ..content.stats import cache_summary, reasoning_summary, session_summary

    c = res.cols
    return {"cache": cache_summary(c, ok), "reasoning": reasoning_summary(c, ok, res.chunk_times, res.chunk_offsets),
            "sessions": session_summary(c, ok)}


def _span(t: np.ndarray) -> float | None:
    t = t[np.isfinite(t)]
    if len(t) < 2:
        return None
    s = float(t.max() - t.min())
    return s if s > 0 else None
