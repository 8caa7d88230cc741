"""The calibration probe: a short, bounded set of runs whose shapes separate the step costs.

Each term of ``dt = t0 + a_p·P + a_d·B + a_c·C`` needs its own lever, so the probe is a few
small runs (one results file each, kept for `calibrate --from`):

- `prefill`: requests one at a time (one run each), prompts from 16 tokens to about the
  model length, 2 output tokens: isolated TTFTs give t0 + a_p·P and the request overhead;
- `burst-cN-short`/`-long`: N requests sent at once (N = 1, 2, 4, ... up to `max_concurrency`),
  short (32) or long prompts, `output` tokens each: decode steps at batch sizes 1..N, at two
  context lengths (separates a_d from a_c), with prefills of later arrivals inside decode steps
  (a_p under batching) and, past the server's slot count, queueing (the batch limit);
- `cache`: three requests sharing a prefix (`CACHE_SHARED` tokens, not a multiple of 16), one
  at a time: the cached-token counts the server reports say whether it caches and in what blocks;
- `steady`: open-loop Poisson arrivals for `--probe-steady` seconds at `STEADY_LOAD` of the
  saturation rate a fit of the phases above predicts, prompts and outputs of mixed lengths: the
  sustained load plans are about. Its steps run slower on average than short bursts suggest (a
  long tail of slow steps: the server's other processes, the host), and queues grow with the
  mean step, so `select` scales the fitted step costs to this phase's mean (`mean_scale`).
  Without it a vLLM CPU twin, its steps fitted to within 3 % at the median, predicted TTFT
  20-30 % low at 70 % of capacity.

The plan (phases, requests, tokens) is logged before the first request, and the expected duration
once the `prefill` phase has measured the server's speed. After the last phase, the phases that
fit the full model far worse than the rest (a neighbour took the host while they ran) run once
more, the worst first, at most `MAX_REPEATS` and only within the time budget; the repeat joins
its phase (same `phase` header), so the fit sees both runs.

Every request asks for an exact output (`ignore_eos` and friends per server family) and, on
`/v1/completions` with token-id prompts, an exact prompt length. The probe's size is fixed by
these counts (a minute or two on a 2-core CPU with a tiny model; seconds on a GPU), and every
run has a total timeout.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..requests import Request

CACHE_SHARED = 200
STEADY_LOAD = 0.6  # the steady phase's rate, as a share of the predicted saturation rate
STEADY_MAX = 1500  # requests at most (a fast server's phase gets shorter, not bigger)
MAX_REPEATS = 3
REPEAT_FACTOR = 2.0
REPEAT_FLOOR = 0.10


@dataclass
class Phase:
    name: str
    requests: list[Request]
    max_concurrency: int | None = None
    prefix_block: int = 512


def prompt_room(max_model_len: int, output: int, max_prompt: int) -> int:
    """The longest probe prompt: `max_prompt`, leaving room in the model length for `output`
    tokens (and a few the chat template adds), never under 64."""
    return max(64, min(max_model_len - output - 8, max_prompt))


def design(max_model_len: int = 4096, max_concurrency: int = 16, output: int = 48,
           max_prompt: int = 2048) -> list[Phase]:
    """The probe's runs (see the module doc); prompts are clipped to `max_prompt` and the model
    length; the long bursts use half of `max_prompt`."""
    room = prompt_room(max_model_len, output, max_prompt)
    lens = sorted({min(x, room) for x in (16, 64, 256, 512, 1024, 1536, 2048)})
    long_prompt = max(64, max_prompt // 2)
    phases = [Phase("prefill", [Request(f"pf{i}-{L}", 0.0, "probe", "language", L, 2)
                                for i, L in enumerate(lens * 2)], max_concurrency=1)]
    long_p = min(long_prompt, room)
    levels: list[int] = []
    c = 1
    while c < max_concurrency:
        levels.append(c)
        c *= 2
    levels.append(max_concurrency)
    for c in levels:
        for tag, L in (("short", 32), ("long", long_p)):
            phases.append(Phase(f"burst-c{c}-{tag}",
                                [Request(f"b{c}{tag[0]}{i}", 0.0, "probe", "language", L, output) for i in range(c)]))
    shared = min(CACHE_SHARED, room // 2)
    phases.append(Phase("cache", [Request(f"cache{i}", 0.0, "probe", "language", shared + 64, 4, prefix=[1])
                                  for i in range(3)], max_concurrency=1, prefix_block=shared))
    return phases


def _steady_lengths(output: int, longest: int) -> tuple[list[int], int, int]:
    """The steady phase's prompt lengths (a geometric grid from 32 tokens to `longest`) and its
    output range [output/2, 2 output]: mixed prefill and decode, as traffic is."""
    grid = sorted({round(x) for x in (32 * (max(32, longest) / 32) ** (k / 5) for k in range(6))})
    return grid, max(2, output // 2), 2 * output


def steady_means(output: int, longest: int) -> tuple[float, float]:
    """Mean prompt and output tokens of the steady phase's requests."""
    grid, lo, hi = _steady_lengths(output, longest)
    return sum(grid) / len(grid), (lo + hi) / 2


def steady_phase(rate: float, seconds: float, output: int, longest: int, seed: int = 0) -> Phase:
    """Poisson arrivals at `rate` for about `seconds` (at most `STEADY_MAX` requests), lengths
    drawn uniformly from `_steady_lengths`."""
    import numpy as np

    grid, lo, hi = _steady_lengths(output, longest)
    rng = np.random.default_rng(seed)
    n = int(min(STEADY_MAX, max(8, round(rate * seconds))))
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    prompts = rng.choice(grid, n)
    outs = rng.integers(lo, hi + 1, n)
    return Phase("steady", [Request(f"st{i}", float(t[i] - t[0]), "probe", "language", int(prompts[i]), int(outs[i]))
                            for i in range(n)])


def steady_rate(paths: list[Path], limits: dict[str, Any], model: str, prompt: float, output: float) -> float | None:
    """`STEADY_LOAD` of the saturation rate that a fit of the results so far predicts for requests
    of these mean lengths; None when they cannot be fitted."""
    import math

    from ..errors import InputError
    from ..results import read_results
    from .preset import build_params
    from .select import fit_results

    try:
        fit, _ = fit_results(read_results(*[str(p) for p in paths]), int(limits.get("max_num_batched_tokens") or 2048))
        params, _ = build_params(fit, limits, model, cache=(None, None))
    except (InputError, ValueError):
        return None
    rate = params.saturation_rate(prompt, output)
    return STEADY_LOAD * rate if rate > 0 and math.isfinite(rate) else None


def plan_text(phases: list[Phase]) -> str:
    """What the probe will send, for the log line printed before it starts."""
    n = sum(len(ph.requests) for ph in phases)
    prompt = sum(r.input_tokens for ph in phases for r in ph.requests)
    out = sum(r.output_tokens for ph in phases for r in ph.requests)
    return f"{len(phases)} phases, {n} requests, {prompt:,} prompt and {out:,} output tokens"


def estimate_seconds(phases: list[Phase], prefill_results: Path) -> float | None:
    """The probe's duration at the speed the `prefill` phase measured (TTFT against prompt length
    for prefill, the single-request decode gap for steps; a burst of c decodes its tokens in about
    `output` steps, each slower with c: taken as linear, 1 + c/8, a rough figure for a log line)."""
    import numpy as np

    from ..results import read_results

    try:
        res = read_results(*sorted(prefill_results.parent.glob(prefill_results.name)))
    except (OSError, ValueError):
        return None
    c = res.cols
    ok = (c["status"] == "ok") & np.isfinite(c["first_token"]) & np.isfinite(c["last_token"])
    if ok.sum() < 3:
        return None
    ttft = c["first_token"][ok] - c["sent"][ok]
    slope, icept = np.polyfit(c["input_tokens"][ok], ttft, 1)
    step = float(np.median(c["last_token"][ok] - c["first_token"][ok]))
    total = 0.0
    for ph in phases:
        if ph.max_concurrency == 1:
            total += sum(max(icept, 0) + max(slope, 0) * r.input_tokens + step * r.output_tokens for r in ph.requests)
        else:
            k = len(ph.requests)
            total += (max(icept, 0) + max(slope, 0) * sum(r.input_tokens for r in ph.requests)
                      + step * max(r.output_tokens for r in ph.requests) * (1 + k / 8))
    return total


def noisy_phases(paths: list[Path], limit: int, factor: float = REPEAT_FACTOR) -> list[str]:
    """Phases whose rows fit the full model much worse than the probe as a whole (median |relative
    residual| above `factor` times the overall median and above `REPEAT_FLOOR`): a neighbour took
    the host while they ran. The worst first, at most `limit`."""
    import numpy as np

    from ..results import read_results
    from .fit import core, rows_of

    rows = rows_of(read_results(*[str(p) for p in paths]))
    ok = np.isfinite(rows.y) & (rows.y > 0)
    if ok.sum() < 20 or not len(rows.phase_names):
        return []
    y, x, kind, phase = rows.y[ok], rows.x[ok], rows.kind[ok], rows.phase[ok]
    active = [j for j in range(x.shape[1]) if np.any(x[:, j] != 0)]
    beta, _, _ = core(y, x, kind, active, 4)
    rel = np.abs(y - x[:, active] @ beta) / y
    overall = float(np.median(rel))
    worst = []
    for p in np.unique(phase):
        m = float(np.median(rel[phase == p]))
        if m > max(factor * overall, REPEAT_FLOOR) and rows.phase_names[p] != "cache":
            worst.append((m, rows.phase_names[p]))
    return [name for _, name in sorted(worst, reverse=True)[:limit]]


def run_probe(endpoint: str, model: str | None, family: str, outdir: Path, *, api_key: str | None = None,
              max_model_len: int = 4096, max_concurrency: int = 16, output: int = 48, max_prompt: int = 2048,
              budget_s: float = 180.0, steady_s: float = 30.0, limits: dict[str, Any] | None = None,
              log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[Path]:
    """Run every phase against `endpoint`, then the steady phase (`steady_s` seconds; 0: none),
    then repeat the noisiest short phases (at most `MAX_REPEATS`, while the probe stays within
    `budget_s`); the results files, one per run."""
    import asyncio
    import time

    from ..capacity import stop_if_refused
    from ..dispatch.endpoint import Endpoint, discover_model
    from ..dispatch.limits import Timeouts
    from ..dispatch.runner import RunConfig, run
    from ..results import read_results
    from ..run.target import target_for

    if model is None:
        model = asyncio.run(discover_model(Endpoint.parse(endpoint), api_key))
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    payloads: dict[int, Any] = {}
    phases = design(max_model_len, max_concurrency, output, max_prompt)
    took: dict[str, float] = {}
    t_start = time.perf_counter()
    log(f"calibrate: probe plan: {plan_text(phases)}"
        + (f"; then {steady_s:g} s of steady load" if steady_s > 0 else "")
        + f"; then up to {MAX_REPEATS} noisy phases repeated within a {budget_s:.0f} s budget")

    def one(n_phase: int, ph: Phase, tag: str = "") -> None:
        t = time.perf_counter()
        if ph.prefix_block not in payloads:
            tg = target_for(endpoint, model, family, "completions", api_key, prefix_block=ph.prefix_block)
            payloads[ph.prefix_block] = (tg.payload, tg.content)
        payload, content_header = payloads[ph.prefix_block]
        # one at a time = one run per request: a fresh connection each (a server may close a
        # keep-alive connection after a streamed response, and a reused dead one fails)
        reqs = ph.requests
        if tag:  # new ids, so new prompts: a repeat must not hit the prefix cache its first run filled
            reqs = [dataclasses.replace(r, id=f"{r.id}{tag}") for r in reqs]
        groups = [[r] for r in reqs] if ph.max_concurrency == 1 else [reqs]
        bad: dict[str, int] = {}
        for k, group in enumerate(groups):
            suffix = f"-{k + 1:02d}" if len(groups) > 1 else ""
            out = outdir / f"probe-{n_phase:02d}-{ph.name}{tag}{suffix}.jsonl"
            cfg = RunConfig(endpoint=endpoint, model=model, output=out, api="completions", api_key=api_key,
                            payload=payload, progress="off", timeouts=Timeouts(10.0, 120.0, 300.0),
                            header={"source": "calibrate-probe", "source_kind": "calibrate-probe", "phase": ph.name,
                                    "content": content_header})
            outcome = run(iter(group), cfg)
            if outcome.interrupted:
                raise KeyboardInterrupt
            for st, v in outcome.by_status.items():
                if st != "ok" and v:
                    bad[st] = bad.get(st, 0) + v
            paths.append(out)
        took[ph.name] = time.perf_counter() - t
        log(f"calibrate: probe {ph.name}{tag}: {len(ph.requests)} requests, {took[ph.name]:.1f} s"
            + (f" ({', '.join(f'{v} {k}' for k, v in bad.items())})" if bad else ""))

    for n_phase, ph in enumerate(phases, start=1):
        one(n_phase, ph)
        if n_phase == 1:  # every later phase would be refused the same way
            stop_if_refused(f"calibrate: probe {ph.name}", read_results(*paths))
        if n_phase == 1 and ph.max_concurrency == 1:
            est = estimate_seconds(phases[1:], outdir / f"probe-01-{ph.name}*.jsonl")
            if est is not None:
                log(f"calibrate: probe: about {est + took[ph.name]:.0f} s in all at the speed the prefill phase "
                    "measured")
    index = {ph.name: (n, ph) for n, ph in enumerate(phases, start=1)}
    try:
        again = noisy_phases(paths, MAX_REPEATS)
    except ValueError:
        again = []
    if steady_s > 0:
        room = prompt_room(max_model_len, 2 * output, max_prompt)  # its outputs go up to 2 x output
        rate = steady_rate(paths, limits or {}, model, *steady_means(output, room))
        if rate is None:
            log("calibrate: probe steady: skipped (the short phases could not be fitted to set its rate)")
        else:
            ph = steady_phase(rate, steady_s, output, room)
            log(f"calibrate: probe steady: {len(ph.requests)} requests at {rate:.3g} req/s "
                f"({STEADY_LOAD:.0%} of the saturation rate the short phases predict)")
            one(len(phases) + 1, ph)
    for name in again:
        n_phase, ph = index[name]
        spent = time.perf_counter() - t_start
        if spent + took[name] > budget_s:
            log(f"calibrate: probe {name} was noisy; not repeated ({spent:.0f} s spent of a {budget_s:.0f} s budget)")
            continue
        log(f"calibrate: probe {name} fits much worse than the rest (a busy host?): repeating it")
        one(n_phase, ph, "-again")
    return paths


def server_limits(endpoint: str, api_key: str | None = None) -> dict[str, Any]:
    """What the server says about its limits: llama.cpp /props (slots, context per slot), vLLM
    /v1/models (max_model_len) and /metrics (`vllm:cache_config_info`: KV blocks and block size).
    Missing endpoints are simply absent from the answer."""
    import json
    import urllib.request

    from ..direct import urlopen
    from ..dispatch.endpoint import auth_headers

    base = endpoint.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    headers = auth_headers(api_key)

    def get(path: str) -> bytes | None:
        try:
            req = urllib.request.Request(base + path, headers=headers)
            with urlopen(req, timeout=5) as r:
                return r.read() if r.status == 200 else None
        except (OSError, ValueError):
            return None

    out: dict[str, Any] = {}
    body = get("/props")
    if body:
        try:
            props = json.loads(body)
            slots = props.get("total_slots")
            n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
            if slots:
                out["max_num_seqs"] = int(slots)
                out["source"] = "llama.cpp /props"
            if n_ctx:
                out["max_model_len"] = int(n_ctx)
                out["kv_cache_tokens"] = int(n_ctx) * int(slots or 1)
                out["max_num_batched_tokens"] = max(2048, int(slots or 1))  # llama.cpp n_batch default
        except (ValueError, TypeError, AttributeError):
            pass
    body = get("/v1/models")
    if body:
        try:
            for m in json.loads(body).get("data") or []:
                if m.get("max_model_len"):
                    out["max_model_len"] = int(m["max_model_len"])
                    out.setdefault("source", "vLLM /v1/models, /metrics")
                    break
        except (ValueError, TypeError, AttributeError):
            pass
    body = get("/metrics")
    if body:
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("vllm:cache_config_info{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(",") if "=" in kv)
                try:
                    blocks = int(labels.get("num_gpu_blocks", '"0"').strip('"') or 0)
                    bs = int(labels.get("block_size", '"16"').strip('"') or 16)
                except ValueError:
                    continue
                if blocks:
                    out["kv_cache_tokens"] = blocks * bs
                out["block_size"] = bs
                flag = labels.get("enable_prefix_caching", "").strip('"')
                if flag in ("True", "False"):
                    out["prefix_caching"] = flag == "True"
    return out
