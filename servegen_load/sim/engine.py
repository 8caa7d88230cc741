"""Engine model: continuous batching under a batch-size and KV-cache budget, chunked prefill,
prefix caching; step times come from a cost model, not from fixed per-request delays.

One engine loop runs per server. Each step it

1. admits waiting sequences in FIFO order while the batch has fewer than ``max_num_seqs``
   sequences and the KV budget holds the head's final footprint (prompt + output tokens; the
   footprint is reserved at admission, so no sequence is ever preempted). A head that does not fit
   blocks those behind it, as vLLM's first-come-first-served scheduler does;
2. gives every running sequence that has finished its prefill one decode token, then hands the
   rest of the ``max_num_batched_tokens`` budget to unfinished prefills in admission order
   (chunked prefill). Prompt tokens found in the prefix cache are never prefilled;
3. lasts

       dt = t0 + a_p·P + a_d·B + a_c·C  [+ a_q·Q + a_bc·B·C + a_m·C if B >= 2]

   where P is the number of prompt tokens prefilled in the step, B the number of sequences
   decoding, C = Σ (prompt + generated) over the decoding sequences (the KV the attention reads).
   t0 = ``step_base_s`` (weights read once per step), a_p = ``prefill_token_s``,
   a_d = ``decode_seq_s``, a_c = ``context_token_s``; all already multiplied by the time scale.
   The bracketed terms are 0 in the GPU presets and fitted by `calibrate` where a real engine
   shows them: Q = Σ over prefill chunks of c·(s + c/2) (chunk of c tokens from prompt position
   s: causal attention, quadratic in the prompt), a_q = ``prefill_attention_s``; and
   a_bc = ``batch_context_s`` for an attention that spans one shared KV buffer (llama.cpp's
   unified KV cache: every sequence reads every sequence's cells). With ``shared_kv`` (that
   buffer again) a prompt chunk also attends over the decoding sequences' cells: Q's terms are
   c·(s + c/2 + C). a_m = ``multi_context_s``: llama.cpp reads context dearer once two or
   more sequences decode together.
   Multimodal items count as prompt tokens (their tokens are in P and C);
4. at its end emits one token for every decoding sequence and the first token of every sequence
   whose prefill completed in the step; a sequence whose prompt is complete enters the prefix
   cache (cumulative hashes of its full ``block_size`` blocks, LRU with a capacity).

Steps follow absolute deadlines: step k ends at ``t_k = t_{k-1} + dt_k`` on the loop clock,
whatever time the host took to write the chunks, so the simulated GPU never drifts. Running
behind (a busy host), the next step starts at its deadline, not at "now", catching up; more than
``max_catchup_s`` behind, the debt is dropped (counted in ``catchup_resets``).

Saturation rate (the throughput knee; `analytic_saturation_rate`)
---------------------------------------------------------------
Past saturation the queue never empties, so every freed slot is refilled at the next step and
the batch holds ``B = min(max_num_seqs, floor(KV / (Lp + Lo)))`` sequences. A request with prompt
Lp (Lu of it uncached) and output Lo occupies its slot for ``occ = n_pf + Lo - 1`` steps
(n_pf prefill chunks, the last one emitting the first token), and needs ``Lu + Lo - 1`` of the
step token budgets M. Over a long window at throughput λ the number of steps per request is
therefore

    s = max(occ / B, (Lu + Lo - 1) / M)

and summing dt over the window, divided by the requests completed in it:

    1/λ = t0·s + a_p·Lu + a_d·(Lo - 1) + (a_c + a_bc·B)·(Lo - 1)·(Lp + Lo/2) + a_q·Lu·(Lp - Lu/2)
          [+ a_q·Lu·(B - 1)·(Lp + Lo/2) with shared_kv: the other B - 1 sequences' mean context]

((Lo - 1)·(Lp + Lo/2) is Σ_{j=1}^{Lo-1} (Lp + j), the context read by a request's decode steps;
the last term its prefill's attention to its own prompt, in one chunk). It is
exact for fixed lengths; given means of varying lengths it drops the variance of Lo in the last
term (Jensen), which is small unless a_c dominates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

log = logging.getLogger("servegen_load.sim")

MAX_CATCHUP_S = 0.5
LATE_STEP_S = 0.005


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Parameters of one simulated GPU/model pair (see `presets` for documented values)."""

    model: str
    """Model name reported by /v1/models and echoed when a request names none."""
    max_num_seqs: int
    """Batch size limit: sequences running at once (vLLM --max-num-seqs)."""
    max_num_batched_tokens: int
    """Token budget of one step: decode tokens + prefill chunk (vLLM --max-num-batched-tokens)."""
    kv_cache_tokens: int
    """KV-cache capacity in tokens; a running sequence holds prompt + output tokens."""
    max_model_len: int
    """Longest prompt + output a request may ask for (else HTTP 400)."""
    step_base_s: float
    """t0: fixed cost of one step, seconds."""
    prefill_token_s: float
    """a_p: cost per prefilled prompt token, seconds."""
    decode_seq_s: float
    """a_d: cost per decoding sequence in the step, seconds."""
    context_token_s: float
    """a_c: cost per context token (prompt + generated) of the decoding sequences, seconds."""
    block_size: int = 16
    """Prefix-cache block, tokens (vLLM default 16)."""
    prefix_cache_tokens: int = 0
    """Prefix-cache capacity in tokens (LRU of blocks); 0 disables caching."""
    default_max_tokens: int = 1024
    """Output limit of a chat request that gives no max_tokens (completions default to 16)."""
    prefill_attention_s: float = 0.0
    """a_q: cost per prefilled token per earlier token of its prompt (causal attention, quadratic
    in the prompt), seconds. 0 for the GPU presets (hidden in a_p there); CPU engines show it."""
    batch_context_s: float = 0.0
    """a_bc: cost per decoding sequence per context token of the whole batch, seconds: an engine
    whose attention spans one shared KV buffer (llama.cpp's unified KV cache) reads every
    sequence's cells for every sequence. 0 for paged attention (vLLM)."""
    shared_kv: bool = False
    """Prompts attend over one KV buffer shared by every sequence (llama.cpp's unified KV cache),
    so a prefilled token pays a_q for each context token of the sequences decoding beside it as
    well as for its own prompt's earlier tokens: a prompt arriving in a busy batch costs more than
    the same prompt alone (on llama.cpp here, 0.4 ms a token alone, 1.35 ms beside 14,000 cells)."""
    multi_context_s: float = 0.0
    """a_m: cost per context token of the decoding sequences in a step that decodes two or more,
    seconds: llama.cpp reads a lone sequence's context much faster than a batch's (here ITL 1.0 ms
    for one sequence at 1,000 tokens, 4.2 ms for two: 0.5 µs a context token, then 1.3)."""
    request_overhead_s: float = 0.0
    """Latency outside the engine loop on a request's way in (HTTP, tokenization), seconds:
    it delays admission, never occupies a step. 0 for the GPU presets; `calibrate` fits it."""

    def scaled(self, time_scale: float) -> EngineParams:
        """The same engine `time_scale` times slower (2.0: every step takes twice as long)."""
        s = float(time_scale)
        return replace(self, step_base_s=self.step_base_s * s, prefill_token_s=self.prefill_token_s * s,
                       decode_seq_s=self.decode_seq_s * s, context_token_s=self.context_token_s * s,
                       prefill_attention_s=self.prefill_attention_s * s, batch_context_s=self.batch_context_s * s,
                       multi_context_s=self.multi_context_s * s,
                       request_overhead_s=self.request_overhead_s * s)

    def saturation_rate(self, mean_prompt_tokens: float, mean_output_tokens: float,
                        cached_tokens: float = 0.0) -> float:
        """Requests/s at which this engine saturates (see `analytic_saturation_rate`)."""
        return analytic_saturation_rate(mean_prompt_tokens, mean_output_tokens, self,
                                        cached_tokens=cached_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def analytic_saturation_rate(mean_prompt_tokens: float, mean_output_tokens: float,
                             params: EngineParams, *, cached_tokens: float = 0.0) -> float:
    """Request rate (req/s) above which the waiting queue grows without bound.

    ``1/λ = t0·s + a_p·Lu + a_d·(Lo-1) + a_c·(Lo-1)·(Lp + Lo/2)`` with
    ``s = max(occ/B, (Lu+Lo-1)/M)`` steps per request; the derivation is in the module docstring.
    `cached_tokens` is the mean prefix-cache hit.
    """
    p = params
    lp, lo = max(1.0, float(mean_prompt_tokens)), max(1.0, float(mean_output_tokens))
    lu = max(1.0, lp - float(cached_tokens))
    b = min(p.max_num_seqs, math.floor(p.kv_cache_tokens / (lp + lo)))
    if b < 1:
        return 0.0
    m = p.max_num_batched_tokens
    n_pf = max(1, math.ceil(lu / max(1, m - (b - 1))))
    steps = max((n_pf + lo - 1) / b, (lu + lo - 1) / m)
    per_request = (p.step_base_s * steps + p.prefill_token_s * lu + p.decode_seq_s * (lo - 1)
                   + (p.context_token_s + p.batch_context_s * b + p.multi_context_s * (b >= 2)) * (lo - 1) * (lp + lo / 2)
                   + p.prefill_attention_s * lu * (lp - lu / 2 + (b - 1) * (lp + lo / 2) * p.shared_kv))
    return 1.0 / per_request if per_request > 0 else math.inf


# --- sequences and the prefix cache ---------------------------------------------------------


def block_hashes(keys: list[Any], block_size: int) -> list[int]:
    """Cumulative hashes of the full `block_size` blocks of a prompt's token keys.

    Block i's hash covers blocks 0..i, so two prompts share block i's hash only if they share the
    whole prefix up to its end (vLLM's prefix-caching rule).
    """
    out: list[int] = []
    h = 0
    for i in range(0, len(keys) - block_size + 1, block_size):
        h = hash((h, *keys[i:i + block_size]))
        out.append(h)
    return out


class PrefixCache:
    """LRU set of block hashes, capacity in blocks."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = max(0, int(capacity_blocks))
        self._lru: OrderedDict[int, None] = OrderedDict()

    def lookup(self, hashes: list[int] | tuple[int, ...]) -> int:
        """Number of leading blocks present (each hit becomes most recently used)."""
        n = 0
        for h in hashes:
            if h not in self._lru:
                break
            self._lru.move_to_end(h)
            n += 1
        return n

    def insert(self, hashes: list[int] | tuple[int, ...]) -> None:
        if not self.capacity:
            return
        lru = self._lru
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)


WAITING, RUNNING, FINISHED, ABORTED = range(4)


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine. `sink` is whatever the server attaches to write tokens."""

    prompt_tokens: int
    output_tokens: int
    hashes: list[int] | tuple[int, ...] = ()
    sink: Any = None
    state: int = WAITING
    cached_tokens: int = 0
    prefilled: int = 0
    generated: int = 0
    paused_until: float = 0.0
    arrival: float = 0.0
    first_token_at: float = -1.0
    finished_at: float = -1.0
    token_times: list[float] | None = None
    """Every token's emission time, when a virtual run asks for them (ITL metrics)."""

    @property
    def need(self) -> int:
        """KV tokens reserved while running: the final footprint."""
        return self.prompt_tokens + self.output_tokens

    @property
    def prefill_target(self) -> int:
        """Tokens to run through prefill (at least one, so an empty prompt still starts)."""
        return max(1, self.prompt_tokens)


@dataclass(slots=True)
class Step:
    decode: list[Sequence]
    prefill: list[tuple[Sequence, int]]
    prefill_tokens: int
    context_tokens: int
    duration: float


class EngineCore:
    """The scheduler and cost model as a pure state machine over an external clock.

    `schedule(now)` decides a step's work and its duration, `commit(step, end)` applies it at the
    step's end and returns the sequences that emitted a token. The asyncio `Engine` and the
    virtual-clock `simulate` both drive it.
    """

    def __init__(self, params: EngineParams) -> None:
        self.p = params
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_used = 0
        self.cache = PrefixCache(params.prefix_cache_tokens // max(1, params.block_size))
        self.steps = 0
        self.busy_s = 0.0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.prefill_tokens = 0
        self.generated_tokens = 0
        self.cache_queries = 0
        self.admitted = 0
        self.finished = 0
        self.max_running = 0
        self.max_waiting = 0

    def reject_reason(self, seq: Sequence, max_tokens: int = 0) -> str | None:
        """Why `seq` can never run (an HTTP 400), or None.

        Like vLLM, prompt + max_tokens must fit the model length; the KV footprint actually
        reserved (prompt + tokens it will generate) must fit the cache.
        """
        p = self.p
        asked = seq.prompt_tokens + max(max_tokens, seq.output_tokens)
        if asked > p.max_model_len:
            return (f"This model's maximum context length is {p.max_model_len} tokens; the request "
                    f"asks for {asked} ({seq.prompt_tokens} prompt + {asked - seq.prompt_tokens} output)")
        if seq.need > p.kv_cache_tokens:
            return (f"request needs {seq.need} KV tokens but the simulated KV cache holds "
                    f"{p.kv_cache_tokens}")
        return None

    def add(self, seq: Sequence, now: float) -> None:
        seq.arrival = now
        seq.state = WAITING
        self.waiting.append(seq)
        self.prompt_tokens += seq.prompt_tokens
        if len(self.waiting) > self.max_waiting:
            self.max_waiting = len(self.waiting)

    def abort(self, seq: Sequence) -> None:
        """Drop `seq` wherever it is and free what it holds (client gone, or a fault)."""
        if seq.state == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        elif seq.state == RUNNING:
            self.running.remove(seq)
            self.kv_used -= seq.need
        else:
            return
        seq.state = ABORTED

    def pause(self, seq: Sequence, until: float) -> None:
        """Skip `seq` in steps until `until`; it keeps its batch slot and KV (a stalled stream)."""
        seq.paused_until = until

    def next_resume(self) -> float | None:
        """Earliest end of a pause, when paused sequences are all that is left to run."""
        ends = [s.paused_until for s in self.running if s.paused_until > 0]
        return min(ends) if ends else None

    def schedule(self, now: float) -> Step | None:
        """Admit, then plan one step at time `now`; None when there is nothing to run."""
        p, running, waiting = self.p, self.running, self.waiting
        while waiting and len(running) < p.max_num_seqs:
            s = waiting[0]
            if self.kv_used + s.need > p.kv_cache_tokens:
                break
            waiting.popleft()
            self.kv_used += s.need
            if s.hashes:
                self.cache_queries += s.prompt_tokens
                hits = self.cache.lookup(s.hashes)
                s.cached_tokens = max(0, min(hits * p.block_size, s.prefill_target - 1))
                self.cached_tokens += s.cached_tokens
            s.prefilled = s.cached_tokens
            s.state = RUNNING
            running.append(s)
            self.admitted += 1
        if len(running) > self.max_running:
            self.max_running = len(running)
        decode: list[Sequence] = []
        ctx = 0
        for s in running:
            if s.prefilled >= s.prefill_target and s.paused_until <= now:
                decode.append(s)
                ctx += s.prompt_tokens + s.generated
        budget = p.max_num_batched_tokens - len(decode)
        prefill: list[tuple[Sequence, int]] = []
        shared = ctx if p.shared_kv else 0
        n_pf = 0
        attn = 0.0
        if budget > 0:
            for s in running:
                left = s.prefill_target - s.prefilled
                if left > 0 and s.paused_until <= now:
                    c = min(left, budget)
                    prefill.append((s, c))
                    n_pf += c
                    attn += c * (s.prefilled + c / 2 + shared)
                    budget -= c
                    if budget <= 0:
                        break
        if not decode and not prefill:
            return None
        dt = (p.step_base_s + p.prefill_token_s * n_pf + p.decode_seq_s * len(decode)
              + p.context_token_s * ctx + p.prefill_attention_s * attn + p.batch_context_s * len(decode) * ctx
              + (p.multi_context_s * ctx if len(decode) >= 2 else 0.0))
        return Step(decode, prefill, n_pf, ctx, dt)

    def commit(self, step: Step, end: float) -> list[Sequence]:
        """Apply `step` at its end time; return the sequences that emitted a token, in order."""
        emitted: list[Sequence] = []
        for s in step.decode:
            if s.state == RUNNING:
                s.generated += 1
                emitted.append(s)
                if s.token_times is not None:
                    s.token_times.append(end)
        for s, c in step.prefill:
            if s.state != RUNNING:
                continue
            s.prefilled += c
            if s.prefilled >= s.prefill_target:
                s.generated = 1
                s.first_token_at = end
                self.cache.insert(s.hashes)
                emitted.append(s)
                if s.token_times is not None:
                    s.token_times.append(end)
        self.steps += 1
        self.busy_s += step.duration
        self.prefill_tokens += step.prefill_tokens
        self.generated_tokens += len(emitted)
        done = False
        for s in emitted:
            if s.generated >= s.output_tokens:
                s.state = FINISHED
                s.finished_at = end
                self.kv_used -= s.need
                self.finished += 1
                done = True
        if done:
            self.running = [s for s in self.running if s.state == RUNNING]
        return emitted

    def snapshot(self) -> dict[str, Any]:
        return {
            "running": len(self.running), "waiting": len(self.waiting),
            "max_running": self.max_running, "max_waiting": self.max_waiting,
            "steps": self.steps, "busy_seconds": round(self.busy_s, 6),
            "mean_step_seconds": self.busy_s / self.steps if self.steps else 0.0,
            "kv_used_tokens": self.kv_used, "kv_capacity_tokens": self.p.kv_cache_tokens,
            "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
            "prefill_tokens": self.prefill_tokens, "generated_tokens": self.generated_tokens,
            "prefix_cache_blocks": len(self.cache), "admitted": self.admitted, "finished": self.finished,
        }


def simulate(params: EngineParams, arrivals: Iterable[tuple[float, Sequence]]) -> EngineCore:
    """Run `arrivals` ((time, sequence) pairs) to completion on a virtual clock; no sleeping.

    Sequences record `arrival`, `first_token_at` and `finished_at`: enough to measure TTFT and
    throughput of the model itself, free of host noise (tests, `plan` cross-checks).
    """
    core = EngineCore(params)
    lag = params.request_overhead_s
    arr = sorted(((t + lag, seq) for t, seq in arrivals), key=lambda a: a[0])
    i, t = 0, 0.0
    while True:
        while i < len(arr) and arr[i][0] <= t:
            core.add(arr[i][1], arr[i][0])
            i += 1
        step = core.schedule(t)
        if step is None:
            nxt = [x for x in (arr[i][0] if i < len(arr) else None, core.next_resume()) if x is not None]
            if not nxt:
                return core
            t = max(t, min(nxt))
            continue
        t += step.duration
        core.commit(step, t)


class Engine:
    """An `EngineCore` driven by one asyncio task against the loop clock.

    `emit(sequences, t)` is called once per step with every sequence that produced a token: the
    server writes the whole batch's chunks from there, no per-sequence timer or task.
    """

    def __init__(self, params: EngineParams, emit: Callable[[list[Sequence], float], None],
                 max_catchup_s: float = MAX_CATCHUP_S) -> None:
        self.core = EngineCore(params)
        self.emit = emit
        self.max_catchup_s = max_catchup_s
        self.late_steps = 0
        self.max_lateness_s = 0.0
        self.catchup_resets = 0
        self.step_observer: Callable[[float], None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def params(self) -> EngineParams:
        return self.core.p

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, seq: Sequence) -> None:
        self.core.add(seq, asyncio.get_running_loop().time())
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        self.core.abort(seq)

    def pause(self, seq: Sequence, seconds: float) -> None:
        self.core.pause(seq, asyncio.get_running_loop().time() + seconds)
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        t = loop.time()  # the current step's start: the previous step's deadline while busy
        while True:
            now = loop.time()
            step = core.schedule(now)
            if step is None:
                self._wake.clear()
                resume = core.next_resume()
                if resume is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(resume):
                            await self._wake.wait()
                t = loop.time()  # idle: the next step starts when work arrives
                continue
            if now - t > self.max_catchup_s:  # hopelessly behind: drop the debt
                self.catchup_resets += 1
                t = now
            t += step.duration  # absolute deadline: no drift whatever the host did
            delay = t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late = loop.time() - t
            if late > LATE_STEP_S:
                self.late_steps += 1
            if late > self.max_lateness_s:
                self.max_lateness_s = late
            emitted = core.commit(step, t)
            if self.step_observer is not None:
                self.step_observer(step.duration)
            try:
                self.emit(emitted, t)
            except Exception:  # a broken sink must not stop the engine
                log.exception("emit failed")
            if delay <= 0:
                await asyncio.sleep(0)  # catching up: still let the network breathe

    def snapshot(self) -> dict[str, Any]:
        d = self.core.snapshot()
        d.update(late_steps=self.late_steps, max_lateness_seconds=round(self.max_lateness_s, 6),
                 catchup_resets=self.catchup_resets)
        return d
