"""The scenario file: what workload to generate, validated with pydantic, errors as one line.

A scenario is one of four kinds, chosen by which key the file has:

- realistic (`pool:` or `pools:`): ServeGen's per-client composition. Each client of each pool
  keeps its own rate curve, gap family (burstiness) and length tables over a window of the pool;
  the levels can be rescaled (`scale`, `rate`, `peak_rate`) and the window compressed
  (`time_scale`).
- `naive:`: the baseline a realistic scenario is usually compared with: Poisson arrivals at one
  mean rate, lengths fixed numbers or a pool's aggregate (rate-weighted) distribution.
- `constant:`: like `naive:` with fixed gaps (1/rate).
- `replay:`: a request-level trace file (Azure, Mooncake, or any CSV/JSONL with a column mapping).

Paths inside a scenario (pool files, `naive.of`, `replay.path`) are relative to the scenario
file's directory, so a scenario and its data can move together.

Rate levels of a realistic scenario, exactly (all rates in requests per second of run time):

1. Natural curve of each pool entry: the pool's per-client rates over the window
   [start, start + duration) of pool time, restricted to the selected clients. With
   `time_scale = s` the window is replayed s times faster: pool time p maps to run time
   (p - start) / s and every rate is multiplied by s, so each pool window's expected request
   count is unchanged (the same mix, the curve compressed; 24 h of m-large in 1 h with
   `time_scale: 24` has m-large's full daily count, 24x its rates).
2. An entry with `rate:` is scaled so its mean rate over the run equals that rate.
3. Entries with `weight:` share a budget: top-level `rate` minus the explicit entry rates when
   `rate` is given, else the sum of their own natural mean rates; entry i gets
   budget x weight_i / sum(weights). If any entry has a weight, every entry without `rate`
   needs one.
4. Top-level `rate` without weights: the entries without their own `rate` are scaled by one
   common factor so the total mean rate equals `rate`.
5. `scale` (a factor) or `peak_rate` (the largest total rate of any rate window, after steps
   1-4) is applied last, to every entry alike. `scale`, `rate` and `peak_rate` exclude each other.

So `time_scale: 24, rate: 50` gives a run of duration/24 seconds at a mean of 50 req/s whose
rate curve has the shape of the whole window (counts are time_scale-scaled, then the rate target
scales them back).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InputError
from .formats import first_object, format_kind

DAY = 86400.0
_KINDS = ("pool", "pools", "naive", "constant", "replay")
MAX_TOKENS = 2**31 - 1        # as in requests files
MAX_SEED = 2**63 - 1          # the seed is written in the requests header (JSON integers are 64-bit)
MAX_YAML_NODES = 100_000      # a scenario is a few dozen nodes; aliases must not expand past this
MAX_YAML_DEPTH = 64


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """`rate: true` is no rate: pydantic would read it as 1."""
        if isinstance(data, dict):
            for k, v in data.items():
                f = cls.model_fields.get(k) if isinstance(v, bool) else None
                if f is not None and _numeric(f.annotation):
                    raise ValueError(f"{k}: expected a number, got {str(v).lower()}")
        return data


def _numeric(ann: Any) -> bool:
    """Whether a field annotation takes numbers and not booleans (int, float, or an optional one)."""
    import typing

    args = typing.get_args(ann) if typing.get_origin(ann) is not None else (ann,)
    return bool not in args and any(a in (int, float) for a in args)


def parse_clock(value: Any) -> float:
    """Seconds from a number (>= 0) or a clock string "HH:MM" / "HH:MM:SS" (hours 0-23)."""
    if isinstance(value, bool):
        raise ValueError("expected seconds (a number >= 0) or a clock time \"HH:MM\"")
    if isinstance(value, int | float):
        if not value >= 0 or value == float("inf"):
            raise ValueError("expected seconds >= 0")
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?\s*", value)
        if m:
            h, mi, s = int(m[1]), int(m[2]), float(m[3] or 0)
            if h < 24 and mi < 60 and s < 60:
                return h * 3600.0 + mi * 60.0 + s
        try:
            return parse_clock(float(value))
        except ValueError:
            pass
    raise ValueError(f"expected seconds (a number >= 0) or a clock time \"HH:MM\", got {value!r}")


class ClientFilter(_Model):
    """Which clients of a pool take part; every criterion given must hold (they combine with AND).

    Statistics are measured over the scenario's window of the pool, weighting each rate window by
    its request count. `ids`/`exclude` apply first, then the ranges, then `top` keeps the k
    busiest of the clients left.
    """

    top: int | None = Field(None, ge=1, description="keep the k clients with most requests in the window")
    cv: tuple[float, float] | None = Field(None, description="[lo, hi] request-weighted mean gap CV")
    input_mean: tuple[float, float] | None = Field(
        None, description="[lo, hi] mean input (text) tokens per request")
    output_mean: tuple[float, float] | None = Field(None, description="[lo, hi] mean output tokens per request")
    ids: list[str] | None = Field(None, description="keep only these client ids (as in the pool)")
    exclude: list[str] | None = Field(None, description="drop these client ids")

    @field_validator("cv", "input_mean", "output_mean", mode="before")
    @classmethod
    def _range(cls, v: Any) -> Any:
        if v is None:
            return v
        ok = isinstance(v, list | tuple) and len(v) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        if not ok or not (0 <= v[0] <= v[1]):
            raise ValueError(f"expected [lo, hi] with 0 <= lo <= hi, got {v!r}")
        return (float(v[0]), float(v[1]))

    @field_validator("ids", "exclude", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) for x in v]
        return v


class PoolEntry(_Model):
    """One pool of a mixed scenario (`pools:` list); see the module docstring for the rate rules."""

    pool: str = Field(description="a shipped pool's name (m-large, m-small, mm-image, deepseek-r1) or a pool file path")
    weight: float | None = Field(None, gt=0, description="share of the weighted pools' rate budget")
    rate: float | None = Field(None, gt=0, description="this pool's mean rate (req/s of run time)")
    label: str | None = Field(None, description="prefix of this pool's client names (default: the pool's name)")
    clients: ClientFilter | None = Field(None, description="client filter (default: the top-level `clients`)")

    @model_validator(mode="after")
    def _one_level(self) -> PoolEntry:
        if self.weight is not None and self.rate is not None:
            raise ValueError("give `weight` or `rate`, not both")
        if self.label is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.label):
            raise ValueError("label: expected letters, digits, '.', '_' or '-'")
        return self


class LengthFrom(_Model):
    """A pool's aggregate length distribution: every client's tables mixed with weights equal to
    their request counts over the window (default: the pool's whole span)."""

    from_: str = Field(alias="from", description="pool name or path")
    start: float = Field(0.0, description="window start, seconds or \"HH:MM\" of `day`")
    day: int = Field(1, ge=1, description="day of a multi-day pool (1 = first)")
    duration: float | None = Field(None, gt=0, description="window length in seconds (default: to the pool's end)")

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> float:
        return parse_clock(v)


def _length_spec(v: Any) -> Any:
    if v is None or isinstance(v, LengthFrom):
        return v
    if isinstance(v, bool):
        raise ValueError("expected a token count (integer >= 1) or {from: POOL}")
    if isinstance(v, int | float):
        if not (1 <= v <= MAX_TOKENS) or v != int(v):
            raise ValueError(f"expected a token count (integer in 1..{MAX_TOKENS}), got {v!r}")
        return int(v)
    if isinstance(v, str):
        return LengthFrom.model_validate({"from": v})
    if isinstance(v, dict):
        return LengthFrom.model_validate(v)
    raise ValueError(f"expected a token count (integer >= 1) or {{from: POOL}}, got {v!r}")


class BaselineSpec(_Model):
    """`naive:` (Poisson arrivals) or `constant:` (fixed gaps) at one mean rate.

    Lengths are fixed numbers or `{from: POOL}` (the pool's aggregate distribution; a multimodal
    pool for `input_tokens` also gives the images/audio/video, a reasoning pool for
    `output_tokens` also gives `reason_tokens`). With `of:` (a realistic scenario, path relative
    to this file) the rate defaults to that scenario's mean rate and omitted lengths to its
    aggregate: each request picks one of its pools with probability proportional to the pool's
    expected request count, then draws every field from that pool's aggregate over the window.
    """

    rate: float | None = Field(None, gt=0, description="mean requests per second (default: the mean rate of `of`)")
    of: str | Scenario | None = Field(None, description="the realistic scenario this baseline stands in for")
    input_tokens: int | LengthFrom | None = Field(None, description="a number, or {from: POOL}")
    output_tokens: int | LengthFrom | None = Field(None, description="a number, or {from: POOL}")
    category: Literal["language", "multimodal", "reason"] | None = Field(
        None, description="request category (default: from the length pools, else language)")
    client: str = Field("naive", description="client name written on every request")

    @field_validator("input_tokens", "output_tokens", mode="before")
    @classmethod
    def _lengths(cls, v: Any) -> Any:
        return _length_spec(v)

    @model_validator(mode="after")
    def _needs(self) -> BaselineSpec:
        if self.of is None:
            if self.rate is None:
                raise ValueError("rate: expected a rate in req/s (or `of:` a realistic scenario to copy it from)")
            for f in ("input_tokens", "output_tokens"):
                if getattr(self, f) is None:
                    raise ValueError(f"{f}: expected a token count or {{from: POOL}} (or `of:` a scenario)")
        return self


class ReplaySpec(_Model):
    """Replay a request-level trace: each row becomes one request at its own time.

    Times are taken relative to the first row of the trace; `start`/`duration` select a window of
    trace time (seconds), `time_scale` > 1 replays it faster (run time = (trace time - start) /
    time_scale). Rows without a client column get `client`.
    """

    path: str = Field(description="trace file (relative to the scenario file)")
    format: Literal["azure", "mooncake", "bailian", "csv", "jsonl"] = Field(
        description="file layout (bailian: Alibaba's Qwen-Bailian traces; give `run --prefix-block 16`)")
    columns: dict[str, str] | None = Field(
        None, description="our field -> file column, for csv/jsonl: t, input_tokens, output_tokens (client optional)")
    time_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None, description="unit of a numeric time column (csv/jsonl; azure/mooncake/bailian know theirs)")
    time_scale: float = Field(1.0, gt=0, description="replay speed-up factor")
    start: float = Field(0.0, description="window start, seconds of trace time after the first row")
    duration: float | None = Field(None, gt=0, description="window length in seconds of trace time")
    client: str = Field("trace", description="client name when the trace has no client column")
    category: Literal["language", "multimodal", "reason"] = Field("language", description="request category")

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> float:
        return parse_clock(v)


# --- request content: multi-turn sessions and shared system prompts (workload.conversation) ---


class DistSpec(_Model):
    """A distribution of a session field: a number (fixed), `{mean, cv?, family?}` or a table
    `{values, weights?}`. Families: fixed, exponential, gamma (needs cv; cv 1 is exponential),
    lognormal (needs cv), geometric (integers >= 1 with that mean; the default for `turns`)."""

    mean: float | None = Field(None, gt=0, le=1e9, description="mean of the distribution")
    cv: float | None = Field(None, ge=0, le=100, description="coefficient of variation (0: fixed)")
    family: Literal["fixed", "exponential", "gamma", "lognormal", "geometric"] | None = Field(
        None, description="default: gamma/lognormal need cv; turns geometric, others exponential")
    values: list[float] | None = Field(None, max_length=100_000, description="a table's values (each <= 1e9)")
    weights: list[float] | None = Field(None, max_length=100_000, description="a table's weights (default equal)")

    @model_validator(mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not 0 <= v <= 1e9:
                raise ValueError(f"expected a number in 0..1e9, got {v!r}")
            return {"mean": v, "family": "fixed"} if v > 0 else {"values": [0.0]}
        return v

    @model_validator(mode="after")
    def _one(self) -> DistSpec:
        if (self.mean is None) == (self.values is None):
            raise ValueError("give a mean (with cv/family) or values (with weights), not both")
        if self.values is not None:
            if not self.values or any(not 0 <= x <= 1e9 for x in self.values):
                raise ValueError("values: expected a non-empty list of numbers in 0..1e9")
            if self.weights is not None and (len(self.weights) != len(self.values) or any(w < 0 for w in self.weights)
                                             or not sum(self.weights) > 0):
                raise ValueError("weights: expected one weight >= 0 per value, not all 0")
        if self.family in ("gamma", "lognormal") and self.cv is None:
            raise ValueError(f"{self.family} needs cv")
        return self


class SessionSpec(_Model):
    """Multi-turn sessions: a share of the workload's requests are turns of sessions, whose starts
    are drawn from the workload's arrivals; each later turn starts `think_time` after the previous
    turn started (arrival to arrival, as a log records it; never before the previous response
    ended), its prompt carrying the history (previous prompt + response) plus `new_tokens`
    (`history: included`) or only its new tokens (`excluded`). A fitted pool's per-client session
    tables (turns, think time, new tokens, first-turn inputs, share) and its history semantics take
    precedence where a client has them, unless `pool_tables: false`; a fitted pool with sessions
    generates them without this section."""

    share: float = Field(0.5, ge=0, le=1, description="share of requests that belong to sessions (the rate of "
                                                        "requests is kept: arrivals are thinned into session starts)")
    turns: DistSpec = Field(default_factory=lambda: DistSpec(mean=3.0), description="turns per session (>= 1)")
    think_time: DistSpec = Field(default_factory=lambda: DistSpec(mean=10.0),
                                 description="seconds from a turn's start to the next turn's start")
    new_tokens: DistSpec = Field(default_factory=lambda: DistSpec(mean=100.0),
                                 description="new user tokens per later turn")
    output_tokens: DistSpec | None = Field(None, description="output tokens of later turns (default: the client's own)")
    pool_tables: bool = Field(True, description="use a fitted pool's session tables where a client has them")
    history: Literal["auto", "included", "answers", "excluded"] = Field(
        "auto", description="later turns' inputs: history + new tokens (included), history without reasoning + new "
                            "tokens (answers: reasoning models' APIs do not send reasoning back) or new tokens only "
                            "(excluded); "
                            "auto: the fitted pool's `session_history` for clients with pool tables, else included")

    @field_validator("turns")
    @classmethod
    def _turns(cls, v: DistSpec) -> DistSpec:
        if (v.mean is not None and v.mean < 1) or (v.values is not None and min(v.values) < 1):
            raise ValueError("expected turns >= 1 per session (a session is at least its first turn)")
        return v


class SystemPromptSpec(_Model):
    """Shared system prompts: a share of requests (sessions: of first turns) start with one of
    `variants` prompts of `tokens` tokens, carved out of the request's input tokens (the length
    distribution stays the pool's; a shorter prompt gets the prompt's beginning)."""

    share: float = Field(..., ge=0, le=1, description="share of requests with a shared system prompt")
    tokens: int = Field(..., ge=1, le=131_072, description="tokens of each system prompt")
    variants: int = Field(1, ge=1, le=100_000, description="distinct system prompts, picked uniformly")


class Scenario(_Model):
    """A workload to generate. Exactly one of `pool`, `pools`, `naive`, `constant`, `replay`.

    Realistic scenarios (`pool` or `pools`):
      pool / pools   one pool (shipped name or path) or a list of `PoolEntry` (weight or rate each)
      clients        `ClientFilter`: top-k by traffic, CV range, mean length ranges, ids, exclude
      start, day     window start in pool time: seconds or "HH:MM" after the midnight of `day`
                     (1-based; multi-day pools), i.e. pool time (day - 1) * 86400 + start
      duration       seconds of pool time; the run lasts duration / time_scale seconds. A pool
                     made by `fit` may be generated past its own span (any start and duration):
                     its rate profile (hour of day, day type or hour of week, on the log's wall
                     clock) continues it (`workload.continuation`); imported pools keep their span
      scale | rate | peak_rate   rate level: a factor, a mean req/s, or the busiest window's req/s
      time_scale     > 1 compresses pool time (the same counts in less time; see the module doc)
      arrival        `renewal` (default) or `servegen` (see `workload.arrivals`)
      gap_cv         `measured` (default): Weibull windows use the shape whose CV equals the
                     window's measured CV; `fitted`: ServeGen's fitted shape (its CV is 0.33-1.2x
                     the measured one in m-large, median 0.8). Other families are unaffected.
      length_correlation   target Spearman correlation of input and output tokens, or `pool`
                     (default): per client, the `rank_corr` a fitted pool carries (0 where it has
                     none: the shipped ServeGen pools, whose released tables carry no joint data)
      seed           random seed (default 0)
    Baselines: `naive` / `constant` (`BaselineSpec`) with `duration` (seconds of run time;
    default: that of `of`) and `seed`; `replay` (`ReplaySpec`) with `seed` only.
    """

    pool: str | None = Field(None, description="one pool: a shipped name or a pool file path")
    pools: list[PoolEntry] | None = Field(None, description="several pools, each with a weight or a rate")
    clients: ClientFilter | None = Field(None, description="client filter (for `pool`, and default for `pools`)")
    start: float = Field(0.0, description="window start in pool time: seconds after the midnight of `day`, or \"HH:MM\"")
    day: int = Field(1, ge=1, description="day of a multi-day pool (1 = first); pool time = (day-1)*86400 + start")
    duration: float | None = Field(
        None, gt=0, description="seconds of pool time to generate (realistic); seconds of run time (naive, constant)")
    scale: float | None = Field(None, gt=0, description="multiply every rate by this factor")
    rate: float | None = Field(None, gt=0, description="target mean rate of the run, req/s")
    peak_rate: float | None = Field(None, gt=0, description="target largest total rate of a rate window, req/s")
    time_scale: float = Field(1.0, gt=0, description=">1 compresses pool time: run time = (pool time - start)/time_scale")
    arrival: Literal["renewal", "servegen"] = Field(
        "renewal", description="renewal: one renewal process per client; servegen: fixed count per window")
    gap_cv: Literal["measured", "fitted"] = Field(
        "measured", description="Weibull windows: shape matching the measured gap CV, or ServeGen's fitted shape")
    length_correlation: float | Literal["pool"] = Field(
        "pool", description="Spearman rank correlation of input and output tokens (Gaussian copula), in [-1, 1]; "
                            "`pool` (default): each client's own `rank_corr` from a fitted pool (0 where the pool "
                            "has none, e.g. the shipped ServeGen pools)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed: the same scenario and seed give the same bytes")
    naive: BaselineSpec | None = Field(None, description="Poisson baseline")
    constant: BaselineSpec | None = Field(None, description="fixed-gap baseline")
    replay: ReplaySpec | None = Field(None, description="trace replay")
    sessions: SessionSpec | None = Field(None, description="multi-turn sessions (workload.conversation)")
    system_prompt: SystemPromptSpec | None = Field(
        None, alias="prefix", description="shared system prompts (a cached prefix); also `prefix:`")
    max_context: int | None = Field(
        None, ge=2, le=10_000_000, description="the served model's context length: each request is clipped so "
        "prompt (text + media) + output fits it, output cut first (a pool measured on a long-context service "
        "otherwise asks a shorter-context server for what it can only refuse)")

    slo: list[str] | None = Field(
        None, description="SLOs `run` checks when the run ends, in `gate`'s grammar (e.g. ttft_p99<=2s); "
        "a failed one makes `run` exit 1 (run.spec.RunSpec.slo; `--slo` adds more); `plan` searches against them")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _path: str | None = PrivateAttr(default=None)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> float:
        return parse_clock(v)

    @field_validator("slo", mode="before")
    @classmethod
    def _one_slo(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # `slo: ttft_p99<=2s`, as `--slo-file` takes it

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: list[str] | None) -> list[str] | None:
        from .slo import check_slo_specs

        return check_slo_specs(v)

    @field_validator("length_correlation")
    @classmethod
    def _rho(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not -1.0 <= v <= 1.0:
            raise ValueError(f"expected a number in [-1, 1] or 'pool', got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        kinds = [k for k in _KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"expected exactly one of {', '.join(_KINDS)}; got {', '.join(kinds) or 'none'}")
        kind = kinds[0]
        given = self.model_fields_set
        levels = [f for f in ("scale", "rate", "peak_rate") if getattr(self, f) is not None]
        if len(levels) > 1:
            raise ValueError(f"give at most one of scale, rate, peak_rate; got {', '.join(levels)}")
        if kind in ("pool", "pools"):
            if self.duration is None:
                raise ValueError("duration: expected the seconds of pool time to generate")
            if kind == "pools":
                if not self.pools:
                    raise ValueError("pools: expected at least one pool entry")
                weighted = [p.weight is not None for p in self.pools]
                if any(weighted) and not all(w or p.rate is not None for w, p in zip(weighted, self.pools, strict=True)):
                    raise ValueError("pools: give every pool without `rate` a `weight`, or none of them")
                if self.peak_rate is not None and any(p.rate is not None for p in self.pools):
                    raise ValueError("peak_rate cannot be combined with per-pool `rate`")
                explicit = sum(p.rate or 0.0 for p in self.pools)
                if self.rate is not None and explicit > 0:
                    if all(p.rate is not None for p in self.pools):
                        raise ValueError("rate: every pool has its own rate; drop the top-level rate")
                    if self.rate <= explicit:
                        raise ValueError(f"rate: expected more than the per-pool rates' sum ({explicit:g})")
        else:
            bad = sorted(f for f in ("pool", "clients", "start", "day", "scale", "rate", "peak_rate",
                                     "time_scale", "arrival", "gap_cv", "length_correlation") if f in given)
            if kind == "replay":
                bad += ["duration"] if "duration" in given else []
            if bad:
                hint = ""
                if kind == "replay":
                    hint = " (use replay.start/duration/time_scale)"
                elif "rate" in bad:
                    hint = f" (the rate belongs in {kind}.rate)"
                raise ValueError(f"{', '.join(bad)}: not used by a {kind} scenario{hint}")
            spec = self.naive if kind == "naive" else self.constant
            if kind != "replay" and self.duration is None and (spec is None or spec.of is None):
                raise ValueError("duration: expected the seconds of run time to generate")
        return self

    # --- derived ---

    @property
    def kind(self) -> str:
        """`realistic`, `naive`, `constant` or `replay`."""
        if self.pool is not None or self.pools is not None:
            return "realistic"
        return next(k for k in ("naive", "constant", "replay") if getattr(self, k) is not None)

    @property
    def base_dir(self) -> Path:
        """Directory relative paths resolve against (the scenario file's, else the working dir)."""
        return self._base_dir

    @property
    def path(self) -> str | None:
        return self._path

    def entries(self) -> list[PoolEntry]:
        """The pool entries of a realistic scenario (`pool:` becomes one entry)."""
        if self.pools is not None:
            return [p if p.clients is not None or self.clients is None else p.model_copy(update={"clients": self.clients})
                    for p in self.pools]
        if self.pool is not None:
            return [PoolEntry(pool=self.pool, clients=self.clients)]
        return []

    def pool_start(self) -> float:
        """Window start in pool time (seconds from the pool's first midnight)."""
        return (self.day - 1) * DAY + self.start

    def resolve_path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self._base_dir / q

    def with_overrides(self, *, seed: int | None = None, duration: float | None = None) -> Scenario:
        """A copy with the CLI's --seed / --duration applied (duration replaces the file's `duration`;
        for a replay scenario it replaces `replay.duration`)."""
        upd: dict[str, Any] = {}
        if seed is not None:
            if not 0 <= seed <= MAX_SEED:
                raise InputError(f"expected a seed in 0..{MAX_SEED}, got {seed}", field="--seed")
            upd["seed"] = seed
        if duration is not None:
            if not duration > 0:
                raise InputError("expected a duration > 0", field="--duration")
            if self.replay is not None:
                upd["replay"] = self.replay.model_copy(update={"duration": float(duration)})
            else:
                upd["duration"] = float(duration)
        out = self.model_copy(update=upd)
        out._base_dir, out._path = self._base_dir, self._path
        return out

    def canonical(self) -> dict[str, Any]:
        """The resolved scenario as plain data: defaults filled in, clock strings as seconds, unset
        fields left out (`scenario_digest` then replaces file references by content digests)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


BaselineSpec.model_rebuild()


def scenario_digest(s: Scenario) -> str:
    """sha256 of the canonical resolved scenario. Pool and trace files referenced by path enter
    by their content's sha256 (not their path), so the digest is the same on every machine."""
    import json

    def ident(p: str) -> str:
        from .workload.pool import SHIPPED

        if p in SHIPPED:
            return f"shipped:{p}"
        return "sha256:" + _file_sha256(s.resolve_path(p))

    d = s.canonical()
    for e in d.get("pools", []) or []:
        e["pool"] = ident(e["pool"])
    if "pool" in d:
        d["pool"] = ident(d["pool"])
    for kind in ("naive", "constant"):
        b = d.get(kind)
        if b is None:
            continue
        for f in ("input_tokens", "output_tokens"):
            if isinstance(b.get(f), dict):
                b[f]["from"] = ident(b[f]["from"])
        spec = getattr(s, kind)
        if isinstance(spec.of, str):
            b["of"] = scenario_digest(load_scenario(s.resolve_path(spec.of)))
        elif spec.of is not None:
            b["of"] = scenario_digest(spec.of)
    if "replay" in d:
        d["replay"]["path"] = "sha256:" + _file_sha256(s.resolve_path(s.replay.path))  # type: ignore[union-attr]
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _file_sha256(p: Path) -> str:
    try:
        st = p.stat()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(p)) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


# --- YAML loading without YAML 1.1's sexagesimal numbers ("20:00" must stay a clock string) ---

class _Loader(yaml.SafeLoader):
    """SafeLoader whose ints and floats are plain decimal/hex/octal: YAML 1.1 reads `20:00` as the
    base-60 integer 1200, which would silently put a scenario at 00:20 instead of 20:00. A key given
    twice in one mapping is an error (YAML keeps the last silently: `rate:` written twice is a typo).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a key is what merges are for
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (_INT, _FLOAT)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
                       r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


_TYPE_NAMES = {"function-after", "function-before", "str", "int", "float", "bool", "Scenario", "LengthFrom",
               "DistSpec", "SessionSpec", "SystemPromptSpec",
               "ClientFilter", "PoolEntry", "BaselineSpec", "ReplaySpec"}


def _parts(loc: tuple[Any, ...]) -> list[str | int]:
    """The field names and list indices of an error location, as the YAML spells them (pydantic's
    union-branch and validator labels left out)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)
        elif part in _TYPE_NAMES or (isinstance(part, str) and "[" in part):
            continue
        else:
            out.append("from" if part == "from_" else str(part))
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in _parts(loc):
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def _line_of(text: str, parts: list[str | int]) -> int | None:
    """The line of the YAML node an error location names (its key's line), for errors that point
    at the line to edit; None when the text does not hold it (a value made by an alias)."""
    try:
        cur = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    line = None
    for part in parts:
        if isinstance(cur, yaml.MappingNode) and isinstance(part, str):
            hit = next(((k, v) for k, v in cur.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if hit is None:
                break
            line, cur = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int) and part < len(cur.value):
            cur = cur.value[part]
            line = cur.start_mark.line + 1
        else:
            break
    return line


def _describe(err: dict[str, Any], model: type[BaseModel] | None) -> str:
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        if model is None:
            return "unknown field"
        names = _field_names(model)
        near = difflib.get_close_matches(str(err.get("loc", ("",))[-1]), names, n=1, cutoff=0.6)
        return "unknown field; " + (f"did you mean {near[0]}? " if near else "") + f"expected one of: {', '.join(names)}"
    if typ == "missing":
        return "required field is missing"
    if typ in ("value_error", "assertion_error"):
        return msg
    got = err.get("input")
    if isinstance(got, dict | list):
        return f"{msg[:1].lower()}{msg[1:]}"
    return f"{msg[:1].lower()}{msg[1:]} (got {got!r})"


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of an error location (for 'expected one of')."""
    model: type[BaseModel] | None = Scenario
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        f = model.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return None
        ann = f.annotation
        nxt = None
        for cand in (PoolEntry, ClientFilter, BaselineSpec, ReplaySpec, LengthFrom, SessionSpec, SystemPromptSpec,
                     DistSpec, Scenario):
            if ann is cand or (hasattr(ann, "__args__") and cand in _flatten_args(ann)):
                nxt = cand
                break
        model = nxt
    return model


def _flatten_args(ann: Any) -> list[Any]:
    out: list[Any] = []
    for a in getattr(ann, "__args__", ()):
        out.extend([a, *_flatten_args(a)])
    return out


def validation_message(e: ValidationError) -> tuple[str, str]:
    """(field path, what was expected) of the first error, e.g. ('pools[1].weight', 'input should be > 0')."""
    errs = e.errors()
    err = errs[0]
    loc = tuple(err.get("loc", ()))
    return _loc(loc), _describe(err, _model_at(loc))


def parse_scenario(data: Any, *, path: str = "<scenario>", base_dir: Path | None = None,
                   text: str | None = None) -> Scenario:
    """Validate decoded YAML; errors become one-line InputErrors naming file, line (with the YAML
    `text`), field path and expectation."""
    if not isinstance(data, dict):
        raise InputError("expected a mapping of scenario fields at the top level", path=path)
    try:
        s = Scenario.model_validate(data)
    except ValidationError as e:
        field, msg = validation_message(e)
        line = _line_of(text, _parts(tuple(e.errors()[0].get("loc", ())))) if text is not None else None
        raise InputError(f"expected {msg}" if msg.startswith(("a ", "an ", "exactly")) else msg,
                         path=path, line=line, field=field or None) from None
    s._base_dir = base_dir if base_dir is not None else Path.cwd()
    s._path = path
    return s


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file; every error is an InputError with one line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such scenario file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read scenario file ({e})", path=str(p)) from None
    head = first_object(text[:4096].encode())
    kind = format_kind(head) if head is not None else None
    if kind is not None:  # another file of ours (`generate`'s requests, `run`'s results)
        raise InputError(f"is a {kind} file, not a scenario YAML (plan and calibrate --check scale a scenario's "
                         "rate; see scenarios/)", path=str(p))
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"invalid YAML: {problem}", path=str(p), line=line) from None
    except RecursionError:
        raise InputError(f"invalid YAML: nested deeper than Python can parse (a scenario nests a few "
                         f"levels; at most {MAX_YAML_DEPTH})", path=str(p)) from None
    _check_size(data, str(p))
    return parse_scenario(data, path=str(p), base_dir=p.resolve().parent, text=text)


def _check_size(data: Any, path: str) -> None:
    """Refuse YAML whose aliases make a cycle, nest deeper than `MAX_YAML_DEPTH` or expand past
    `MAX_YAML_NODES` nodes ("billion laughs"): validation would recurse or walk every copy.

    Iterative, and each distinct node is expanded once (sizes are memoised by identity)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(data, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if not isinstance(node, dict | list):
            continue
        key = id(node)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size.get(id(c), 1) for c in children)
            if size[key] > MAX_YAML_NODES:
                raise InputError(f"invalid YAML: aliases expand to more than {MAX_YAML_NODES} nodes", path=path)
            continue
        if key in size:
            continue
        if key in on_path:
            raise InputError("invalid YAML: an alias refers to a node that contains it (a cycle)", path=path)
        if depth > MAX_YAML_DEPTH:
            raise InputError(f"invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels", path=path)
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)
