"""`servegen-load calibrate`: fit a twin of an endpoint, and check it against the real thing.

    calibrate --endpoint URL -o mine.yaml        probe (a minute or two a round, 3 rounds), fit each
                                                 round, write the median round's preset
    calibrate --from probe/ -o mine.yaml         fit results already measured (directories: rounds)
    calibrate --check --preset mine.yaml --endpoint URL SCENARIO
                                                 replay SCENARIO on both; predicted vs measured
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError
from ..results import Results, read_results
from .fit import NAMES, Fit
from .select import fit_results

LABELS = {"request_overhead_s": "request overhead", "step_base_s": "step base t0",
          "prefill_token_s": "prefill per token a_p", "decode_seq_s": "decode per sequence a_d",
          "context_token_s": "per context token a_c", "prefill_attention_s": "prefill attention a_q",
          "batch_context_s": "batch x context a_bc", "shared_attention_s": "prefill attention a_q, shared KV",
          "multi_context_s": "context, 2+ decoding a_m"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_s(v: float) -> str:
    a = abs(v)
    if a >= 1e-3:
        return f"{v * 1e3:.3f} ms"
    if a >= 1e-6:
        return f"{v * 1e6:.3f} us"
    return f"{v * 1e9:.3f} ns"


def format_fit(fit: Fit, params: Any, sources: dict[str, str]) -> str:
    lines = ["parameter                       value          +- spread     (rel)   90% interval"]
    kept = set(fit.selection.get("terms", NAMES))
    for k in NAMES:
        if k == ("prefill_attention_s" if "shared_attention_s" in kept else "shared_attention_s"):
            continue  # one a_q line: over the prompt's own tokens, or over a shared KV buffer
        v, se = fit.values[k], fit.stderr[k]
        rel = f"{se / v:6.1%}" if v > 0 else "   -  "
        lo_hi = fit.interval.get(k)
        tail = (f"  {_fmt_s(lo_hi[0])} .. {_fmt_s(lo_hi[1])}" if lo_hi else
                "" if k in kept else "  (left out: see notes)")
        lines.append(f"  {LABELS[k]:32s} {_fmt_s(v):>10s} +- {_fmt_s(se):>12s}  {rel}{tail}")
    for k in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "max_model_len", "prefix_cache_tokens"):
        lines.append(f"  {k:28s} {getattr(params, k):>14,d}    ({sources.get(k, '')})")
    lines.append(f"  {'block_size':28s} {params.block_size:>14,d}")
    lines.append(f"residuals (relative; {fit.rows_used} rows used, {fit.rows_dropped} outliers dropped):")
    for kind, r in fit.residuals.items():
        lines.append(f"  {kind:5s} rows {r['rows']:6d}: median {r['median']:+.1%}, p90 |err| {r['p90_abs']:.1%}, "
                     f"rms {r['rms']:.1%}")
    for n in fit.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


@dataclass
class Round:
    """One probe's fit: its preset parameters and the saturation rate rounds are ranked by."""

    inputs: list[str]
    requests: int
    fit: Fit
    params: Any
    sources: dict[str, str]
    saturation: float


def round_inputs(paths: list[str]) -> list[list[str]]:
    """`--from` arguments as rounds: results files are one round; each directory is one (its
    `*.jsonl`), or, holding none, each of its `round-*` subdirectories (a multi-round `--probe-dir`)."""
    dirs = [Path(p) for p in paths if Path(p).is_dir()]
    if not dirs:
        return [paths]
    if len(dirs) != len(paths):
        raise InputError("give --from either results files (one probe) or directories (one probe each), not both")
    rounds: list[list[str]] = []
    for d in dirs:
        files = sorted(str(f) for f in d.glob("*.jsonl"))
        subs = [sorted(str(f) for f in s.glob("*.jsonl")) for s in sorted(d.glob("round-*")) if s.is_dir()]
        found = [files] if files else [f for f in subs if f]
        if not found:
            raise InputError(f"{d}: no results files (*.jsonl) in it or in its round-* directories")
        rounds += found
    return rounds


LIMITS_FILE = "server-limits.json"


def probe_limits(inputs: list[str]) -> tuple[dict[str, Any], int | None]:
    """The server's limits and the shared prefix a kept probe directory recorded (`LIMITS_FILE`
    beside the results, or a directory up: rounds), so `--from` refits what the probe measured
    (it had taken the base preset's context, 8x the server's KV)."""
    for p in map(Path, inputs):
        for d in (p, p.parent, p.parent.parent) if p.is_dir() else (p.parent, p.parent.parent):
            f = d / LIMITS_FILE
            if f.is_file():
                try:
                    doc = json.loads(f.read_text())
                    return dict(doc.get("limits") or {}), doc.get("shared_prefix")
                except (OSError, ValueError, AttributeError):
                    raise InputError("expected the JSON calibrate writes", path=str(f)) from None
    return {}, None


def median_round(rounds: list[Round]) -> int:
    """The round whose saturation rate is the median (the lower of the middle two): a probe run in
    a slow or fast spell of the host is outvoted by the others, and its parameters are never mixed in."""
    order = sorted(range(len(rounds)), key=lambda i: rounds[i].saturation)
    return order[(len(order) - 1) // 2]


def calibrate(*, endpoint: str | None, inputs: list[str], output: str, model: str | None,
              server_family: str | None, api_key: str | None, probe_dir: str | None,
              max_concurrency: int, probe_output: int, probe_max_prompt: int = 2048,
              probe_budget: float = 180.0, probe_steady: float = 30.0, rounds: int = 3) -> dict[str, Any]:
    """Probe (or read) timings, fit the engine model per round, write the median round's preset;
    the preset document."""
    from .fit import cache_block
    from .preset import SPREAD_WARN, build_params, preset_doc, write_preset
    from .probe import CACHE_SHARED, prompt_room, run_probe, server_limits

    if (endpoint is None) == (not inputs):
        raise InputError("give either --endpoint URL (probe it) or --from RESULTS... (fit measured results)")
    if max_concurrency < 2:
        raise InputError("expected at least 2", field="--probe-concurrency")
    if probe_output < 4:
        raise InputError("expected at least 4 tokens", field="--probe-output")
    if probe_max_prompt < 64:
        raise InputError("expected at least 64 tokens", field="--probe-max-prompt")
    if not probe_budget > 0:
        raise InputError("expected a positive number of seconds", field="--probe-budget")
    if not probe_steady >= 0:
        raise InputError("expected 0 (no steady phase) or more seconds", field="--probe-steady")
    if rounds < 1:
        raise InputError("expected at least 1", field="--rounds")
    limits: dict[str, Any] = {}
    shared = None
    tmp = None
    t0 = time.perf_counter()
    try:
        if endpoint is not None:
            limits = server_limits(endpoint, api_key)
            if limits:
                _log(f"calibrate: the server says {', '.join(f'{k}={v}' for k, v in limits.items() if k != 'source')}")
            if probe_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="servegen-calibrate-")
                probe_dir = tmp.name
            shared = min(CACHE_SHARED, prompt_room(int(limits.get("max_model_len") or 4096), probe_output,
                                                   probe_max_prompt) // 2)
            Path(probe_dir).mkdir(parents=True, exist_ok=True)  # what `--from` refits with
            with atomic_write(Path(probe_dir) / LIMITS_FILE) as fh:
                fh.write(json.dumps({"limits": limits, "shared_prefix": shared}))
            groups = []
            for r in range(rounds):
                if rounds > 1:
                    _log(f"calibrate: round {r + 1} of {rounds}")
                outdir = Path(probe_dir) / f"round-{r + 1}" if rounds > 1 else Path(probe_dir)
                paths = run_probe(endpoint, model, server_family or "vllm", outdir, api_key=api_key,
                                  max_model_len=int(limits.get("max_model_len") or 4096),
                                  max_concurrency=max_concurrency, output=probe_output, max_prompt=probe_max_prompt,
                                  budget_s=probe_budget, steady_s=probe_steady, limits=limits, log=_log)
                groups.append([str(p) for p in paths])
            _log(f"calibrate: probe took {time.perf_counter() - t0:.1f} s"
                 + (f"; results kept in {probe_dir}" if tmp is None else ""))
        else:
            groups = round_inputs(inputs)
            limits, shared = probe_limits(inputs)
        fitted = []
        for files in groups:
            res = read_results(*files)
            check_prompt_counts(res, files)
            name = model or next((h.get("model") for h in res.headers if h.get("model")), None) or "calibrated"
            fit, rows = fit_results(res, int(limits.get("max_num_batched_tokens") or 2048))
            params, sources = build_params(fit, limits, name, cache=cache_block(rows.cached, shared))
            fitted.append(Round(files, res.n, fit, params, sources, params.saturation_rate(1000, 200)))
        k = median_round(fitted)
        kept = fitted[k]
        doc = preset_doc(kept.params, kept.fit, kept.sources, endpoint=endpoint,
                         inputs=kept.inputs if tmp is None else [])
        if len(fitted) > 1:
            sats = [r.saturation for r in fitted]
            spread = (max(sats) - min(sats)) / kept.saturation
            doc["calibration"]["rounds"] = {"saturation_rates": sats, "kept": k + 1, "spread": spread}
        write_preset(output, doc)
        print(f"calibrated engine model of {endpoint or f'{sum(map(len, groups))} results file(s)'} "
              f"({kept.requests} requests{f', round {k + 1} of {len(fitted)}' if len(fitted) > 1 else ''}) "
              f"-> {output}")
        print(format_fit(kept.fit, kept.params, kept.sources))
        if len(fitted) > 1:
            print(f"rounds: saturation at 1000 prompt / 200 output tokens {', '.join(f'{s:.3g}' for s in sats)} "
                  f"req/s; kept round {k + 1} (the median), spread {spread:.0%} of it")
            if spread > SPREAD_WARN:
                print(f"  warning: the rounds differ by {spread:.0%} of the median (a busy host, a shared GPU, a "
                      "scaling event?): plans follow the median round; run `calibrate --check` before trusting "
                      "them, and calibrate again when the host is quiet")
        print(f"saturation at 1000 prompt / 200 output tokens: {kept.saturation:.3g} req/s; "
              f"`servegen-load plan SCENARIO --preset {output} --slo ...` plans it in virtual time")
        return doc
    finally:
        if tmp is not None:
            tmp.cleanup()


def check_prompt_counts(res: Results, files: list[str]) -> None:
    """An InputError when the server's `usage.prompt_tokens` does not follow the prompts sent.

    The fit charges prefill by the server's counts: a server (or a gateway) that reports a
    constant or unrelated count would make a model of nothing; one calibration against such a
    server put its saturation at 0.2 req/s where it served 180."""
    c = res.cols
    sent = c["input_tokens"] + np.nan_to_num(c["media_tokens"])
    ok = (c["status"] == "ok") & np.isfinite(c["prompt_tokens"]) & (sent > 0)
    if ok.sum() < 10 or np.ptp(sent[ok]) == 0:
        return  # too few counts, or nothing to follow
    said, asked = c["prompt_tokens"][ok], sent[ok]
    ratio = float(np.median(said / asked))
    corr = float(np.corrcoef(np.log1p(said), np.log1p(asked))[0, 1]) if np.ptp(said) > 0 else 0.0
    if not (0.5 <= ratio <= 2.0 and corr >= 0.9):
        raise InputError(f"the server's usage.prompt_tokens does not follow the prompts sent (median "
                         f"{ratio:.2g} of them, correlation {corr:.2f} over {int(ok.sum())} answers): a model "
                         "fitted to those counts would be wrong; check the endpoint (a gateway rewriting usage?)",
                         path=files[0] if len(files) == 1 else None)


# --- check: the twin against the real endpoint on a held-out scenario ---

METRICS = ("ttft", "tpot", "e2e")
PCTS = (50, 90, 99)


def percentiles(res: Any) -> dict[str, dict[int, float | None]]:
    from ..metrics.stats import summary

    latency = summary(res).latency
    return {m: {p: latency[m].stat(f"p{p}") for p in PCTS} for m in METRICS}


def check(*, preset: str, endpoint: str, scenario: str, model: str | None, server_family: str | None,
          api_key: str | None, results: str | None, slos: Any = None, step_duration: float = 20.0,
          warmup: float = 3.0, max_steps: int = 8) -> dict[str, Any]:
    """Replay `scenario` on the endpoint and on the twin; print predicted vs measured."""
    from ..run import run
    from ..run.spec import RunSpec
    from ..sim.config import build_config
    from ..sim.virtual import simulate_requests
    from ..workload.compose import iter_scenario_requests

    params = build_config(preset).params
    tmp = None
    if results is None:
        tmp = tempfile.TemporaryDirectory(prefix="servegen-check-")
        results = str(Path(tmp.name) / "measured.jsonl")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the run's own summary: ours is the table below
            spec = RunSpec.build(source=scenario, output=results, endpoint=endpoint, model=model, api="completions",
                                 server_family=server_family or "vllm", timeout_total=900.0, timeout_idle=300.0,
                                 progress="off")
            code = run(spec, ["calibrate", "--check"])
        if code not in (0, None):
            raise InputError(f"the measured run failed (exit {code})")
        measured = read_results(results)
        twin = simulate_requests(params, list(iter_scenario_requests(scenario)))
        m, p = percentiles(measured), percentiles(twin)
        doc: dict[str, Any] = {"preset": preset, "endpoint": endpoint, "scenario": scenario,
                               "measured": m, "predicted": p, "error": {}}
        print(f"twin {preset} vs {endpoint} on {scenario} ({measured.n} requests)")
        print(f"  {'metric':10s} {'measured':>10s} {'predicted':>10s} {'error':>8s}")
        for k in METRICS:
            doc["error"][k] = {}
            for q in PCTS:
                a, b = m[k][q], p[k][q]
                err = (b / a - 1) if a and b is not None else None
                doc["error"][k][q] = err
                print(f"  {k + '_p' + str(q):10s} {_ms(a):>10s} {_ms(b):>10s} "
                      f"{'-' if err is None else f'{err:+.1%}':>8s}")
        drift = step_drift(measured, params)
        if drift is not None:
            doc["steps"] = drift
            print(f"  the measured run's decode steps against the twin's step model: median {drift['median']:+.1%}, "
                  f"mean {drift['mean']:+.1%} ({drift['rows']} rows; the model's error on this traffic plus any "
                  "change of the host since calibration)")
        if slos is not None and slos.slos:
            doc["capacity"] = check_capacity(preset, endpoint, scenario, model, server_family, api_key, slos,
                                             step_duration, warmup, max_steps)
        return doc
    finally:
        if tmp is not None:
            tmp.cleanup()


def step_drift(measured: Any, params: Any) -> dict[str, Any] | None:
    """How the measured run's decode stretches compare with the twin's step model (measured /
    predicted - 1: median, and the capped mean `select.mean_scale` scales a fit by): when the
    latencies disagree, this says whether the steps themselves did (a host slower or faster than
    during calibration, or traffic the model describes badly) or only the queueing."""
    from .fit import MIN_ROWS, rows_of, term_values
    from .select import capped_mean, step_rows

    rows = rows_of(measured, params.max_num_batched_tokens)
    y, pred = step_rows(rows.y, rows.x, rows.kind, term_values(params))
    if len(pred) < MIN_ROWS:
        return None
    return {"rows": len(pred), "median": float(np.median(y / pred)) - 1, "mean": capped_mean(y, pred) - 1}


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:.1f} ms"


def check_capacity(preset: str, endpoint: str, scenario: str, model: str | None, server_family: str | None,
                   api_key: str | None, slos: Any, step_duration: float, warmup: float,
                   max_steps: int) -> dict[str, Any]:
    """The same capacity search on the twin (virtual time) and on the endpoint (real time)."""
    from ..capacity import PlanOptions, plan_capacity

    base = dict(step_duration=step_duration, warmup=warmup, tolerance=0.05, max_steps=max_steps, api="completions")
    t = time.perf_counter()
    twin = plan_capacity(scenario, slos, PlanOptions(**base, preset=preset, clock="virtual"))  # type: ignore[arg-type]
    t_twin = time.perf_counter() - t
    t = time.perf_counter()
    real = plan_capacity(scenario, slos, PlanOptions(**base, endpoint=endpoint, model=model,  # type: ignore[arg-type]
                                                     server_family=server_family or "vllm", api_key=api_key))
    t_real = time.perf_counter() - t
    out: dict[str, Any] = {}
    print(f"  {'capacity':28s} {'measured':>10s} {'predicted':>10s} {'error':>8s}")
    for key, label in (("capacity", "max sustainable rate"), ("knee", "knee (saturation)")):
        a = real["plan"][key]["rate"]
        b = twin["plan"][key]["rate"]
        err = (b / a - 1) if a and b else None
        out[key] = {"measured": a, "predicted": b, "error": err}
        print(f"  {label:28s} {_rate(a):>10s} {_rate(b):>10s} {'-' if err is None else f'{err:+.1%}':>8s}")
    print(f"  plan took {t_real:.0f} s against the endpoint, {t_twin:.2f} s against the twin")
    out["seconds"] = {"measured": t_real, "predicted": t_twin}
    return out


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}/s"


def relative_errors(doc: dict[str, Any]) -> np.ndarray:
    return np.array([e for k in doc["error"].values() for e in k.values() if e is not None])
