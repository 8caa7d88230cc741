"""Self-contained HTML pages: the results report and the capacity plan, plots inlined as SVG.

One file, inline CSS, no scripts, no external reference: it opens offline and can be attached
to a CI run as it is. The numbers come from `metrics.stats` (the summary) and `slo`; this module
only lays them out. Plots are in `plots` (matplotlib, imported here lazily by the callers).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from ..metrics import stats
from ..metrics.summary import ErrorGroup, Summary
from ..results import Results
from ..slo import format_value, metric_kinds, select
from . import plots

TOP_CLIENTS = 15

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.meta{color:#555;margin-top:0} code{font-size:12px;background:#f4f4f4;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 6px;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#fafafa} td:first-child,th:first-child{text-align:left;white-space:nowrap}
.warn{color:#a40000;font-weight:600} .pass{color:#17702a;font-weight:600} .fail{color:#a40000;font-weight:600}
figure{margin:10px 0} figure svg{width:100%;max-width:1000px;height:auto} .cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #e2e2e2;border-radius:6px;padding:8px 14px;min-width:120px} .card b{display:block;font-size:18px}
.card span{color:#666;font-size:12px} pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}
.wide{max-width:100%;overflow-x:auto} td.msg{text-align:left;white-space:normal;overflow-wrap:anywhere;max-width:640px}
"""

_LAT_ROWS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"), ("user_ttft", "user-felt TTFT"),
             ("user_e2e", "user-felt E2E"), ("send_lag", "send lag"), ("queue_time", "queue time"))


def _e(x: Any) -> str:
    return html.escape(str(x))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}" if abs(v) < 10 else f"{v * 1e3:.0f}"


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _page(title: str, body: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _figure(svg: str, caption: str) -> str:
    return f'<figure>{svg}<figcaption class="meta">{_e(caption)}</figcaption></figure>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _error_table(groups: list[ErrorGroup]) -> str:
    """Errors grouped by status, HTTP code and normalised message (`stats.error_groups`); long
    messages wrap inside the page."""
    rows = "".join(f"<tr><td>{g.count}</td><td>{_e(g.status)}</td>"
                   f"<td>{'-' if g.http_status is None else g.http_status}</td>"
                   f"<td class=\"msg\">{_e(g.message)}</td></tr>" for g in groups)
    return ('<div class="wide"><table><thead><tr><th>requests</th><th>status</th><th>HTTP</th>'
            f"<th>message (numbers as N)</th></tr></thead><tbody>{rows}</tbody></table></div>")


def content_sections(summary: Summary | dict[str, Any]) -> list[str]:
    """The prefix-cache, reasoning and sessions sections the text summary has (`content.stats`)."""
    summary = Summary.of(summary)
    out: list[str] = []
    ca = summary.cache
    if ca:
        out.append("<h2>Prefix cache</h2>")
        out.append(_table(["cached prompt tokens", "of prompt tokens", "share", "requests hit", "of requests"],
                          [[f"{ca['cached_tokens']:.0f}", f"{ca['prompt_tokens']:.0f}",
                            "-" if ca["share"] is None else f"{ca['share'] * 100:.1f}%", str(ca["hit_requests"]),
                            str(ca["n"])]]))
    re_ = summary.reasoning
    if re_:
        fa = summary.latency["first_answer"]
        out.append("<h2>Reasoning</h2>")
        out.append(_table(["requests", "reasoning tokens / request", "answer tokens / request", "source",
                           "first answer p50 ms", "first answer p99 ms"],
                          [[str(re_["n"]), f"{re_['mean_reasoning_tokens']:.1f}", f"{re_['mean_answer_tokens']:.1f}",
                            _e(re_["source"]), _ms(fa.p50), _ms(fa.p99)]]))
    se = summary.sessions
    if se:
        d = se["duration"]
        out.append("<h2>Sessions</h2>")
        out.append(_table(["sessions", "turns", "duration p50 s", "duration p99 s", "turns sent early"],
                          [[str(se["sessions"]), str(se["requests"]), _num(d["p50"]), _num(d["p99"]),
                            str(se["early_turns"])]]))
        out.append(_table(["turn", "TTFT p50 ms", "TTFT p99 ms", "n"],
                          [[_e(k), _ms(v["p50"]), _ms(v["p99"]), str(v["n"])] for k, v in se["ttft_by_turn"].items()]))
    return out


def _group_row(name: str, s: Summary) -> list[str]:
    r, lat, fi = s.requests, s.latency, s.fidelity
    return [_e(name), str(r.scheduled), str(r.ok), str(r.errors), _num(fi.scheduled_rate),
            _num(fi.achieved_rate), _ms(lat["ttft"].p50), _ms(lat["ttft"].p99), _ms(lat["tpot"].p50),
            _ms(lat["e2e"].p50), _ms(lat["e2e"].p99), _num(s.throughput.output_tokens_per_s, "{:.0f}")]


_GROUP_HEAD = ["", "requests", "ok", "errors", "sched req/s", "sent req/s", "TTFT p50 ms", "TTFT p99 ms",
               "TPOT p50 ms", "E2E p50 ms", "E2E p99 ms", "out tok/s"]


def _groups(res: Results, col: str, names: list[str]) -> list[tuple[str, Summary]]:
    values = res.cols[col].astype(str) if res.n else np.zeros(0, dtype=str)
    spans = stats.Spans.of(res)  # a group's rates are shares of the run's, over the run's spans
    return [(n, stats.summary(select(res, values == n), spans=spans)) for n in names]


def results_html(res: Results, summary: Summary | dict[str, Any]) -> str:
    """The results report: summary cards and tables, then the plots (see the module docstring)."""
    c = res.cols
    sched, sent, first, last = c["scheduled"], c["sent"], c["first_token"], c["last_token"]
    m = stats.request_metrics(res)
    ok, toks, ttft, e2e, tpot, lag = m["ok"], m["tokens"], m["ttft"], m["e2e"], m["tpot"], m["send_lag"]
    user_ttft, user_e2e = m["user_ttft"], m["user_e2e"]

    times = np.concatenate([sched, sent, first, last])
    times = times[np.isfinite(times)]
    t0 = float(min(0.0, times.min())) if len(times) else 0.0
    t1 = float(times.max()) if len(times) else 1.0
    target = int(np.clip(res.n / 10, 8, 60))  # about 10+ requests per bin, at most 60 bins
    edges = plots.edges_for(t0, max(t1, t0 + 1e-3), plots.bin_width(t1 - t0, target))

    summary = Summary.of(summary)
    r, tp, fi, lat = summary.requests, summary.throughput, summary.fidelity, summary.latency
    warm = (f" &middot; requests scheduled in the first {summary.warmup_s:g} s left out (warm-up)"
            if summary.warmup_s else "")
    body = [f"<h1>servegen-load report</h1><p class=\"meta\">{_e(', '.join(summary.sources))}"
            f" &middot; endpoint <code>{_e(summary.endpoint)}</code> &middot; model "
            f"<code>{_e(summary.model)}</code>{warm}</p>"]
    cards = [("requests", f"{r.scheduled}"), ("ok", f"{r.ok}"), ("errors", f"{r.errors}"),
             ("duration", f"{summary.duration_s:.1f} s"), ("throughput", f"{_num(tp.requests_per_s)} req/s"),
             ("output", f"{_num(tp.output_tokens_per_s, '{:.0f}')} tok/s"),
             ("TTFT p99", format_value(lat["ttft"].p99, "time")),
             ("TPOT p50", format_value(lat["tpot"].p50, "time")),
             ("rate achieved/scheduled", _num(fi.rate_ratio, "{:.3f}"))]
    body.append('<div class="cards">' + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                                for k, v in cards) + "</div>")
    g = summary.goodput
    if g:
        body[-1] = body[-1][:-len("</div>")] + (
            f"<div class=\"card\"><b>{_num(g.rate, '{:.3g}')} req/s</b><span>goodput ({_e(g.request_slo)}: "
            f"{g.good} of {g.total})</span></div></div>")
    body += [f'<p class="warn">WARNING: {_e(w)}</p>' for w in summary.warnings]
    if summary.slo:  # the verdicts the text and JSON show (`report --slo`), here too
        kinds = metric_kinds()
        body.append("<h2>SLO checks</h2>")
        body.append(_table(["SLO", "scope", "value", "result", "note"], [
            [_e(d["slo"]), _e(d["scope"]), _e(format_value(d["value"], kinds.get(d["metric"], "rate"))),
             '<span class="pass">PASS</span>' if d["passed"] else '<span class="warn">FAIL</span>', _e(d["note"] or "")]
            for d in summary.slo]))
    body.append("<h2>Latency (ms)</h2>")
    body.append(_table(["metric", "p50", "p90", "p99", "max", "mean", "n"],
                       [[label, *(_ms(lat[k].stat(s)) for s in ("p50", "p90", "p99", "max", "mean")), str(lat[k].n)]
                        for k, label in _LAT_ROWS]))

    body += content_sections(summary)
    body.append("<h2>Load</h2>")
    body.append(_figure(plots.rate_plot(sched, sent, np.where(ok, last, np.nan), edges),
                        "Requests per second by scheduled time, by the time they were sent, and ok completions."))
    body.append("<h2>Latency over time</h2>")
    body.append(_figure(plots.latency_over_time(sched, [("TTFT", ttft, user_ttft), ("TPOT", tpot, None),
                                                        ("E2E", e2e, user_e2e)], edges, "lat-time"),
                        "Per time bin (by scheduled time): p50 and p99; dashed: p99 as the user felt it "
                        "(including send lag and queue time)."))
    body.append(_figure(plots.cdf_plot([("TTFT", [("server", ttft), ("user-felt", user_ttft)]),
                                        ("TPOT", [("TPOT", tpot)]),
                                        ("E2E", [("server", e2e), ("user-felt", user_e2e)])], "lat-cdf"),
                        "Distributions over ok requests."))
    body.append("<h2>Send lag</h2>")
    body.append(_figure(plots.send_lag_plot(sched, lag, edges),
                        f"sent - scheduled - queue time: the load generator's own lateness "
                        f"(p99 {_ms(lat['send_lag'].p99)} ms; threshold {fi.lag_threshold_s * 1e3:g} ms)."))
    body.append("<h2>Token throughput</h2>")
    counts = res.chunk_counts
    per_chunk = np.where(counts > 0, toks / np.maximum(counts, 1), 0.0)
    row_of_chunk = np.repeat(np.arange(res.n), counts)
    chunk_abs = res.chunk_times + first[row_of_chunk] if res.n else np.zeros(0)
    chunk_ok = ok[row_of_chunk] if res.n else np.zeros(0, dtype=bool)
    body.append(_figure(plots.token_plot(np.where(chunk_ok, chunk_abs, np.nan), per_chunk[row_of_chunk],
                                         np.where(ok, first, np.nan), np.nan_to_num(c["prompt_tokens"]), edges),
                        "Output tokens at the time each chunk arrived (a chunk of k tokens counts k); "
                        "prompt tokens at the request's first token."))
    body.append("<h2>Errors</h2>")
    bad = (~ok) & (c["status"] != "cancelled") if res.n else np.zeros(0, dtype=bool)
    if bad.any() or (c["status"] == "cancelled").any():
        body.append(_figure(plots.error_plot(sched, c["status"].astype(str), edges),
                            "Requests that did not end ok, per scheduled-time bin, by status."))
        body.append(_error_table(summary.errors))
    else:
        body.append('<p class="pass">No errors: every request ended ok.</p>')

    cats = sorted(set(c["category"].astype(str).tolist())) if res.n else []
    if cats:
        groups = _groups(res, "category", cats)
        body.append("<h2>By category</h2>")
        body.append(_table(_GROUP_HEAD, [_group_row(n, s) for n, s in groups]))
        body.append(_figure(plots.group_bars(cats, [s.requests.scheduled for _, s in groups],
                                             [s.latency["ttft"].p50 for _, s in groups],
                                             [s.latency["ttft"].p99 for _, s in groups], "category", "cat"),
                            "Requests and TTFT per category."))
    if res.n:
        names, cnt = np.unique(c["client"].astype(str), return_counts=True)
        order = np.argsort(-cnt, kind="stable")[:TOP_CLIENTS]
        top = [str(names[i]) for i in order]
        groups = _groups(res, "client", top)
        body.append(f"<h2>Top clients ({len(top)} of {len(names)} by requests)</h2>")
        body.append(_table(_GROUP_HEAD, [_group_row(n, s) for n, s in groups]))
        body.append(_figure(plots.group_bars(top, [s.requests.scheduled for _, s in groups],
                                             [s.latency["ttft"].p50 for _, s in groups],
                                             [s.latency["ttft"].p99 for _, s in groups], "client", "clients"),
                            "Requests and TTFT of the busiest clients."))
    body.append('<p class="meta">Metric definitions: <code>servegen_load/metrics/stats.py</code>. '
                "Generated by servegen-load report.</p>")
    return _page("servegen-load report", body)


# --- capacity ---

def capacity_html(doc: dict[str, Any]) -> str:
    """The plan page: capacity curve per SLO metric with the SLO line, throughput curve, step tables."""
    from .text import render_capacity

    plans = [("realistic" if "naive" in doc else "scenario", doc["plan"], plots.COLORS["realistic"])]
    if "naive" in doc:
        plans.append(("naive", doc["naive"], plots.COLORS["naive"]))
    kinds = metric_kinds()
    panels: list[dict[str, Any]] = []
    first = doc["plan"]["steps"][0]["checks"] if doc["plan"]["steps"] else []
    for i, chk in enumerate(first):
        kind = kinds.get(chk["metric"], "time")
        vals = [v for _, p, _ in plans for s in p["steps"] for v in [s["checks"][i]["value"]] if v is not None]
        unit_scale, unit = (1.0, "s") if kind != "time" or max([*vals, 0]) >= 2 else (1e-3, "ms")
        if kind == "ratio":
            unit_scale, unit = 0.01, "%"
        elif kind in ("rate", "token_rate"):
            unit = "req/s" if kind == "rate" else "tok/s"
        verticals = []
        for label, p, color in plans:
            cap = p["capacity"]
            if cap["scale"] is not None:
                verticals.append((cap["rate"], f"{label} capacity {cap['rate']:.3g}", color, ":"))
        for label, p, color in plans:
            knee = p["knee"]
            if knee["reached"]:
                verticals.append((knee["rate"], f"{label} knee {knee['rate']:.3g}", color, "-."))
        panels.append({
            "title": f"{chk['metric']}" + (f" [{chk['scope']}]" if chk["scope"] != "all" else ""),
            "unit_scale": unit_scale, "unit": unit, "threshold": chk["threshold"],
            "threshold_label": f"{chk['op']} {format_value(chk['threshold'], kind)}",
            "curves": [(label, [s["offered_rate"] or s["rate"] for s in p["steps"]],
                        [s["checks"][i]["value"] for s in p["steps"]], color)
                       for label, p, color in plans],
            "verticals": verticals, "log": kind == "time" and _wide(vals),
        })
    thr = {"title": "served vs offered (first tokens/s in the measured window)", "unit_scale": 1.0,
           "unit": "served req/s", "threshold": None,
           "curves": [(label, [s["offered_rate"] or 0 for s in p["steps"]], [s["served_rate"] for s in p["steps"]],
                       color) for label, p, color in plans], "verticals": [], "diagonal": True}
    for label, p, color in plans:
        if p["knee"]["reached"]:
            thr["verticals"].append((p["knee"]["rate"], f"{label} knee", color, "-."))
    panels.append(thr)
    body = ["<h1>servegen-load capacity plan</h1>",
            f"<p class=\"meta\">{_e(doc['scenario'])} &middot; SLOs: {_e(', '.join(doc['slo']['slo']))}"
            + (f" &middot; request SLO {_e(doc['slo']['request_slo'])}" if doc["slo"].get("request_slo") else "")
            + "</p>"]
    cards = []
    for label, p, _ in plans:
        cards.append((f"{label} max sustainable", f"{p['capacity']['rate']:.3g} req/s"))
        if p["knee"]["reached"]:
            cards.append((f"{label} knee", f"{p['knee']['rate']:.3g} req/s"))
    if "comparison" in doc and doc["comparison"]["ratio"] is not None:
        cards.append(("naive / realistic", f"{doc['comparison']['ratio']:.2f}x"))
    if doc.get("replicas") and doc["replicas"]["replicas"] is not None:
        cards.append((f"replicas for {doc['replicas']['peak_rate']:g} req/s", str(doc["replicas"]["replicas"])))
    body.append('<div class="cards">' + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                                for k, v in cards) + "</div>")
    body.append("<h2>Capacity curve</h2>")
    body.append(_figure(plots.capacity_plot(panels),
                        "Each SLO metric against the offered load (requests scheduled per second in the measured "
                        "window); "
                        "dashed red: the SLO threshold; dotted: the largest load meeting every SLO; "
                        "dash-dot: the knee (saturation throughput)."))
    for label, p, _ in plans:
        body.append(f"<h2>Steps: {_e(label)}</h2>")
        labels = list(p["steps"][0]["metrics"]) if p["steps"] else []
        rows = []
        for s in p["steps"]:
            vals = [format_value(ch["value"], kinds.get(ch["metric"], "time")) for ch in s["checks"]]
            res = ('<span class="pass">PASS</span>' if s["passed"] else '<span class="fail">FAIL</span>') + (
                " (saturated)" if s["saturated"] else "")
            rows.append([f"{s['scale']:.4g}", f"{s['rate']:.3g}", _num(s["offered_rate"], "{:.3g}"),
                         _num(s["served_rate"], "{:.3g}"), *(_e(v) for v in vals), res])
        body.append(_table(["scale", "planned req/s", "offered req/s", "served req/s", *labels, "result"], rows))
    body.append('<p class="meta">planned = scale x the scenario\'s mean rate; offered = requests actually '
                "scheduled per second in the measured window (bursty clients make it differ); served = first "
                "tokens per second in that window. The curves are drawn against the offered rate.</p>")
    body.append(f"<h2>Summary</h2><pre>{_e(render_capacity(doc))}</pre>")
    return _page("servegen-load capacity plan", body)


def _wide(vals: list[float]) -> bool:
    v = [x for x in vals if x and x > 0]
    return bool(v) and max(v) / min(v) > 30
