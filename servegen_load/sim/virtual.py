"""A scenario's requests through the engine model on a virtual clock: results without sockets.

`plan` against a preset (and `calibrate --check`'s twin) need the latencies the simulator would
give, not a network's: the same `EngineCore` the HTTP simulator runs, driven by arrival times
instead of the loop clock, so an hour of traffic takes seconds and carries no host noise. The
output is a `Results` built as `run` would have written it (sent = scheduled: a virtual client is
never late), so every summary, SLO and capacity rule applies unchanged.

Request -> sequence, as the HTTP path would see it:

- prompt = input_tokens + media tokens (exact-length prompts; media items count as prompt
  tokens), output = output_tokens (reasoning included, as `max_tokens` is);
- shared prefixes: a request's `prefix` block ids (`prefix_block` tokens each) lead its prompt
  and hash the same in every request naming them; the rest of the prompt starts with a
  per-request nonce, so it never hits a cache (as `content.prompts` builds real prompts);
- sessions: turn k+1 is due `think_time` after turn k ended (`dispatch.sessions`); a turn whose
  predecessor is not in the stream goes at its own time;
- a request the engine could never run (longer than `max_model_len` or the KV cache) is an
  `http_error` 400, as the server answers.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..requests import Request
from ..results import COUNT_FIELDS, TEXT_FIELDS, TIME_FIELDS, Results
from .engine import FINISHED, EngineCore, EngineParams, Sequence

PREFIX_BLOCK = 512


def prompt_hashes(req: Request, prompt: int, block_size: int, prefix_block: int = PREFIX_BLOCK) -> list[int]:
    """Cumulative block hashes of the request's prompt (shared prefix blocks, then unique tokens)."""
    out: list[int] = []
    h = 0
    n_prefix = min(prompt, len(req.prefix or ()) * prefix_block)
    full = prompt // block_size
    per = max(1, prefix_block // block_size)
    for i in range(full):
        start = i * block_size
        if start + block_size <= n_prefix:
            key: Any = ("p", req.prefix[i // per], i % per)  # type: ignore[index]
        else:
            key = ("u", req.id, i)
        h = hash((h, key))
        out.append(h)
    return out


def _media(r: Request) -> int:
    return sum(r.images or ()) + sum(r.audio or ()) + sum(r.video or ())


def simulate_requests(params: EngineParams, requests: Iterable[Request], *, chunks: bool = False,
                      prefix_block: int = PREFIX_BLOCK, model: str | None = None) -> Results:
    """Every request through `params` on a virtual clock; one result row per request.

    `chunks` records every token's time (for ITL metrics; memory grows with output tokens).
    """
    reqs = list(requests)
    n = len(reqs)
    core = EngineCore(params)
    lag = params.request_overhead_s  # HTTP and tokenization before the engine sees a request
    caching = params.prefix_cache_tokens > 0
    seqs: list[Sequence] = []
    sched = np.array([r.t for r in reqs], dtype=np.float64)
    status = np.full(n, "ok", dtype=object)
    http = np.full(n, np.nan)
    prompt = np.zeros(n)
    # sessions: the next turn of each session waits for its predecessor (by turn number)
    by_turn: dict[tuple[str, int], int] = {}
    for i, r in enumerate(reqs):
        if r.session is not None and r.turn is not None:
            by_turn[(r.session, r.turn)] = i
    follows: dict[int, int] = {}  # index of a turn -> index of the turn after it
    for (s, k), i in by_turn.items():
        j = by_turn.get((s, k + 1))
        if j is not None:
            follows[i] = j
    held = set(follows.values())
    heap: list[tuple[float, int, int]] = []
    tie = itertools.count()
    for i, r in enumerate(reqs):
        lp = max(0, int(r.input_tokens) + _media(r))
        prompt[i] = lp
        hashes = prompt_hashes(r, lp, params.block_size, prefix_block) if caching and r.prefix else ()
        seq = Sequence(lp, max(1, int(r.output_tokens)), hashes)
        seq.sink = i
        if chunks:
            seq.token_times = []
        seqs.append(seq)
        if i not in held:
            heapq.heappush(heap, (r.t + lag, next(tie), i))

    def release(i: int, end: float) -> None:
        j = follows.get(i)
        if j is not None:
            due = max(end + (reqs[j].think_time or 0.0), reqs[j].t)
            sched[j] = due
            heapq.heappush(heap, (due + lag, next(tie), j))

    t = 0.0
    while True:
        while heap and heap[0][0] <= t:
            due, _, i = heapq.heappop(heap)
            seq = seqs[i]
            if core.reject_reason(seq) is not None:
                status[i], http[i] = "http_error", 400
                release(i, due)
                continue
            core.add(seq, due - lag)
        step = core.schedule(t)
        if step is None:
            if not heap:
                break
            t = max(t, heap[0][0])
            continue
        t += step.duration
        for s in core.commit(step, t):
            if s.state == FINISHED:
                release(s.sink, t)
    c: dict[str, np.ndarray] = {k: np.full(n, np.nan) for k in TIME_FIELDS + COUNT_FIELDS}
    ok = status == "ok"
    first = np.array([s.first_token_at for s in seqs])
    last = np.array([s.finished_at for s in seqs])
    c["scheduled"] = sched
    c["sent"] = sched.copy()
    c["queue_time"] = np.zeros(n)
    c["first_token"] = np.where(ok, first, np.nan)
    c["last_token"] = np.where(ok, last, np.nan)
    c["input_tokens"] = np.array([r.input_tokens for r in reqs], dtype=np.float64)
    c["output_tokens"] = np.array([r.output_tokens for r in reqs], dtype=np.float64)
    c["reason_tokens"] = np.array([np.nan if r.reason_tokens is None else r.reason_tokens for r in reqs])
    c["media_tokens"] = np.array([_media(r) or np.nan for r in reqs], dtype=np.float64)
    c["prompt_tokens"] = np.where(ok, prompt, np.nan)
    c["completion_tokens"] = np.where(ok, [s.output_tokens for s in seqs], np.nan)
    c["cached_tokens"] = np.where(ok, [s.cached_tokens for s in seqs], np.nan)
    c["http_status"] = np.where(ok, 200, http)
    c["turn"] = np.array([np.nan if r.turn is None else r.turn for r in reqs])
    reason = np.nan_to_num(c["reason_tokens"]).astype(np.int64)
    c["reasoning_tokens"] = np.where(ok & np.isfinite(c["reason_tokens"]),
                                     np.minimum(reason, c["completion_tokens"]), np.nan)
    if chunks:
        counts = np.array([len(s.token_times) if ok[i] else 0 for i, s in enumerate(seqs)], dtype=np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(s.token_times for i, s in enumerate(seqs) if ok[i]),
                           dtype=np.float64, count=int(counts.sum()))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat -= np.repeat(np.where(ok, first, 0.0), counts)
        fa = np.full(n, np.nan)  # the first token after the reasoning ones
        has = counts > 0
        idx = offsets[:-1][has] + np.minimum(reason[has], counts[has] - 1)
        fa[has] = first[has] + flat[idx]
        c["first_answer_token"] = fa
    else:
        counts = np.zeros(n, dtype=np.int64)
        flat = np.zeros(0)
        offsets = np.zeros(n + 1, dtype=np.int64)
        c["first_answer_token"] = c["first_token"].copy()
    c["retries"] = np.zeros(n, dtype=np.int64)
    text = {"id": [r.id for r in reqs], "client": [r.client for r in reqs], "category": [r.category for r in reqs],
            "session": [r.session for r in reqs], "status": list(status),
            "error": ["request does not fit the model length or KV cache" if s != "ok" else None for s in status]}
    for k in TEXT_FIELDS:
        arr = np.empty(n, dtype=object)
        arr[:] = text[k]
        c[k] = arr
    if n:
        c["id"] = c["id"].astype(str)
    head = {"format": "servegen-load/results/v1", "endpoint": "virtual", "model": model or params.model,
            "api": "virtual"}
    return Results(n=n, headers=[head], paths=["<virtual>"], cols=c, chunk_times=flat, chunk_offsets=offsets,
                   file_index=np.zeros(n, dtype=np.int32))
