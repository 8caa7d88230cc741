"""fit: gap families and shapes are recovered, sparse clients and windows are handled as documented,
a pool -> requests -> fit -> requests round trip keeps the realism statistics, and on the Azure 2023
traces a fit of the first half matches the second half's burstiness better than Poisson does."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_load.metrics.realism import compare_streams, stream_stats
from servegen_load.scenario import parse_scenario
from servegen_load.workload.compose import generate_to_file
from servegen_load.workload.distributions import Family, LengthTable, family_cv, ks_distance
from servegen_load.workload.fit import FitOptions, fit_chunks, fit_gaps, fit_logs, spearman_by_group
from servegen_load.workload.logs import load_log
from servegen_load.workload.pool import ClientPool, build_tables, load_pool

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT.parent / "shared" / "data" / "traces" / "azure2023"
AZURE_WINDOW = 90.0  # ~1.5 on/off cycles of Azure code (docs/fit-guide.md explains the choice)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def generate(tmp: Path, scenario: dict, name: str) -> Path:
    out = tmp / f"{name}.jsonl"
    generate_to_file(parse_scenario(scenario, base_dir=tmp), out)
    return out


# --------------------------------------------------------------------------- gap families


def test_fit_gaps_recovers_family_and_shape() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    cases = [(Family.GAMMA, 0.3, rng.gamma(0.3, 5.0, n)),
             (Family.WEIBULL, 0.6, rng.weibull(0.6, n) * 3.0),
             (Family.LOGNORMAL, 0.9, np.exp(rng.normal(1.0, 0.9, n))),
             (Family.EXPONENTIAL, 1.0, rng.exponential(2.0, n))]
    gaps = np.concatenate([c[2] for c in cases])
    group = np.repeat(np.arange(len(cases)), n)
    fit = fit_gaps(gaps, group, len(cases))
    for i, (fam, shape, x) in enumerate(cases):
        assert fit.family[i] == fam, (i, fit.family[i], fit.loglik[i])
        assert fit.shape[i] == pytest.approx(shape, rel=0.06)
        assert fit.cv[i] == pytest.approx(x.std() / x.mean(), rel=0.01)
    # scales are scipy's: gamma theta, weibull lambda, lognormal exp(mu), exponential mean
    assert fit.scale[0] == pytest.approx(5.0, rel=0.08)
    assert fit.scale[1] == pytest.approx(3.0, rel=0.08)
    assert fit.scale[2] == pytest.approx(np.e, rel=0.05)
    assert fit.scale[3] == pytest.approx(2.0, rel=0.05)


def test_cv_guard_keeps_burstiness_of_truncated_timestamps() -> None:
    """Gamma k=0.02 gaps truncated to the microsecond: likelihood prefers a lognormal whose CV is
    astronomically larger than the data's; the guard keeps the implied CV near the measured one."""
    rng = np.random.default_rng(2)
    t = np.floor(np.cumsum(rng.gamma(0.02, 50.0, 5000)) * 1e6) / 1e6
    gaps = np.maximum(np.diff(t), 5e-7)
    unguarded = fit_gaps(gaps, np.zeros(gaps.size, dtype=np.int64), 1, cv_tolerance=np.inf)
    assert family_cv(int(unguarded.family[0]), float(unguarded.shape[0])) > 10 * unguarded.cv[0]
    fit = fit_gaps(gaps, np.zeros(gaps.size, dtype=np.int64), 1)
    implied = family_cv(int(fit.family[0]), float(fit.shape[0]))
    assert implied == pytest.approx(float(fit.cv[0]), rel=0.5)


def test_spearman_by_group_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    n = 3000
    g = rng.integers(0, 3, n)
    x = rng.integers(0, 50, n)  # many ties
    y = (x * (g - 1) + rng.integers(0, 40, n)).clip(0)
    big = x * 100_000  # takes the sort path instead of the dense histogram
    for xs in (x, big):
        r = spearman_by_group(xs, y, g, 4)
        for k in range(3):
            assert r[k] == pytest.approx(spearmanr(xs[g == k], y[g == k])[0], abs=1e-6)
        assert np.isnan(r[3])


# --------------------------------------------------------------------------- a pool we know


def _known_pool(path: Path) -> ClientPool:
    """steady (Poisson), bursty (Gamma k=0.25, off in windows 4-5), weib (Weibull k=0.5),
    slow (under 10 requests per window), rare (~20 requests in all: merged into `other`)."""
    w = 12
    rate = np.zeros((5, w))
    rate[0] = 5.0
    rate[1] = 3.0
    rate[1, 4:6] = 0.0
    rate[2] = 2.0
    rate[3] = 0.0125
    rate[4] = 20 / 7200
    fam = np.array([Family.EXPONENTIAL, Family.GAMMA, Family.WEIBULL, Family.EXPONENTIAL, Family.EXPONENTIAL])
    family = np.where(rate > 0, fam[:, None], Family.NONE).astype(np.int8)
    shape = np.where(rate > 0, np.array([1.0, 0.25, 0.5, 1.0, 1.0])[:, None], 0.0)
    cv = np.array([family_cv(int(f), float(k)) if f else 0.0 for f, k in zip(family.ravel(), shape.ravel(),
                                                                               strict=True)]).reshape(rate.shape)
    tables = []
    index = np.zeros((5, 1, 2), dtype=np.int32)
    for c in range(5):
        for f, (lo, hi) in enumerate([(10 + 100 * c, 400 + 300 * c), (1, 50 + 40 * c)]):
            v = np.arange(lo, hi, 7, dtype=np.float64)
            tables.append(LengthTable.from_pmf(v, np.exp(-v / (hi / 3))))
            index[c, 0, f] = len(tables) - 1
    values, cdf, offsets = build_tables(tables)
    pool = ClientPool(name="known", category="language", clients=["steady", "bursty", "weib", "slow", "rare"],
                      window=600.0, window_start=np.arange(w) * 600.0, rate=rate, cv=cv, family=family,
                      shape=shape, scale=np.where(rate > 0, 1 / np.maximum(rate, 1e-9), 0), data_window=21600.0,
                      data_start=np.array([0.0]), fields=["input_tokens", "output_tokens"], table_index=index,
                      values=values, cdf=cdf, offsets=offsets)
    pool.save(path)
    return pool


def test_fit_recovers_a_known_pool(tmp_path: Path) -> None:
    truth = _known_pool(tmp_path / "known.npz")
    reqs = generate(tmp_path, {"pool": "known.npz", "duration": 7200, "seed": 11}, "known")
    notes = io.StringIO()
    pool, report = fit_logs([reqs], options=FitOptions(window=600, name="refit"), stream=notes)
    assert "merged into client 'other'" in notes.getvalue()
    assert pool.clients == ["known:steady", "known:bursty", "known:weib", "known:slow", "other"]
    assert report.merged_clients == 1 and 5 <= report.merged_requests <= 45
    assert pool.window_start.size == 12 and pool.category == "language"
    assert pool.fields == ["input_tokens", "output_tokens"]
    # rates: steady within 5% per window; bursty's off windows stay off
    np.testing.assert_allclose(pool.rate[0], 5.0, rtol=0.06)
    assert np.all(pool.rate[1, 4:6] == 0) and np.all(pool.family[1, 4:6] == Family.NONE)
    assert pool.rate[1].sum() * 600 == pytest.approx(truth.rate[1].sum() * 600, rel=0.15)
    # families: the majority of active windows pick the true family, shapes close
    active = pool.rate[1] > 0
    assert np.mean(pool.family[0] == Family.EXPONENTIAL) >= 0.5  # AIC keeps the 1-parameter family
    assert np.mean(pool.family[1][active] == Family.GAMMA) >= 0.7
    assert np.median(pool.shape[1][active & (pool.family[1] == Family.GAMMA)]) == pytest.approx(0.25, rel=0.2)
    assert np.mean(pool.family[2] == Family.WEIBULL) >= 0.7
    assert np.median(pool.shape[2][pool.family[2] == Family.WEIBULL]) == pytest.approx(0.5, rel=0.2)
    # slow: fewer than 10 requests per window -> exponential at the window's rate
    few = (pool.rate[3] > 0) & (pool.rate[3] * 600 < 10)
    assert few.sum() >= 6 and np.all(pool.family[3][few] == Family.EXPONENTIAL)
    assert np.all(pool.cv[3][few] == 1.0) and np.allclose(pool.scale[3][few], 1 / pool.rate[3][few], rtol=1e-5)
    # length tables: within the 99.9% KS band of a sample of the client's size, plus compression
    for c in range(4):
        n = float(pool.rate[c].sum() * 600)
        for f in pool.fields:
            got, want = pool.table(c, 0, f), truth.table(c, 0, f)
            assert got is not None and want is not None
            assert ks_distance(got, want) < 1.95 / np.sqrt(n) + 0.004, (c, f, n)
    # the file loads with the optional arrays
    pool.save(tmp_path / "refit.npz")
    back = load_pool(tmp_path / "refit.npz")
    assert back.extra["rank_corr"].shape == (5,) and back.meta["fit"]["window"] == 600.0


def test_round_trip_m_small(tmp_path: Path) -> None:
    """m-small, day 12 17:30-20:30 at 1% (about 190k requests): generate, fit, generate from the fit;
    `compare` must show the two within the stated tolerances."""
    a = generate(tmp_path, {"pool": "m-small", "day": 12, "start": "17:30", "duration": 10800, "scale": 0.01,
                            "seed": 3}, "a")
    r = cli("fit", str(a), "-o", str(tmp_path / "fitted.npz"), "--window", "600")
    assert r.returncode == 0, r.stderr
    b = generate(tmp_path, {"pool": "fitted.npz", "duration": 10800, "seed": 4}, "b")
    r = cli("compare", str(b), str(a), "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["key"]: x for x in json.loads(r.stdout)["rows"]}
    assert rows["rate.corr"]["a"] >= 0.95
    assert rows["burst.fano.10s"]["deviation"] <= 0.20
    assert rows["burst.fano.60s"]["deviation"] <= 0.20
    assert rows["input.ks"]["a"] <= 0.03 and rows["output.ks"]["a"] <= 0.03
    assert rows["clients.top5"]["deviation"] <= 0.05
    # and as a CI gate on those rows
    gate = cli("compare", str(b), str(a), "--max-distance", "0.2", "--ignore", "*.p*", "--ignore", "burst.*.1s",
               "--ignore", "*.w1")
    assert gate.returncode == 0, gate.stdout + gate.stderr


# --------------------------------------------------------------------------- Azure 2023


@pytest.mark.parametrize("trace", ["code", "conv"])
def test_azure_fit_beats_poisson_on_burstiness(tmp_path: Path, trace: str) -> None:
    log = load_log(AZURE / f"AzureLLMInferenceTrace_{trace}.csv")
    half = float(log.t.max() - log.t.min()) / 2
    pool, _ = fit_chunks([log], FitOptions(window=AZURE_WINDOW, name=f"azure-{trace}", time_range=(0.0, half)))
    assert pool.span >= half and pool.n_clients == 1
    pool.save(tmp_path / "fit.npz")
    real = stream_stats(log.time_range(half, None), "real second half")
    (tmp_path / "fit.yaml").write_text(f"pool: fit.npz\nduration: {half}\nseed: 0\n")
    naive = generate(tmp_path, {"naive": {"of": "fit.yaml"}, "duration": half, "seed": 1}, "naive")
    nv = compare_streams(stream_stats(load_log(naive)), real)
    fano_fit = {10: [], 60: []}
    for seed in range(3):
        gen = generate(tmp_path, {"pool": "fit.npz", "duration": half, "seed": seed}, f"fit{seed}")
        c = compare_streams(stream_stats(load_log(gen)), real)
        for s in fano_fit:
            fano_fit[s].append(c.row(f"burst.fano.{s}s").a)
    for s in (10, 60):
        f_real = nv.row(f"burst.fano.{s}s").b
        f_fit = float(np.mean(fano_fit[s]))
        f_naive = nv.row(f"burst.fano.{s}s").a
        assert abs(f_fit - f_real) < abs(f_naive - f_real), (trace, s, f_fit, f_naive, f_real)
        assert abs(np.log(f_fit / f_real)) < 0.5 * abs(np.log(f_naive / f_real)), (trace, s)


# --------------------------------------------------------------------------- columns and options


def test_fit_categories_sessions_and_options(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lines = ["time,tenant,conv,prompt_tokens,completion_tokens,reasoning_tokens"]
    t = 86400 * 19000 + 3600.0  # 01:00 UTC
    for s in range(400):
        tenant = f"t{s % 3}"
        hist = 0
        for _turn in range(1 + s % 4):
            t += float(rng.exponential(2.0))
            new = int(rng.integers(20, 200))
            out = int(rng.integers(10, 300))
            inp = hist + new
            lines.append(f"{t:.3f},{tenant},c{s},{inp},{out},{int(out * 0.8)}")
            hist = inp + out
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    r = cli("fit", str(tmp_path / "s.csv"), "-o", str(tmp_path / "s.npz"), "--client-column", "tenant",
            "--session-column", "conv", "--window", "60", "--start-of-day", "--min-requests", "10")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and "category reason" in r.stderr
    pool = load_pool(tmp_path / "s.npz")
    assert pool.category == "reason" and pool.fields == ["input_tokens", "output_tokens", "reason_ratio"]
    assert pool.meta["session_fields"] == ["turns", "think_time", "new_tokens", "first_input", "single_input"]
    assert pool.meta["session_history"] == "included"
    # start of day: the first request is at 01:00 UTC, so the first 60 windows are empty
    first = int(np.flatnonzero(pool.rate.sum(axis=0) > 0)[0])
    assert first == 60 and pool.meta["fit"]["origin"] % 86400 == 0
    idx = pool.extra["session_index"]
    c0 = pool.clients.index("t0")
    turns = pool.values[pool.offsets[idx[c0, 0]]:pool.offsets[idx[c0, 0] + 1]]
    assert set(turns.tolist()) <= {1.0, 2.0, 3.0, 4.0}
    new = pool.values[pool.offsets[idx[c0, 2]]:pool.offsets[idx[c0, 2] + 1]]
    assert new.min() >= 20 and new.max() < 200  # history subtracted: only the new tokens
    first_in = pool.values[pool.offsets[idx[c0, 3]]:pool.offsets[idx[c0, 3] + 1]]
    assert first_in.min() >= 20 and first_in.max() < 200  # first turns: no history yet
    assert idx[c0, 4] == -1  # every request of the log is in a session
    ratio = pool.table(c0, 0, "reason_ratio")
    assert ratio is not None and abs(ratio.quantile(0.5) - 0.8) < 0.01
    assert pool.extra["session_share"][c0] == pytest.approx(1.0)


def test_fit_without_clients_and_multimodal_columns(tmp_path: Path) -> None:
    rows = ["t,input_tokens,output_tokens,image_count,image_tokens"]
    rows += [f"{i * 0.5},{100 + i % 7},{10 + i % 5},{i % 3},{(i % 3) * 576}" for i in range(300)]
    (tmp_path / "mm.csv").write_text("\n".join(rows) + "\n")
    r = cli("fit", str(tmp_path / "mm.csv"), "-o", str(tmp_path / "mm.npz"))
    assert r.returncode == 0, r.stderr
    assert "no client column" in r.stderr and "one client 'all'" in r.stderr
    pool = load_pool(tmp_path / "mm.npz")
    assert pool.clients == ["all"] and pool.category == "multimodal"
    assert pool.fields == ["text_tokens", "image_count", "image_tokens", "output_tokens"]
    per_item = pool.table(0, 0, "image_tokens")
    assert per_item is not None and per_item.values.tolist() == [576.0]
    counts = pool.table(0, 0, "image_count")
    assert counts is not None and counts.values.tolist() == [0.0, 1.0, 2.0]


def test_rare_long_prompts_keep_their_share_of_the_tokens(tmp_path: Path) -> None:
    """0.1 % of prompts at 100-128k tokens hold about a tenth of the prompt tokens; a table bounded
    in request counts alone folded them into one 8.7k atom. The fitted table keeps them."""
    rng = np.random.default_rng(5)
    n = 40_000
    inp = np.maximum(1, rng.lognormal(6.5, 1.0, n)).astype(int)
    long = rng.choice(n, n // 1000, replace=False)
    inp[long] = rng.integers(100_000, 128_000, long.size)
    t = np.sort(rng.uniform(0.0, 3600.0, n))
    log = tmp_path / "tail.csv"
    log.write_text("t,input_tokens,output_tokens\n" + "".join(f"{x:.4f},{i},20\n" for x, i in zip(t, inp, strict=True)))
    pool, _ = fit_logs([log], options=FitOptions(), stream=io.StringIO())
    table = pool.table(0, 0, "input_tokens")
    assert table is not None
    assert table.values.max() >= 100_000
    assert table.mean() == pytest.approx(inp.mean(), rel=0.02)
    assert ks_distance(table, LengthTable.from_samples(inp.astype(np.float64))) <= 0.004


@pytest.mark.parametrize("end_given", [False, True])
def test_partial_last_window_is_a_rate(tmp_path: Path, end_given: bool) -> None:
    """A log of 1000 s in windows of 600 s: the last window's rate is its requests over the 400 s
    the log covers, so generating the log's span gives the log's count (not 13% fewer)."""
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0.0, 1000.0, 4000))
    log = tmp_path / "p.csv"
    log.write_text("t,input_tokens,output_tokens\n" + "".join(f"{x:.4f},10,5\n" for x in t))
    rng_opt = ["--range", "0:1000"] if end_given else []
    r = cli("fit", str(log), "-o", str(tmp_path / "p.npz"), "--window", "600", *rng_opt)
    assert r.returncode == 0, r.stderr
    pool = load_pool(tmp_path / "p.npz")
    assert pool.rate[0, 1] == pytest.approx(np.sum(t >= 600) / 400.0, rel=0.01)
    counts = [len(load_log(generate(tmp_path, {"pool": "p.npz", "duration": 1000, "seed": s}, f"g{s}")).t)
              for s in range(3)]
    assert float(np.mean(counts)) == pytest.approx(4000, rel=0.04)


def test_a_fit_is_the_same_in_every_process(tmp_path: Path) -> None:
    """Clients were coded in the order of a set of their names, which changes with the process's
    hash seed: with tied request counts, two fits of one log listed the clients in different orders."""
    rng = np.random.default_rng(3)
    n = 3000
    t = np.sort(rng.uniform(0, 3600, n))
    who = rng.permutation(np.repeat(np.arange(30), n // 30))  # 30 tenants, 100 requests each: all tied
    log = tmp_path / "log.csv"
    log.write_text("time,tenant,prompt_tokens,completion_tokens\n"
                   + "".join(f"{1796000000 + x:.3f},t{c},{100 + c},10\n" for x, c in zip(t, who, strict=True)))
    pools = []
    for seed in ("1", "2"):
        out = tmp_path / f"p{seed}.npz"
        r = subprocess.run([sys.executable, "-m", "servegen_load.cli", "fit", str(log), "-o", str(out), "--min-requests",
                            "10"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        pools.append(load_pool(out))
    assert pools[0].meta["clients"] == pools[1].meta["clients"]
    assert np.array_equal(pools[0].rate, pools[1].rate)


def test_rows_repeated_exactly_are_said(tmp_path: Path) -> None:
    """A log shipped twice looks like requests sent in pairs: the fit says how many rows repeat
    another exactly (and says nothing of a log without them)."""
    rng = np.random.default_rng(1)
    t = 1.7e9 + np.cumsum(rng.exponential(0.5, 3000))
    rows = [f"{x:.3f},c{rng.integers(3)},{rng.integers(10, 2000)},{rng.integers(5, 500)}" for x in t]
    for name, body in (("once", rows), ("twice", rows + rows[:300])):
        log = tmp_path / f"{name}.csv"
        log.write_text("timestamp,client,input_tokens,output_tokens\n" + "\n".join(body) + "\n")
        notes = io.StringIO()
        fit_logs([log], options=FitOptions(window=600), stream=notes)
        said = [x for x in notes.getvalue().splitlines() if "repeat another row exactly" in x]
        assert said == ([] if name == "once" else [said[0]]), notes.getvalue()
        if name == "twice":
            assert "300 row(s) (9.1%)" in said[0]
