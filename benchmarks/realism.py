"""Held-out realism: fit the earlier part of a log, generate the later part, compare with the real later part.

For every public trace in ../shared/data/traces, a bursty sample of ServeGen's m-large pool and
synthetic logs of known structure (batches on a tick, timestamps quantised to 1 s, 7 days with
daily and weekly cycles, sparse clients, sessions), this runs the commands a user runs:

    servegen-load fit LOG -o pool.npz --range 0:SPLIT [...]      (the earlier part)
    servegen-load generate later.yaml -o gen.jsonl               (pool: pool.npz, start: SPLIT, duration: rest)
    servegen-load generate naive.yaml -o poisson.jsonl           (Poisson at the earlier part's mean rate)

and prints, per scale T from 1 s to 3600 s holding >= 30 windows of the later part, the Fano
factor (F) and CV of request counts per window for: the fitted part, the generated
continuation, the real later part and Poisson; `kept` when the generated F and CV are within a
third of the fitted part's; `beats` when the generated stream is closer to the real later part
than Poisson is, wherever the fitted part itself is (`drift` where the trace's later part is
further from its earlier part than Poisson is: no model of the past can be expected to win).
Multi-day logs add the hourly-count correlation with the real later days and the level (mean
rate generated / mean rate of the fitted days). See `servegen_load.workload.heldout`.

    python benchmarks/realism.py [--only NAME] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from servegen_load.workload.heldout import compare, format_rows, hourly_correlation, request_times
from servegen_load.workload.logs import read_log

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TRACES = DATA / "traces"
MONDAY = float(np.datetime64("2026-11-30T00:00:00", "s").astype(np.int64))  # a Monday, 00:00 UTC


@dataclass
class Case:
    name: str
    log: Path
    split: float                        # seconds after the first request
    end: float | None = None            # default: the log's last request
    fit_args: list[str] = field(default_factory=list)
    multi_day: bool = False


def cli(*args: str) -> str:
    exe = shutil.which("servegen-load") or "servegen-load"
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"servegen-load {' '.join(args)} failed: {r.stderr.strip()[-400:]}")
    return r.stderr


def log_times(path: Path, fit_args: list[str]) -> np.ndarray:
    from servegen_load.workload.logs import ColumnMap

    cols = ColumnMap()
    if "--client-column" in fit_args:
        cols = ColumnMap(client=fit_args[fit_args.index("--client-column") + 1])
    t = np.concatenate([c.origin + c.t for c in read_log(path, "auto", cols)])
    t.sort()
    return t - t[0]


# --------------------------------------------------------------------------- synthetic logs


def _renewal_times(rate_fn, span: float, cv: float, rng: np.random.Generator, step: float = 60.0) -> np.ndarray:
    """Gamma(1/cv^2) gaps in operational time Lambda(t) = integral of rate_fn, mapped back to time."""
    grid = np.arange(0.0, span + step, step)
    lam = np.concatenate([[0.0], np.cumsum(rate_fn(grid[:-1] + step / 2) * step)])
    k = 1.0 / cv**2
    n = int(lam[-1] * 1.2 + 100)
    u = np.cumsum(rng.gamma(k, 1.0 / k, n)) * rng.uniform(0.999, 1.001)
    u = u[u < lam[-1]]
    return np.interp(u, lam, grid)


def _write(path: Path, t: np.ndarray, rng: np.random.Generator, client: np.ndarray | None = None,
           fmt: str = "{:.3f}") -> None:
    order = np.argsort(t, kind="stable")
    t = t[order]
    inp = np.maximum(1, rng.lognormal(6.0, 1.0, t.size)).astype(int)
    out = np.maximum(1, inp * 0.2 * rng.lognormal(0, 0.6, t.size)).astype(int)
    with path.open("w") as fh:
        fh.write("time,tenant,prompt_tokens,completion_tokens\n" if client is not None else
                 "time,prompt_tokens,completion_tokens\n")
        cl = client[order] if client is not None else None
        for i in range(t.size):
            mid = f"c{cl[i]}," if cl is not None else ""
            fh.write(f"{fmt.format(t[i])},{mid}{inp[i]},{out[i]}\n")


def synth_tick(path: Path, hours: float = 6.0, period: float = 5.0, seed: int = 1) -> None:
    """Batches on a 5 s tick: negative-binomial sizes (mean 6, Var/mean 4)."""
    rng = np.random.default_rng(seed)
    ticks = np.arange(0.0, hours * 3600, period)
    n = rng.poisson(rng.gamma(2.0, 3.0, ticks.size))
    _write(path, MONDAY + 3.0 + np.repeat(ticks, n), rng)


def synth_quantised(path: Path, hours: float = 6.0, seed: int = 2) -> None:
    """A bursty client (Gamma gaps, CV 2, 1.5 req/s) logged on a 1 s clock."""
    rng = np.random.default_rng(seed)
    t = _renewal_times(lambda x: np.full_like(x, 1.5), hours * 3600, 2.0, rng)
    _write(path, np.floor(MONDAY + 7.0 + t), rng, fmt="{:.0f}")


def weekly_rate(x: np.ndarray, base: float) -> np.ndarray:
    h = (x / 3600.0) % 24
    day = (x // 86400) % 7  # x = seconds after Monday 00:00
    return base * (1.0 + 0.8 * np.sin(2 * np.pi * (h - 9.0) / 24.0)) * np.where(day >= 5, 0.6, 1.0)


def synth_week(path: Path, days: float = 7.0, base: float = 0.15, seed: int = 3) -> None:
    """7 days from a Monday: a daily cycle (x9 peak to trough), weekends at 60%, Gamma gaps CV 2, 3 tenants."""
    rng = np.random.default_rng(seed)
    parts, cl = [], []
    for c, share in enumerate((0.6, 0.3, 0.1)):
        t = _renewal_times(lambda x, s=share: weekly_rate(x, base * s), days * 86400, 2.0, rng)
        parts.append(t)
        cl.append(np.full(t.size, c))
    _write(path, MONDAY + 30.0 + np.concatenate(parts), rng, np.concatenate(cl))


def synth_sparse(path: Path, clients: int = 60, days: float = 2.0, seed: int = 4) -> None:
    """Many low-rate tenants (0.002..0.03 req/s, 1..18 requests a 600 s window), Gamma gaps CV 1.5,
    each with its own daily phase."""
    rng = np.random.default_rng(seed)
    parts, cl = [], []
    for c in range(clients):
        r = rng.uniform(0.002, 0.03)
        ph = rng.uniform(0, 24)
        t = _renewal_times(lambda x, r=r, ph=ph: r * (1 + 0.5 * np.sin(2 * np.pi * ((x / 3600) - ph) / 24)),
                           days * 86400, 1.5, rng)
        parts.append(t)
        cl.append(np.full(t.size, c))
    _write(path, MONDAY + 11.0 + np.concatenate(parts), rng, np.concatenate(cl))


def synth_sessions(path: Path, hours: float = 8.0, included: bool = False, seed: int = 5) -> None:
    """Sessions of 1..6 turns starting as a Poisson process (0.08/s), think time ~ Exp(40 s); inputs
    exclude (or include) the history."""
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.exponential(1 / 0.08, int(hours * 3600 * 0.08 * 1.2)))
    starts = starts[starts < hours * 3600]
    lines = ["time,conv,prompt_tokens,completion_tokens"]
    rows = []
    for s, t0 in enumerate(starts):
        t, hist = t0, 0
        for _ in range(int(rng.integers(1, 7))):
            new, out = int(rng.integers(20, 400)), int(rng.integers(10, 300))
            inp = hist + new if included else new
            rows.append((MONDAY + 5.0 + t, s, inp, out))
            hist = (hist + new + out)
            t += float(rng.exponential(40.0)) + 2.0
    rows.sort()
    lines += [f"{a:.3f},s{b},{c},{d}" for a, b, c, d in rows]
    path.write_text("\n".join(lines) + "\n")


def synth_servegen(path: Path, tmp: Path) -> None:
    """Bursty clients of ServeGen's m-large (window CV >= 2, the 8 busiest) for 4 h from 08:00, at 6 req/s,
    generated by this package and written as a gateway log."""
    (tmp / "sg.yaml").write_text('pool: m-large\nstart: "08:00"\nduration: 14400\nrate: 6\nseed: 11\n'
                                 "clients: {cv: [2, 1000], top: 8}\n")
    cli("generate", str(tmp / "sg.yaml"), "-o", str(tmp / "sg.jsonl"))
    import orjson

    rows = []
    with open(tmp / "sg.jsonl", "rb") as fh:
        fh.readline()
        for line in fh:
            d = orjson.loads(line)
            rows.append(f"{MONDAY + 8 * 3600 + d['t']:.6f},{d['client']},{d['input_tokens']},{d['output_tokens']}")
    path.write_text("time,tenant,prompt_tokens,completion_tokens\n" + "\n".join(rows) + "\n")


def synth_models(path: Path, hours: float = 6.0, seed: int = 7) -> None:
    """A BurstGPT-layout log mixing two models: ChatGPT at 1.2 req/s with Gamma gaps CV 1.5 and
    GPT-4 at 0.3 req/s with CV 3 and longer prompts (the Model column is the client)."""
    rng = np.random.default_rng(seed)
    rows = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    evs = []
    for model, rate, cv, mu in (("ChatGPT", 1.2, 1.5, 5.5), ("GPT-4", 0.3, 3.0, 6.5)):
        t = _renewal_times(lambda x, r=rate: np.full_like(x, r), hours * 3600, cv, rng)
        evs += [(int(x), model, int(max(1, rng.lognormal(mu, 1.0))), int(rng.integers(0, 500))) for x in t]
    evs.sort()
    rows += [f"{t},{m},{a},{b},{a + b},Conversation log" for t, m, a, b in evs]
    path.write_text("\n".join(rows) + "\n")


def synth_heavy_tail(path: Path, hours: float = 6.0, seed: int = 8) -> None:
    """One tenant with 60% of 2 req/s (Gamma gaps, CV 2), a hundred tiny ones sharing the rest
    (Zipf-like shares, Poisson)."""
    rng = np.random.default_rng(seed)
    parts = [_renewal_times(lambda x: np.full_like(x, 1.2), hours * 3600, 2.0, rng)]
    w = 1.0 / np.arange(1, 101) ** 1.1
    for r in 0.8 * w / w.sum():
        parts.append(_renewal_times(lambda x, r=r: np.full_like(x, r), hours * 3600, 1.0, rng))
    cl = np.concatenate([np.full(p.size, i) for i, p in enumerate(parts)])
    _write(path, MONDAY + 9.0 + np.concatenate(parts), rng, cl)


def synth_outage(path: Path, hours: float = 12.0, seed: int = 9) -> None:
    """1 req/s with Gamma gaps (CV 1.5) and nothing at all from hour 2 to hour 5 (an outage)."""
    rng = np.random.default_rng(seed)
    t = _renewal_times(lambda x: np.where((x >= 2 * 3600) & (x < 5 * 3600), 0.0, 1.0), hours * 3600, 1.5, rng)
    _write(path, MONDAY + 4.0 + t, rng)


def synth_storm(path: Path, hours: float = 6.0, seed: int = 10) -> None:
    """1 req/s Poisson with a burst storm: 10x for 5 minutes at 01:30 and at 04:30."""
    rng = np.random.default_rng(seed)
    def storm(x: np.ndarray) -> np.ndarray:
        return 1.0 + 9.0 * (((x >= 5400) & (x < 5700)) | ((x >= 16200) & (x < 16500)))

    _write(path, MONDAY + 2.0 + _renewal_times(storm, hours * 3600, 1.0, rng, step=10.0), rng)


def synth_trend(path: Path, days: float = 4.0, seed: int = 11) -> None:
    """A service growing 30% a day (0.2 req/s on day 1) with a daily cycle, Gamma gaps CV 1.5."""
    rng = np.random.default_rng(seed)
    def rate(x: np.ndarray) -> np.ndarray:
        return 0.2 * 1.3 ** (x / 86400) * (1 + 0.6 * np.sin(2 * np.pi * (x / 3600 - 9) / 24))

    _write(path, MONDAY + 6.0 + _renewal_times(rate, days * 86400, 1.5, rng), rng)


def synth_poisson(path: Path, hours: float = 6.0, seed: int = 12) -> None:
    """Plain Poisson arrivals at 2 req/s: the fit must not be worse than Poisson (renewal, CV ~1)."""
    rng = np.random.default_rng(seed)
    _write(path, MONDAY + 1.0 + np.cumsum(rng.exponential(0.5, int(hours * 3600 * 2))), rng)


def synth_cron(path: Path, hours: float = 6.0, seed: int = 13) -> None:
    """Five cron jobs (each a request every 60 s exactly, its own phase, 3 requests a tick) on top
    of a Poisson background of 0.2 req/s; cron jobs are tenants cron0..4, background tenant 'web'."""
    rng = np.random.default_rng(seed)
    parts, cl = [], []
    for c in range(5):
        t = np.repeat(np.arange(rng.uniform(0, 60), hours * 3600, 60.0), 3)
        parts.append(t)
        cl.append(np.full(t.size, c))
    bg = np.cumsum(rng.exponential(5.0, int(hours * 3600 / 5 * 1.2)))
    bg = bg[bg < hours * 3600]
    parts.append(bg)
    cl.append(np.full(bg.size, 5))
    _write(path, MONDAY + 0.5 + np.concatenate(parts), rng, np.concatenate(cl))


# --------------------------------------------------------------------------- one case


def run_case(case: Case, tmp: Path) -> list[str]:
    t = log_times(case.log, case.fit_args)
    end = case.end if case.end is not None else float(t[-1]) + 1e-6
    d = tmp / case.name
    d.mkdir(exist_ok=True)
    pool = d / "pool.npz"
    t0 = time.perf_counter()
    cli("fit", str(case.log), "-o", str(pool), "--range", f"0:{case.split:g}", *case.fit_args)
    later = end - case.split
    (d / "later.yaml").write_text(f"pool: {pool}\nstart: {case.split:.6f}\nduration: {later:.6f}\nseed: 1\n")
    cli("generate", str(d / "later.yaml"), "-o", str(d / "gen.jsonl"))
    fit_t = t[t < case.split]
    fit_span, cut = _cut_outages(fit_t, case.split, pool)
    rate = fit_t.size / case.split
    (d / "naive.yaml").write_text(f"naive: {{rate: {rate:.9g}, input_tokens: 1, output_tokens: 1}}\n"
                                  f"duration: {later:.6f}\nseed: 1\n")
    cli("generate", str(d / "naive.yaml"), "-o", str(d / "poisson.jsonl"))
    secs = time.perf_counter() - t0
    gen, pois = request_times(d / "gen.jsonl"), request_times(d / "poisson.jsonl")
    real = t[(t >= case.split) & (t < end)] - case.split
    rows = compare(cut, fit_span, gen, real, pois, later)
    out = [f"## {case.name}: fit 0..{case.split:g} s ({fit_t.size} requests), generate {later:g} s "
           f"(real {real.size}, generated {gen.size}, Poisson {pois.size}); {secs:.1f} s"
           + (f"; 'fitted' stats without the {case.split - fit_span:g} s of outage fit reported" if cut is not fit_t
              else ""),
           "  scale  wins | F: fitted    gen   real Poisson | CV: fitted  gen   real Poisson | burst, vs Poisson"]
    out += ["  " + x for x in format_rows(rows)]
    if case.multi_day:
        corr = hourly_correlation(gen, real, later)
        days = np.floor(case.split / 86400.0) * 86400.0  # the fitted part's whole days
        day_rate = np.count_nonzero(t < days) / days
        lvl = (gen.size / later) / day_rate
        out.append(f"  hourly-count correlation with the real later days {corr:.3f}; level {lvl:.3f} of the fitted "
                   f"whole days' (real later days: {real.size / later / day_rate:.3f})")
    ok = all(r.kept for r in rows) and all(r.verdict != "LOSES" for r in rows)
    out.append(f"  => {'PASS' if ok else 'FAIL'}: burstiness kept at {sum(r.kept for r in rows)}/{len(rows)} scales; "
               f"beats Poisson at {sum(r.verdict == 'beats' for r in rows)}, drift at "
               f"{sum(r.verdict == 'drift' for r in rows)}, loses at {sum(r.verdict == 'LOSES' for r in rows)}")
    return out


def _cut_outages(t: np.ndarray, span: float, pool_file: Path) -> tuple[float, np.ndarray]:
    """The fitted part with the outages `fit` detected cut out (later times moved back): the traffic
    whose burstiness the continuation must keep (outages are not replayed past the span)."""
    from servegen_load.workload.continuation import outage_windows
    from servegen_load.workload.pool import load_pool

    pool = load_pool(pool_file)
    down = outage_windows(pool.rate, pool.window)
    if not down.any():
        return span, t
    W = pool.window
    w = np.minimum((t // W).astype(np.int64), down.size - 1)
    shift = np.concatenate([[0], np.cumsum(down)]) * W  # seconds of outage before each window
    keep = ~down[w]
    return span - float(down.sum()) * W, t[keep] - shift[w[keep]]


def sparse_ablation(case: Case, tmp: Path) -> list[str]:
    """Why renewal mode shrinks window rates: regenerate the fitted span itself (in-sample) with the
    shrinkage, without it (B_w = 1: raw window counts as rates) and in `servegen` mode (each
    window's count fixed), and compare the 600 s counts per client with the log's."""
    from servegen_load.workload.pool import load_pool

    d = tmp / case.name
    pool = load_pool(d / "pool.npz")
    pool.extra["rate_signal_var"] = np.full_like(pool.extra["rate_signal_var"], 1e20)  # B_w = 1: raw rates
    pool.save(d / "raw.npz")
    t, cl = _log_clients(case.log, case.fit_args)
    keep = t < case.split
    real = _per_client_fano(t[keep], cl[keep], case.split)
    lines = ["  sparse windows, in-sample (fitted day regenerated), 600 s counts per client: median Fano, "
             "median |log(F_gen / F_log)|"]
    for label, pool_file, mode in (("renewal, shrunk (default)", "pool.npz", "renewal"),
                                   ("renewal, raw window rates", "raw.npz", "renewal"),
                                   ("servegen (fixed counts)", "pool.npz", "servegen")):
        (d / "ins.yaml").write_text(f"pool: {d / pool_file}\nstart: 0\nduration: {case.split:g}\nseed: 2\n"
                                    f"arrival: {mode}\n")
        cli("generate", str(d / "ins.yaml"), "-o", str(d / "ins.jsonl"))
        gt, gc = _request_clients(d / "ins.jsonl")
        gen = _per_client_fano(gt, gc, case.split)
        both = sorted(set(real) & set(gen))
        err = np.median([abs(np.log(gen[k] / real[k])) for k in both if gen[k] > 0 and real[k] > 0])
        lines.append(f"    {label:<28} median Fano {np.median([gen[k] for k in both]):6.3f} (log "
                     f"{np.median([real[k] for k in both]):6.3f}); median |log ratio| {err:.3f}")
    return lines


def extreme_cv(samples: int = 300) -> list[str]:
    """Gap CV realised in ServeGen m-large windows whose measured CV is >= 10 (one window of the
    window's expected count, in the middle of three): the pool's own family and shape (Weibull
    shapes matched to the measured CV, as `gap_cv: measured` does) against the on/off gaps
    generation now uses there."""
    from servegen_load.workload import arrivals
    from servegen_load.workload.distributions import Family
    from servegen_load.workload.pool import load_pool

    p = load_pool("m-large")
    c, w = np.nonzero((p.cv >= 10) & (p.rate > 0))
    rng = np.random.default_rng(0)
    pick = rng.choice(c.size, min(samples, c.size), replace=False)
    res: dict[str, list[float]] = {"pool family": [], "on/off": []}
    wts = []
    for i in pick:
        ci, wi = c[i], w[i]
        cv, r, fam, sh = float(p.cv[ci, wi]), float(p.rate[ci, wi]), int(p.family[ci, wi]), float(p.shape[ci, wi])
        if fam == Family.WEIBULL:
            sh = float(arrivals.weibull_shape_for_cv(np.array([cv]))[0])
        wts.append(r * 600.0)
        for name, (f, s) in (("pool family", (fam, sh)), ("on/off", (int(Family.ONOFF), cv))):
            parts = [x for x, _ in arrivals.renewal(np.arange(4) * 600.0, np.full(3, r), np.full(3, f, dtype=np.int8),
                                                    np.full(3, s), rng)]
            t = np.concatenate(parts) if parts else np.zeros(0)
            g = np.diff(t[(t >= 600) & (t < 1200)])
            res[name].append((g.std(ddof=1) / g.mean()) / cv if g.size > 2 else 0.0)
    out = [f"## extreme-CV windows of m-large (CV >= 10: {c.size} windows, {pick.size} sampled, median count "
           f"{np.median(wts):.0f}): realised gap CV / measured"]
    for name, v in res.items():
        out.append(f"  {name:<12} request-weighted mean {np.average(v, weights=wts):.3f}, median {np.median(v):.3f}")
    return out


def _log_clients(path: Path, fit_args: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from servegen_load.workload.logs import ColumnMap

    col = fit_args[fit_args.index("--client-column") + 1]
    ts, cs = [], []
    for c in read_log(path, "auto", ColumnMap(client=col)):
        ts.append(c.origin + c.t)
        cs.append(np.asarray(c.clients, dtype=object)[c.client])
    t = np.concatenate(ts)
    return t - t.min(), np.concatenate(cs)


def _request_clients(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import orjson

    ts, cs = [], []
    with open(path, "rb") as fh:
        fh.readline()
        for line in fh:
            r = orjson.loads(line)
            ts.append(r["t"])
            cs.append(r["client"].split(":", 1)[1])
    return np.asarray(ts), np.asarray(cs, dtype=object)


def _per_client_fano(t: np.ndarray, cl: np.ndarray, span: float) -> dict[str, float]:
    from servegen_load.workload.heldout import counts_stats

    return {str(k): counts_stats(t[cl == k], span, 600.0)[0] for k in np.unique(cl)}


def cases(tmp: Path) -> list[Case]:
    out: list[Case] = []
    az = TRACES / "azure2023"
    for kind in ("code", "conv"):
        p = az / f"AzureLLMInferenceTrace_{kind}.csv"
        if p.exists():
            out.append(Case(f"azure2023-{kind}", p, split=float(log_times(p, [])[-1]) / 2))
    mc = TRACES / "mooncake" / "synthetic_trace.jsonl"
    if mc.exists():
        out.append(Case("mooncake", mc, split=float(log_times(mc, [])[-1]) / 2))
    synth_servegen(tmp / "servegen.csv", tmp)
    out.append(Case("servegen-m-large-bursty", tmp / "servegen.csv", split=7200.0, fit_args=["--client-column", "tenant"]))
    synth_tick(tmp / "tick.csv")
    out.append(Case("synthetic-batches-5s-tick", tmp / "tick.csv", split=3 * 3600.0))
    synth_quantised(tmp / "quantised.csv")
    out.append(Case("synthetic-quantised-1s", tmp / "quantised.csv", split=3 * 3600.0))
    synth_week(tmp / "week.csv")
    out.append(Case("synthetic-7-days", tmp / "week.csv", split=4 * 86400.0, fit_args=["--client-column", "tenant"],
                    multi_day=True))
    out.append(Case("synthetic-7-days-split-4.4d", tmp / "week.csv", split=4.4 * 86400.0,
                    fit_args=["--client-column", "tenant"], multi_day=True))
    out.append(Case("synthetic-7-days-fit-6-generate-sunday", tmp / "week.csv", split=6 * 86400.0,
                    fit_args=["--client-column", "tenant"], multi_day=True))
    synth_week(tmp / "weeks3.csv", days=21.0, base=0.05, seed=6)
    out.append(Case("synthetic-21-days-fit-14", tmp / "weeks3.csv", split=14 * 86400.0,
                    fit_args=["--client-column", "tenant"], multi_day=True))
    synth_models(tmp / "models.csv")
    out.append(Case("synthetic-burstgpt-two-models", tmp / "models.csv", split=3 * 3600.0))
    synth_heavy_tail(tmp / "heavy.csv")
    out.append(Case("synthetic-heavy-tailed-clients", tmp / "heavy.csv", split=3 * 3600.0,
                    fit_args=["--client-column", "tenant"]))
    synth_outage(tmp / "outage.csv")
    out.append(Case("synthetic-3h-outage-in-fitted-part", tmp / "outage.csv", split=8 * 3600.0))
    synth_storm(tmp / "storm.csv")
    out.append(Case("synthetic-burst-storm", tmp / "storm.csv", split=3 * 3600.0))
    out.append(Case("synthetic-burst-storm-window-60s", tmp / "storm.csv", split=3 * 3600.0, fit_args=["--window", "60"]))
    synth_trend(tmp / "trend.csv")
    out.append(Case("synthetic-growing-30pct-a-day", tmp / "trend.csv", split=3 * 86400.0, multi_day=True))
    synth_poisson(tmp / "poisson.csv")
    out.append(Case("synthetic-poisson", tmp / "poisson.csv", split=3 * 3600.0))
    synth_cron(tmp / "cron.csv")
    out.append(Case("synthetic-cron-60s", tmp / "cron.csv", split=3 * 3600.0, fit_args=["--client-column", "tenant"]))
    synth_week(tmp / "weeks2.csv", days=14.0, base=0.08, seed=14)
    out.append(Case("synthetic-14-days-fit-9-generate-wed-to-sun", tmp / "weeks2.csv", split=9 * 86400.0,
                    fit_args=["--client-column", "tenant"], multi_day=True))
    synth_sparse(tmp / "sparse.csv")
    out.append(Case("synthetic-sparse-clients", tmp / "sparse.csv", split=86400.0,
                    fit_args=["--client-column", "tenant", "--min-requests", "20"]))
    for inc in (False, True):
        name = f"synthetic-sessions-history-{'included' if inc else 'excluded'}"
        synth_sessions(tmp / f"{name}.csv", included=inc)
        out.append(Case(name, tmp / f"{name}.csv", split=4 * 3600.0, fit_args=["--session-column", "conv"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only the cases whose name contains this (or one of these, comma-separated)")
    ap.add_argument("--keep", help="directory to keep logs, pools and generated files in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(args.keep or tmpd)
        tmp.mkdir(parents=True, exist_ok=True)
        failed = 0
        for case in cases(tmp):
            if args.only and not any(x in case.name for x in args.only.split(",")):
                continue
            try:
                lines = run_case(case, tmp)
                if "sparse" in case.name:
                    lines += sparse_ablation(case, tmp)
            except RuntimeError as e:
                lines = [f"## {case.name}: ERROR {e}"]
            failed += any("FAIL" in x or "ERROR" in x for x in lines)
            print("\n".join(lines), flush=True)
        if not args.only or "extreme" in args.only.split(","):
            print("\n".join(extreme_cv()))
        print(f"\n{failed} case(s) failed")


if __name__ == "__main__":
    main()
