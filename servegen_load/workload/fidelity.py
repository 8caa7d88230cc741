"""Statistics measured on a requests file, and its fidelity to the scenario it came from.

`scan_requests(path, scenario)` is what `inspect REQUESTS [--scenario]` runs: one streaming pass
that folds `request_scan` blocks into `StatsAcc` and `FidelityAcc` (`stream_stats` accumulators), so
memory does not grow with the file; `request_stats(cols)` and `fidelity(cols, scenario)` put columns
already in memory through the same accumulators.

`request_stats(cols)` gives the same statistics `inspect` shows for a pool, measured on requests:
clients, rate curve, per-client gap CV quantiles, top-1/5/10 shares, length quantiles per
category. Definitions:

- client-window: a client's requests in one window of `window` seconds of run time (the pool's
  600 s rate window divided by the scenario's time_scale when a scenario is given, else 600 s);
- gap CV of a client-window: std/mean of the gaps between its consecutive requests, for windows
  with at least 10 requests (ServeGen's own activity threshold); quantiles are weighted by the
  window's request count ("rate-weighted", as for pools);
- top-k share: share of all requests sent by the k busiest clients;
- lengths: p50/p90/p99/mean per category of input_tokens, output_tokens, reason_tokens and
  reason share (reason/output), items per request and tokens per item of images/audio/video.

`fidelity(cols, plan)` compares realised with target, where the target is what generation aimed
at (`plan.resolve` of the scenario, with the file's header seed/duration/shard):

- counts, per client x segment (segments: the pool's rate windows cut to the scenario window):
  expected e = rate x length, observed o. For `servegen` arrivals counts are fixed (|o - e| < 1).
  For `renewal` arrivals the count of a window has variance ~ c^2 e (c: the window's gap CV), so
  the table reports the dispersion D = sum((o - e)^2 / (c^2 e)) / dof over client-windows with
  e >= 100 (near 1 when counts have renewal-scale noise; the Poisson version with c = 1 is shown
  too), and the total count's z-score;
- gap CV per client-window with at least 200 requests: realised vs the CV of the family and shape
  used, and vs the pool's measured CV (median ratio, share within 15%);
- lengths: Kolmogorov-Smirnov distance of each field's realised distribution to the target
  mixture (each client's table of each data window weighted by its expected requests), per pool.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..requests import read_header
from ..sparkline import sparkline
from .distributions import LengthTable, ks_distance
from .request_scan import Block
from .stream_stats import IntCounts, Lengths, WindowGaps, modes_from_hist, quantiles

MODS = (("image", "images"), ("audio", "audio"), ("video", "video"))
MODS_ORDER = tuple(m for m, _ in MODS)
MIN_CV_REQUESTS = 10
CV_CHECK_REQUESTS = 200
COUNT_CHECK_EXPECTED = 100.0
CV_CHUNK = 1 << 20  # rows per piece of the gap-CV computation


@dataclass
class Columns:
    """A requests file as numpy columns (reason -1 where absent; lists as counts + flat items)."""

    header: dict[str, Any]
    t: np.ndarray
    client: np.ndarray
    k: np.ndarray
    category: np.ndarray
    inp: np.ndarray
    out: np.ndarray
    reason: np.ndarray
    clients: list[str]
    categories: list[str]
    mm: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t.size)


def read_columns(path: str | Path) -> Columns:
    """Read a requests file into columns, block by block (`request_scan`: a regular expression and
    numpy for the lines `generate` writes, the per-line check for any other line)."""
    from .request_scan import RequestScanner

    p = Path(path)
    head = read_header(p)
    sc = RequestScanner(p)
    names = ("t", "client", "k", "category", "inp", "out", "reason")
    dtypes = (np.float64, np.int32, np.int64, np.int8, np.int32, np.int32, np.int32)
    # columns grow in place (capacity doubling from an estimate): no second copy at the end
    arrs = [np.empty(max(1024, p.stat().st_size // 100), dtype=dt) for dt in dtypes]
    n = 0
    mm_parts: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {m: [] for m, _ in MODS}
    for b in sc.blocks():
        k = len(b)
        if n + k > arrs[0].size:
            cap = max(2 * arrs[0].size, n + k)
            arrs = [np.concatenate([a[:n], np.empty(cap - n, dtype=a.dtype)]) for a in arrs]
        for a, nm in zip(arrs, names, strict=True):
            a[n:n + k] = getattr(b, nm)
        for m, (cnt, items) in b.mm.items():
            mm_parts[m].append((n, cnt, items))
        n += k
    arrs = [a[:n] for a in arrs]
    mm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m, parts in mm_parts.items():
        if parts:
            cnt = np.zeros(n, dtype=np.int64)
            for at, c, _ in parts:
                cnt[at:at + c.size] = c
            mm[m] = (cnt, np.concatenate([it for _, _, it in parts]))
    return Columns(head, arrs[0], arrs[1], arrs[2], arrs[3], arrs[4], arrs[5], arrs[6],
                   list(sc.clients), list(sc.categories), mm)


# --- statistics ---

def _wq(x: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> list[float | None]:
    if x.size == 0 or w.sum() <= 0:
        return [None] * len(qs)
    o = np.argsort(x, kind="stable")
    c = np.cumsum(w[o])
    c /= c[-1]
    return [round(float(x[o][min(int(np.searchsorted(c, q)), x.size - 1)]), 4) for q in qs]


def window_cvs(t: np.ndarray, client: np.ndarray, edges: np.ndarray, min_n: int = MIN_CV_REQUESTS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gap CV of every (client, window) with at least `min_n` requests.

    Returns (client, window, count, cv) arrays. Gaps are between consecutive requests of the
    client inside the window (a window's first request starts no gap)."""
    if t.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, np.zeros(0)
    win = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, edges.size - 2)
    return _cvs_by_window(t, client, win.astype(np.int64), min_n)


def _cvs_by_window(t: np.ndarray, client: np.ndarray, win: np.ndarray, min_n: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`window_cvs` with each request's window index given (any non-negative integers). Time-ordered
    input with non-decreasing windows is done `CV_CHUNK` rows at a time, cut where the window
    changes (gaps never cross windows), so temporaries stay bounded."""
    if t.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, np.zeros(0)
    if t.size > CV_CHUNK and bool(np.all(win[1:] >= win[:-1])):
        cuts = [0]
        while t.size - cuts[-1] > CV_CHUNK:
            at = cuts[-1] + CV_CHUNK
            nxt = int(np.searchsorted(win, win[at], side="left"))
            if nxt <= cuts[-1]:  # one window longer than a chunk: cut after it
                nxt = int(np.searchsorted(win, win[at], side="right"))
            if nxt >= t.size:
                break
            cuts.append(nxt)
        cuts.append(t.size)
        if len(cuts) > 2:
            parts = [_cvs_by_window(t[a:b], client[a:b], win[a:b], min_n) for a, b in itertools.pairwise(cuts)]
            return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]
    if t.size > 1 and bool(np.all(t[1:] >= t[:-1])):  # time-ordered (a requests file): one stable sort
        key = client.astype(np.int64) * (int(win.max()) + 1) + win
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((t, win, client))
    c, w, tt = client[order].astype(np.int64), win[order], t[order]
    new = np.concatenate([[True], (c[1:] != c[:-1]) | (w[1:] != w[:-1])])
    gid = np.cumsum(new) - 1
    gaps = np.diff(tt)
    same = ~new[1:]
    g_id = gid[1:][same]
    g = gaps[same]
    ng = np.bincount(g_id, minlength=gid[-1] + 1).astype(np.float64)
    s1 = np.bincount(g_id, weights=g, minlength=gid[-1] + 1)
    s2 = np.bincount(g_id, weights=g * g, minlength=gid[-1] + 1)
    cnt = np.bincount(gid).astype(np.int64)
    ok = (cnt >= min_n) & (ng >= 2)
    mean = np.where(ng > 0, s1 / np.maximum(ng, 1), 0.0)
    var = np.where(ng > 1, (s2 - ng * mean * mean) / np.maximum(ng - 1, 1), 0.0)
    cv = np.where(mean > 0, np.sqrt(np.maximum(var, 0.0)) / np.where(mean > 0, mean, 1.0), 0.0)
    firsts = np.flatnonzero(new)
    return c[firsts][ok], w[firsts][ok], cnt[ok], cv[ok]


class StatsAcc:
    """`request_stats` folded block by block (`stream_stats`): bounded memory whatever the file size."""

    def __init__(self, dur: float, window: float = 600.0, buckets: int = 48) -> None:
        self.dur = dur
        self.window = window
        self.nb = max(1, min(buckets, int(np.ceil(dur)) or 1))
        self.width = dur / self.nb if dur > 0 else 1.0
        self.hist = np.zeros(self.nb, dtype=np.int64)
        self.per_client = np.zeros(0, dtype=np.int64)
        self.n = 0
        self.gaps = WindowGaps(MIN_CV_REQUESTS)
        self.cats: dict[int, Lengths] = {}
        self.mods: list[str] = []

    def add(self, b: Block) -> None:
        if len(b) == 0:
            return
        self.n += len(b)
        self.add_times(b.t)
        pc = np.bincount(b.client)
        if pc.size > self.per_client.size:
            self.per_client = np.concatenate([self.per_client, np.zeros(pc.size - self.per_client.size, np.int64)])
        self.per_client[:pc.size] += pc
        self.gaps.add(b.t, b.client, np.floor(b.t / self.window).astype(np.int64))
        cats = np.unique(b.category)
        for ci in cats.tolist():
            self.cats.setdefault(ci, Lengths()).add(b, None if cats.size == 1 else b.category == ci)
        self.mods += [m for m in b.mm if m not in self.mods]

    def add_times(self, t: np.ndarray) -> None:
        self.hist += np.bincount(np.clip(t / self.width, 0, self.nb - 1).astype(np.int64), minlength=self.nb)

    def result(self, header: dict[str, Any], clients: list[str], categories: list[str]) -> dict[str, Any]:
        n, dur = self.n, self.dur
        ranked = np.sort(self.per_client)[::-1]
        top = {f"top{k}": round(float(ranked[:k].sum() / n), 4) if n else None for k in (1, 5, 10)}
        _, _, cnt, cv = self.gaps.finish()
        cvq = _wq(cv, cnt.astype(np.float64), (0.1, 0.5, 0.9))
        lengths: dict[str, dict[str, Any]] = {}
        for ci, cat in enumerate(categories):
            acc = self.cats.get(ci) or Lengths()
            acc.finish(self.mods)
            e: dict[str, Any] = {"requests": acc.rows, "input_tokens": quantiles(*acc.inp.table()),
                                 "output_tokens": quantiles(*acc.out.table())}
            if acc.share is not None:
                e["reason_tokens"] = quantiles(*acc.reason.table())
                e["reason_share"] = acc.share.stats()
            for m in MODS_ORDER:
                if m in acc.mm and m in self.mods:
                    e[f"{m}_count"] = quantiles(*acc.mm[m][0].table())
                    e[f"{m}_tokens"] = quantiles(*acc.mm[m][1].table())
            lengths[cat] = e
        return {
            "requests": n,
            "clients": int((self.per_client > 0).sum()),
            "duration_s": round(dur, 3),
            "mean_rate": round(n / dur, 4) if dur > 0 else None,
            "rate_curve": {"bucket_s": round(self.width, 3),
                           "rates": [round(float(h) / self.width, 4) for h in self.hist]},
            "cv": {"window_s": self.window, "client_windows": int(cv.size), "p10": cvq[0], "p50": cvq[1],
                   "p90": cvq[2]},
            "top_share": top,
            "lengths": lengths,
            "header": {k: header.get(k) for k in ("seed", "scenario_digest", "source", "shard", "kind", "arrival")
                       if k in header},
        }


def _duration(header: dict[str, Any], last_t: float) -> float:
    return float(header.get("duration") or last_t) or last_t


def _as_block(cols: Columns) -> Block:
    return Block(cols.t, cols.client, cols.k, cols.category, cols.inp, cols.out, cols.reason, dict(cols.mm))


def request_stats(cols: Columns, window: float = 600.0, buckets: int = 48) -> dict[str, Any]:
    """Inspection statistics of requests held in columns (see the module docstring)."""
    acc = StatsAcc(_duration(cols.header, float(cols.t[-1]) if len(cols) else 0.0), window, buckets)
    acc.add(_as_block(cols))
    return acc.result(cols.header, cols.clients, cols.categories)


def _modes(x: np.ndarray, bins: int = 50) -> list[float]:
    """Centres of the local maxima of a 50-bin histogram on [0, 1] holding >= 2% of the mass."""
    if x.size == 0:
        return []
    h, _ = np.histogram(np.clip(x, 0, 1), bins=bins, range=(0.0, 1.0))
    return modes_from_hist(h)


# --- fidelity against a scenario ---

def _ks_counts(vals: np.ndarray, cnts: np.ndarray, table: LengthTable) -> float:
    """KS distance between counted samples and a discrete table."""
    if int(cnts.sum()) == 0:
        return float("nan")
    return ks_distance(LengthTable.from_pmf(vals.astype(np.float64), cnts.astype(np.float64)), table)


def _ks_samples(x: np.ndarray, table: LengthTable) -> float:
    """KS distance between the empirical distribution of integer samples and a discrete table."""
    ic = IntCounts()
    ic.add(np.asarray(x))
    return _ks_counts(*ic.table(), table)


def _clip_table(t: LengthTable, lo: float) -> LengthTable:
    """The table as generation realises it: values rounded to integers, then clipped at `lo`."""
    pmf = np.diff(t.cdf, prepend=0.0)
    return LengthTable.from_pmf(np.maximum(np.rint(t.values), lo), pmf)


def resolve_scenario(scenario: Any, header: dict[str, Any]) -> Any:
    """The scenario as the file was generated from it (the header's seed, duration and shard)."""
    from ..scenario import Scenario, load_scenario

    s = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    over: dict[str, Any] = {}
    if header.get("seed") is not None and header["seed"] != s.seed:
        over["seed"] = int(header["seed"])
    if header.get("scenario_duration") is not None:
        over["duration"] = float(header["scenario_duration"])
    return s.with_overrides(**over) if over else s


class FidelityAcc:
    """`fidelity` folded block by block: per source, counts per client x segment, gap CVs per
    client-window (`WindowGaps`) and length counts; memory bounded by the plan, not the file."""

    def __init__(self, scenario: Any, header: dict[str, Any]) -> None:
        from .compose import prepare

        self.s = resolve_scenario(scenario, header)
        self.header = header
        self.gen = prepare(self.s, shard=header.get("shard"))
        self.plan = self.gen.plan
        self.n = 0
        self.realistic = self.s.kind == "realistic"
        srcs = self.plan.sources if self.realistic else []
        self.names = [{nm: i for i, nm in enumerate(src.names)} for src in srcs]
        self.local = [np.zeros(0, dtype=np.int64) for _ in srcs]
        self.obs = [np.zeros(src.expected.shape, dtype=np.int64) for src in srcs]
        self.gaps = [WindowGaps(CV_CHECK_REQUESTS) for _ in srcs]
        self.lengths = [Lengths() for _ in srcs]
        self.all_gaps = WindowGaps(2)
        self.all_lengths = Lengths()
        self.mods: list[str] = []

    def add(self, b: Block, clients: list[str]) -> None:
        if len(b) == 0:
            return
        self.n += len(b)
        self.mods += [m for m in b.mm if m not in self.mods]
        if not self.realistic:
            if self.plan.baseline is not None:
                self.all_gaps.add(b.t, b.client, np.zeros(len(b), dtype=np.int64))
                self.all_lengths.add(b)
            return
        for i, src in enumerate(self.plan.sources):
            loc = self.local[i]
            if loc.size < len(clients):
                ext = np.array([self.names[i].get(nm, -1) for nm in clients[loc.size:]], dtype=np.int64)
                loc = self.local[i] = np.concatenate([loc, ext])
            lc = loc[b.client]
            m = lc >= 0
            t, lcl = b.t[m], lc[m]
            nseg = self.obs[i].shape[1]
            seg = np.clip(np.searchsorted(src.edges, t, side="right") - 1, 0, nseg - 1)
            self.obs[i] += np.bincount(lcl * nseg + seg, minlength=self.obs[i].size).reshape(self.obs[i].shape)
            self.gaps[i].add(t, lcl, seg)  # segments are the windows of the gap CVs (nseg = edges.size - 1)
            self.lengths[i].add(b, m)

    def result(self, clients: list[str]) -> dict[str, Any]:
        from ..scenario import scenario_digest

        s, gen, plan, n = self.s, self.gen, self.plan, self.n
        out: dict[str, Any] = {"scenario": s.path, "kind": s.kind,
                               "digest_match": self.header.get("scenario_digest") == scenario_digest(s)}
        members = {gen.names[g] for g in gen.members}
        out["unknown_clients"] = sorted(set(clients) - set(gen.names))[:10]
        n_exp_total = sum(e for nm, e, _ in plan.client_table() if nm in members)
        out["total"] = {"expected": round(n_exp_total, 1), "observed": n}
        if self.realistic:
            rows_counts, rows_cv, rows_len = [], [], []
            d_num = d_pois = 0.0
            dof = 0
            max_dev = 0.0
            var_total = 0.0
            for i, src in enumerate(plan.sources):
                inside = np.array([nm in members for nm in src.names], dtype=bool)
                exp = src.expected
                e, o = exp[inside], self.obs[i][inside].astype(exp.dtype)
                c2 = np.maximum(src.target_cv[inside], 1e-6) ** 2
                if s.arrival == "servegen":
                    c2 = np.zeros_like(c2)
                big = e >= COUNT_CHECK_EXPECTED
                if s.arrival == "renewal":
                    d_num += float(((o - e) ** 2 / np.where(big, c2 * e, 1.0))[big].sum())
                d_pois += float(((o - e) ** 2 / np.where(big, e, 1.0))[big].sum())
                dof += int(big.sum())
                var_total += float((np.where(c2 > 0, c2, 0.0) * e).sum())
                if e.size:
                    max_dev = max(max_dev, float(np.abs(o - e).max()))
                rows_counts.append({"pool": src.label, "client_windows": int((e > 0).sum()),
                                    "checked": int(big.sum()), "expected": round(float(e.sum()), 1),
                                    "observed": int(o.sum())})
                cl, w, _cnt, cv = self.gaps[i].finish()
                if cv.size:
                    tgt = src.target_cv[cl, w]
                    pcv = src.pool_cv[cl, w]
                    r1, r2 = cv / np.maximum(tgt, 1e-9), cv / np.maximum(pcv, 1e-9)
                    rows_cv.append({"pool": src.label, "client_windows": int(cv.size),
                                    "median_ratio_target": round(float(np.median(r1)), 4),
                                    "within15_target": round(float(np.mean(np.abs(r1 - 1) <= 0.15)), 4),
                                    "median_ratio_pool_cv": round(float(np.median(r2)), 4),
                                    "within15_pool_cv": round(float(np.mean(np.abs(r2 - 1) <= 0.15)), 4),
                                    "realised_cv_p50": round(float(np.median(cv)), 4),
                                    "target_cv_p50": round(float(np.median(tgt)), 4)})
                rows_len += _length_rows(self.lengths[i], self.mods, src.aggregate(), src.label)
            out["counts"] = {
                "arrival": s.arrival,
                "dispersion": round(d_num / dof, 4) if dof and s.arrival == "renewal" else None,
                "dispersion_poisson": round(d_pois / dof, 4) if dof else None,
                "dof": dof,
                "max_abs_deviation": round(max_dev, 3),
                "total_z": round((n - n_exp_total) / np.sqrt(var_total), 3) if var_total > 0 else None,
                "pools": rows_counts,
            }
            out["gap_cv"] = rows_cv
            out["lengths"] = rows_len
        elif plan.baseline is not None:
            bp = plan.baseline
            e = bp.rate * plan.duration if bp.client in members else 0.0
            out["counts"] = {"expected": round(e, 1), "observed": n,
                             "z": round((n - e) / np.sqrt(e), 3) if bp.kind == "naive" and e > 0 else None}
            out["lengths"] = (_length_rows(self.all_lengths, self.mods, bp.options[0][2].tables, bp.client)
                              if len(bp.options) == 1 else [])
            _, _, _cnt, cv = self.all_gaps.finish()
            out["gap_cv"] = [{"realised": round(float(cv[0]), 4) if cv.size else None,
                              "target": 1.0 if bp.kind == "naive" else 0.0}]
        else:
            out["counts"] = {"expected": round(n_exp_total, 1), "observed": n}
            out["lengths"] = []
            out["gap_cv"] = []
        return out


def fidelity(cols: Columns, scenario: Any) -> dict[str, Any]:
    """Realised vs target for requests held in columns, made from `scenario` (module docstring)."""
    acc = FidelityAcc(scenario, cols.header)
    acc.add(_as_block(cols), cols.clients)
    return acc.result(cols.clients)


def _length_rows(acc: Lengths, mods: list[str], tables: dict[str, LengthTable], label: str) -> list[dict[str, Any]]:
    rows = []
    acc.finish(mods)
    f_in = "input_tokens" if "input_tokens" in tables else "text_tokens"
    pairs = [("input_tokens", acc.inp, tables.get(f_in), 1.0), ("output_tokens", acc.out, tables.get("output_tokens"), 1.0)]
    if "reason_ratio" in tables:
        sh = acc.share
        ks = _ks_counts(*sh.table(), tables["reason_ratio"]) if sh is not None else float("nan")
        rows.append({"pool": label, "field": "reason_share", "ks": round(ks, 4),
                     "n": sh.n if sh is not None else 0, "note": "after rounding to whole tokens"})
    for m in MODS_ORDER:
        if m not in acc.mm or m not in mods:
            continue
        counts, items = acc.mm[m]
        if f"{m}_count" in tables:
            pairs.append((f"{m}_count", counts, tables[f"{m}_count"], 0.0))
        if f"{m}_tokens" in tables and items.n:
            pairs.append((f"{m}_tokens", items, tables[f"{m}_tokens"], 1.0))
    for name, x, tab, lo in pairs:
        if tab is None:
            continue
        rows.append({"pool": label, "field": name, "ks": round(_ks_counts(*x.table(), _clip_table(tab, lo)), 4),
                     "n": x.n})
    return rows


# --- entry point and rendering ---

def _last_t(path: Path) -> float:
    """`t` of the file's last non-empty line (the largest: files are time-ordered), 0 if unreadable."""
    import orjson

    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - (1 << 16)))
        tail = fh.read()
    for raw in reversed(tail.split(b"\n")):
        if raw.strip():
            try:
                d = orjson.loads(raw)
                return float(d["t"]) if isinstance(d, dict) and "t" in d else 0.0
            except (orjson.JSONDecodeError, TypeError, ValueError):
                return 0.0
    return 0.0


def scan_requests(path: str | Path, scenario: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(statistics, fidelity or None) of a requests file in one streaming pass (`request_scan`
    blocks folded into `StatsAcc` / `FidelityAcc`): memory does not grow with the file."""
    from .request_scan import RequestScanner

    p = Path(path)
    head = read_header(p)
    window = 600.0
    fid = None
    if scenario is not None:
        fid = FidelityAcc(scenario, head)  # a bad scenario fails before the file is read
        if fid.realistic:
            window = 600.0 / fid.s.time_scale
    guess = _last_t(p)
    acc = StatsAcc(_duration(head, guess), window)
    sc = RequestScanner(p)
    for b in sc.blocks():
        acc.add(b)
        if fid is not None:
            fid.add(b, sc.clients)
    if acc.n and sc.last_t != guess and not head.get("duration"):  # the tail was not a request line
        redo = StatsAcc(_duration(head, sc.last_t), window)
        for b in RequestScanner(p).blocks():
            redo.add_times(b.t)
        acc.dur, acc.nb, acc.width, acc.hist = redo.dur, redo.nb, redo.width, redo.hist
    stats = acc.result(head, sc.clients, sc.categories)
    return stats, (fid.result(sc.clients) if fid is not None else None)


def inspect_requests(path: str | Path, scenario: Any = None, as_json: bool = False,
                     file: Any = None) -> dict[str, Any]:
    """Statistics of a requests file, plus fidelity when `scenario` (path or Scenario) is given.

    Prints rich tables on a terminal, plain text otherwise, JSON with `as_json`; returns the dict.
    """
    stats, fid = scan_requests(path, scenario)
    stats["path"] = str(path)
    if fid is not None:
        stats["fidelity"] = fid
    out = file or sys.stdout
    if as_json:
        print(json.dumps(stats, indent=2, default=_json_default), file=out)
    else:
        render(stats, file=out)
    return stats


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _tables(st: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table to print."""
    cv, top = st["cv"], st["top_share"]
    summary = [["requests", _f(st["requests"])], ["clients", _f(st["clients"])],
               ["duration (s)", _f(st["duration_s"])], ["mean rate (req/s)", _f(st["mean_rate"])],
               ["rate curve", f"{sparkline(st['rate_curve']['rates'])} ({_f(st['rate_curve']['bucket_s'])} s buckets)"],
               [f"gap CV p10/p50/p90 ({cv['client_windows']} client-windows of {_f(cv['window_s'])} s)",
                f"{_f(cv['p10'])} / {_f(cv['p50'])} / {_f(cv['p90'])}"],
               ["top-1/5/10 share", f"{_f(top['top1'])} / {_f(top['top5'])} / {_f(top['top10'])}"]]
    out = [(f"requests: {st['path']}", ["statistic", "value"], summary)]
    rows = []
    for cat, e in st["lengths"].items():
        for fname, q in e.items():
            if fname == "requests":
                continue
            rows.append([cat, fname, _f(q["p50"]), _f(q["p90"]), _f(q["p99"]), _f(q["mean"])
                         + (f"  modes {q['modes']}" if q.get("modes") else "")])
    out.append(("lengths", ["category", "field", "p50", "p90", "p99", "mean"], rows))
    fid = st.get("fidelity")
    if fid:
        c = fid["counts"]
        frows = [["total requests", _f(fid["total"]["expected"]), _f(fid["total"]["observed"]), ""]]
        if "dof" in c:
            frows.append(["count dispersion (renewal var c^2 e)", "~1", _f(c["dispersion"]),
                          f"{c['dof']} client-windows with e >= {COUNT_CHECK_EXPECTED:g}"])
            frows.append(["count dispersion (Poisson var e)", "~1 if CV=1" if c["arrival"] == "renewal" else "0",
                          _f(c["dispersion_poisson"]), ""])
            frows.append(["max |observed - expected| per client-window", "<1" if c["arrival"] == "servegen" else "",
                          _f(c["max_abs_deviation"]), ""])
            frows.append(["total count z-score", "|z| < 3", _f(c["total_z"]), ""])
        elif c.get("z") is not None:
            frows.append(["total count z-score (Poisson)", "|z| < 3", _f(c["z"]), ""])
        for r in fid.get("gap_cv", []):
            if "pool" in r:
                frows.append([f"gap CV {r['pool']} realised/target (median)", "1",
                              _f(r["median_ratio_target"]),
                              f"{r['client_windows']} client-windows >= {CV_CHECK_REQUESTS} req; "
                              f"{r['within15_target']:.0%} within 15%; vs pool cv {_f(r['median_ratio_pool_cv'])}"])
            else:
                frows.append(["gap CV", _f(r["target"]), _f(r["realised"]), ""])
        for r in fid.get("lengths", []):
            frows.append([f"KS {r['pool']} {r['field']}", "small", _f(r["ks"]), f"n={r['n']}"
                          + (f" ({r['note']})" if r.get("note") else "")])
        if not fid.get("digest_match", True):
            frows.append(["scenario digest", "match", "DIFFERENT", "the file was made from another scenario"])
        out.append((f"fidelity vs {fid['scenario']}", ["check", "target", "realised", "note"], frows))
    return out


def render(st: dict[str, Any], file: Any = None, rich: bool | None = None) -> None:
    out = file or sys.stdout
    use_rich = rich if rich is not None else (hasattr(out, "isatty") and out.isatty())
    tables = _tables(st)
    if use_rich:
        from rich.console import Console
        from rich.table import Table

        con = Console(file=out)
        for title, head, rows in tables:
            tb = Table(title=title, title_justify="left")
            for h in head:
                tb.add_column(h)
            for r in rows:
                tb.add_row(*r)
            con.print(tb)
        return
    for title, head, rows in tables:
        print(title, file=out)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(), file=out)
        for r in rows:
            print("  " + "  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip(), file=out)
        print(file=out)
