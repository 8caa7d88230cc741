"""The CI gate: SLO checks and regression checks against a baseline, as one verdict and exit code.

Exit codes: 0 every check holds; 1 an SLO or a regression check failed; 2 bad input (the CLI's
InputError path).

Regression test (why it does not flake). For each compared percentile metric (default TTFT, TPOT
and E2E at p50/p90/p99, over ok requests) we estimate the ratio R = q(current) / q(baseline) and
its bootstrap confidence interval: `BOOTSTRAP_RESAMPLES` (1000) resamples of each side's
requests, drawn with replacement independently (numpy, one seeded generator, vectorised as a
(resamples x n) index matrix), give 1000 ratios; the CI is their (alpha/2, 1 - alpha/2)
percentiles (95% by default). The check fails only when the CI's lower bound exceeds
1 + max_regression: the slowdown is larger than allowed with ~97.5% one-sided confidence.
Two runs of one configuration have R near 1, far below the bound; a 30% slowdown moves the
whole CI above 1.1 for the central percentiles. Sides larger than `MAX_BOOTSTRAP_N` are first
subsampled without replacement (seeded), which only widens the CI (more conservative).

The baseline is a summary JSON written by `servegen-load report RESULTS --json -o baseline.json`,
which carries a compact per-request sample (`samples`, see `latency_samples`: at most
`SAMPLE_ROWS` ok requests, µs-rounded, with their scheduled time so `--warmup` applies to both
sides) — or a results JSONL file itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .formats import EXIT_FAIL, SAMPLES_FORMAT
from .formats import EXIT_OK as EXIT_PASS
from .metrics import stats
from .metrics.summary import Goodput
from .report.related import check_mergeable
from .results import Results, missing_shards, read_results
from .slo import Check, SLOSet, after_warmup, check_scope_names, evaluate, format_threshold, format_value

SAMPLE_ROWS = 2000
SAMPLE_COLUMNS = ("scheduled", "ttft", "tpot", "e2e", "user_ttft", "user_e2e")
BOOTSTRAP_RESAMPLES = 1000
MAX_BOOTSTRAP_N = 4000
MIN_SAMPLES = 20
DEFAULT_METRICS = tuple(f"{m}_p{p}" for m in ("ttft", "tpot", "e2e") for p in (50, 90, 99))
SEED = 20240601



# --- per-request samples (the baseline's payload) ---

def request_latencies(res: Results) -> dict[str, np.ndarray]:
    """Per ok request: scheduled, ttft, tpot, e2e, user_ttft, user_e2e (the stats definitions)."""
    m = stats.request_metrics(res)
    ok = m["ok"]
    return {"scheduled": res.cols["scheduled"][ok],
            **{k: m[k][ok] for k in ("ttft", "tpot", "e2e", "user_ttft", "user_e2e")}}


def latency_samples(res: Results, max_rows: int = SAMPLE_ROWS, seed: int = SEED) -> dict[str, Any]:
    """A compact, JSON-ready sample of per-request latencies for later bootstrap comparisons.

    At most `max_rows` ok requests drawn uniformly without replacement (seeded), in schedule
    order, every value rounded to the µs (the results' own precision); NaN (no TPOT for a
    one-token answer) becomes null. About 40 KB at the default size.
    """
    cols = request_latencies(res)
    n = len(cols["scheduled"])
    keep = np.arange(n)
    if n > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    out: dict[str, list[float | None]] = {}
    for k in SAMPLE_COLUMNS:
        v = np.round(cols[k][keep] * 1e6) / 1e6
        out[k] = [None if not math.isfinite(x) else x for x in v.tolist()]
    return {"format": SAMPLES_FORMAT, "n_ok": n, "rows": len(keep), "columns": out}


def samples_from_dict(d: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    if not isinstance(d, dict) or d.get("format") != SAMPLES_FORMAT or not isinstance(d.get("columns"), dict):
        raise InputError(f"expected `samples` of format {SAMPLES_FORMAT!r}", path=where, field="samples")
    cols = {}
    for k in SAMPLE_COLUMNS:
        v = d["columns"].get(k)
        if not isinstance(v, list):
            raise InputError("expected a list of numbers", path=where, field=f"samples.columns.{k}")
        try:
            cols[k] = np.array([np.nan if x is None else x for x in v], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("expected a list of numbers", path=where, field=f"samples.columns.{k}") from None
    if len({len(v) for v in cols.values()}) != 1:
        raise InputError("sample columns differ in length", path=where, field="samples.columns")
    return cols


def load_baseline(path: str, warmup: float = 0.0) -> dict[str, np.ndarray]:
    """Per-request latency columns of a baseline: a summary JSON with `samples`, or a results file
    (of a whole run; a JSON's warm-up no longer than the gate's)."""
    from .formats import sniff

    p = Path(path)
    try:
        kind = sniff(p)
    except OSError as e:
        raise InputError(f"cannot read baseline: {e.strerror}", path=str(p)) from None
    if kind in ("missing", "directory"):
        raise InputError("cannot read baseline: " + ("no such file" if kind == "missing" else "a directory"),
                         path=str(p))
    if kind == "results":
        base = read_results(p)
        why = whole_run_gap(base)
        if why:  # a baseline of part of a run (135 of 175 cancelled) compares with nothing real
            raise InputError(f"the baseline is not a whole run ({why})", path=str(p))
        return request_latencies(base)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"expected a summary JSON (report --json -o) or a results file ({e})", path=str(p)) from None
    if not isinstance(doc, dict) or "samples" not in doc:
        raise InputError("baseline has no per-request `samples`; write it with "
                         "`servegen-load report RESULTS --json -o baseline.json`, or pass the results file",
                         path=str(p))
    why = doc["samples"].get("incomplete") if isinstance(doc["samples"], dict) else None
    if why:  # `report PART --json -o` of a cut or interrupted run
        raise InputError(f"the baseline is not a whole run ({why})", path=str(p))
    base_warmup = float(doc.get("warmup_s") or 0.0)
    if base_warmup > warmup:
        raise InputError(f"the baseline left out its first {base_warmup:g} s (report --warmup); give gate "
                         f"--warmup {base_warmup:g} too, or both sides are not the same part of a run", path=str(p))
    return samples_from_dict(doc["samples"], str(p))


# --- bootstrap ---

def _bootstrap_quantiles(x: np.ndarray, q: float, rng: np.random.Generator, b: int) -> np.ndarray:
    if len(x) > MAX_BOOTSTRAP_N:
        x = rng.choice(x, size=MAX_BOOTSTRAP_N, replace=False)
    idx = rng.integers(0, len(x), size=(b, len(x)))
    return np.percentile(x[idx], q, axis=1)


def ratio_ci(current: np.ndarray, baseline: np.ndarray, q: float, *, confidence: float = 0.95,
             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """(point ratio, CI low, CI high) of percentile q (0-100) of current over baseline."""
    rng = np.random.default_rng(seed)
    cur, base = current[np.isfinite(current)], baseline[np.isfinite(baseline)]
    point = float(np.percentile(cur, q) / np.percentile(base, q))
    rc = _bootstrap_quantiles(cur, q, rng, resamples)
    rb = _bootstrap_quantiles(base, q, rng, resamples)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = rc / rb
    a = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(ratios, [a, 100 - a])
    return point, float(lo), float(hi)


@dataclass
class Regression:
    metric: str
    baseline: float | None
    current: float | None
    ratio: float | None
    lo: float | None
    hi: float | None
    limit: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("metric", "baseline", "current", "ratio", "lo", "hi", "limit",
                                                "passed", "note")}


def parse_metric(name: str) -> tuple[str, float]:
    col, _, p = name.rpartition("_p")
    if col not in SAMPLE_COLUMNS[1:] or not p.isdigit() or not 0 < int(p) < 100:
        raise InputError(f"cannot compare {name!r}; expected <metric>_p<N> with metric one of "
                         f"{', '.join(SAMPLE_COLUMNS[1:])}, e.g. ttft_p99", field="--metric")
    return col, float(p)


def compare(current: dict[str, np.ndarray], baseline: dict[str, np.ndarray], *, max_regression: float,
            metrics: tuple[str, ...] = DEFAULT_METRICS, confidence: float = 0.95,
            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> list[Regression]:
    """Bootstrap regression checks of each percentile metric (see the module docstring)."""
    limit = 1 + max_regression
    out = []
    for i, name in enumerate(metrics):
        col, q = parse_metric(name)
        cur = current[col][np.isfinite(current[col])]
        base = baseline[col][np.isfinite(baseline[col])]
        if len(cur) < MIN_SAMPLES:  # an outage measures nothing: it must not pass as "no regression"
            out.append(Regression(name, None, None, None, None, None, limit, False,
                                  f"failed: {len(cur)} current samples (< {MIN_SAMPLES}): too few ok requests to "
                                  "compare (an outage, or a run too short)"))
            continue
        if len(base) < MIN_SAMPLES:
            out.append(Regression(name, None, None, None, None, None, limit, True,
                                  f"skipped: {len(base)} baseline samples (< {MIN_SAMPLES})"))
            continue
        qb, qc = float(np.percentile(base, q)), float(np.percentile(cur, q))
        if qb <= 0:
            out.append(Regression(name, qb, qc, None, None, None, limit, True, "skipped: baseline value is 0"))
            continue
        point, lo, hi = ratio_ci(cur, base, q, confidence=confidence, resamples=resamples, seed=seed + i)
        out.append(Regression(name, qb, qc, point, lo, hi, limit, not lo > limit))
    return out


# --- the gate ---

@dataclass
class GateResult:
    checks: list[Check] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    n_requests: int = 0
    warmup: float = 0.0
    confidence: float = 0.95
    goodput: Goodput | None = None  # `slo.goodput_summary` when a per-request SLO was given
    incomplete: str | None = None  # why the results are not a whole run (`whole_run_gap`): a failed check

    @property
    def passed(self) -> bool:
        return (self.incomplete is None and all(c.passed for c in self.checks)
                and all(r.passed for r in self.regressions))

    @property
    def failed(self) -> list[str]:
        return ([f"whole run ({self.incomplete})"] if self.incomplete else []) + \
            [c.slo.spec for c in self.checks if not c.passed] + \
            [f"{r.metric} regression" for r in self.regressions if not r.passed]

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed else EXIT_FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "requests": self.n_requests, "warmup_s": self.warmup,
                "incomplete": self.incomplete,
                "checks": [c.to_dict() for c in self.checks],
                "regressions": [r.to_dict() for r in self.regressions], "failed": self.failed,
                "goodput": None if self.goodput is None else asdict(self.goodput)}


def run_gate(paths: list[str], slos: SLOSet, *, baseline: str | None = None, max_regression: float = 0.10,
             warmup: float = 0.0, metrics: tuple[str, ...] = DEFAULT_METRICS, confidence: float = 0.95,
             lag_threshold: float = stats.DEFAULT_LAG_THRESHOLD,
             merge_unrelated: bool = False) -> GateResult:
    """Evaluate the SLOs and (with a baseline) the regression checks on the merged results."""
    if not slos and slos.request is None and baseline is None:
        raise InputError("nothing to check: give --slo/--slo-file, --request-slo and/or --baseline")
    if not 0 < confidence < 1:
        raise InputError(f"expected a confidence in (0, 1), got {confidence:g}", field="--confidence")
    if max_regression < 0:
        raise InputError("expected a regression allowance >= 0", field="--max-regression")
    for m in metrics:
        parse_metric(m)
    res = read_results(*paths)
    check_mergeable(res, merge_unrelated)  # shards merge only if disjoint
    check_scopes(res, slos)
    incomplete = whole_run_gap(res)
    res = after_warmup(res, warmup)
    out = GateResult(n_requests=res.n, warmup=warmup, confidence=confidence, incomplete=incomplete)
    out.checks = evaluate(res, slos, lag_threshold=lag_threshold)
    if slos.request is not None:
        from .slo import goodput_summary

        out.goodput = goodput_summary(res, slos.request)
    if baseline is not None:
        base = load_baseline(baseline, warmup)
        if warmup:
            keep = base["scheduled"] >= warmup
            base = {k: v[keep] for k, v in base.items()}
        out.regressions = compare(request_latencies(res), base, max_regression=max_regression, metrics=metrics,
                                  confidence=confidence)
    return out


def check_scopes(res: Results, slos: SLOSet) -> None:
    """A scope no request of the results has is a typo, not a failed check (`[category=lang]` for
    `language` failed every gate, exit 1, as if the server had missed it)."""
    if res.n:
        check_scope_names(slos.slos, {k: set(map(str, res[k].tolist())) for k in ("category", "client")},
                          "the results")


def whole_run_gap(res: Results) -> str | None:
    """Why these results are not a whole run, if they are not: a gate passed on the part of a run
    that an interruption or a kill left would pass what was never measured."""
    never = [p for p, h in zip(res.paths, res.headers, strict=True) if h.get("complete") is False]
    if never:
        return f"{never[0]} was never closed: the run was killed or is still running"
    cut = [(p, h) for p, h in zip(res.paths, res.headers, strict=True) if h.get("missing")]
    if cut:
        p, h = cut[0]
        return f"{p} lacks {h['missing']} of its {h['lines']} result lines: the file was cut"
    gap = missing_shards(res.headers)
    if gap:
        return gap
    status = res["status"]
    for st, why in (("cancelled", "the run was interrupted"), ("lost", "a worker died")):
        n = int(np.count_nonzero(status == st))
        if n:
            return f"{n} of {res.n} requests {st}: {why}"
    return None


# --- rendering ---

def _rows(g: GateResult) -> tuple[list[list[str]], list[list[str]]]:
    slo_rows = [[c.slo.metric, c.slo.scope_label, format_value(c.value, c.slo.kind), format_threshold(c.slo),
                 "PASS" if c.passed else "FAIL", c.note] for c in g.checks]
    reg_rows = []
    for r in g.regressions:
        if r.ratio is None:
            reg_rows.append([r.metric, "-", "-", "-", "-", f"<= {r.limit:.2f}", "PASS" if r.passed else "FAIL", r.note])
        else:
            reg_rows.append([r.metric, format_value(r.baseline, "time"), format_value(r.current, "time"),
                             f"{r.ratio:.3f}", f"[{r.lo:.3f}, {r.hi:.3f}]", f"lo <= {r.limit:.2f}",
                             "PASS" if r.passed else "FAIL", r.note])
    return slo_rows, reg_rows


SLO_HEAD = ["metric", "scope", "value", "threshold", "result", "note"]
REG_HEAD = ["metric", "baseline", "current", "ratio", "CI", "limit", "result", "note"]


def _plain_table(head: list[str], rows: list[list[str]]) -> list[str]:
    width = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in width)
    return [fmt.format(*head).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def verdict_line(g: GateResult) -> str:
    n = len(g.checks) + len(g.regressions) + (g.incomplete is not None)
    if g.passed:
        if n == 0:
            return f"gate: PASS (no SLO or baseline to check; goodput of {g.n_requests} requests reported)"
        return f"gate: PASS ({n} checks on {g.n_requests} requests)"
    return f"gate: FAIL ({len(g.failed)} of {n} checks failed: {', '.join(g.failed)})"


def render_text(g: GateResult) -> str:
    """Plain lines for CI logs: the SLO table, the regression table, the verdict."""
    slo_rows, reg_rows = _rows(g)
    lines = []
    if g.warmup:
        lines.append(f"warm-up: requests scheduled before {g.warmup:g} s excluded")
    if slo_rows:
        lines += ["SLO checks", *_plain_table(SLO_HEAD, slo_rows), ""]
    if reg_rows:
        lines += [f"regression vs baseline ({g.confidence * 100:g}% bootstrap CI of current/baseline)",
                  *_plain_table(REG_HEAD, reg_rows), ""]
    if g.goodput is not None:
        from .slo import goodput_line

        lines.append(goodput_line(g.goodput))
    lines.append(verdict_line(g))
    return "\n".join(lines)


def render_rich(g: GateResult) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    slo_rows, reg_rows = _rows(g)
    parts: list[Any] = []

    def table(title: str, head: list[str], rows: list[list[str]], res_col: int) -> Table:
        t = Table(title=title, title_justify="left")
        for h in head:
            t.add_column(h, justify="left" if h in ("metric", "scope", "note") else "right")
        for r in rows:
            cells = [escape(x) for x in r]
            cells[res_col] = f"[bold green]{r[res_col]}[/]" if r[res_col] == "PASS" else f"[bold red]{r[res_col]}[/]"
            t.add_row(*cells)
        return t

    if g.warmup:
        parts.append(Text(f"warm-up: requests scheduled before {g.warmup:g} s excluded"))
    if slo_rows:
        parts.append(table("SLO checks", SLO_HEAD, slo_rows, 4))
    if reg_rows:
        parts.append(table(f"regression vs baseline ({g.confidence * 100:g}% bootstrap CI of current/baseline)",
                           REG_HEAD, reg_rows, 6))
    if g.goodput is not None:
        from .slo import goodput_line

        parts.append(Text(goodput_line(g.goodput)))
    parts.append(Text(verdict_line(g), style="bold green" if g.passed else "bold red"))
    return Group(*parts)


def print_gate(g: GateResult, as_json: bool = False) -> None:
    import sys

    if as_json:
        print(json.dumps(g.to_dict(), indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(render_rich(g))
    else:
        print(render_text(g), flush=True)
