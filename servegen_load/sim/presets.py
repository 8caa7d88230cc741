"""Engine presets: GPU/model pairs whose step costs approximate published vLLM figures.

Each preset is an `EngineParams`; the cost model is ``dt = t0 + a_p·P + a_d·B + a_c·C`` (see
`engine`). The numbers are orders of magnitude, derived as follows, not measurements of ours:

- **t0** (``step_base_s``): a decode step at small batch is memory-bound, reading every weight
  once: weight bytes / HBM bandwidth, plus kernel-launch and sampling overhead. Llama-3-8B bf16
  (16 GB) on an H100 SXM (3.35 TB/s) is 4.8 ms in theory; vLLM reports inter-token latencies of
  about 8-12 ms at low load, hence 8 ms.
- **a_p** (``prefill_token_s``): prefill is compute-bound, 2·params FLOPs per token at 40-60 %
  of the dense bf16 peak. For 8B on H100 that is 10-20 k tokens/s in vLLM's prefill-heavy
  benchmarks, hence 1/18 000 s.
- **a_d** (``decode_seq_s``): each extra sequence adds its share of the (mostly still
  memory-bound) GEMMs and sampling; vLLM's ITL roughly doubles between batch 1 and batch 256 at
  short context, hence t0/256 per sequence.
- **a_c** (``context_token_s``): attention reads the KV of every context token each step:
  KV bytes per token / HBM bandwidth (Llama-3-8B: 2·32 layers·8 KV heads·128·2 B = 128 KiB/token,
  about 40 ns at 3.35 TB/s).
- **KV capacity**: (GPU memory x 0.9 - weights - activations) / KV bytes per token, which is what
  vLLM prints at start-up ("GPU KV cache size: N tokens"): about 450 k tokens for Llama-3-8B on
  an 80 GB H100 (public tables give 543 k on the 94 GB H100 NVL).
- **max_num_seqs / max_num_batched_tokens**: vLLM V1's OpenAI-server defaults, 1024 / 8192 on
  GPUs with at least 70 GiB (H100), 256 / 2048 elsewhere (A10G).

A preset may also come from a YAML file: ``base: <preset name>`` plus any parameter to override
(``--preset my-gpu.yaml``); `servegen-load calibrate` writes such files, fitted to a real endpoint,
with what it measured under ``calibration:`` (ignored when loading).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import InputError
from .engine import EngineParams

DEFAULT_PRESET = "llama3-8b-h100"

PRESETS: dict[str, EngineParams] = {
    # Llama-3-8B-Instruct bf16 on one H100 SXM 80 GB: ~8 ms/step alone, ~18 k prefill tokens/s,
    # ~450 k KV tokens (128 KiB each); vLLM V1 defaults for >=70 GiB GPUs.
    "llama3-8b-h100": EngineParams(
        model="meta-llama/Meta-Llama-3-8B-Instruct",
        max_num_seqs=1024, max_num_batched_tokens=8192, kv_cache_tokens=450_000, max_model_len=8192,
        step_base_s=0.008, prefill_token_s=1 / 18_000, decode_seq_s=3.0e-5, context_token_s=4.0e-8,
        prefix_cache_tokens=450_000,
    ),
    # Llama-3-70B-Instruct bf16, tensor parallel over 4 H100 SXM: 35 GB of weights per GPU is
    # 10.5 ms of HBM reads, plus all-reduces: ~16 ms/step alone (published TP4 ITLs 15-25 ms);
    # 140 GFLOP/token over 4 GPUs with TP overhead: ~8 k prefill tokens/s; KV 320 KiB/token split
    # over 4 GPUs (80 KiB each, ~27 ns) in ~32 GB free per GPU: ~380 k tokens.
    "llama3-70b-4xh100": EngineParams(
        model="meta-llama/Meta-Llama-3-70B-Instruct",
        max_num_seqs=1024, max_num_batched_tokens=8192, kv_cache_tokens=380_000, max_model_len=8192,
        step_base_s=0.016, prefill_token_s=1 / 8_000, decode_seq_s=6.0e-5, context_token_s=2.7e-8,
        prefix_cache_tokens=380_000,
    ),
    # Qwen2.5-7B-Instruct bf16 on one A10G 24 GB (600 GB/s, ~70 dense bf16 TFLOPS): 15 GB of
    # weights is 25 ms per step; ~2.5 k prefill tokens/s; KV 56 KiB/token (28 layers, 4 KV heads)
    # in ~5 GB free: ~85 k tokens, ~95 ns per context token; vLLM defaults for small GPUs.
    "qwen2.5-7b-a10g": EngineParams(
        model="Qwen/Qwen2.5-7B-Instruct",
        max_num_seqs=256, max_num_batched_tokens=2048, kv_cache_tokens=85_000, max_model_len=32768,
        step_base_s=0.028, prefill_token_s=1 / 2_500, decode_seq_s=1.1e-4, context_token_s=9.5e-8,
        prefix_cache_tokens=85_000,
    ),
    # A small, fast engine for tests and demos on a laptop: 2 ms steps, 200 k prefill tokens/s.
    "tiny-cpu": EngineParams(
        model="servegen/tiny-sim",
        max_num_seqs=64, max_num_batched_tokens=4096, kv_cache_tokens=262_144, max_model_len=65_536,
        step_base_s=0.002, prefill_token_s=5.0e-6, decode_seq_s=2.0e-5, context_token_s=1.0e-9,
        prefix_cache_tokens=262_144, default_max_tokens=256,
    ),
}

_FIELDS = {f.name: f for f in dataclasses.fields(EngineParams)}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str = DEFAULT_PRESET, field: str = "--preset") -> EngineParams:
    """A shipped preset by name, or a YAML file (``base:`` + overrides) by path; errors name `field`."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError("no such preset file", path=name, field=field)
        return _load_yaml(path)
    raise InputError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a .yaml file",
                     field=field)


def _load_yaml(path: Path) -> EngineParams:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML: {str(e).splitlines()[0]}", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read the preset: {e.strerror}", path=str(path)) from None
    if not isinstance(doc, dict):
        raise InputError("expected a mapping of parameter: value", path=str(path))
    doc.pop("calibration", None)  # what `calibrate` measured: uncertainties, residuals, sources
    base = doc.pop("base", DEFAULT_PRESET)
    if base not in PRESETS:
        raise InputError(f"unknown base preset {base!r}", path=str(path), field="base")
    return with_overrides(PRESETS[base], doc, where=str(path))


def parse_params(items: list[str] | None, flag: str = "--param") -> dict[str, str]:
    """``["name=value", ...]`` (the ``--param`` flags; `plan`'s ``--sim-param``) -> dict; names are checked later."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"expected name=value, got {item!r}", field=flag)
        out[name.strip().replace("-", "_")] = value.strip()
    return out


def with_overrides(params: EngineParams, overrides: dict[str, Any], *, where: str = "--param") -> EngineParams:
    """`params` with `overrides` applied (values may be strings from the command line), validated."""
    changes: dict[str, Any] = {}
    for name, raw in overrides.items():
        f = _FIELDS.get(name)
        if f is None:
            raise InputError(f"unknown engine parameter {name!r}; expected one of {', '.join(_FIELDS)}",
                             field=where)
        kind = str(f.type)
        try:
            value = _coerce(kind, raw)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name}: expected {kind}, got {raw!r}", field=where) from None
        changes[name] = value
    out = dataclasses.replace(params, **changes)
    validate(out, where=where)
    return out


def _coerce(kind: str, raw: Any) -> Any:
    if kind == "str":
        return str(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "1", "yes"):
            return True
        if str(raw).lower() in ("false", "0", "no"):
            return False
        raise ValueError("not true or false")
    if isinstance(raw, bool):
        raise ValueError("not a number")
    value = float(raw)  # accepts "1e5" and "0.008"
    if kind == "int":
        if value != int(value):
            raise ValueError("not an integer")
        return int(value)
    return value


def validate(p: EngineParams, *, where: str = "--param") -> None:
    for name in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "max_model_len", "block_size",
                 "default_max_tokens"):
        if getattr(p, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(p, name)}", field=where)
    for name in ("step_base_s", "prefill_token_s", "decode_seq_s", "context_token_s", "request_overhead_s",
                 "prefill_attention_s", "batch_context_s", "multi_context_s"):
        if not getattr(p, name) >= 0:
            raise InputError(f"{name} must be >= 0 seconds, got {getattr(p, name)}", field=where)
    if p.prefix_cache_tokens < 0:
        raise InputError("prefix_cache_tokens must be >= 0", field=where)
    if p.max_num_batched_tokens < p.max_num_seqs:
        raise InputError(f"max_num_batched_tokens ({p.max_num_batched_tokens}) must be >= max_num_seqs "
                         f"({p.max_num_seqs}), as in vLLM", field=where)


def describe(ref_prompt: int = 1000, ref_output: int = 200) -> list[dict[str, Any]]:
    """One row per preset: its parameters and saturation rate at a reference request shape."""
    rows = []
    for name, p in PRESETS.items():
        row = {"preset": name, **p.to_dict()}
        row["saturation_rps"] = round(p.saturation_rate(ref_prompt, ref_output), 3)
        rows.append(row)
    return rows


def format_presets() -> str:
    """The ``--list-presets`` table: name, model, key costs and the saturation rate."""
    lines = [f"{'preset':18s} {'model':38s} {'t0 ms':>6s} {'prefill tok/s':>13s} {'seqs':>5s} "
             f"{'KV tokens':>9s} {'sat req/s*':>10s}"]
    for row in describe():
        lines.append(f"{row['preset']:18s} {row['model']:38s} {row['step_base_s'] * 1e3:6.1f} "
                     f"{1 / row['prefill_token_s']:13,.0f} {row['max_num_seqs']:5d} {row['kv_cache_tokens']:9,d} "
                     f"{row['saturation_rps']:10.2f}")
    lines.append("* saturation at 1000 prompt / 200 output tokens per request (engine.analytic_saturation_rate)")
    return "\n".join(lines)
