"""The simulator's settings, validated once for the CLI, `python -m servegen_load.sim` and
`SimProcess` alike (a bad value is an `InputError` before any process starts)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .engine import EngineParams
from .faults import parse_faults
from .presets import DEFAULT_PRESET, get_preset, parse_params, with_overrides


@dataclass(frozen=True)
class SimConfig:
    preset: str
    params: EngineParams
    """Effective parameters: the preset, the overrides, then the time scale."""
    faults: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    time_scale: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    stall_seconds: float = 5.0
    slow_accept_seconds: float = 2.0
    hang_seconds: float = 600.0


def _positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"must be a {'non-negative' if allow_zero else 'positive'} number, got {value}",
                         field=name)
    return v


def build_config(preset: str = DEFAULT_PRESET, params: list[str] | dict[str, Any] | None = None,
                 faults: list[str] | dict[str, float] | None = None, *, seed: int = 0,
                 time_scale: float = 1.0, host: str = "127.0.0.1", port: int = 8000,
                 stall_seconds: float = 5.0, slow_accept_seconds: float = 2.0,
                 hang_seconds: float = 600.0, flags: tuple[str, str] = ("--param", "--time-scale")) -> SimConfig:
    """Validate everything and resolve the engine parameters; raises InputError naming `flags`
    (the parameter and time-scale options of the command that was given them)."""
    base = get_preset(preset)
    overrides = parse_params(params, flags[0]) if isinstance(params, list) else dict(params or {})
    engine = with_overrides(base, overrides, where=flags[0])
    ts = _positive(flags[1], time_scale, allow_zero=False)
    if isinstance(faults, dict):
        fault_rates = parse_faults([f"{k}={v}" for k, v in faults.items()])
    else:
        fault_rates = parse_faults(faults)
    if not 0 <= int(port) <= 65535:
        raise InputError(f"must be in 0..65535, got {port}", field="--port")
    return SimConfig(
        preset=preset, params=engine.scaled(ts), faults=fault_rates, seed=int(seed), time_scale=ts,
        host=host, port=int(port), stall_seconds=_positive("--stall-seconds", stall_seconds),
        slow_accept_seconds=_positive("--slow-accept-seconds", slow_accept_seconds),
        hang_seconds=_positive("--hang-seconds", hang_seconds),
    )


def config_args(cfg: SimConfig, base_params: dict[str, Any] | None = None) -> list[str]:
    """Command-line arguments that rebuild `cfg` in a child process (see `process.SimProcess`)."""
    args = ["--preset", cfg.preset, "--seed", str(cfg.seed), "--time-scale", repr(cfg.time_scale),
            "--host", cfg.host, "--port", str(cfg.port), "--stall-seconds", repr(cfg.stall_seconds),
            "--slow-accept-seconds", repr(cfg.slow_accept_seconds), "--hang-seconds", repr(cfg.hang_seconds)]
    for k, v in (base_params or {}).items():
        args += ["--param", f"{k}={v}"]
    for k, v in cfg.faults.items():
        args += ["--fault", f"{k}={v!r}"]
    return args
