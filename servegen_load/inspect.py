"""Pool inspection: the statistics that say what a pool's workload looks like, and their rendering.

`pool_stats(pool)` returns a plain dict (reused by tests and other commands); `render_pool_stats`
prints it as rich tables on a terminal, plain text otherwise; `inspect_pool(..., as_json=True)`
prints the same dict as JSON. Definitions (all from the pool's arrays, no sampling):

- requests of a client in a window = rate x window length; "rate-weighted" means weighted by these;
- quiet windows: windows where every client is at 0. In a fitted pool they are real silences of
  the log (the rate curve keeps them); in an imported ServeGen pool they are the data's collection
  gaps (missing data: the rate curve leaves them out);
- rate curve: for each hour of day, the mean over the pool's days of the total (all-client) rate;
- sessions (fitted pools with a session column): the session model, `workload.session_model`;
- CV quantiles: rate-weighted p10/p50/p90 of the per-window inter-arrival CV over active windows;
- family shares: share of active client-windows fitted by each gap family;
- top-k share: share of all requests carried by the k busiest clients;
- length quantiles: p50/p90/p99 (and mean) of each field's rate-weighted mixture of every client's
  table in every data window (weights: the client's requests in that data window); `*_ratio`
  fields also list the modes of that mixture (peaks of a 50-bin histogram).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .formats import REQUESTS_FORMAT
from .sparkline import sparkline
from .workload import arrival_fit, session_model
from .workload.distributions import Family
from .workload.pool import SHIPPED, ClientPool, load_pool


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> list[float | None]:
    """Lower weighted quantiles: the smallest x whose cumulative weight reaches q of the total."""
    keep = w > 0
    x, w = x[keep], w[keep]
    if x.size == 0:
        return [None for _ in qs]
    order = np.argsort(x, kind="stable")
    x, cum = x[order], np.cumsum(w[order])
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return [_round(float(x[min(i, x.size - 1)])) for i in idx]


def _round(v: float) -> float:
    """Six significant digits: the pool stores float32, more digits would be noise."""
    return float(f"{v:.6g}")


def requests_per_data_window(pool: ClientPool) -> np.ndarray:
    """Expected requests of each client in each data window, shape (clients, data windows)."""
    dw = pool.data_window_of(pool.window_start)
    out = np.zeros((pool.n_clients, pool.data_start.size))
    req = pool.rate.astype(np.float64) * pool.window_seconds()
    for d in range(pool.data_start.size):
        out[:, d] = req[:, dw == d].sum(axis=1)
    return out


def length_mixture(pool: ClientPool, field_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, mass) of the pool's rate-weighted length mixture for one field, values sorted."""
    f = pool.fields.index(field_name)
    req = requests_per_data_window(pool)
    idx = pool.table_index[:, :, f]
    use = (idx >= 0) & (req > 0)
    n_tables = pool.offsets.size - 1
    w = np.bincount(idx[use], weights=req[use], minlength=n_tables)
    tables = np.flatnonzero(w)
    if tables.size == 0:
        return np.zeros(0), np.zeros(0)
    starts, ends = pool.offsets[tables], pool.offsets[tables + 1]
    lens = (ends - starts).astype(np.int64)
    atom = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
    cdf = pool.cdf[atom].astype(np.float64)
    first = np.zeros(atom.size, dtype=bool)
    first[np.concatenate([[0], np.cumsum(lens)[:-1]])] = True
    pmf = np.where(first, cdf, cdf - np.concatenate([[0.0], cdf[:-1]]))
    mass = pmf * np.repeat(w[tables], lens)
    vals = pool.values[atom].astype(np.float64)
    order = np.argsort(vals, kind="stable")
    return vals[order], mass[order]


def _modes(vals: np.ndarray, mass: np.ndarray) -> list[float]:
    """Peaks of a 50-bin histogram over [0, 1] (smoothed 1-2-1), with prominence >= 15% of the max."""
    from scipy.signal import find_peaks

    h, edges = np.histogram(vals, bins=50, range=(0.0, 1.0), weights=mass)
    if h.sum() <= 0:
        return []
    h = np.convolve(np.pad(h / h.sum(), 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    peaks, _ = find_peaks(np.pad(h, 1), prominence=0.15 * h.max())
    centers = 0.5 * (edges[:-1] + edges[1:])
    return [round(float(centers[p - 1]), 3) for p in peaks]


def pool_stats(pool: ClientPool) -> dict[str, Any]:
    """The inspection statistics of a pool as a plain, JSON-ready dict (see the module docstring)."""
    rate = pool.rate.astype(np.float64)
    active = rate > 0
    reqs = pool.requests_per_client()
    total_req = float(reqs.sum())
    covered = float(pool.window_seconds().sum())  # the seconds the rates hold for (a fitted log's last window may be partial)
    days = pool.span / 86400.0

    # rate curve over the day
    total = rate.sum(axis=0)
    quiet = ~active.any(axis=0)
    fitted = pool.meta.get("source") == "fit"
    gap = np.zeros_like(quiet) if fitted else quiet  # collection gaps: missing data, not silence
    hour = ((pool.window_start % 86400.0) // 3600.0).astype(np.int64)
    by_hour: list[float | None] = []
    for h in range(24):
        sel = (hour == h) & ~gap
        by_hour.append(round(float(total[sel].mean()), 4) if sel.any() else None)

    # burstiness
    cv_q = _weighted_quantiles(pool.cv[active].astype(np.float64), rate[active], (0.1, 0.5, 0.9))
    fam = pool.family[active]
    n_active = int(active.sum())
    families = {Family(code).name.lower(): round(int((fam == code).sum()) / n_active, 4)
                for code in np.unique(fam)} if n_active else {}

    # concentration
    ranked = np.sort(reqs)[::-1]
    top = {f"top{k}": round(float(ranked[:k].sum() / total_req), 4) if total_req > 0 else None for k in (1, 5, 10)}

    # lengths
    lengths: dict[str, dict[str, Any]] = {}
    for fname in pool.fields:
        vals, mass = length_mixture(pool, fname)
        if vals.size == 0:
            lengths[fname] = {"p50": None, "p90": None, "p99": None, "mean": None}
            continue
        p50, p90, p99 = _weighted_quantiles(vals, mass, (0.5, 0.9, 0.99))
        entry: dict[str, Any] = {"p50": p50, "p90": p90, "p99": p99,
                                 "mean": round(float(np.dot(vals, mass) / mass.sum()), 4)}
        if fname.endswith("_ratio"):
            entry["modes"] = _modes(vals, mass)
        lengths[fname] = entry

    fb = [pool.clients.index(c) for c in pool.fallback if c in pool.clients]
    return {
        "name": pool.name,
        "category": pool.category,
        "source": pool.meta.get("source"),
        "clients": pool.n_clients,
        "active_clients": int(active.any(axis=1).sum()),
        "span_s": pool.span,
        "days": round(days, 3),
        "window_s": pool.window,
        "data_window_s": pool.data_window,
        "fields": list(pool.fields),
        "client_windows": int(active.size),
        "active_client_windows": n_active,
        "active_share": round(n_active / active.size, 4) if active.size else 0.0,
        "quiet_windows": int(quiet.sum()),
        "quiet_windows_are": "silences of the log" if fitted else "collection gaps (missing data)",
        "sessions": session_model.describe(pool),
        "arrivals": arrival_fit.describe(pool),
        "requests": round(total_req, 1),
        "mean_rate": round(total_req / covered, 4) if covered else 0.0,
        "peak_window_rate": round(float(total.max(initial=0.0)), 4),
        "rate_by_hour": by_hour,
        "cv": {"p10": cv_q[0], "p50": cv_q[1], "p90": cv_q[2]},
        "families": families,
        "top_share": top,
        "lengths": {pool.category: lengths},
        "fallback": {
            "clients": list(pool.fallback),
            "count": len(pool.fallback),
            "request_share": round(float(reqs[fb].sum() / total_req), 4) if total_req > 0 and fb else 0.0,
        },
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("pool", f"{s['name']} ({s['category']})"),
        ("source", str(s.get("source") or "-")),
        ("clients", f"{s['clients']} ({s['active_clients']} with traffic)"),
        ("span", f"{s['days']:g} day{'' if s['days'] == 1 else 's'}, {s['window_s']:g} s rate windows, {s['data_window_s']:g} s data windows"),
        ("active client-windows", f"{s['active_client_windows']:,} of {s['client_windows']:,} "
                                  f"({_pct(s['active_share'])}); quiet windows (every client at 0): "
                                  f"{s['quiet_windows']}" + (f", {s['quiet_windows_are']}" if s['quiet_windows'] else "")),
        ("requests", f"{s['requests']:,.0f} (mean {s['mean_rate']:.4g} req/s, peak window "
                     f"{s['peak_window_rate']:.4g} req/s)"),
        ("gap CV (rate-weighted)", "  ".join(f"{k} {_fmt(v)}" for k, v in s["cv"].items())),
        ("gap families", "  ".join(f"{k} {_pct(v)}" for k, v in s["families"].items())),
        ("top clients' share", "  ".join(f"{k} {_pct(v)}" for k, v in s["top_share"].items())),
    ]


def _fallback_line(s: dict[str, Any]) -> str:
    fb = s["fallback"]
    if not fb["count"]:
        return "none: every client has its own length data"
    return (f"{fb['count']} clients ({_pct(fb['request_share'])} of requests) use the pool's length mixture: "
            + ", ".join(fb["clients"]))


def render_pool_stats(s: dict[str, Any], *, rich: bool | None = None, file: Any = None) -> None:
    """Print pool statistics: rich tables when `rich` (default: stdout is a terminal), else plain text."""
    out = file or sys.stdout
    if rich is None:
        rich = out.isatty()
    hours = s["rate_by_hour"]
    spark = sparkline(hours)
    (cat, lengths), = s["lengths"].items()
    if rich:
        from rich.console import Console
        from rich.table import Table

        con = Console(file=out)
        t = Table(title=f"pool {s['name']}", show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        for k, v in _summary_rows(s):
            t.add_row(k, v)
        con.print(t)
        rt = Table(title=f"total rate by hour of day (req/s, mean over days)  {spark}", title_justify="left")
        rt.add_column("hours")
        for h in range(6):
            rt.add_column(f"+{h}", justify="right")
        for h0 in range(0, 24, 6):
            rt.add_row(f"{h0:02d}-{h0 + 5:02d}", *["-" if v is None else f"{v:.1f}" for v in hours[h0:h0 + 6]])
        con.print(rt)
        lt = Table(title=f"lengths ({cat}, rate-weighted mixture)", title_justify="left")
        has_modes = any("modes" in q for q in lengths.values())
        for col in ("field", "p50", "p90", "p99", "mean", *(("modes",) if has_modes else ())):
            lt.add_column(col, justify="left" if col == "field" else "right")
        for fname, q in lengths.items():
            modes = (", ".join(f"{m:g}" for m in q.get("modes", [])),) if has_modes else ()
            lt.add_row(fname, *[_fmt(q[k]) for k in ("p50", "p90", "p99", "mean")], *modes)
        con.print(lt)
        con.print(f"[bold]fallback lengths[/bold]: {_fallback_line(s)}")
        for line in s.get("sessions") or ():
            con.print(line, markup=False, highlight=False)
        for line in (s.get("arrivals") or {}).get("lines", ()):
            con.print(line, markup=False, highlight=False)
        return
    lines = [f"{k}: {v}" for k, v in _summary_rows(s)]
    lines.append(f"rate by hour (req/s, mean over days): {spark}")
    lines.append("  " + " ".join(f"{h:02d}:{_fmt(v)}" for h, v in enumerate(hours)))
    lines.append(f"lengths ({cat}, rate-weighted mixture): field p50 p90 p99 mean")
    for fname, q in lengths.items():
        modes = f" modes {', '.join(f'{m:g}' for m in q['modes'])}" if q.get("modes") else ""
        lines.append(f"  {fname} {' '.join(_fmt(q[k]) for k in ('p50', 'p90', 'p99', 'mean'))}{modes}")
    lines.append(f"fallback lengths: {_fallback_line(s)}")
    lines.extend(s.get("sessions") or ())
    lines.extend((s.get("arrivals") or {}).get("lines", ()))
    print("\n".join(lines), file=out)


def inspect_pool(target: str | Path, as_json: bool = False) -> dict[str, Any]:
    """Load a pool (shipped name or file), print its statistics (JSON or tables) and return them."""
    stats = pool_stats(load_pool(target))
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        render_pool_stats(stats)
    return stats


def detect_kind(target: str) -> Literal["pool", "requests", "scenario"]:
    """What `inspect` was given: a pool (shipped name, `.npz`, zip), a requests JSONL, or a scenario YAML."""
    if target in SHIPPED:
        return "pool"
    from .formats import sniff

    kind = sniff(target)
    if kind == "missing":
        raise InputError(f"no such file, and not a shipped pool name (shipped: {', '.join(SHIPPED)})", path=target)
    if kind == "directory":
        raise InputError("expected a file (pool .npz, requests .jsonl or scenario .yaml), got a directory",
                         path=target)
    if kind in ("pool", "requests", "scenario"):
        return kind  # type: ignore[return-value]
    raise InputError(f"not something to inspect: expected a pool (.npz or a shipped name), a requests JSONL "
                     f"(first line with \"format\": \"{REQUESTS_FORMAT}\") or a scenario (.yaml)", path=target)


def _missing(e: ModuleNotFoundError, module: str, target: str, what: str) -> InputError:
    """A one-line error when an optional sibling module is absent; other import failures propagate."""
    if e.name != module:
        raise e
    return InputError(f"cannot inspect {what} in this build ({module} is not available)", path=target)


def inspect_requests_file(target: str, scenario: str | None = None, as_json: bool = False) -> Any:
    """Hand a requests JSONL to `servegen_load.workload.fidelity.inspect_requests` (imported lazily)."""
    try:
        from .workload.fidelity import inspect_requests  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:
        raise _missing(e, "servegen_load.workload.fidelity", target, "requests files") from None
    from .run.fill_in import check_source_ids

    check_source_ids(target)  # `run` refuses such a file: its statistics would describe nothing sendable
    return inspect_requests(target, scenario=scenario, as_json=as_json)


def print_scenario(target: str, as_json: bool = False) -> None:
    """Print a scenario as resolved by `servegen_load.scenario.load_scenario` (imported only when needed)."""
    try:
        from .scenario import load_scenario  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:
        raise _missing(e, "servegen_load.scenario", target, "scenario files") from None
    sc = load_scenario(target)
    doc = sc.model_dump(mode="json") if hasattr(sc, "model_dump") else sc
    will = scenario_expectation(sc)
    if as_json:
        print(json.dumps({**doc, "will_generate": will}, indent=2, default=str))
    else:
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False) if isinstance(doc, dict) else doc, end="")
        print(render_expectation(will))


def scenario_expectation(sc: Any, top: int = 5) -> dict[str, Any]:
    """What the scenario will generate, from its resolved plan (no request is drawn): expected
    requests, the intended mean and peak rates, active clients and the top clients' shares."""
    from .workload.compose import peak_rate, prepare

    gen = prepare(sc)
    table = gen.plan.client_table()
    total = sum(e for _, e, _ in table)
    active = sorted(((e, n) for n, e, _ in table if e > 0), reverse=True)
    dur = gen.duration
    return {"expected_requests": round(total, 1), "run_seconds": dur, "mean_rate": total / dur if dur > 0 else None,
            "peak_rate": peak_rate(gen.plan) or None, "clients": len(table), "active_clients": len(active),
            "top_clients": [{"client": n, "expected_requests": round(e, 1), "share": e / total if total else None}
                            for e, n in active[:top]],
            "note": "expected values: bursty clients make one seed's count differ (see the file's header)"}


def render_expectation(w: dict[str, Any]) -> str:
    rate = "-" if w["mean_rate"] is None else f"{w['mean_rate']:.3g}"
    peak = f", busiest window {w['peak_rate']:.3g} req/s" if w["peak_rate"] else ""
    lines = [f"will generate: about {w['expected_requests']:g} requests over {w['run_seconds']:g} s of run time "
             f"(mean {rate} req/s{peak}), {w['active_clients']} of {w['clients']} clients active",
             "top clients: " + ", ".join(f"{c['client']} {c['share'] * 100:.1f}%" for c in w["top_clients"]
                                         if c["share"] is not None)]
    return "\n".join(lines)


def shipped_pools() -> list[dict[str, Any]]:
    """Name, category, clients, span, fallback count and file size of each shipped pool (metadata only)."""
    rows = []
    for name in SHIPPED:
        path = Path(str(resources.files("servegen_load") / "pools" / f"{name}.npz"))
        if not path.is_file():
            rows.append({"name": name, "missing": True, "path": str(path)})
            continue
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta_json"].tobytes().decode())
            ws = z["window_start"]
        span = float(ws[-1] + meta["window"]) if ws.size else 0.0
        rows.append({"name": name, "category": meta["category"], "clients": len(meta["clients"]),
                     "span_s": span, "days": round(span / 86400.0, 3), "fields": meta["fields"],
                     "fallback": len(meta.get("fallback", [])), "bytes": path.stat().st_size,
                     "path": str(path)})
    return rows


def render_shipped(rows: list[dict[str, Any]], *, file: Any = None) -> None:
    """`pool list` output: one line per shipped pool (a rich table on a terminal)."""
    out = file or sys.stdout
    head = ("name", "category", "clients", "span", "fallback", "size", "fields")
    body = [(r["name"], "(file missing)", "", "", "", "", "") if r.get("missing") else
            (r["name"], r["category"], str(r["clients"]), f"{r['days']:g} d", str(r["fallback"]),
             f"{r['bytes'] / 1e6:.1f} MB", ",".join(r["fields"])) for r in rows]
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title="shipped pools")
        for h in head:
            t.add_column(h)
        for b in body:
            t.add_row(*b)
        Console(file=out).print(t)
        return
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    for row in (head, *body):
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip(), file=out)
