"""SLOs: threshold specs on summary metrics, per-request SLOs, goodput, and their evaluation.

Grammar of one SLO (`--slo`, or a line of an `--slo-file`):

    SPEC   := METRIC [ "[" SCOPE "]" ] OP NUMBER [UNIT]
    SCOPE  := category=NAME | client=NAME          (default: every request)
    OP     := <= | < | >= | >
    UNIT   := s | ms | us | µs     for latencies (a bare number is seconds)
            | %                    for ratios (a bare number is a fraction: 0.005 = 0.5%)
            | req/s | /s           for request rates (bare: req/s)
            | tok/s                for token rates (bare: tok/s)

    ttft_p99<=2s   tpot_p50<=50ms   error_rate<=0.5%   'ttft_p99[category=multimodal]<=4s'
    throughput>=20req/s   goodput>=15req/s   goodput_ratio>=99%

METRIC names are derived from the keys of `metrics.stats.summarize` (the one place metrics are
defined), so a metric added there becomes an SLO metric here:

- `<latency>_<stat>` for every `summary["latency"]` key (ttft, tpot, itl, e2e, first_answer,
  user_ttft, user_e2e, send_lag, queue_time) and stat p50, p90, p99, max, mean. `user_ttft` is
  what the user felt: TTFT + send lag + queue time (= first_token - scheduled).
- every `summary["throughput"]` key (requests_per_s, output_tokens_per_s, ...) and `throughput`
  (= requests_per_s, ok requests per second of the run's span);
- the fidelity rates `scheduled_rate`, `achieved_rate` and the ratio `rate_ratio`;
- `error_rate` = errors / (requests - cancelled): every request that did not end ok, except those
  cancelled by an interrupted run, over the same requests;
- `goodput` (req/s) and `goodput_ratio`: requests meeting the per-request SLO (below).

Per-request SLO (`--request-slo ttft<=2s,tpot<=100ms`): ITEM ("," ITEM)* with ITEM one of
`ttft`, `tpot`, `e2e`, `itl` (the request's largest inter-chunk gap) OP NUMBER [UNIT]. A request
is good when it ended ok and meets every item. `ttft` and `e2e` are judged as the user felt them,
from the scheduled instant (TTFT + send lag + queue time), so a client that fell behind or a
concurrency cap cannot hide a miss. Goodput = good requests / the run's span (summary
`duration_s`); goodput_ratio = good / (requests - cancelled-before-sending). Failed requests count
as misses: they never leave the denominator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .metrics import stats
from .metrics.summary import Goodput, Summary
from .results import COUNT_FIELDS, TEXT_FIELDS, TIME_FIELDS, Results

Kind = Literal["time", "ratio", "rate", "token_rate"]
Op = Literal["<=", "<", ">=", ">"]

LAT_STATS = ("p50", "p90", "p99", "max", "mean")
_UNITS: dict[Kind, dict[str, float]] = {
    "time": {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6},
    "ratio": {"": 1.0, "%": 1e-2},
    "rate": {"": 1.0, "req/s": 1.0, "/s": 1.0, "rps": 1.0},
    "token_rate": {"": 1.0, "tok/s": 1.0, "/s": 1.0},
}
_UNIT_HELP: dict[Kind, str] = {"time": "s, ms or us", "ratio": "% (or a fraction <= 1)", "rate": "req/s",
                               "token_rate": "tok/s"}
_SPEC_FORM = "METRIC[ [category=NAME] ]OP VALUE[UNIT], e.g. ttft_p99<=2s or 'ttft_p99[category=multimodal]<=4s'"
_REQ_FORM = "ITEM[,ITEM...] with ITEM = ttft|tpot|e2e|itl OP VALUE[UNIT], e.g. ttft<=2s,tpot<=100ms"
_RX = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\[\s*(?P<scope>[^\]]*)\]\s*)?"
                 r"(?P<op><=|>=|<|>|=<|=>)\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                 r"(?P<unit>[A-Za-zµ%/]*)\s*$")
_OPS = {"<=": "<=", "=<": "<=", ">=": ">=", "=>": ">=", "<": "<", ">": ">"}
REQUEST_METRICS = ("ttft", "tpot", "e2e", "itl")


# --- results selection ---

def empty_results() -> Results:
    """A Results with no rows (for deriving metric names and for empty scopes)."""
    cols: dict[str, np.ndarray] = {k: np.zeros(0) for k in TIME_FIELDS + COUNT_FIELDS}
    cols["retries"] = np.zeros(0, dtype=np.int64)
    for k in TEXT_FIELDS:
        cols[k] = np.empty(0, dtype=object)
    return Results(n=0, headers=[], paths=[], cols=cols, chunk_times=np.zeros(0),
                   chunk_offsets=np.zeros(1, dtype=np.int64), file_index=np.zeros(0, dtype=np.int32))


def select(res: Results, mask: np.ndarray) -> Results:
    """The rows of `res` where `mask` holds, chunk times included (a Results of its own)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return res
    counts = res.chunk_counts[mask]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    starts = res.chunk_offsets[:-1][mask]
    idx = np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]))
    return Results(n=int(mask.sum()), headers=res.headers, paths=res.paths,
                   cols={k: v[mask] for k, v in res.cols.items()}, chunk_times=res.chunk_times[idx],
                   chunk_offsets=offsets, file_index=res.file_index[mask], warnings=list(res.warnings))


def after_warmup(res: Results, warmup: float) -> Results:
    """Requests scheduled at or after `warmup` seconds from the run's start."""
    if not (warmup >= 0 and math.isfinite(warmup)):  # nan compares false with everything: check it first
        raise InputError(f"expected seconds >= 0, got {warmup:g}", field="--warmup")
    if not warmup:
        return res
    return select(res, res["scheduled"] >= warmup)


def check_lag_threshold(ms: float) -> float:
    """`--lag-threshold-ms` in seconds; InputError unless a number >= 0 (`run` checks it the same way)."""
    if not (ms >= 0 and math.isfinite(ms)):
        raise InputError(f"expected a number >= 0, got {ms:g}", field="--lag-threshold-ms")
    return ms / 1e3


# --- metric catalog ---

@lru_cache(maxsize=1)
def metric_kinds() -> dict[str, Kind]:
    """Every SLO metric name and its kind, derived from the summary record's fields."""
    from dataclasses import fields

    from .metrics.summary import LATENCY_KEYS, Throughput

    kinds: dict[str, Kind] = {}
    for key in LATENCY_KEYS:
        for st in LAT_STATS:
            kinds[f"{key}_{st}"] = "time"
    kinds["throughput"] = "rate"
    for f in fields(Throughput):
        kinds[f.name] = "rate" if f.name.startswith("requests") else "token_rate"
    for key in ("scheduled_rate", "achieved_rate"):
        kinds[key] = "rate"
    kinds["rate_ratio"] = "ratio"
    kinds["error_rate"] = "ratio"
    kinds["goodput"] = "rate"
    kinds["goodput_ratio"] = "ratio"
    return kinds


def metric_values(summary: Summary, good: GoodputResult | None = None) -> dict[str, float | None]:
    """Flat name -> value of a summary (plus goodput when computed); None where undefined."""
    from dataclasses import asdict

    out: dict[str, float | None] = {}
    for key, d in summary.latency.items():
        for st in LAT_STATS:
            out[f"{key}_{st}"] = d.stat(st)
    tp = summary.throughput
    out["throughput"] = tp.requests_per_s
    out.update(asdict(tp))
    fi = summary.fidelity
    out.update(scheduled_rate=fi.scheduled_rate, achieved_rate=fi.achieved_rate, rate_ratio=fi.rate_ratio)
    r = summary.requests
    denom = r.scheduled - r.by_status.get("cancelled", 0)
    out["error_rate"] = r.errors / denom if denom > 0 else None
    if good is not None:
        out["goodput"] = good.rate
        out["goodput_ratio"] = good.ratio
    return out


# --- specs ---

@dataclass(frozen=True)
class Threshold:
    op: Op
    value: float  # in base units (seconds, fraction, per second)

    def holds(self, x: float) -> bool:
        return {"<=": x <= self.value, "<": x < self.value, ">=": x >= self.value, ">": x > self.value}[self.op]


@dataclass(frozen=True)
class SLO:
    """One threshold on one summary metric, over all requests or one category/client."""

    spec: str
    metric: str
    kind: Kind
    threshold: Threshold
    scope: tuple[str, str] | None = None  # ("category" | "client", name)

    @property
    def scope_label(self) -> str:
        return "all" if self.scope is None else f"{self.scope[0]}={self.scope[1]}"

    @property
    def label(self) -> str:
        return self.metric if self.scope is None else f"{self.metric}[{self.scope_label}]"


@dataclass(frozen=True)
class RequestSLO:
    """Per-request thresholds (all must hold) defining a good request for goodput."""

    spec: str
    items: tuple[tuple[str, Threshold], ...]


def _number(text: str, spec: str, form: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"bad number {text!r} in SLO {spec!r}; expected {form}") from None
    if not math.isfinite(v):
        raise InputError(f"bad number {text!r} in SLO {spec!r}; expected a finite value")
    return v


def _convert(num: float, unit: str, kind: Kind, spec: str, metric: str) -> float:
    units = _UNITS[kind]
    u = unit.strip()
    if u not in units:
        raise InputError(f"unit {u!r} does not fit {metric} in SLO {spec!r}; expected {_UNIT_HELP[kind]}")
    if u == "" and kind == "time" and num != 0:  # 2000 meant as ms was read as 2000 s: a gate that cannot fail
        raise InputError(f"{metric} is a latency in SLO {spec!r}: give its unit, e.g. {num:g}ms or {num:g}s")
    if u == "" and kind == "ratio" and num == 1 and metric != "rate_ratio":
        raise InputError(f"{metric} is a share in SLO {spec!r}: write 1% or 100%")
    v = num * units[u]
    if kind == "ratio" and v > 1 and metric != "rate_ratio":  # a share: 150% can never be reached or missed
        raise InputError(f"{metric} is a fraction in SLO {spec!r}: write {num:g}% or {num / 100:g}" if u == ""
                         else f"{metric} is a share of requests in SLO {spec!r}: expected at most 100%")
    if v < 0:
        raise InputError(f"expected a value >= 0 in SLO {spec!r}")
    return v


def parse_slo(spec: str) -> SLO:
    """One SLO spec -> SLO; InputError naming the spec and the expected form."""
    m = _RX.match(spec)
    if not m:
        raise InputError(f"cannot parse SLO {spec!r}; expected {_SPEC_FORM}")
    metric = m["metric"].lower()
    kinds = metric_kinds()
    if metric not in kinds:
        raise InputError(f"unknown metric {metric!r} in SLO {spec!r}; expected one of {', '.join(kinds)}")
    scope = None
    if m["scope"] is not None:
        k, sep, v = m["scope"].partition("=")
        k, v = k.strip().lower(), v.strip().strip("'\"")
        if not sep or k not in ("category", "client") or not v:
            raise InputError(f"bad scope [{m['scope']}] in SLO {spec!r}; expected [category=NAME] or [client=NAME]")
        scope = (k, v)
    kind = kinds[metric]
    value = _convert(_number(m["num"], spec, _SPEC_FORM), m["unit"], kind, spec, metric)
    return SLO(spec=spec.strip(), metric=metric, kind=kind, threshold=Threshold(_OPS[m["op"]], value), scope=scope)  # type: ignore[arg-type]


def check_slo_specs(specs: Sequence[str] | None) -> Sequence[str] | None:
    """`specs` unchanged if each parses (a model validator's check: a ValueError saying which does not)."""
    for s in specs or ():
        try:
            parse_slo(s)
        except InputError as e:
            raise ValueError(str(e)) from None
    return specs


def check_scope_names(slos: Iterable[SLO], have: dict[str, set[str]], what: str) -> None:
    """InputError for an SLO scoped to a category or client none of `what` has (`have`: the names
    of each), so a typo is said before a run or a plan, not found as a failed check after it."""
    for slo in slos:
        if slo.scope is None:
            continue
        col = "category" if slo.scope[0] == "category" else "client"
        if slo.scope[1] not in have[col]:
            names = have[col]
            some = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
            raise InputError(f"no request of {what} has {col} {slo.scope[1]!r} (they have: {some})", field=slo.spec)


def parse_request_slo(spec: str) -> RequestSLO:
    """`ttft<=2s,tpot<=100ms` -> RequestSLO; InputError naming the spec and the expected form."""
    items: list[tuple[str, Threshold]] = []
    for part in (p for p in spec.split(",") if p.strip()):
        m = _RX.match(part)
        if not m or m["scope"] is not None:
            raise InputError(f"cannot parse request SLO item {part.strip()!r} of {spec!r}; expected {_REQ_FORM}")
        metric = m["metric"].lower()
        if metric not in REQUEST_METRICS:
            raise InputError(f"unknown per-request metric {metric!r} in {spec!r}; expected one of "
                             f"{', '.join(REQUEST_METRICS)}")
        v = _convert(_number(m["num"], spec, _REQ_FORM), m["unit"], "time", spec, metric)
        items.append((metric, Threshold(_OPS[m["op"]], v)))  # type: ignore[arg-type]
    if not items:
        raise InputError(f"empty request SLO {spec!r}; expected {_REQ_FORM}")
    return RequestSLO(spec=spec.strip(), items=tuple(items))


@dataclass
class SLOSet:
    """What a gate or a plan checks: threshold SLOs and the optional per-request SLO."""

    slos: list[SLO] = field(default_factory=list)
    request: RequestSLO | None = None

    def __bool__(self) -> bool:
        return bool(self.slos)

    def specs(self) -> list[str]:
        return [s.spec for s in self.slos]

    def to_dict(self) -> dict[str, Any]:
        return {"slo": self.specs(), "request_slo": self.request.spec if self.request else None}


def load_slo_file(path: str | Path) -> tuple[list[str], str | None]:
    """(SLO specs, request SLO spec) from a YAML file.

    Accepted forms: a list of spec strings; or a mapping with `slo:` (a list of strings, or a
    mapping METRIC: "OP VALUE", e.g. `ttft_p99: "<=2s"`) and optional `request_slo:` (a string
    `ttft<=2s,tpot<=100ms` or a mapping `ttft: "<=2s"`). Other keys are ignored, so the same file
    may hold other sections, but not a key that names an SLO otherwise (`slos:`, `request_slos:`):
    a misspelt section would pass every gate unchecked.
    """
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read SLO file: {e.strerror}", path=str(p)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=str(p)) from None
    except yaml.YAMLError as e:
        raise InputError(f"invalid YAML: {str(e).splitlines()[0]}", path=str(p)) from None
    if isinstance(doc, list):
        doc = {"slo": doc}
    if not isinstance(doc, dict) or ("slo" not in doc and "request_slo" not in doc):
        raise InputError("expected a list of SLO specs, or a mapping with `slo:` (and `request_slo:`)", path=str(p))
    for key in doc:
        if "slo" in str(key).lower() and key not in ("slo", "request_slo"):
            raise InputError(f"unknown key {key!r}; expected `slo:` or `request_slo:`", path=str(p), field=str(key))

    def as_specs(v: Any, key: str, sep: str) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        if isinstance(v, dict):
            out = []
            for k, x in v.items():
                t = str(x).strip()
                out.append(f"{k}{t}" if t[:1] in "<>=" else f"{k}<={t}")
            return out
        raise InputError(f"expected a list of strings or a mapping METRIC: \"OP VALUE\"{sep}", path=str(p), field=key)

    slos = as_specs(doc.get("slo"), "slo", "")
    req = as_specs(doc.get("request_slo"), "request_slo", "")
    return slos, (",".join(req) if req else None)


def build_slos(specs: Iterable[str] = (), slo_file: str | None = None, request_slo: str | None = None) -> SLOSet:
    """Parse the command line's --slo / --slo-file / --request-slo into one SLOSet."""
    slos = [parse_slo(s) for s in specs]
    req = parse_request_slo(request_slo) if request_slo else None
    if slo_file:
        file_specs, file_req = load_slo_file(slo_file)
        try:  # an error in the file names the file
            slos = [parse_slo(s) for s in file_specs] + slos
            if req is None and file_req:
                req = parse_request_slo(file_req)
        except InputError as e:
            raise InputError(str(e), path=slo_file) from None
    out = SLOSet(slos, req)
    if out.request is None and any(s.metric in ("goodput", "goodput_ratio") for s in out.slos):
        raise InputError("goodput SLOs need a per-request SLO: add --request-slo, e.g. ttft<=2s,tpot<=100ms")
    return out


# --- goodput ---

@dataclass
class GoodputResult:
    good: int
    total: int
    rate: float | None
    ratio: float | None


def request_values(res: Results) -> dict[str, np.ndarray]:
    """Per-request ttft/e2e (as the user felt them), tpot and largest ITL gap; NaN where not ok."""
    m = stats.request_metrics(res)  # user-felt = server-side + send lag + queue time
    ok = m["ok"]
    gaps, _, row = stats.itl(res.chunk_times, res.chunk_counts, np.ones(res.n), rows=ok)
    itl_max = np.full(res.n, np.nan)
    if len(gaps):
        itl_max[ok] = 0.0
        np.fmax.at(itl_max, row, gaps)
    return {"ttft": m["user_ttft"], "e2e": m["user_e2e"], "tpot": m["tpot"], "itl": itl_max, "ok": ok}


def good_requests(res: Results, req: RequestSLO) -> np.ndarray:
    """Boolean per request: ended ok and met every item (NaN tpot/itl of 1-token answers pass)."""
    v = request_values(res)
    good = v["ok"].copy()
    for metric, th in req.items:
        x = v[metric]
        with np.errstate(invalid="ignore"):
            hold = {"<=": x <= th.value, "<": x < th.value, ">=": x >= th.value, ">": x > th.value}[th.op]
        if metric in ("tpot", "itl"):
            hold = hold | np.isnan(x)
        good &= hold
    return good


def goodput(res: Results, req: RequestSLO, duration: float) -> GoodputResult:
    """Good requests per second of `duration`, and their share of the requests (see module doc)."""
    good = good_requests(res, req)
    c = res.cols
    never_sent = (c["status"] == "cancelled") & ~np.isfinite(c["sent"])
    total = int(res.n - never_sent.sum())
    n_good = int(good.sum())
    return GoodputResult(good=n_good, total=total, rate=n_good / duration if duration > 0 else None,
                         ratio=n_good / total if total else None)


def goodput_summary(res: Results, req: RequestSLO) -> Goodput:
    """The goodput block of `report` and `gate`: the request SLO, good and judged requests, rate
    (good per second of the run's span, `stats.Spans`) and ratio."""
    g = goodput(res, req, stats.Spans.of(res).duration)
    return Goodput(request_slo=req.spec, good=g.good, total=g.total, rate=g.rate, ratio=g.ratio)


def goodput_line(g: Goodput) -> str:
    ratio = "-" if g.ratio is None else f"{g.ratio * 100:.1f}%"
    rate = "-" if g.rate is None else f"{g.rate:.3g} req/s"
    return f"goodput: {rate}; {g.good} of {g.total} requests ({ratio}) met {g.request_slo}"


# --- evaluation ---

@dataclass
class Check:
    """One evaluated SLO: the value found, whether it holds, and a note when it could not be judged."""

    slo: SLO
    value: float | None
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"slo": self.slo.spec, "metric": self.slo.metric, "scope": self.slo.scope_label,
                "op": self.slo.threshold.op, "threshold": self.slo.threshold.value, "value": self.value,
                "passed": self.passed, "note": self.note}


def scope_mask(res: Results, scope: tuple[str, str] | None) -> np.ndarray:
    if scope is None:
        return np.ones(res.n, dtype=bool)
    col = res.cols[scope[0]]
    return np.array([str(x) == scope[1] for x in col], dtype=bool) if res.n else np.zeros(0, dtype=bool)


def scope_values(res: Results, scope: tuple[str, str] | None, request: RequestSLO | None,
                 lag_threshold: float = stats.DEFAULT_LAG_THRESHOLD) -> tuple[dict[str, float | None], int]:
    """Metric values over one scope's requests, and how many requests the scope holds."""
    sub = select(res, scope_mask(res, scope))
    summary = stats.summary(sub, lag_threshold=lag_threshold, spans=stats.Spans.of(res))  # the run's spans
    good = goodput(sub, request, summary.duration_s) if request is not None else None
    return metric_values(summary, good), sub.n


def evaluate(res: Results, slos: SLOSet, lag_threshold: float = stats.DEFAULT_LAG_THRESHOLD) -> list[Check]:
    """Every SLO of `slos` on `res` (one summary per scope). A metric with no value fails."""
    cache: dict[Any, tuple[dict[str, float | None], int]] = {}
    out = []
    for slo in slos.slos:
        if slo.scope not in cache:
            cache[slo.scope] = scope_values(res, slo.scope, slos.request, lag_threshold)
        vals, n = cache[slo.scope]
        v = vals.get(slo.metric)
        if n == 0:
            out.append(Check(slo, None, False, f"no requests in scope {slo.scope_label}"))
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(Check(slo, None, False, "no value (no successful requests?)"))
        else:
            out.append(Check(slo, float(v), slo.threshold.holds(float(v))))
    return out


# --- formatting ---

def format_value(v: float | None, kind: Kind) -> str:
    """A value in the unit a person reads it in: ms/s for latencies, % for ratios, req/s, tok/s."""
    if v is None:
        return "-"
    if kind == "time":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.0f} us"
        if a < 1:
            return f"{v * 1e3:.3g} ms" if a < 0.01 else f"{v * 1e3:.0f} ms"
        return f"{v:.3g} s"
    if kind == "ratio":
        return f"{v * 100:.3g}%"
    if kind == "rate":
        return f"{v:.3g} req/s"
    return f"{v:.4g} tok/s"


def format_threshold(slo: SLO) -> str:
    return f"{slo.threshold.op} {format_value(slo.threshold.value, slo.kind)}"


def parse_fraction(text: str | float, field: str) -> float:
    """`10%` or `0.1` -> 0.1 (for --max-regression, --headroom, --confidence)."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"expected a percentage like 10% or a fraction like 0.1, got {text!r}", field=field) from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"expected a percentage >= 0, got {text!r}", field=field)
    if v > 1 and not s.endswith("%"):  # `10` meant 10 %, not 1000 %: say which
        raise InputError(f"expected a percentage like {s}% or a fraction like {v / 100:g}, got {text!r}", field=field)
    return v
