"""The typed summary record: what `metrics.stats` computes, as fields report, gate, SLOs and the
HTML page read (a misspelt key is an AttributeError at once, not a silent None).

The JSON form (`to_dict`, format `servegen-load/summary/v1`) is unchanged and is what files hold;
`from_dict` reads it back (a baseline, `run --summary-json`). The content blocks (`cache`,
`reasoning`, `sessions`) stay the plain blocks `content.stats` defines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..formats import SUMMARY_FORMAT

LATENCY_KEYS = ("ttft", "tpot", "itl", "e2e", "first_answer", "user_ttft", "user_e2e", "send_lag", "queue_time")


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution over requests (or ITL gaps); None fields when it is empty."""

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    def stat(self, name: str) -> float | None:
        """`p50`, `p90`, `p99`, `max` or `mean` by name (SLO metrics are named that way)."""
        if name not in ("p50", "p90", "p99", "max", "mean"):
            raise KeyError(name)
        return getattr(self, name)  # type: ignore[no-any-return]


@dataclass(slots=True)
class Requests:
    scheduled: int
    sent: int
    ok: int
    errors: int               # not ok and not cancelled
    by_status: dict[str, int]
    due: int                  # scheduled before an interruption (= scheduled otherwise)
    retries: int              # re-sends, counted apart: never extra requests
    retried: int


@dataclass(slots=True)
class Throughput:
    requests_per_s: float | None
    output_tokens_per_s: float | None
    input_tokens_per_s: float | None
    total_tokens_per_s: float | None


@dataclass(slots=True)
class CategoryRates:
    scheduled: int
    sent: int
    ok: int
    scheduled_rate: float | None
    achieved_rate: float | None
    rate_ratio: float | None


@dataclass(slots=True)
class Fidelity:
    scheduled_rate: float | None
    achieved_rate: float | None
    rate_ratio: float | None
    lag_threshold_s: float
    fell_behind: bool
    usage_coverage: float | None
    prompt_tokens: dict[str, Any] | None
    completion_tokens: dict[str, Any] | None
    by_category: dict[str, CategoryRates]


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    status: str
    http_status: int | None
    message: str              # numbers and ids replaced by N
    count: int


@dataclass(slots=True)
class Goodput:
    request_slo: str
    good: int
    total: int
    rate: float | None
    ratio: float | None


@dataclass(slots=True)
class Summary:
    sources: list[str]
    endpoint: str | None
    model: str | None
    api: str | None
    intended: dict[str, Any] | None
    requests: Requests
    duration_s: float
    throughput: Throughput
    latency: dict[str, Dist]
    fidelity: Fidelity
    errors: list[ErrorGroup]
    warnings: list[str]
    cache: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    sessions: dict[str, Any] | None = None
    goodput: Goodput | None = None
    slo: list[dict[str, Any]] | None = None
    warmup_s: float | None = None
    format: str = field(default=SUMMARY_FORMAT)

    _OPTIONAL = ("goodput", "slo", "warmup_s")  # written only when set

    def to_dict(self) -> dict[str, Any]:
        """The summary JSON (format first; goodput, slo and warmup_s only when set)."""
        d = asdict(self)
        out: dict[str, Any] = {"format": d.pop("format")}
        for k, v in d.items():
            if k in self._OPTIONAL and v is None:
                continue
            out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """A summary JSON back as the record (unknown keys are ignored: newer writers add some)."""
        fi = dict(d["fidelity"])
        fi["by_category"] = {k: CategoryRates(**v) for k, v in fi.get("by_category", {}).items()}
        req = dict(d["requests"])
        req.setdefault("due", req["scheduled"])
        names = {f.name for f in fields(cls)}
        rest = {k: v for k, v in d.items() if k in names and k not in (
            "requests", "throughput", "latency", "fidelity", "errors", "goodput")}
        return cls(**{**rest, "requests": _only(Requests, req), "throughput": _only(Throughput, d["throughput"]),
                      "latency": {k: _only(Dist, v) for k, v in d["latency"].items()},
                      "fidelity": _only(Fidelity, fi), "errors": [_only(ErrorGroup, e) for e in d.get("errors", [])],
                      "goodput": _only(Goodput, d["goodput"]) if d.get("goodput") else None})

    @classmethod
    def of(cls, s: Summary | dict[str, Any]) -> Summary:
        return s if isinstance(s, Summary) else cls.from_dict(s)


def _only(kind: Any, d: dict[str, Any]) -> Any:
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in d.items() if k in names})
