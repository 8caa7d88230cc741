"""Text rendering of a capacity plan (`plan`'s capacity.json): the curve, the capacity, the knee.

The results summary's text rendering lives in `metrics.render` (shared with `run`).
"""

from __future__ import annotations

import sys
from typing import Any


def _f(v: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _curve_lines(p: dict[str, Any]) -> list[str]:
    steps = p["steps"]
    if not steps:
        return ["  (no steps)"]
    labels = list(steps[0]["metrics"])
    head = ["scale", "planned", "offered", "served", *labels, "result"]
    rows = []
    for s in steps:
        vals = []
        for c in s["checks"]:
            v = c["value"]
            vals.append("-" if v is None else _value(v, c))
        rows.append([_f(s["scale"], "{:.4g}"), _f(s["rate"]), _f(s["offered_rate"]), _f(s["served_rate"]),
                     *vals, ("PASS" if s["passed"] else "FAIL") + (" sat" if s["saturated"] else "")])
    width = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  " + "  ".join(f"{{:>{w}}}" for w in width)
    return [fmt.format(*head), *(fmt.format(*r) for r in rows)]


def _value(v: float, check: dict[str, Any]) -> str:
    from ..slo import format_value, metric_kinds

    return format_value(v, metric_kinds().get(check["metric"], "time"))


def _plan_lines(title: str, p: dict[str, Any]) -> list[str]:
    cap, knee = p["capacity"], p["knee"]
    lines = [f"{title}: {p['kind']} scenario, {p['base_rate']:.3g} req/s at scale 1"]
    lines += _curve_lines(p)
    if cap["scale"] is None:
        lines.append("  max sustainable rate: none (even the smallest scale tried failed an SLO)")
    else:
        bracket = f"; fails at {cap['failing_rate']:.3g} req/s" if cap["failing_rate"] is not None else ""
        planned = f", planned {cap['planned_rate']:.3g}" if cap.get("planned_rate") is not None else ""
        lines.append(f"  max sustainable rate: {cap['rate']:.3g} req/s offered (scale {cap['scale']:.4g}{planned})"
                     f"{bracket}"
                     f"{'' if cap['converged'] else ' (search not converged)'}")
    if knee["reached"]:
        lines.append(f"  knee (saturation throughput): {knee['rate']:.3g} req/s (scale {knee['scale']:.4g})")
    else:
        lines.append(f"  knee: not reached (no step saturated; largest served rate "
                     f"{_f(knee['max_served_rate'])} req/s)")
    sim = p.get("simulator")
    if sim and sim.get("saturation_rate"):
        sr = sim["saturation_rate"]
        lines.append(f"  simulator {sim['preset']} x{sim['time_scale']:g}: analytic saturation "
                     f"{sr['requests_per_second']:.3g} req/s at {sr['mean_prompt_tokens']:.0f} prompt / "
                     f"{sr['mean_output_tokens']:.0f} output tokens")
    return lines


def render_capacity(doc: dict[str, Any]) -> str:
    """Plain text of a capacity document."""
    slo = doc["slo"]
    lines = [f"capacity plan of {doc['scenario']}: SLOs {', '.join(slo['slo'])}"
             + (f"; request SLO {slo['request_slo']}" if slo.get("request_slo") else ""),
             "(planned = scale x the scenario's mean rate; offered = requests scheduled per second in the "
             "measured window; served = first tokens per second)"]
    lines += _plan_lines("realistic" if "naive" in doc else "plan", doc["plan"])
    if "naive" in doc:
        lines += _plan_lines("naive baseline", doc["naive"])
        c = doc["comparison"]
        if c["ratio"] is not None and c.get("under_provisioning") is not None:
            under = c["under_provisioning"]
            lines.append(f"naive vs realistic: {c['naive_rate']:.3g} vs {c['realistic_rate']:.3g} req/s = "
                         f"{c['ratio']:.2f}x; sizing by the naive benchmark "
                         + (f"under-provisions by {under * 100:.0f}%" if under >= 0
                            else f"over-provisions by {-under * 100:.0f}%"))
        else:
            lines.append(f"naive vs realistic: {c['naive_rate']:.3g} vs {c['realistic_rate']:.3g} req/s")
    r = doc.get("replicas")
    if r:
        n = r["replicas"]
        extra = ""
        if "comparison" in doc and doc["comparison"].get("naive_replicas") is not None:
            extra = f" (the naive benchmark would say {doc['comparison']['naive_replicas']})"
        lines.append(f"replicas for a peak of {r['peak_rate']:g} req/s with {r['headroom'] * 100:g}% headroom: "
                     f"{'-' if n is None else n}{extra}")
    return "\n".join(lines)


def print_capacity(doc: dict[str, Any], file: Any = None) -> None:
    print(render_capacity(doc), file=file or sys.stdout, flush=True)
