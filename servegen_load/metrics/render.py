"""The run summary (`metrics.summary.Summary`, or its JSON dict) as text: a rich table on a
terminal, plain lines otherwise."""

from __future__ import annotations

from typing import Any

from .summary import Summary

_LAT_ROWS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"),
             ("user_ttft", "user-felt TTFT"), ("user_e2e", "user-felt E2E"),
             ("send_lag", "send lag"), ("queue_time", "queue time"))
_COLS = ("p50", "p90", "p99", "max", "mean")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    v *= 1e3
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 10000 else f"{v:.0f}"


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _head_lines(s: Summary) -> list[str]:
    r, tp, fi = s.requests, s.throughput, s.fidelity
    errs = ", ".join(f"{k} {v}" for k, v in r.by_status.items() if v and k != "ok") or "none"
    lines = [
        f"requests: {r.scheduled} scheduled, {r.sent} sent, {r.ok} ok; not ok: {errs}"
        + (f"; {r.retries} retries ({r.retried} requests)" if r.retries else ""),
        f"duration {s.duration_s:.2f} s; throughput {_num(tp.requests_per_s)} req/s, "
        f"{_num(tp.output_tokens_per_s, '{:.1f}')} output tok/s, {_num(tp.input_tokens_per_s, '{:.1f}')} input tok/s",
        f"rate: scheduled {_num(fi.scheduled_rate)} req/s, achieved {_num(fi.achieved_rate)} req/s "
        f"(ratio {_num(fi.rate_ratio, '{:.4f}')})"
        + (f"; interrupted: the {r.due} requests due before the stop, of {r.scheduled}" if r.due != r.scheduled
           else ""),
    ]
    it = s.intended
    if it:
        lines.insert(0, f"scenario: {it['source']}: intended {it['requests']:g} requests "
                        f"({_num(it['rate'])} req/s over {it['duration']:g} s); scheduled {r.scheduled}")
    cats = fi.by_category
    if len(cats) > 1:
        lines.append("by category: " + "; ".join(
            f"{c} {v.scheduled} sched {_num(v.scheduled_rate)}/s -> {_num(v.achieved_rate)}/s"
            for c, v in cats.items()))
    pt, ct = fi.prompt_tokens, fi.completion_tokens
    if pt:
        lines.append(f"prompt tokens vs intended: mean error {pt['mean_rel_error'] * 100:+.2f}%, "
                     f"exact {pt['exact'] * 100:.1f}% (n={pt['n']})")
    if ct:
        lines.append(f"completion tokens vs intended: mean error {ct['mean_rel_error'] * 100:+.2f}%, "
                     f"exact {ct['exact'] * 100:.1f}% (n={ct['n']})")
    from ..content.stats import summary_lines  # payload hook: prompt error, cache, reasoning, sessions

    lines += summary_lines(s.to_dict())
    lines += error_lines(s)
    g = s.goodput
    if g:
        ratio = "-" if g.ratio is None else f"{g.ratio * 100:.1f}%"
        lines.append(f"goodput: {_num(g.rate, '{:.3g}')} req/s; {g.good} of {g.total} requests ({ratio}) "
                     f"met {g.request_slo}")
    for c in s.slo or []:
        lines.append(f"SLO {c['slo']}: {'PASS' if c['passed'] else 'FAIL'} (value {_num(c['value'], '{:.4g}')})"
                     + (f" {c['note']}" if c["note"] else ""))
    if s.warmup_s:
        lines.append(f"warm-up: requests scheduled before {s.warmup_s:g} s excluded")
    return lines


def error_lines(s: Summary) -> list[str]:
    """Errors grouped by status, HTTP code and normalised message (`metrics.stats.error_groups`)."""
    if not s.errors:
        return []
    out = ["errors (count, status, HTTP code, message with numbers as N):"]
    for g in s.errors:
        code = "-" if g.http_status is None else str(g.http_status)
        out.append(f"  {g.count:>6}  {g.status:<12} {code:>4}  {g.message[:120]}")
    return out


def render_text(summary: Summary | dict[str, Any]) -> str:
    """Plain text: header lines, one latency line per metric (ms), warnings last."""
    s = Summary.of(summary)
    lines = _head_lines(s)
    lines.append("latency (ms)        " + "".join(f"{c:>10}" for c in _COLS) + "         n")
    for key, label in _LAT_ROWS:
        d = s.latency[key]
        lines.append(f"  {label:<18}" + "".join(f"{_ms(d.stat(c)):>10}" for c in _COLS) + f"{d.n:>10}")
    for w in s.warnings:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def render_rich(summary: Summary | dict[str, Any]) -> Any:
    """A rich renderable: the header lines, a latency table, warnings in bold red."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = Summary.of(summary)
    t = Table(title="latency (ms)", title_justify="left")
    t.add_column("metric")
    for c in (*_COLS, "n"):
        t.add_column(c, justify="right")
    for key, label in _LAT_ROWS:
        d = s.latency[key]
        t.add_row(label, *(_ms(d.stat(c)) for c in _COLS), str(d.n))
    parts: list[Any] = [Text(line) for line in _head_lines(s)]
    parts.append(t)
    parts.extend(Text(f"WARNING: {w}", style="bold red") for w in s.warnings)
    return Group(*parts)


def print_summary(s: Summary | dict[str, Any], file: Any = None) -> None:
    """Rich on a terminal, plain text otherwise."""
    import sys

    out = file or sys.stdout
    if out.isatty():
        from rich.console import Console

        Console(file=out).print(render_rich(s))
    else:
        print(render_text(s), file=out, flush=True)
