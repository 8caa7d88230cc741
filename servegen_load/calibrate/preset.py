"""A fitted engine model as a preset YAML file that `sim --preset` and `plan --preset` load.

The file lists every engine parameter (so it does not depend on a base preset's values) and,
under ``calibration:``, what the fit measured: each parameter's standard error, the residuals,
where the limits came from and the results files it was fitted on. `sim.presets` ignores that
block when loading.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..sim.engine import EngineParams
from ..sim.presets import PRESETS, validate
from .fit import NAMES, Fit

BASE = "tiny-cpu"
SPREAD_WARN = 0.15  # calibration rounds whose saturation rates spread more than this (of the median): warned


def build_params(fit: Fit, limits: dict[str, Any], model: str, *, cache: tuple[bool | None, int | None],
                 base: EngineParams | None = None) -> tuple[EngineParams, dict[str, str]]:
    """The fitted parameters plus limits (the server's word first, then what the probe saw)."""
    p = base or PRESETS[BASE]
    src: dict[str, str] = {}
    seqs = limits.get("max_num_seqs")
    if seqs:
        src["max_num_seqs"] = limits.get("source", "server")
    elif fit.max_num_seqs:
        seqs = fit.max_num_seqs
        src["max_num_seqs"] = f"measured: at most {seqs} decoding together with {fit.max_in_flight} in flight"
    else:
        seqs = max(256, fit.max_decoding)
        src["max_num_seqs"] = (f"not reached by the probe ({fit.max_decoding} decoding together): "
                               "vLLM's default 256 assumed")
    model_len = int(limits.get("max_model_len") or p.max_model_len)
    src["max_model_len"] = limits.get("source", "server") if limits.get("max_model_len") else f"{BASE} default"
    kv = int(limits.get("kv_cache_tokens") or max(model_len * seqs, p.kv_cache_tokens))
    src["kv_cache_tokens"] = (limits.get("source", "server") if limits.get("kv_cache_tokens")
                              else "not reported: max_num_seqs x max_model_len assumed")
    budget = int(limits.get("max_num_batched_tokens") or max(2048, seqs))
    src["max_num_batched_tokens"] = ("llama.cpp n_batch default" if limits.get("max_num_batched_tokens")
                                     else "not reported: 2048 assumed")
    caching, block = cache
    if limits.get("prefix_caching") is not None and caching is None:
        caching = bool(limits["prefix_caching"])  # the server's word where the timings are silent
    block = int(limits.get("block_size") or block or 16)
    if caching is None:
        caching = True
        src["prefix_cache_tokens"] = "no cached-token counts: caching assumed on (the servers' default)"
    elif cache[0] is None:
        src["prefix_cache_tokens"] = f"the server's configuration (enable_prefix_caching={caching})"
    else:
        src["prefix_cache_tokens"] = "cached tokens reported by the server" if caching else "no cached tokens reported"
    v = fit.values
    out = replace(p, model=model, max_num_seqs=int(seqs), max_num_batched_tokens=max(budget, int(seqs)),
                  kv_cache_tokens=kv, max_model_len=model_len, block_size=block,
                  prefix_cache_tokens=kv if caching else 0, step_base_s=v["step_base_s"],
                  prefill_token_s=v["prefill_token_s"], decode_seq_s=v["decode_seq_s"],
                  context_token_s=v["context_token_s"], request_overhead_s=v["request_overhead_s"],
                  prefill_attention_s=v["prefill_attention_s"] or v["shared_attention_s"],
                  batch_context_s=v["batch_context_s"], shared_kv=v["shared_attention_s"] > 0,
                  multi_context_s=v["multi_context_s"])
    validate(out, where="calibrate")
    return out, src


def preset_doc(params: EngineParams, fit: Fit, sources: dict[str, str], *, endpoint: str | None,
               inputs: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"base": BASE}
    doc.update(params.to_dict())
    doc["calibration"] = {
        "endpoint": endpoint, "when": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stderr": {k: fit.stderr[k] for k in NAMES},
        "interval_90": {k: list(v) for k, v in fit.interval.items()},
        "terms": fit.selection.get("terms", list(NAMES)), "mean_scale": fit.selection.get("mean_scale", 1.0),
        "residuals": fit.residuals,
        "rows_used": fit.rows_used, "rows_dropped": fit.rows_dropped, "limits": sources, "notes": fit.notes,
        "results": inputs,
    }
    return doc


def write_preset(path: str | Path, doc: dict[str, Any]) -> None:
    from ..atomic import atomic_write

    head = ("# Engine preset fitted by `servegen-load calibrate` (see `calibration:` for uncertainties).\n"
            "# Load with `servegen-load sim --preset FILE` or `servegen-load plan --preset FILE`.\n")
    with atomic_write(str(path)) as fh:
        fh.write(head + yaml.safe_dump(doc, sort_keys=False))


def calibration_rounds(preset: str | None) -> dict[str, Any] | None:
    """A calibrated preset file's `calibration.rounds` (`calibrate --rounds`), or None."""
    if not preset or Path(preset).suffix not in (".yaml", ".yml") or not Path(preset).is_file():
        return None
    try:
        doc = yaml.safe_load(Path(preset).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # loading the preset itself names what is wrong
    cal = doc.get("calibration") if isinstance(doc, dict) else None
    rounds = cal.get("rounds") if isinstance(cal, dict) else None
    ok = isinstance(rounds, dict) and isinstance(rounds.get("spread"), float | int) and rounds.get("saturation_rates")
    return rounds if ok else None
