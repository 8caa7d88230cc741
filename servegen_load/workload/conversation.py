"""Multi-turn sessions and shared system prompts, applied to a scenario's time-ordered requests.

`expand(requests, plan)` reads the merged request stream (`compose`) and yields it with:

- **system prompts** (`system_prompt:` / `prefix:`): a request (or session) with u < share gets
  variant v = floor(u' * variants) and the prefix block ids of that variant
  (`SYSTEM_BLOCK_BASE + v * SYSTEM_BLOCK_STRIDE + i`, 512-token blocks, `prefix_tokens` = tokens);
  its input tokens are unchanged (the prompt's beginning is the system prompt).
- **sessions** (`sessions:`, or by default when a fitted pool has a session model): `share` is
  the share of *requests* that belong to sessions (the client's `session_share` from a fitted
  pool where it has one; 0 for the other clients when the scenario has no `sessions:`), and the
  workload's request rate is kept: an arrival with u < share is a session slot, which starts a
  session with probability 1/E[K] (E[K] the mean turns) and is dropped otherwise, since each
  session brings K - 1 more requests; the others stay single requests. So N arrivals give about
  N requests, N x share / E[K] sessions of them. A session is named by its first turn's id; it
  draws K turns, and for turns j = 1..K-1 a think time, new tokens and an output length. Turn j
  is the request `<id>/<j>` with

      t_j      = t_{j-1} + think_j                        (think time: arrival to arrival)
      input_j  = input_{j-1} + output_{j-1} + new_j      (history: included)
      input_j  = input_{j-1} + output_{j-1} - reason_{j-1} + new_j   (history: answers; marked)
      input_j  = new_j                                   (history: excluded; marked `history`)

  and the same media lists and prefix as turn 0. `history` is the fitted pool's
  `session_history` (what the log's inputs meant) unless the scenario says otherwise; with
  `excluded` the payload sends a later turn without the history, so the server sees the token
  counts the log recorded. Think time is the one definition `fit` measures: from a turn's start
  to the next turn's start. The run sends turn j at sent(j-1) + think_j, or when turn j-1's
  response ended if that is later (`dispatch.sessions`). Turns at or after the scenario's end
  are dropped (the session is cut by the window, as in a trace). Reasoning requests keep turn
  0's reasoning share. Turns, think time and new tokens come from the client's fitted session
  tables when the pool has them, else from the scenario's distributions; output lengths from
  the client's own output table (the data window of the session start) unless
  `sessions.output_tokens` is given, each turn's rank drawn from the row of the last one's in the
  log's copula of consecutive outputs (`session_output_copula`: a session keeps its model and
  task, so a reasoning session's answers stay long), its reasoning share the client's at that
  rank (`reason_copula`). With fitted first-turn (and single-request) input tables,
  turn 0's (and a single request's) input is moved to that distribution by a rank-preserving
  map (`requantile`), since the client's input table mixes first and later turns.

- **Mooncake `hash_ids`** (a `replay:` of format mooncake or bailian): each request's `prefix` is
  its row's hash_ids, `--prefix-block` tokens each (Mooncake's 512, the default; Alibaba's
  Qwen-Bailian traces hash 16), the payload cutting the last one to the prompt's length, so equal
  hash ids are equal tokens in the run, and prefix caches hit as the trace says they did.

Every draw is a hash of (seed, request id, field, turn): a session is the same whatever the shard,
the block size or the other clients. The output order is the generator's, (t, client, k, turn),
so shard merges stay byte-identical (`compose.merge_requests` orders `<id>/<j>` after `<id>`).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaincinv, ndtri

from ..requests import MAX_TOKENS, Request
from ..scenario import DistSpec, SessionSpec, SystemPromptSpec
from . import session_model
from .distributions import LengthTable
from .lengths import conditional_uniforms, mixture

US = 1_000_000
SYSTEM_BLOCK_BASE = 1 << 40
SYSTEM_BLOCK_STRIDE = 1 << 20
BLOCK_TOKENS = 512
MAX_TURNS = 1000

Sampler = Callable[[np.ndarray], np.ndarray]   # inverse CDF, vectorised over uniforms
MEAN_GRID = 4096


def uniform(seed: int, *key: Any) -> float:
    """A uniform in [0, 1) from a hash of (seed, key...): 53 bits of blake2b."""
    h = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)


def dist_sampler(d: DistSpec, integer_default: bool = False) -> Sampler:
    """Inverse CDF of a `DistSpec` (see its docstring for the families), vectorised."""
    if d.values is not None:
        w = np.asarray(d.weights if d.weights is not None else [1.0] * len(d.values), dtype=np.float64)
        return _table_sampler(LengthTable.from_pmf(np.asarray(d.values, dtype=np.float64), w))
    mean = float(d.mean or 0.0)
    fam = d.family or ("fixed" if d.cv == 0 else "gamma" if d.cv is not None else
                       "geometric" if integer_default else "exponential")
    if fam == "fixed" or (d.cv is not None and d.cv < 1e-6 and fam != "geometric"):
        return lambda u: np.full(np.shape(u), mean)
    if fam == "exponential":
        return lambda u: -mean * np.log1p(-u)
    if fam == "geometric":
        p = 1.0 / max(mean, 1.0)
        if p >= 1.0:
            return lambda u: np.ones(np.shape(u))
        return lambda u: 1.0 + np.floor(np.log1p(-u) / math.log1p(-p))
    cv = float(d.cv or 1.0)
    if fam == "gamma":
        k = 1.0 / (cv * cv)
        return lambda u: gammaincinv(k, u) * (mean / k)
    s2 = math.log1p(cv * cv)  # lognormal
    mu, sd = math.log(mean) - s2 / 2, math.sqrt(s2)
    return lambda u: np.exp(mu + sd * ndtri(np.clip(u, 1e-12, 1 - 1e-12)))


def _table_sampler(t: LengthTable) -> Sampler:
    return lambda u: t.sample(np.asarray(u, dtype=np.float64))


def draw(f: Sampler, u: float) -> float:
    return float(f(np.array([u]))[0])


def mean_turns(f: Sampler) -> float:
    """E[K] of the turn count as drawn (rounded, at least 1), on a grid of uniforms."""
    u = (np.arange(MEAN_GRID) + 0.5) / MEAN_GRID
    return float(np.clip(np.rint(f(u)), 1, MAX_TURNS).mean())


@dataclass(frozen=True)
class Params:
    """One client's session parameters (the pool's fitted tables where present, else the scenario's)."""

    share: float                  # share of requests in sessions
    turns: Sampler
    think: Sampler                # arrival to arrival, seconds
    new: Sampler                  # new tokens of a later turn
    mean_k: float                 # E[K] of `turns` as drawn
    history: str                  # included | answers | excluded
    first: LengthTable | None = None    # input tokens of first turns (fitted)
    single: LengthTable | None = None   # input tokens of requests outside sessions (fitted)
    cap: int | None = None  # the context the fitted log's later turns piled up at, else `input_cap`


CAP_QUANTILE = 0.999  # of the pool's prompts (its tables alike): a later turn's prompt goes no further


def input_cap(pool: Any) -> int | None:
    """The prompt length a fitted log's history grew to and no further: the `CAP_QUANTILE` of its
    input tables (each table weighted alike), so one odd prompt past the rest does not set it.

    Why: a log of conversations at a model's context limit holds later turns at that limit (the
    client dropped old turns); grown by history alone, generated prompts went on to 5x it (p99
    161k tokens against 32k, 11 % past anything logged). A later turn's prompt is capped here."""
    name = "input_tokens" if "input_tokens" in pool.fields else "text_tokens"
    if name not in pool.fields:
        return None
    idx = pool.table_index[:, :, pool.fields.index(name)]
    uses = np.bincount(idx[idx >= 0], minlength=1)  # a table several (client, window) pairs share counts once
    mix = mixture(pool, name, np.where(idx >= 0, 1.0 / uses[np.maximum(idx, 0)], 0.0))
    return int(mix.quantile(CAP_QUANTILE)) if mix is not None else None


class ClientSessions:
    """Per-client session parameters: the pool's fitted tables where present, else the scenario's."""

    def __init__(self, plan: Any, spec: SessionSpec) -> None:
        self.spec = spec
        self.max_context: int | None = getattr(plan.scenario, "max_context", None)  # scenario `max_context`
        turns = dist_sampler(spec.turns, True)
        self.default = Params(spec.share, turns, dist_sampler(spec.think_time), dist_sampler(spec.new_tokens),
                              mean_turns(turns), "included" if spec.history == "auto" else spec.history)
        self.out_fixed = dist_sampler(spec.output_tokens) if spec.output_tokens is not None else None
        self._where: dict[str, tuple[Any, int]] = {}
        for src in plan.sources:
            for ci, name in enumerate(src.names):
                self._where[name] = (src, ci)
        self._baseline = plan.baseline
        self._cache: dict[str, Params] = {}
        self._tables: dict[tuple[str, int], Any] = {}
        self._couplings: dict[str, dict[str, np.ndarray]] = {}
        self._caps: dict[int, int | None] = {}

    def params(self, client: str) -> Params:
        """The client's session parameters (cached)."""
        got = self._cache.get(client)
        if got is not None:
            return got
        got = self.default
        w = self._where.get(client)
        if w is not None and self.spec.pool_tables:
            src, ci = w
            m = session_model.client_model(src.pool, int(src.idx[ci]))
            if m is not None:
                d = got
                turns = _table_sampler(m.turns) if m.turns is not None else d.turns
                got = Params(
                    share=m.share, turns=turns,
                    think=_table_sampler(m.think_time) if m.think_time is not None else d.think,
                    new=_table_sampler(m.new_tokens) if m.new_tokens is not None else d.new,
                    mean_k=mean_turns(turns), history=m.history if self.spec.history == "auto" else self.spec.history,
                    first=m.first_input, single=m.single_input, cap=self._cap(src.pool))
        self._cache[client] = got
        return got

    def _cap(self, pool: Any) -> int | None:
        if id(pool) not in self._caps:
            self._caps[id(pool)] = pool.meta.get("session_input_cap") or input_cap(pool)
        return self._caps[id(pool)]

    def input_table(self, client: str, t: float) -> LengthTable | None:
        """The client's input-token table (all its requests) at pool time of run-time `t`."""
        ts = self._client_tables(client, t)
        if ts is None:
            return None
        return ts.tables.get("input_tokens") or ts.tables.get("text_tokens")

    def _client_tables(self, client: str, t: float) -> Any:
        w = self._where.get(client)
        if w is None:
            return None
        from .lengths import ClientTables

        src, ci = w
        seg = int(np.clip(np.searchsorted(src.edges, t, side="right") - 1, 0, len(src.dwin) - 1))
        dw = int(src.dwin[seg])
        key = (client, dw)
        ts = self._tables.get(key)
        if ts is None:
            if len(self._tables) > 4096:
                self._tables.clear()
            ts = self._tables[key] = ClientTables(src.pool, int(src.idx[ci])).at(dw)
        return ts

    def output(self, client: str, t: float, u: float, first: int) -> int:
        """Output tokens of a later turn: the scenario's distribution, else the client's own table."""
        if self.out_fixed is not None:
            return _tokens(draw(self.out_fixed, u))
        tab = self.output_table(client, t)
        return max(1, round(float(tab.sample(np.array([u]))[0]))) if tab is not None else first

    def output_table(self, client: str, t: float) -> LengthTable | None:
        """The client's output-token table at pool time of `t`; None without one, or with the
        scenario's own `sessions.output_tokens`."""
        if self.out_fixed is not None:
            return None
        ts = self._client_tables(client, t)
        tab = ts.tables.get("output_tokens") if ts is not None else None
        if tab is None and self._baseline is not None:
            tab = self._baseline.options[0][2].tables.get("output_tokens")
        return tab

    def reason_share(self, client: str, t: float, rank: float | None, u_bin: float, u: float) -> float | None:
        """A later turn's reasoning share at its output's `rank`: the client's share table through
        its fitted output/share copula (as `lengths.TableSet.draw` draws a request's), so long answers
        of a reasoning model come back as reasoning and short ones as answers; None without a table."""
        ts = self._client_tables(client, t)
        tab = ts.tables.get("reason_ratio") if ts is not None else None
        if tab is None or self.out_fixed is not None:
            return None
        joint = self._coupling(client).get("reason_ratio")
        if rank is not None and joint is not None:
            u = _coupled(joint, rank, u_bin, u)
        return float(np.clip(tab.sample(np.array([u]))[0], 0.0, 1.0))

    def next_output(self, client: str) -> np.ndarray | None:
        """The client's fitted copula of consecutive turns' outputs, None without one."""
        return self._coupling(client).get("next_output")

    def _coupling(self, client: str) -> dict[str, np.ndarray]:
        got = self._couplings.get(client)
        if got is None:
            w = self._where.get(client)
            got = self._couplings[client] = w[0].pool.copulas(int(w[0].idx[w[1]])) if w is not None else {}
        return got


def requantile(x: int, source: LengthTable, target: LengthTable, u: float) -> int:
    """x mapped through F_target^-1(F_source(x)), with u spreading ties over F_source's step at x.

    A monotone map: a request's input moves to the first-turn (or single-request) distribution
    while keeping its rank, so the input/output correlation drawn with it survives."""
    lo, hi = _step(source, x)
    return _tokens(float(target.sample(np.array([lo + u * (hi - lo)]))[0]))


def _step(table: LengthTable, x: float) -> tuple[float, float]:
    """The CDF step of `table` at `x`: the ranks (in [0, 1]) its value spans."""
    i = int(np.searchsorted(table.values, x, side="right")) - 1
    return (float(table.cdf[i - 1]) if i >= 1 else 0.0), (float(table.cdf[i]) if i >= 0 else 0.0)


def _tokens(x: float) -> int:
    """A token count drawn as a float: rounded, within 1..MAX_TOKENS."""
    return int(min(MAX_TOKENS, max(1.0, round(x)))) if math.isfinite(x) else MAX_TOKENS


def _with_hash_ids(requests: Iterator[Request], hashed: list[list[int]]) -> Iterator[Request]:
    """Mooncake `hash_ids` as the requests' prefix blocks (512 tokens each, the last one partial)."""
    for r in requests:
        k = r.id.rpartition("#")[2]
        if k.isdigit() and int(k) < len(hashed) and hashed[int(k)]:
            r.prefix = hashed[int(k)]
        yield r


def _order_key(r: Request, turn: int) -> tuple[int, str, int, int]:
    k0 = r.id.rpartition("#")[2].partition("/")[0]
    return (int(r.t * US + 0.5), r.client, int(k0) if k0.isdigit() else 0, turn)


def system_prompt(r: Request, spec: SystemPromptSpec, seed: int) -> None:
    if uniform(seed, r.id, "sys") >= spec.share:
        return
    v = min(spec.variants - 1, int(uniform(seed, r.id, "variant") * spec.variants))
    nb = -(-spec.tokens // BLOCK_TOKENS)
    base = SYSTEM_BLOCK_BASE + v * SYSTEM_BLOCK_STRIDE
    r.prefix = [base + i for i in range(nb)]
    r.extra["prefix_tokens"] = spec.tokens


def session_turns(r: Request, seed: int, cs: ClientSessions, end_us: int) -> list[Request] | None:
    """Turns 1..K-1 of the session started by `r` (which becomes turn 0); [] if r is a single
    request, None if r is an arrival thinned away (see `expand`)."""
    p = cs.params(r.client)
    if uniform(seed, r.id, "session") >= p.share:
        if p.single is not None:
            _remap_input(r, cs, p.single, seed)
        return []
    if uniform(seed, r.id, "start") * p.mean_k >= 1.0:
        return None
    if p.first is not None:
        _remap_input(r, cs, p.first, seed)
    k = int(min(MAX_TURNS, max(1, round(draw(p.turns, uniform(seed, r.id, "turns"))))))
    r.session, r.turn = r.id, 0
    out: list[Request] = []
    ratio = (r.reason_tokens / r.output_tokens) if r.reason_tokens and r.output_tokens else None
    t_us = int(r.t * US + 0.5)
    inp, prev = r.input_tokens, r
    media = sum(r.images or ()) + sum(r.audio or ()) + sum(r.video or ())
    excluded = p.history == "excluded"
    if p.history == "answers":
        r.extra = {**r.extra, "history": "answers"}  # the payload's history carries its answer only
    out_tab = cs.output_table(r.client, r.t)  # the session's tables are its start's
    follow = cs.next_output(r.client) if out_tab is not None else None
    rank = sum(_step(out_tab, r.output_tokens)) / 2 if out_tab is not None and follow is not None else None
    for j in range(1, k):
        think = max(0.0, draw(p.think, uniform(seed, r.id, "think", j)))
        if not think * US < end_us - t_us:  # past the window (or not finite): the session is cut
            break
        t_us += int(think * US)
        new = _tokens(draw(p.new, uniform(seed, r.id, "new", j)))
        u = uniform(seed, r.id, "out", j)
        if rank is not None and follow is not None:  # the row of the last turn's rank in the log's copula of them
            u = _coupled(follow, rank, uniform(seed, r.id, "out-bin", j), u)
        o = cs.output(r.client, r.t, u, r.output_tokens)
        o_rank = float(out_tab.mid_rank(np.array([u]))[0]) if out_tab is not None else None
        if rank is not None:
            rank = o_rank
        share = cs.reason_share(r.client, r.t, o_rank, uniform(seed, r.id, "reason-bin", j),
                                uniform(seed, r.id, "reason", j))
        inp = new if excluded else min(MAX_TOKENS, p.cap or MAX_TOKENS, inp + prev.carried_tokens() + new)
        if cs.max_context is not None and inp + o + media > cs.max_context:
            break  # the conversation no longer fits the model's context: the user starts afresh
        extra = dict(r.extra)
        if excluded:
            extra["history"] = "excluded"
        nr = Request(id=f"{r.id}/{j}", t=t_us / US, client=r.client, category=r.category,
                     input_tokens=inp, output_tokens=o, session=r.id, turn=j, think_time=round(think, 6),
                     images=r.images, audio=r.audio, video=r.video, prefix=r.prefix, extra=extra)
        if r.reason_tokens is not None:  # the client's share at this output's rank, else turn 0's; 0 is written
            nr.reason_tokens = min(o, round((share if share is not None else ratio or 0.0) * o))
        out.append(nr)
        prev = nr
    return out


def _coupled(joint: np.ndarray, rank: float, u_bin: float, u: float) -> float:
    """One draw of `lengths.conditional_uniforms` from hashed uniforms."""
    return float(conditional_uniforms(np.array([rank]), joint, np.array([u_bin]), np.array([u]))[0])


def _remap_input(r: Request, cs: ClientSessions, target: LengthTable, seed: int) -> None:
    src = cs.input_table(r.client, r.t)
    if src is not None:
        r.input_tokens = requantile(r.input_tokens, src, target, uniform(seed, r.id, "rank"))


def default_sessions(plan: Any) -> SessionSpec | None:
    """Sessions a scenario gets without a `sessions:` section: those of its fitted pools (share 0
    for clients the pools have no session model for), None when no pool has one."""
    for src in getattr(plan, "sources", ()):
        si = src.pool.extra.get("session_index")
        if si is not None and si.ndim == 2 and si.shape[0] and bool((si[:, 0] >= 0).any()):
            return SessionSpec(share=0.0)
    return None


HASHED = ("mooncake", "bailian")  # replay formats whose rows carry hash_ids (shared-prefix blocks)


def needs_expand(s: Any, plan: Any = None) -> bool:
    """Whether `expand` changes this scenario's requests (else they pass through untouched)."""
    return (s.sessions is not None or s.system_prompt is not None
            or (s.replay is not None and s.replay.format in HASHED)
            or (plan is not None and default_sessions(plan) is not None))


def mooncake_prefixes(plan: Any) -> list[list[int]] | None:
    """The `hash_ids` of a Mooncake replay's requests, in the replay's order (None: not one).

    The trace is read again (timestamps, lengths, hash_ids) and cut exactly as `workload.replay`
    cuts it: sorted by time (stable), times from the first row, the [start, start + duration)
    window. Used only when that gives the replay's very rows (same count and input lengths);
    otherwise (rows the log reader skipped) a warning says prefixes are off.
    """
    rp, spec = plan.replay, plan.scenario.replay
    if rp is None or spec is None or spec.format not in HASHED or len(rp.names) != 1:
        return None
    import orjson

    from .logs import PRESETS, UNIT_SECONDS

    unit = UNIT_SECONDS[PRESETS[spec.format].time_unit]  # the log reader's own unit for this format

    ts: list[float] = []
    inp: list[int] = []
    ids: list[list[int]] = []
    with open(plan.scenario.resolve_path(spec.path), "rb") as fh:
        for line in fh:
            try:
                d = orjson.loads(line)
                t, n, h = float(d["timestamp"]) * unit, int(d["input_length"]), d.get("hash_ids") or []
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if isinstance(h, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in h):
                ts.append(t)
                inp.append(n)
                ids.append(h)
    t_arr = np.asarray(ts, dtype=np.float64)
    order = np.argsort(t_arr, kind="stable")
    rel = t_arr[order] - (t_arr[order[0]] if order.size else 0.0)
    keep = rel >= spec.start
    if spec.duration is not None:
        keep &= rel < spec.start + spec.duration
    rows = order[keep]
    if rows.size != rp.t.size or not np.array_equal(np.maximum(np.asarray(inp)[rows], 1), rp.inp):
        import sys

        print("servegen-load: warning: the Mooncake trace's rows could not be matched to the replay: "
              "hash_ids (shared prefixes) are not used", file=sys.stderr)
        return None
    return [ids[i] for i in rows.tolist()]


def expand(requests: Iterator[Request], plan: Any) -> Iterator[Request]:
    """The scenario's requests with system prompts and session turns (see the module docstring)."""
    s = plan.scenario
    sp: SystemPromptSpec | None = s.system_prompt
    ss: SessionSpec | None = s.sessions if s.sessions is not None else default_sessions(plan)
    hashed = mooncake_prefixes(plan)
    if hashed is not None:
        requests = _with_hash_ids(requests, hashed)
    if sp is None and ss is None:
        yield from requests
        return
    seed = s.seed
    cs = ClientSessions(plan, ss) if ss is not None else None
    end_us = math.ceil(plan.duration * US)
    heap: list[tuple[tuple[int, str, int, int], Request]] = []
    for r in requests:
        key = _order_key(r, 0)
        while heap and heap[0][0] < key:
            yield heapq.heappop(heap)[1]
        if cs is not None:
            later = session_turns(r, seed, cs, end_us)
            if later is None:
                continue
            if sp is not None:
                system_prompt(r, sp, seed)
            for nr in later:
                if r.prefix is not None:
                    nr.prefix, nr.extra = r.prefix, dict(r.extra)
                heapq.heappush(heap, (_order_key(nr, nr.turn or 0), nr))
        elif sp is not None:
            system_prompt(r, sp, seed)
        yield r
    while heap:
        yield heapq.heappop(heap)[1]
