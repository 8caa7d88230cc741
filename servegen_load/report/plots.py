"""Plots as inline SVG strings (matplotlib, imported lazily: only `report --html` and `plan --html`).

Every figure is rendered with the Agg-free SVG backend, text kept as text (`svg.fonttype: none`)
so the page stays small and selectable, and returned as an `<svg>` element to inline in HTML: no
file, no network, nothing to load at view time. Time series are binned (at most ~120 bins) and
CDFs drawn through at most 400 quantiles, so the page size does not grow with the request count.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

COLORS = {"scheduled": "#8c8c8c", "sent": "#1f77b4", "completed": "#2ca02c", "p50": "#1f77b4",
          "p90": "#ff7f0e", "p99": "#d62728", "max": "#9467bd", "user": "#8c564b", "naive": "#ff7f0e",
          "realistic": "#1f77b4", "slo": "#d62728", "knee": "#2ca02c"}
STATUS_COLORS = {"http_error": "#d62728", "timeout": "#ff7f0e", "disconnect": "#9467bd",
                 "connect_error": "#8c564b", "protocol_error": "#e377c2", "cancelled": "#7f7f7f",
                 "client_error": "#17becf", "lost": "#bcbd22"}
_NICE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
         14400, 21600, 43200, 86400)


def mpl() -> Any:
    """matplotlib.pyplot with the SVG settings, or an InputError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("the HTML report needs matplotlib: pip install 'servegen-load[report]'") from None
    matplotlib.use("svg", force=True)
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({
        "svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.titlesize": 10,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.fontsize": 8, "legend.frameon": False, "figure.dpi": 96,
    })
    return plt


def to_svg(fig: Any, name: str) -> str:
    """The figure as one `<svg>` element (ids prefixed by `name`, so several figures can share a page)."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = name
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text.replace('id="', f'id="{name}-').replace('url(#', f'url(#{name}-').replace(
        'xlink:href="#', f'xlink:href="#{name}-')


def bin_width(span: float, target: int = 40) -> float:
    """A round bin width giving about `target` bins over `span` seconds."""
    raw = max(span, 1e-3) / target
    return next((w for w in _NICE if w >= raw), _NICE[-1])


def edges_for(t0: float, t1: float, width: float) -> np.ndarray:
    n = max(1, min(400, int(np.ceil((t1 - t0) / width))))
    return t0 + width * np.arange(n + 1)


def binned_rate(t: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    t_ok = np.isfinite(t)
    w = None if weights is None else weights[t_ok]
    counts, _ = np.histogram(t[t_ok], bins=edges, weights=w)
    return counts / np.diff(edges)


def binned_percentiles(t: np.ndarray, v: np.ndarray, edges: np.ndarray,
                       qs: Sequence[float] = (50, 99)) -> np.ndarray:
    """(len(qs), bins) percentiles of v per bin of t; NaN for empty bins."""
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    out = np.full((len(qs), len(edges) - 1), np.nan)
    if not len(t):
        return out
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    order = np.argsort(b, kind="stable")
    b, v = b[order], v[order]
    starts = np.searchsorted(b, np.arange(len(edges) - 1), side="left")
    ends = np.searchsorted(b, np.arange(len(edges) - 1), side="right")
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if e > s:
            out[:, i] = np.percentile(v[s:e], qs)
    return out


def cdf_points(x: np.ndarray, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(x[np.isfinite(x)])
    if not len(x):
        return x, x
    p = np.linspace(0, 1, min(n, len(x)))
    return np.quantile(x, p), p


def _time_unit(span: float) -> tuple[float, str]:
    return (3600.0, "h") if span > 4 * 3600 else (60.0, "min") if span > 600 else (1.0, "s")


def _lat_unit(values: np.ndarray) -> tuple[float, str]:
    v = values[np.isfinite(values)]
    top = float(np.percentile(v, 99)) if len(v) else 1.0
    return (1.0, "s") if top >= 2 else (1e-3, "ms")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")


# --- results plots ---

def rate_plot(sched: np.ndarray, sent: np.ndarray, done: np.ndarray, edges: np.ndarray) -> str:
    plt = mpl()
    tu, tn = _time_unit(edges[-1] - edges[0])
    mid = (edges[:-1] + edges[1:]) / 2 / tu
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.step(mid, binned_rate(sched, edges), where="mid", color=COLORS["scheduled"], lw=2, label="scheduled")
    ax.step(mid, binned_rate(sent, edges), where="mid", color=COLORS["sent"], lw=1.2, label="achieved (sent)")
    ax.step(mid, binned_rate(done, edges), where="mid", color=COLORS["completed"], lw=1, ls="--",
            label="completed (ok)")
    ax.set_xlabel(f"run time ({tn})")
    ax.set_ylabel("requests / s")
    ax.set_title(f"Request rate: scheduled vs achieved ({edges[1] - edges[0]:g} s bins)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return to_svg(fig, "rate")


def latency_over_time(t: np.ndarray, series: list[tuple[str, np.ndarray, np.ndarray | None]],
                      edges: np.ndarray, name: str) -> str:
    """One panel per metric: p50 and p99 per time bin (and the user-felt p99 when given)."""
    plt = mpl()
    tu, tn = _time_unit(edges[-1] - edges[0])
    mid = (edges[:-1] + edges[1:]) / 2 / tu
    fig, axes = plt.subplots(1, len(series), figsize=(8.5, 2.6), squeeze=False)
    for ax, (label, v, user) in zip(axes[0], series, strict=True):
        u, un = _lat_unit(v if user is None else np.concatenate([v, user]))
        q = binned_percentiles(t, v, edges)
        if np.isfinite(q).any():
            ax.plot(mid, q[0] / u, color=COLORS["p50"], lw=1.2, label="p50")
            ax.plot(mid, q[1] / u, color=COLORS["p99"], lw=1.2, label="p99")
            if user is not None:
                qu = binned_percentiles(t, user, edges, (99,))
                ax.plot(mid, qu[0] / u, color=COLORS["user"], lw=1, ls="--", label="user-felt p99")
            ax.set_ylim(bottom=0)
            ax.legend(loc="upper left")
        else:
            _empty(ax, "no data")
        ax.set_title(f"{label} over time")
        ax.set_xlabel(f"scheduled time ({tn})")
        ax.set_ylabel(un)
    fig.tight_layout()
    return to_svg(fig, name)


def cdf_plot(series: list[tuple[str, list[tuple[str, np.ndarray]]]], name: str) -> str:
    """One panel per metric, each with one or more CDF curves (log x when the range is wide)."""
    plt = mpl()
    fig, axes = plt.subplots(1, len(series), figsize=(8.5, 2.6), squeeze=False)
    for ax, (label, curves) in zip(axes[0], series, strict=True):
        allv = np.concatenate([c[1] for c in curves]) if curves else np.zeros(0)
        u, un = _lat_unit(allv)
        drawn = False
        for i, (cl, v) in enumerate(curves):
            x, p = cdf_points(v)
            if len(x):
                ax.plot(x / u, p, lw=1.4, color=(COLORS["p50"], COLORS["user"], COLORS["p90"])[i % 3], label=cl)
                drawn = True
        if drawn:
            fin = allv[np.isfinite(allv) & (allv > 0)]
            if len(fin) and fin.max() / max(fin.min(), 1e-12) > 50:
                ax.set_xscale("log")
            ax.set_ylim(0, 1.01)
            ax.legend(loc="lower right")
        else:
            _empty(ax, "no data")
        ax.set_title(f"{label} CDF")
        ax.set_xlabel(un)
        ax.set_ylabel("fraction of requests")
    fig.tight_layout()
    return to_svg(fig, name)


def send_lag_plot(t: np.ndarray, lag: np.ndarray, edges: np.ndarray) -> str:
    plt = mpl()
    tu, tn = _time_unit(edges[-1] - edges[0])
    mid = (edges[:-1] + edges[1:]) / 2 / tu
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 2.6))
    q = binned_percentiles(t, lag, edges, (50, 99, 100))
    if np.isfinite(q).any():
        for row, key in zip(q, ("p50", "p99", "max"), strict=True):
            a1.plot(mid, row * 1e3, lw=1.1, color=COLORS[key], label=key)
        a1.legend(loc="upper left")
    else:
        _empty(a1, "no data")
    a1.set_title("send lag over time")
    a1.set_xlabel(f"scheduled time ({tn})")
    a1.set_ylabel("ms")
    x, p = cdf_points(lag)
    if len(x):
        a2.plot(x * 1e3, p, color=COLORS["sent"], lw=1.4)
        a2.set_ylim(0, 1.01)
    else:
        _empty(a2, "no data")
    a2.set_title("send lag CDF")
    a2.set_xlabel("ms")
    a2.set_ylabel("fraction of requests")
    fig.tight_layout()
    return to_svg(fig, "lag")


def token_plot(out_t: np.ndarray, out_w: np.ndarray, in_t: np.ndarray, in_w: np.ndarray, edges: np.ndarray) -> str:
    plt = mpl()
    tu, tn = _time_unit(edges[-1] - edges[0])
    mid = (edges[:-1] + edges[1:]) / 2 / tu
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.step(mid, binned_rate(out_t, edges, out_w), where="mid", color=COLORS["sent"], lw=1.3,
            label="output tokens/s (at each chunk)")
    ax2 = ax.twinx()
    ax2.step(mid, binned_rate(in_t, edges, in_w), where="mid", color=COLORS["p90"], lw=1, ls="--",
             label="input tokens/s (at first token)")
    ax2.spines["right"].set_visible(True)
    ax2.grid(False)
    ax.set_xlabel(f"run time ({tn})")
    ax.set_ylabel("output tokens / s")
    ax2.set_ylabel("input tokens / s")
    ax.set_title("Token throughput over time")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.12, 1))
    return to_svg(fig, "tokens")


def error_plot(t: np.ndarray, status: np.ndarray, edges: np.ndarray) -> str:
    plt = mpl()
    tu, tn = _time_unit(edges[-1] - edges[0])
    left = edges[:-1] / tu
    width = np.diff(edges) / tu
    fig, ax = plt.subplots(figsize=(8, 2.6))
    bottom = np.zeros(len(edges) - 1)
    for st, color in STATUS_COLORS.items():
        m = status == st
        if not m.any():
            continue
        counts, _ = np.histogram(t[m & np.isfinite(t)], bins=edges)
        ax.bar(left, counts, width=width, bottom=bottom, align="edge", color=color, label=f"{st} ({int(m.sum())})")
        bottom += counts
    ax.set_xlabel(f"scheduled time ({tn})")
    ax.set_ylabel("requests per bin")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Errors over time by status")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return to_svg(fig, "errors")


def group_bars(labels: list[str], counts: list[int], p50: list[float | None], p99: list[float | None],
               title: str, name: str) -> str:
    """Requests per group (bars) beside TTFT p50/p99 per group (bars), horizontally."""
    plt = mpl()
    n = len(labels)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 0.9 + 0.28 * n), sharey=True)
    y = np.arange(n)
    a1.barh(y, counts, color=COLORS["sent"])
    a1.set_yticks(y, labels)
    a1.invert_yaxis()
    a1.set_xlabel("requests")
    a1.set_title(f"{title}: requests")
    vals = np.array([np.nan if v is None else v for v in p50 + p99], dtype=float)
    u, un = _lat_unit(vals)
    h = 0.38
    a2.barh(y - h / 2, [np.nan if v is None else v / u for v in p50], height=h, color=COLORS["p50"], label="p50")
    a2.barh(y + h / 2, [np.nan if v is None else v / u for v in p99], height=h, color=COLORS["p99"], label="p99")
    a2.set_xlabel(un)
    a2.set_title(f"{title}: TTFT")
    a2.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return to_svg(fig, name)


# --- capacity plots ---

def capacity_plot(panels: list[dict[str, Any]], name: str = "capacity") -> str:
    """One panel per SLO: metric vs offered rate per plan, the threshold line, capacities and knees.

    Each panel: {title, unit_scale, unit, threshold, curves: [(label, rates, values, color)],
    verticals: [(x, label, color, style)]}.
    """
    plt = mpl()
    n = len(panels)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    for ax, pn in zip(axes.flat, panels, strict=False):
        u = pn["unit_scale"]
        for label, x, v, color in pn["curves"]:
            xv = np.array(x, dtype=float)
            yv = np.array([np.nan if a is None else a / u for a in v], dtype=float)
            order = np.argsort(xv, kind="stable")
            ax.plot(xv[order], yv[order], "o-", color=color, lw=1.3, ms=4, label=label)
        if pn.get("threshold") is not None:
            ax.axhline(pn["threshold"] / u, color=COLORS["slo"], ls="--", lw=1, label=f"SLO {pn['threshold_label']}")
        if pn.get("diagonal"):
            top = max((a for _, x, _, _ in pn["curves"] for a in x if a), default=1.0)
            ax.plot([0, top], [0, top], color="#999", lw=0.8, ls=":", label="served = offered")
        for x, label, color, style in pn.get("verticals", []):
            ax.axvline(x, color=color, ls=style, lw=1, label=label)
        ax.set_title(pn["title"])
        ax.set_xlabel("offered load, req/s")
        ax.set_ylabel(pn["unit"])
        if pn.get("log"):
            from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        # below the axes, never over the curves it explains
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return to_svg(fig, name)
