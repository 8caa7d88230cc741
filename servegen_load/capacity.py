"""Capacity planning: the largest load scale of a scenario that meets every SLO, and the knee.

A step runs the scenario with its rate multiplied by a factor `scale` (the scenario's own scaling
field: `scale`, `rate` or `peak_rate` for a realistic scenario, so every client keeps its share
and shape; `naive.rate`/`constant.rate` for a baseline; `replay.time_scale` for a replay), for
`warmup + step_duration` seconds of run time (the first part of the scenario's window, the same
window at every scale). Requests scheduled during the warm-up are excluded from the verdict.
Request ids carry the step number, so no prompt of an earlier step can hit a prefix cache.

Search (few runs): start at `start_scale`; while the step passes double the scale, while it
fails halve it, until one passing and one failing scale bracket the capacity; then bisect in log
space (geometric midpoint) until hi/lo <= 1 + tolerance. This assumes the verdict is monotone in
the load, which holds for latency SLOs up to noise; a non-monotone step is reported as it came.

Reported:
- the capacity curve: per step, scale, planned and offered rates, and each SLO metric's value;
- the maximum sustainable rate: the offered rate (requests scheduled in the measured window per
  second: what the server actually faced) of the largest passing scale. Bursty per-client
  arrivals make a window's count differ from the scenario's planned mean (reported too, as
  `planned_rate`), and a capacity read off the plan would credit or blame the server for that
  randomness. A step passes when every SLO holds and it did not saturate (below): a short
  step can meet a latency SLO while its queue grows, which no longer step would;
- the knee: the server's saturation throughput, measured. The served rate of a step is the
  number of first tokens in the measured window per second: a server queues requests in front
  of admission (waiting for a batch slot, KV space or prefill budget), so in steady state first
  tokens arrive at the arrival rate, and while a backlog lasts at the rate the server can take
  requests in. A step whose served rate falls clearly short of its offered rate (the requests
  scheduled in the window per second; served < 92% of offered, judged against the requests due
  one median TTFT earlier, or against those scheduled in the window when first tokens come later
  and later through it: `Step.saturated`) saturated; the knee is the
  median served rate of the saturated steps, None when no step saturated (the SLOs failed
  first). A burst can saturate a step whose served rate stays below the knee, and the first
  seconds of a heavy overload admit requests faster than the engine can finish them (their
  decoding is deferred), so single steps err both ways; the median is robust to both.
  Completions lag a backlog by whole decode times, so they are reported (`completion_rate`)
  but not used;
- with `replicas_for`: replicas = ceil(peak_rate x (1 + headroom) / maximum sustainable rate).

With no endpoint, one embedded simulator (`SimProcess`, the same preset) serves every step of a
plan; `compare_naive` plans the scenario's naive baseline (`naive_of`: Poisson arrivals, the
aggregate lengths of the same clients and window, the same mean rate) with its own simulator, and
reports the ratio of the two capacities: how much a naive benchmark over-states capacity.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .errors import InputError
from .formats import CAPACITY_FORMAT
from .requests import Request
from .scenario import Scenario, load_scenario
from .slo import Check, SLOSet, after_warmup, evaluate, format_threshold, format_value

if TYPE_CHECKING:
    from .results import Results

SATURATION_RATIO = 0.92
MIN_DEFICIT = 3.0  # requests a saturated step's window must be short of what was due
GROWTH_S = 0.5  # TTFT growth through a window (s) that with a deficit says a backlog is building
MIN_SCALE_FACTOR = 1 / 256


# --- scaling a scenario ---

def scaled(s: Scenario, factor: float, run_seconds: float) -> Scenario:
    """`s` with its rate multiplied by `factor` and `run_seconds` of run time (see the module doc)."""
    from .workload.resolve import resolve

    upd: dict[str, Any] = {}
    kind = s.kind
    if kind == "realistic":
        upd["duration"] = run_seconds * s.time_scale
        if s.rate is not None:
            upd["rate"] = s.rate * factor
            if s.pools is not None:
                upd["pools"] = [p.model_copy(update={"rate": p.rate * factor}) if p.rate is not None else p
                                for p in s.pools]
        elif s.peak_rate is not None:
            upd["peak_rate"] = s.peak_rate * factor
        else:
            upd["scale"] = (s.scale or 1.0) * factor
    elif kind in ("naive", "constant"):
        spec = s.naive if kind == "naive" else s.constant
        assert spec is not None
        base = spec.rate
        if base is None:
            bp = resolve(s).baseline
            assert bp is not None
            base = bp.rate
        upd[kind] = spec.model_copy(update={"rate": base * factor})
        upd["duration"] = run_seconds
    else:
        r = s.replay
        assert r is not None
        ts = r.time_scale * factor
        upd["replay"] = r.model_copy(update={"time_scale": ts, "duration": run_seconds * ts})
    out = s.model_copy(update=upd)
    out._base_dir, out._path = s.base_dir, s.path
    return out


def mean_rate(s: Scenario, t0: float = 0.0, t1: float | None = None) -> float:
    """The planned mean rate (req/s of run time) of a scenario over [t0, t1) (default: its whole run)."""
    from .workload.resolve import resolve

    p = resolve(s)
    if t1 is None:
        return p.mean_rate()
    if not t1 > t0:
        return 0.0
    expected = 0.0
    for src in p.sources:
        overlap = np.clip(np.minimum(src.edges[1:], t1) - np.maximum(src.edges[:-1], t0), 0.0, None)
        expected += float((src.rate * overlap[None, :]).sum())
    if p.baseline is not None:
        expected += p.baseline.rate * (min(t1, p.duration) - t0)
    if p.replay is not None:
        expected += float(((p.replay.t >= t0) & (p.replay.t < t1)).sum())
    return expected / (t1 - t0)


# --- one step ---

SIM_FLAGS = ("--sim-param", "--sim-time-scale")  # what `plan` calls the simulator's --param/--time-scale

@dataclass
class Step:
    """One run at one scale and its verdict."""

    index: int
    scale: float
    rate: float                  # planned mean rate, req/s
    offered_rate: float | None   # scheduled in the measured window / its length
    served_rate: float | None    # first tokens in the measured window / its length
    completion_rate: float | None  # ok completions in the measured window / its length
    requests: int                # requests in the measured window
    checks: list[Check]
    seconds: float
    results: str | None = None
    answered: float | None = None  # output tokens the ok answers carried / those they asked for
    errors: dict[str, int] = field(default_factory=dict)  # failed requests of the measured window, by status
    due_rate: float | None = None  # scheduled one median first-token delay before the window (`window_rates`)
    window: float = 0.0  # seconds of the measured window
    ttft_growth: float = 0.0  # `Window.growth`
    backlog: float | None = None  # `Window.backlog`

    @property
    def passed(self) -> bool:
        """Every SLO held and the server kept up with the offered load (see `saturated`)."""
        return all(c.passed for c in self.checks) and not self.saturated

    @property
    def saturated(self) -> bool:
        """Served under `SATURATION_RATIO` of the requests due in the window, and short by at least
        `MIN_DEFICIT` requests (a handful is count noise in a short step, not a server behind)."""
        due = self.due_rate if self.due_rate is not None else self.offered_rate
        if due is None or self.served_rate is None:
            return False
        if self.backlog is not None and self.backlog < MIN_DEFICIT:
            # Short of the due count only at the window's edge (a burst in its last half second,
            # its first tokens just after the end: 9 req/s called saturated, 480 replicas for 25),
            # while the waiting line emptied as often late in the window as early: keeping up.
            return False
        if self._behind(due):
            return True
        # Due is judged one median TTFT back: when that is seconds, it can land on a quieter stretch
        # and hide a backlog (26.4 req/s offered, 23.6 served, completions halving, TTFT p99 3.8 s
        # and rising, was a pass). Behind the offered rate with first tokens later and later is saturated.
        return (self.offered_rate is not None and self.ttft_growth >= GROWTH_S
                and self._behind(self.offered_rate))

    def _behind(self, rate: float) -> bool:
        short = (rate - (self.served_rate or 0.0)) * self.window if self.window > 0 else math.inf
        return (self.served_rate or 0.0) < SATURATION_RATIO * rate and short >= MIN_DEFICIT

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.index, "scale": self.scale, "rate": self.rate, "offered_rate": self.offered_rate,
                "served_rate": self.served_rate, "completion_rate": self.completion_rate, "requests": self.requests, "passed": self.passed,
                "saturated": self.saturated, "backlog": self.backlog, "seconds": round(self.seconds, 2),
                "metrics": {c.slo.label: c.value for c in self.checks},
                "checks": [c.to_dict() for c in self.checks], "results": self.results,
                "answered_token_share": self.answered, "errors": self.errors}


SHORT_ANSWERS = 0.8  # a step whose ok answers carried less of the output asked is measured on less work


def answered_share(res: Any) -> float | None:
    """Output tokens the ok answers carried (usage, else token chunks) over those they asked for."""
    c = res.cols
    ok = c["status"] == "ok"
    asked = float(np.nansum(c["output_tokens"][ok]))
    if not ok.any() or asked <= 0:
        return None
    got = np.where(np.isfinite(c["completion_tokens"]), c["completion_tokens"], res.chunk_counts)[ok]
    return float(np.nansum(got)) / asked


class Window(NamedTuple):
    """A step's measured window (`window_rates`): rates in req/s, `requests` scheduled in it."""

    offered: float | None
    served: float | None
    completion: float | None
    requests: int
    due: float | None
    growth: float  # median TTFT of the window's last quarter of requests (by schedule) minus its first's, s
    backlog: float  # the fewest requests waiting for a first token in the last quarter minus in the first


def window_rates(res: Any, t0: float, t1: float) -> Window:
    """Offered, served and completion rates over [t0, t1) of run time, the requests scheduled in
    it, the due rate and the TTFT growth. Due: requests scheduled one median first-token delay d
    earlier, [t0 - d, t1 - d), which are the ones a server keeping up serves inside the window.
    Offered against served by first-token time called a 10 s step at 1.3 req/s saturated (TTFT
    p99 172 ms) because three requests due at 11.89 s had their first token at 12.06 s, after
    the window. Growth: a backlog lengthens every later request's wait, so a server behind shows
    first tokens later and later through the window (see `Step.saturated`)."""
    span = t1 - t0
    if span <= 0:
        return Window(None, None, None, 0, None, 0.0, 0.0)
    c = res.cols

    def count(x: np.ndarray, a: float = t0, b: float = t1) -> int:
        with np.errstate(invalid="ignore"):
            return int(((x >= a) & (x < b)).sum())

    sched = c["scheduled"]
    offered = count(sched)
    served = count(c["first_token"])
    done = count(np.where(c["status"] == "ok", c["last_token"], np.nan))
    inside = (sched >= t0) & (sched < t1) & np.isfinite(c["first_token"])
    d = float(np.median(c["first_token"][inside] - sched[inside])) if inside.any() else 0.0
    a, b = max(t0 - d, 0.0), t1 - d
    due = count(sched, a, b) / (b - a) if b > a else None
    q = span / 4
    first, last = inside & (sched < t0 + q), inside & (sched >= t1 - q)
    growth = (float(np.median(c["first_token"][last] - sched[last]) - np.median(c["first_token"][first] - sched[first]))
              if first.any() and last.any() else 0.0)
    s, f = np.sort(sched), np.sort(c["first_token"][np.isfinite(c["first_token"])])

    def fewest_waiting(a: float, b: float) -> int:
        """The waiting line's floor over [a, b]: it only drops at a first token."""
        ts = np.concatenate([[a], f[(f >= a) & (f <= b)]])
        return int((np.searchsorted(s, ts, "right") - np.searchsorted(f, ts, "right")).min())

    backlog = fewest_waiting(t1 - q, t1) - fewest_waiting(t0, t0 + q)
    return Window(offered / span, served / span, done / span, offered, due, growth, backlog)


def stop_if_refused(what: str, res: Results, gave_up: str | None = None) -> None:
    """One line (InputError) when a measuring run measured nothing because the endpoint refused it:
    the run stopped itself (`gave_up`: its first answers were all one refusal), or every request
    got the same refusal (`runner.refusal`: a wrong model, path or key; no OpenAI stream). No later
    step, level or probe would differ, and a "capacity" of zero would be a wrong answer."""
    from .dispatch.runner import REFUSED_HINT, refusal, refused_as

    why = gave_up
    if why is None and res.n:
        kinds = {refusal(st, None if math.isnan(c) else c, e)
                 for st, c, e in zip(res["status"], res["http_status"], res["error"], strict=True)}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is not None:
            why = f"all {res.n} requests failed with {refused_as(kind, res['error'][0])}"
    if why is not None:
        raise InputError(f"{what}: {why}: {REFUSED_HINT}")


@dataclass
class PlanOptions:
    """Everything a plan needs besides the scenario and its SLOs."""

    step_duration: float = 30.0
    warmup: float = 5.0
    tolerance: float = 0.05
    start_scale: float = 1.0
    max_steps: int = 14
    endpoint: str | None = None
    model: str | None = None
    api: str = "chat"
    server_family: str | None = None
    api_key: str | None = None
    preset: str | None = None
    sim_params: dict[str, Any] = field(default_factory=dict)
    sim_time_scale: float = 1.0
    results_dir: str | None = None
    lag_threshold: float = 0.010
    tokenizer: str | None = None  # run's --tokenizer: the token model steps build prompts with (run.target)
    prompt_format: str = "auto"  # run's --prompt-format
    clock: str = "auto"
    """virtual: the preset's engine model on a virtual clock (no sockets); real: run each step;
    auto: virtual without an endpoint, real with one."""
    log: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))

    def validate(self) -> None:
        if not self.step_duration > 0:
            raise InputError("expected seconds > 0", field="--step-duration")
        if self.warmup < 0:
            raise InputError("expected seconds >= 0", field="--warmup")
        if not 0 < self.tolerance < 1:
            raise InputError("expected a tolerance in (0%, 100%)", field="--tolerance")
        if not self.start_scale > 0:
            raise InputError("expected a scale > 0", field="--start-scale")
        if self.max_steps < 2:
            raise InputError("expected at least 2", field="--max-steps")
        if self.api not in ("chat", "completions"):
            raise InputError(f"expected chat or completions, got {self.api!r}", field="--api")
        if self.clock not in ("auto", "virtual", "real"):
            raise InputError(f"expected auto, virtual or real, got {self.clock!r}", field="--clock")
        if self.clock == "virtual" and self.endpoint is not None:
            raise InputError("a real endpoint runs in real time; --clock virtual plans a --preset (no --endpoint)",
                             field="--clock")

    @property
    def virtual(self) -> bool:
        return self.clock == "virtual" or (self.clock == "auto" and self.endpoint is None)


def _tagged(requests: Iterator[Request], tag: str) -> Iterator[Request]:
    for r in requests:
        r.id = f"{tag}/{r.id}"  # a unique first prompt word per step: no cross-step prefix-cache hits
        yield r


class Stepper:
    """Runs steps of one scenario against one endpoint (the embedded simulator by default)."""

    def __init__(self, scenario: Scenario, slos: SLOSet, opts: PlanOptions, name: str, workdir: Path) -> None:
        self.scenario, self.slos, self.opts, self.name, self.workdir = scenario, slos, opts, name, workdir
        self.run_seconds = opts.warmup + opts.step_duration
        self.base_rate = mean_rate(scaled(scenario, 1.0, self.run_seconds), opts.warmup, self.run_seconds)
        if not self.base_rate > 0:
            raise InputError("the scenario has no traffic in its first "
                             f"{self.run_seconds:g} s; nothing to plan", path=scenario.path)
        self.steps: list[Step] = []
        self.warned_short = False
        self.sim: Any = None
        self.endpoint = opts.endpoint
        self.model = opts.model
        self.family = opts.server_family or ("vllm" if opts.endpoint else "sim")
        self.target: Any = None  # run.target.Target: the token model, learned once for every step

    def __enter__(self) -> Stepper:
        if self.endpoint is None:
            from .sim.process import SimProcess

            self.sim = SimProcess(self.opts.preset or "llama3-8b-h100", params=self.opts.sim_params,
                                  time_scale=self.opts.sim_time_scale, flags=SIM_FLAGS).start()
            self.endpoint = self.sim.url
        if self.model is None:
            import asyncio

            from .dispatch.endpoint import Endpoint, discover_model

            self.model = asyncio.run(discover_model(Endpoint.parse(self.endpoint), self.opts.api_key))
        from .run.target import target_for

        self.target = target_for(self.endpoint, self.model, self.family, self.opts.api, self.opts.api_key,
                                 tokenizer=self.opts.tokenizer, prompt_format=self.opts.prompt_format)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sim is not None:
            self.sim.stop()

    def sim_stats(self) -> dict[str, Any] | None:
        if self.sim is None:
            return None
        try:
            return self.sim.stats()
        except OSError:
            return None

    def step(self, scale: float) -> Step:
        from .dispatch.limits import Timeouts
        from .dispatch.runner import GIVE_UP_AFTER, RunConfig, run
        from .results import read_results
        from .run.target import fresh_payload
        from .workload.compose import iter_scenario_requests

        o = self.opts
        idx = len(self.steps) + 1
        s = scaled(self.scenario, scale, self.run_seconds)
        rate = mean_rate(s, o.warmup, self.run_seconds)
        out = self.workdir / f"{self.name}-step{idx:02d}-scale{scale:.4g}.jsonl"
        cfg = RunConfig(endpoint=self.endpoint, model=self.model, output=out, api=o.api,  # type: ignore[arg-type]
                        api_key=o.api_key, payload=fresh_payload(self.target.payload),
                        duration=self.run_seconds, progress="off", total_hint=self.run_seconds,
                        timeouts=Timeouts(10.0, max(60.0, 5 * self.run_seconds), max(600.0, 20 * self.run_seconds)),
                        header={"source": str(self.scenario.path), "source_kind": "plan-step",
                                "content": self.target.content,
                                "plan": self.name, "step": idx, "scale": scale}, give_up_after=GIVE_UP_AFTER)
        t = time.perf_counter()
        outcome = run(_tagged(iter_scenario_requests(s), f"p{self.name[0]}{idx}"), cfg)
        res = read_results(out)
        stop_if_refused(f"plan step {idx} (scale {scale:.4g})", res, outcome.gave_up)
        if outcome.interrupted:
            raise KeyboardInterrupt
        st = self._judge(idx, scale, rate, res, t, str(out) if o.results_dir else None)
        st.answered = answered_share(res)
        if st.answered is not None and st.answered < SHORT_ANSWERS and not self.warned_short:
            self.warned_short = True  # once: every step of a plan meets the same server
            o.log(f"plan: WARNING: step {idx}: the ok answers carried {st.answered:.0%} of the output tokens "
                  "asked: a capacity measured on shorter answers overstates the real one (does the endpoint "
                  "honour max_tokens and forced lengths? see --server-family)")
        return st

    def _judge(self, idx: int, scale: float, rate: float, res: Results, t: float, path: str | None) -> Step:
        """The step's verdict from its results (real or virtual alike), recorded and logged."""
        o = self.opts
        measured = after_warmup(res, o.warmup)
        checks = evaluate(measured, self.slos, lag_threshold=o.lag_threshold)
        w = window_rates(res, o.warmup, self.run_seconds)
        st = Step(idx, scale, rate, w.offered, w.served, w.completion, w.requests, checks, time.perf_counter() - t, path,
                  due_rate=w.due, window=self.run_seconds - o.warmup, ttft_growth=w.growth, backlog=w.backlog)
        status = measured["status"] if measured.n else np.zeros(0, dtype=object)
        kinds, counts = np.unique(status[status != "ok"].astype(str), return_counts=True)
        st.errors = {str(k): int(v) for k, v in zip(kinds, counts, strict=True)}
        self.steps.append(st)
        o.log(self._line(st))
        return st

    def _line(self, st: Step) -> str:
        vals = "; ".join(f"{c.slo.label} {format_value(c.value, c.slo.kind)} ({format_threshold(c.slo)})"
                         f"{'' if c.passed else ' FAIL'}" for c in st.checks)
        sat = " SATURATED (not sustainable)" if st.saturated else ""
        rates = (f"served {st.served_rate:.3g} of {st.offered_rate:.3g} req/s offered{sat}"
                 if st.offered_rate is not None and st.served_rate is not None else "")
        if st.errors:  # a server that fails is not a saturated one: say which it was
            rates += "; failed: " + ", ".join(f"{v} {k}" for k, v in sorted(st.errors.items(), key=lambda x: -x[1]))
        return (f"plan {self.name} step {st.index}: scale {st.scale:.4g} (planned {st.rate:.3g} req/s) "
                f"{'PASS' if st.passed else 'FAIL'}: {vals} | {rates} [{st.seconds:.0f} s]")


class VirtualStepper(Stepper):
    """Steps on the preset's engine model in virtual time (`sim.virtual`): the same requests,
    SLOs and verdict as a real step, without sockets or sleeping, so a step costs the engine
    model's arithmetic only (an hour of traffic in seconds)."""

    def __enter__(self) -> VirtualStepper:
        from .sim.config import build_config

        o = self.opts
        cfg = build_config(o.preset or "llama3-8b-h100", dict(o.sim_params), time_scale=o.sim_time_scale,
                           flags=SIM_FLAGS)
        self.params = cfg.params
        self.model = self.model or cfg.params.model
        self.endpoint = f"virtual:{o.preset or 'llama3-8b-h100'}"
        self.chunks = any(slo.metric.startswith("itl") for slo in self.slos.slos)
        self.sim_seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def step(self, scale: float) -> Step:
        from .sim.virtual import simulate_requests
        from .workload.compose import iter_scenario_requests

        o = self.opts
        idx = len(self.steps) + 1
        s = scaled(self.scenario, scale, self.run_seconds)
        rate = mean_rate(s, o.warmup, self.run_seconds)
        t = time.perf_counter()
        reqs = [r for r in _tagged(iter_scenario_requests(s), f"p{self.name[0]}{idx}") if r.t < self.run_seconds]
        res = simulate_requests(self.params, reqs, chunks=self.chunks, model=self.model)
        self.sim_seconds += self.run_seconds
        return self._judge(idx, scale, rate, res, t, None)

    def sim_stats(self) -> dict[str, Any] | None:
        return {"preset": self.opts.preset or "llama3-8b-h100", "time_scale": self.opts.sim_time_scale,
                "clock": "virtual", "simulated_seconds": self.sim_seconds}


def stepper(scenario: Scenario, slos: SLOSet, opts: PlanOptions, name: str, workdir: Path) -> Stepper:
    """The real-time stepper (an endpoint, or the embedded simulator) or the virtual-time one."""
    cls = VirtualStepper if opts.virtual else Stepper
    return cls(scenario, slos, opts, name, workdir)


def search(step: Callable[[float], Step], start: float, tolerance: float, max_steps: int,
           log: Callable[[str], None] | None = None) -> tuple[float | None, float | None, bool]:
    """Bracket by doubling/halving, then bisect geometrically: (largest pass, smallest fail, converged)."""
    lo: float | None = None
    hi: float | None = None
    n = 0
    s = start
    while n < max_steps:
        st = step(s)
        n += 1
        if st.passed:
            lo = s if lo is None else max(lo, s)
        else:
            hi = s if hi is None else min(hi, s)
        if lo is not None and hi is not None:
            if lo >= hi:  # non-monotone: a pass above a fail; keep the failing bound, look below it
                lo = None
                s = hi / 2
                continue
            if hi / lo <= 1 + tolerance:
                return lo, hi, True
            s = math.sqrt(lo * hi)
        elif lo is not None:
            s = lo * 2
        else:
            assert hi is not None
            s = hi / 2
            if s < start * MIN_SCALE_FACTOR:
                return None, hi, True
    if log:
        log(f"plan: stopped after {max_steps} steps (--max-steps) before the bracket reached the tolerance")
    return lo, hi, False


def knee_of(steps: list[Step]) -> float | None:
    """Saturation throughput: the median served rate of the saturated steps, and at least the largest
    rate a step served without falling behind (a collapse past the knee lowers the saturated steps'
    median: a knee of 50.5 req/s was printed under a max sustainable rate of 55.9). None: no step
    saturated."""
    sat = [x.served_rate for x in steps if x.saturated and x.served_rate]
    if not sat:
        return None
    kept_up = max((x.served_rate or 0.0 for x in steps if not x.saturated), default=0.0)
    return max(statistics.median(sat), kept_up)


def plan_one(scenario: Scenario, slos: SLOSet, opts: PlanOptions, name: str, workdir: Path,
             start: float | None = None) -> dict[str, Any]:
    """Search one scenario's capacity; the plan's JSON-ready record."""
    with stepper(scenario, slos, opts, name, workdir) as st:
        where = st.endpoint
        if isinstance(st, VirtualStepper):
            where = f"the {opts.preset or 'llama3-8b-h100'} engine model in virtual time"
        elif st.sim:
            where = f"the embedded simulator ({opts.preset or 'llama3-8b-h100'})"
        opts.log(f"plan {name}: {scenario.kind} scenario, {st.base_rate:.3g} req/s mean at scale 1; "
                 f"steps of {opts.warmup:g} s warm-up + {opts.step_duration:g} s against {where}")
        interrupted = False
        try:
            lo, hi, converged = search(st.step, start or opts.start_scale, opts.tolerance, opts.max_steps, opts.log)
        except KeyboardInterrupt:  # the steps done are kept (`PlanInterrupted`), the bracket they give
            interrupted, converged = True, False
            lo = max((x.scale for x in st.steps if x.passed), default=None)
            hi = min((x.scale for x in st.steps if not x.passed and (lo is None or x.scale > lo)), default=None)
        sim_stats = st.sim_stats()
        steps = sorted(st.steps, key=lambda x: x.scale)
        knee_rate = knee_of(steps)
        by_scale = {x.scale: x for x in steps}
        ratios = [x.offered_rate / x.scale for x in steps if x.offered_rate]
        per_scale = statistics.median(ratios) if ratios else st.base_rate

        def offered_at(scale: float) -> float:
            x = by_scale.get(scale)
            return x.offered_rate if x is not None and x.offered_rate else scale * per_scale
        out: dict[str, Any] = {
            "scenario": str(scenario.path) if scenario.path else None,
            "kind": scenario.kind,
            "endpoint": None if st.sim or opts.virtual else st.endpoint,
            "model": st.model,
            "base_rate": st.base_rate,
            "capacity": {
                "scale": lo, "rate": offered_at(lo) if lo is not None else 0.0,
                "planned_rate": lo * st.base_rate if lo is not None else 0.0,
                "failing_scale": hi, "failing_rate": offered_at(hi) if hi is not None else None,
                "converged": converged,
            },
            "knee": {
                "rate": knee_rate, "scale": knee_rate / per_scale if knee_rate and per_scale else None,
                "reached": knee_rate is not None,
                "max_served_rate": max((x.served_rate or 0.0 for x in steps), default=None),
                "method": f"median served (first-token) rate of the steps serving < {SATURATION_RATIO:.0%} "
                          "of the requests due, at least the largest rate a step served without falling behind",
            },
            "steps": [x.to_dict() for x in steps],
            "order": [x.scale for x in st.steps],
        }
        if sim_stats is not None:
            out["simulator"] = {"preset": sim_stats.get("preset"), "time_scale": sim_stats.get("time_scale"),
                                "saturation_rate": sim_stats.get("saturation_rate"),
                                "clock": sim_stats.get("clock", "real")}
            if "simulated_seconds" in sim_stats:
                out["simulator"]["simulated_seconds"] = sim_stats["simulated_seconds"]
        if interrupted:
            out["interrupted"] = True
            raise PlanInterrupted(out)
        return out


class PlanInterrupted(Exception):
    """Ctrl-C during `plan`: `doc` holds what the finished steps say (an interrupted plan of hours
    against a real endpoint lost every step it had run)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__("plan interrupted")
        self.doc = doc


def plan_capacity(scenario_path: str, slos: SLOSet, opts: PlanOptions, *, compare_naive: bool = False,
                  replicas_for: float | None = None, headroom: float = 0.2) -> dict[str, Any]:
    """Plan a scenario (and its naive baseline); the capacity document written as capacity.json."""
    opts.validate()
    if opts.results_dir and opts.virtual:  # it made an empty folder, each step's `results` null
        raise InputError("keeps each real step's results file; a plan in virtual time (no --endpoint, "
                         "--clock virtual or auto) writes none: drop it, or give --clock real", field="--results-dir")
    if not slos:
        raise InputError("plan needs at least one SLO to search against: --slo, --slo-file or the scenario's `slo:`")
    if replicas_for is not None and not replicas_for > 0:
        raise InputError("expected a peak rate > 0 req/s", field="--replicas-for")
    scenario = load_scenario(scenario_path)
    if compare_naive and scenario.kind != "realistic":
        raise InputError("--compare naive needs a realistic scenario (pool/pools)", path=scenario.path)
    from .calibrate.preset import SPREAD_WARN, calibration_rounds

    rounds = calibration_rounds(opts.preset) if opts.virtual else None  # virtual: no endpoint (validate)
    if rounds and rounds["spread"] > SPREAD_WARN:
        opts.log(f"plan: {opts.preset} was calibrated in {len(rounds['saturation_rates'])} rounds whose saturation "
                 f"rates spread {rounds['spread']:.0%} (the endpoint's speed varied while it was probed): read "
                 "these capacities as uncertain by about that much")
    tmp = None
    if opts.results_dir:
        workdir = Path(opts.results_dir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="servegen-plan-")
        workdir = Path(tmp.name)
    t0 = time.perf_counter()
    doc: dict[str, Any] = {}
    try:
        try:
            main = plan_one(scenario, slos, opts, "scenario", workdir)
        except PlanInterrupted as e:
            main = e.doc
        doc = {
            "format": CAPACITY_FORMAT,
            "scenario": scenario_path,
            "slo": slos.to_dict(),
            "options": {"step_duration": opts.step_duration, "warmup": opts.warmup, "tolerance": opts.tolerance,
                        "start_scale": opts.start_scale, "endpoint": opts.endpoint,
                        "preset": None if opts.endpoint else (opts.preset or "llama3-8b-h100"),
                        "sim_time_scale": None if opts.endpoint else opts.sim_time_scale,
                        "sim_params": opts.sim_params or None, "clock": "virtual" if opts.virtual else "real",
                        "calibration_rounds": rounds},
            "plan": main,
        }
        if main.get("interrupted"):
            raise PlanInterrupted(doc)
        cap = main["capacity"]["rate"]
        if replicas_for is not None:
            doc["replicas"] = replicas(replicas_for, headroom, cap)
        if compare_naive:
            from .workload.compose import naive_of

            trimmed = scaled(scenario, 1.0, opts.warmup + opts.step_duration)
            naive = naive_of(trimmed)
            start = main["capacity"]["scale"] or opts.start_scale
            try:
                doc["naive"] = plan_one(naive, slos, opts, "naive", workdir, start=start)
            except PlanInterrupted as e:
                doc["naive"] = e.doc
                raise PlanInterrupted(doc) from None
            ncap = doc["naive"]["capacity"]["rate"]
            doc["comparison"] = {
                "realistic_rate": cap, "naive_rate": ncap,
                "ratio": ncap / cap if cap else None,
                "under_provisioning": 1 - cap / ncap if ncap else None,
            }
            if replicas_for is not None:
                doc["comparison"]["naive_replicas"] = replicas(replicas_for, headroom, ncap)["replicas"]
        doc["seconds"] = round(time.perf_counter() - t0, 2)
        if opts.virtual:
            simulated = sum((d.get("simulator") or {}).get("simulated_seconds", 0.0)
                            for d in (main, doc.get("naive")) if d)
            doc["speed"] = {"simulated_seconds": simulated, "wall_seconds": doc["seconds"],
                            "speedup": simulated / doc["seconds"] if doc["seconds"] > 0 else None}
            opts.log(f"plan: {simulated:,.0f} s of load simulated in {doc['seconds']:.2f} s of wall time "
                     f"({doc['speed']['speedup']:,.0f}x faster than real time)")
        return doc
    except PlanInterrupted:
        doc["interrupted"] = True
        doc["seconds"] = round(time.perf_counter() - t0, 2)
        raise
    finally:
        if tmp is not None:
            tmp.cleanup()


def replicas(peak_rate: float, headroom: float, capacity_rate: float) -> dict[str, Any]:
    """Replicas for a peak rate: ceil(peak x (1 + headroom) / per-replica capacity)."""
    need = peak_rate * (1 + headroom)
    n = math.ceil(need / capacity_rate - 1e-9) if capacity_rate > 0 else None
    return {"peak_rate": peak_rate, "headroom": headroom, "per_replica_rate": capacity_rate, "replicas": n,
            "rule": "ceil(peak_rate x (1 + headroom) / max sustainable rate per replica)"}
