"""What a run sends: the requests of a requests file or a scenario, with the run's overrides.

Overrides (`run --rate/--count/--duration`, no YAML edited):
- `--rate R` on a realistic scenario is the scenario's own `rate: R` (every client scaled so the
  run's mean is R, same duration, same per-client shapes); on a `naive:`/`constant:` baseline it
  is the baseline's rate. A replay or a requests file keeps its order and gaps' shape and is
  compressed in time by mean/R (t' = t x mean / R), mean = requests / the header's
  `duration` (else gaps / first-to-last span): the count stays, the
  run gets shorter or longer, as with vllm bench's `--request-rate`.
- `--duration S` keeps the requests scheduled before S seconds of run time (after `--rate`).
- `--count N` keeps the first N requests (after both).

`open_source` reads a requests file twice: once in full before anything is contacted (every line
validated: ~0.7 us a line; a bad line 10 million lines in is named before the simulator starts),
then streamed for the run.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import sniff
from ..requests import Request, iter_requests, read_header


@dataclass
class Opened:
    """An opened source: its requests (a lazy stream) and what the results header says about it."""

    requests: Iterator[Request]
    info: dict[str, Any] = field(default_factory=dict)


def is_scenario(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def check_source(path: str) -> str:
    """`scenario` or `requests`; an InputError for anything else (missing, a directory, another format)."""
    kind = sniff(path)
    if kind == "missing":
        raise InputError("no such file (expected a requests JSONL or a scenario YAML)", path=path)
    if kind == "directory":
        raise InputError("expected a requests JSONL or a scenario YAML, got a directory", path=path)
    if kind in ("scenario", "requests"):
        return kind
    if is_scenario(path):
        return "scenario"
    read_header(path)  # names what is wrong with the first line
    return "requests"


def scenario_with(path: str, rate: float | None) -> Any:
    """The scenario with `--rate` applied as the scenario's own rate level (see the module doc)."""
    from ..scenario import load_scenario

    s = load_scenario(path)
    if rate is None:
        return s
    kind = s.kind
    if kind == "realistic":
        if s.pools and any(p.rate is not None for p in s.pools):
            raise InputError("the scenario gives per-pool rates; edit them instead", path=path, field="--rate")
        t = s.model_copy(update={"rate": float(rate), "scale": None, "peak_rate": None})
    elif kind in ("naive", "constant"):
        spec = getattr(s, kind)
        t = s.model_copy(update={kind: spec.model_copy(update={"rate": float(rate)})})
    else:
        return s  # replay: compressed in time by `stretch`
    t._base_dir, t._path = s._base_dir, s._path
    return t


def _stretch(reqs: Iterator[Request], factor: float) -> Iterator[Request]:
    for r in reqs:
        r.t *= factor
        if r.think_time is not None:
            r.think_time *= factor
        yield r


def _file_span(path: Path) -> tuple[int, float, dict[str, set[str]]]:
    """(requests, last t, client and category names) of a requests file: one validating pass."""
    n, last = 0, 0.0
    clients: set[str] = set()
    categories: set[str] = set()
    for r in iter_requests(path):
        n += 1
        last = r.t
        clients.add(r.client)
        categories.add(r.category)
    return n, last, {"client": clients, "category": categories}


def open_source(path: str, shard: str | None = None, *, rate: float | None = None,
                duration: float | None = None, count: int | None = None, validate: bool = True) -> Opened:
    """The requests to send (see the module docstring); `shard` "i/N" keeps that shard's clients."""
    factor = 1.0
    if check_source(path) == "scenario":
        from ..workload.compose import iter_generation, prepare

        s = scenario_with(path, rate)
        info: dict[str, Any] = {"source": path, "source_kind": "scenario", "seed": s.seed}
        gen = prepare(s, shard=shard)  # now: pools, traces and sizes are checked before anything starts
        if rate is not None and s.kind == "replay":
            mean = gen.plan.mean_rate()
            factor = mean / rate if mean > 0 else 1.0
        reqs: Iterator[Request] = iter_generation(gen)
        whole = gen.header()["expected_requests"]  # report hook: the intended load, beside the scheduled
        rate_i = whole / gen.duration if gen.duration > 0 else None
        span_i = min(gen.duration, duration) if duration is not None else gen.duration
        info["intended"] = {"source": Path(path).name, "rate": rate_i, "duration": span_i,
                            "requests": round(whole * span_i / gen.duration, 1) if gen.duration > 0 else whole}
        if s.slo:
            info["slo"] = list(s.slo)
        if validate and shard is None:  # (a shard holds some clients; the whole run is checked once)
            info["names"] = gen.plan.names()
        if validate and shard is None and duration is not None and duration > gen.duration + 1e-9:
            print(f"servegen-load: warning: --duration {duration:g} s is longer than the scenario's {gen.duration:g} s: "
                  "the run ends with the scenario's requests (set `duration:` in the scenario to schedule more)",
                  file=sys.stderr)
    else:
        p = Path(path)
        head = read_header(p)
        n, last, names = _file_span(p) if (validate or rate is not None) else (0, 0.0, None)
        info = {"source": path, "source_kind": "requests"}
        if validate:
            info["names"] = names
        if head.get("seed") is not None:
            info["seed"] = head["seed"]
        given = head.get("duration") if isinstance(head.get("duration"), int | float) else None
        span = max(float(given or 0.0), last)
        if span > 0:
            info["duration_hint"] = span
        # mean rate: requests over the header's duration, else gaps over the first-to-last span
        mean = n / span if given and span > 0 else ((n - 1) / last if n > 1 and last > 0 else 0.0)
        if rate is not None and mean > 0:
            factor = mean / rate
        if shard is not None:
            from ..workload.compose import parse_shard
            from .shard import iter_file_shard

            sh = parse_shard(shard)
            assert sh is not None
            reqs = iter_file_shard(p, sh)
        else:
            reqs = iter_requests(p)
    if factor != 1.0:
        reqs = _stretch(reqs, factor)
        if "duration_hint" in info:
            info["duration_hint"] *= factor
    if duration is not None:
        d = duration
        reqs = itertools.takewhile(lambda r: r.t < d, reqs)
    if count is not None:
        reqs = itertools.islice(reqs, count)
    return Opened(reqs, info)


def count_cut(path: str, *, rate: float | None, duration: float | None, count: int) -> float | None:
    """The `--duration` equivalent of `--count N` for a sharded run: just after the N-th request's
    time (shards split by client, so "the first N" is a time cut; requests tied with the N-th at
    the same instant are kept too). None when the source has fewer than N requests."""
    import math

    last = None
    for last_r in open_source(path, rate=rate, duration=duration, count=count, validate=False).requests:
        last = last_r
    if last is None:
        return duration
    if count > 0 and last is not None:
        cut = math.nextafter(last.t, math.inf)
        return cut if duration is None else min(cut, duration)
    return duration
