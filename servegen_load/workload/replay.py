"""Trace replay: a request-level log (Azure, Mooncake, CSV, JSONL) as a requests plan.

The log is read with `workload.logs` (imported lazily) into numpy columns, sorted by time,
cut to the window [start, start + duration) of trace time (seconds after the first row), and
mapped to run time (trace time - start) / time_scale. Token counts are kept as logged, clipped to
>= 1 (a server needs a prompt and a positive max_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..scenario import ReplaySpec, Scenario


@dataclass
class ReplayPlan:
    t: np.ndarray              # run-time seconds, sorted
    inp: np.ndarray
    out: np.ndarray
    client: np.ndarray         # int index into names
    names: list[str]
    category: str
    warning: str | None = None  # skipped rows of the trace, printed once the plan is accepted

# our field names (and the logs module's role names) -> ColumnMap role
_ROLE = {"t": "time", "time": "time", "timestamp": "time", "input_tokens": "input", "input": "input",
         "output_tokens": "output", "output": "output", "client": "client", "reason_tokens": "reason",
         "reason": "reason", "session": "session"}


def column_map(spec: ReplaySpec, path: str | None) -> Any:
    from .logs import ColumnMap

    kw: dict[str, Any] = {}
    for ours, col in (spec.columns or {}).items():
        role = _ROLE.get(ours)
        if role is None:
            raise InputError(f"unknown field {ours!r}; expected one of t, input_tokens, output_tokens, client, "
                             "reason_tokens, session", path=path, field=f"replay.columns.{ours}")
        kw[role] = col
    if spec.time_unit is not None:
        kw["time_unit"] = spec.time_unit
    return ColumnMap(**kw)


def load_replay(s: Scenario, spec: ReplaySpec) -> Any:
    from .logs import bad_rows_warning, load_log

    path = s.resolve_path(spec.path)
    if not path.exists():
        raise InputError(f"no such trace file ({path}); paths are relative to the scenario file",
                         path=s.path, field="replay.path")
    try:
        log = load_log(path, spec.format, column_map(spec, s.path), warn=False)
    except InputError as e:  # name the scenario too: the trace is a problem of this scenario
        raise InputError(f"{e}", path=s.path, field="replay.path") from None
    order = np.argsort(log.t, kind="stable")
    t = log.t[order] - (float(log.t[order[0]]) if order.size else 0.0)
    inp, out, cli = log.input[order], log.output[order], log.client[order]
    keep = t >= spec.start
    if spec.duration is not None:
        keep &= t < spec.start + spec.duration
    t = (t[keep] - spec.start) / spec.time_scale
    names = [str(c) for c in log.clients] if log.has_client else [spec.client]
    cli = cli[keep].astype(np.int64) if log.has_client else np.zeros(int(keep.sum()), dtype=np.int64)
    return ReplayPlan(t=t.astype(np.float64), inp=np.maximum(inp[keep], 1).astype(np.int64),
                      out=np.maximum(out[keep], 1).astype(np.int64), client=cli, names=names,
                      category=spec.category, warning=bad_rows_warning(log))
