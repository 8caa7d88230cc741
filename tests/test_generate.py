"""Generation on small synthetic pools: determinism, sharding, arrival modes, zero-rate windows,
lengths, baselines, the fast writer and the CLI. (Real-data checks: test_generate_data.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from servegen_load.errors import InputError
from servegen_load.requests import iter_requests, read_header
from servegen_load.requests_writer import RowFormatter
from servegen_load.scenario import load_scenario, parse_scenario
from servegen_load.workload import arrivals
from servegen_load.workload.compose import (
    assign_shards,
    generate_to_file,
    iter_scenario_requests,
    merge_requests,
    naive_of,
    prepare,
)
from servegen_load.workload.distributions import Family, LengthTable
from servegen_load.workload.pool import ClientPool, build_tables
from servegen_load.workload.resolve import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]


def _table(rng: np.random.Generator, mean: float, n: int = 60) -> LengthTable:
    v = np.unique(np.maximum(1, np.rint(rng.gamma(2.0, mean / 2.0, n))))
    return LengthTable.from_pmf(v, rng.random(v.size) + 0.05)


def make_pool(rates: np.ndarray | list, *, family: int | np.ndarray = Family.GAMMA, shape: float | np.ndarray = 1.0,
              window: float = 600.0, data_windows: int = 1, category: str = "language", name: str = "syn",
              cv: np.ndarray | None = None, seed: int = 0) -> ClientPool:
    """A small pool: rates [client, window]; one table per client, data window and field."""
    rng = np.random.default_rng(seed)
    rates = np.asarray(rates, dtype=np.float64)
    c, w = rates.shape
    fam = np.broadcast_to(np.asarray(family, dtype=np.int8), (c, w)).copy()
    shp = np.broadcast_to(np.asarray(shape, dtype=np.float64), (c, w)).copy()
    fam[rates <= 0] = Family.NONE
    if cv is None:
        cv = np.where(fam == Family.GAMMA, 1.0 / np.sqrt(np.where(shp > 0, shp, 1.0)), 1.0)
    fields = {"language": ["input_tokens", "output_tokens"],
              "reason": ["input_tokens", "output_tokens", "reason_ratio"],
              "multimodal": ["text_tokens", "image_tokens", "image_count", "output_tokens"]}[category]
    tables: list[LengthTable] = []
    index = np.full((c, data_windows, len(fields)), -1, dtype=np.int32)
    for i in range(c):
        for d in range(data_windows):
            for f, fname in enumerate(fields):
                if fname == "reason_ratio":
                    t = LengthTable.from_pmf(np.linspace(0, 1, 51), np.exp(-((np.linspace(0, 1, 51) - 0.4) ** 2) * 20)
                                             + np.exp(-((np.linspace(0, 1, 51) - 0.9) ** 2) * 80))
                elif fname == "image_count":
                    t = LengthTable.from_pmf(np.array([0.0, 1.0, 2.0, 4.0]), np.array([0.2, 0.5, 0.2, 0.1]))
                elif fname == "image_tokens":
                    t = LengthTable.from_pmf(np.array([0.0, 256.0, 576.0, 1024.0]), np.array([0.1, 0.4, 0.4, 0.1]))
                else:
                    t = _table(rng, 50.0 * (i + 1) if fname != "output_tokens" else 20.0 * (i + 2))
                index[i, d, f] = len(tables)
                tables.append(t)
    values, cdf, offsets = build_tables(tables)
    pool = ClientPool(
        name=name, category=category, clients=[f"{name}:{i}" for i in range(c)], window=window,
        window_start=np.arange(w) * window, rate=rates.astype(np.float32), cv=np.asarray(cv, dtype=np.float32),
        family=fam, shape=shp.astype(np.float32), scale=np.ones((c, w), dtype=np.float32),
        data_window=window * w / data_windows, data_start=np.arange(data_windows) * (window * w / data_windows),
        fields=fields, table_index=index, values=values, cdf=cdf, offsets=offsets,
    )
    pool.validate()
    return pool


def save_pool(pool: ClientPool, d: Path, fname: str | None = None) -> Path:
    p = d / (fname or f"{pool.name}.npz")
    pool.save(p)
    return p


def write_scenario(d: Path, text: str, name: str = "s.yaml") -> Path:
    p = d / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def pooldir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pools")
    rates = np.array([[2.0, 3.0, 0.0, 1.0],       # zero-rate window in the middle
                      [0.5, 0.5, 0.0, 0.5],
                      [0.0, 0.0, 0.0, 0.0],       # never active
                      [5.0, 0.2, 0.0, 4.0],
                      [1.0, 1.0, 0.0, 1.0]])      # window 2: every client at 0 (a collection gap)
    fam = np.array([Family.GAMMA, Family.WEIBULL, Family.GAMMA, Family.GAMMA, Family.LOGNORMAL])[:, None]
    shape = np.array([0.25, 0.6, 1.0, 2.0, 1.0])[:, None]
    save_pool(make_pool(rates, family=np.broadcast_to(fam, rates.shape), shape=np.broadcast_to(shape, rates.shape),
                        data_windows=2), d)
    save_pool(make_pool(rates[:3] * 0.5, category="reason", name="rsn", seed=3), d)
    save_pool(make_pool(rates[:3] * 0.5, category="multimodal", name="mmx", seed=4), d)
    return d


def _body(p: Path) -> bytes:
    data = p.read_bytes()
    return data[data.index(b"\n") + 1:]


SCEN = """
pool: syn.npz
start: 0
duration: 2400
seed: 5
arrival: {arrival}
"""


@pytest.mark.parametrize("arrival", ["renewal", "servegen"])
def test_rerun_is_byte_identical_and_seed_matters(pooldir: Path, tmp_path: Path, arrival: str) -> None:
    s = write_scenario(pooldir, SCEN.format(arrival=arrival), f"det-{arrival}.yaml")
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    ra = generate_to_file(s, a)
    generate_to_file(s, b)
    generate_to_file(s, c, seed=6)
    assert ra["requests"] > 1000
    assert a.read_bytes() == b.read_bytes()
    assert _body(a) != _body(c)
    head = read_header(a)
    assert head["seed"] == 5 and len(head["scenario_digest"]) == 64 and head["duration"] == 2400
    reqs = list(iter_requests(a))  # the reader validates order and fields
    assert len(reqs) == ra["requests"]
    assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in reqs)


@pytest.mark.parametrize("arrival", ["renewal", "servegen"])
def test_shard_union_equals_unsharded(pooldir: Path, tmp_path: Path, arrival: str) -> None:
    s = write_scenario(pooldir, SCEN.format(arrival=arrival), f"shard-{arrival}.yaml")
    full = tmp_path / "full.jsonl"
    generate_to_file(s, full)
    parts = []
    for i in range(3):
        p = tmp_path / f"s{i}.jsonl"
        generate_to_file(s, p, shard=f"{i}/3")
        assert read_header(p)["shard"] == f"{i}/3"
        parts.append(p)
    assert b"".join(merge_requests(parts)) == _body(full)
    clients = [{orjson.loads(x)["client"] for x in _body(p).splitlines()} for p in parts]
    assert not (clients[0] & clients[1]) and not (clients[1] & clients[2])


def test_shards_balance_by_expected_traffic() -> None:
    exp = [("a", 100.0), ("b", 60.0), ("c", 50.0), ("d", 40.0), ("e", 10.0)]
    got = assign_shards(exp, 2)
    load = [sum(e for n, e in exp if got[n] == j) for j in range(2)]
    assert sorted(load) == [120.0, 140.0]  # greedy largest-first: a | b c e ... d
    zipf = [(f"c{i}", 1000.0 / (i + 1)) for i in range(160)]
    got = assign_shards(zipf, 4)
    load = np.array([sum(e for n, e in zipf if got[n] == j) for j in range(4)])
    assert load.max() / load.mean() < 1.01


def test_client_streams_do_not_depend_on_other_clients_or_blocks(pooldir: Path) -> None:
    full = parse_scenario({"pool": "syn.npz", "duration": 2400, "seed": 9}, base_dir=pooldir)
    one = parse_scenario({"pool": "syn.npz", "duration": 2400, "seed": 9, "clients": {"ids": ["3"]}},
                         base_dir=pooldir)
    rows_full = [r.to_dict() for r in iter_scenario_requests(full) if r.client == "syn:3"]
    rows_one = [r.to_dict() for r in iter_scenario_requests(one)]
    assert rows_full and rows_full == rows_one
    small = prepare(full, block_requests=50)
    assert small.block_us < prepare(full).block_us
    fmt = RowFormatter(small.names, CATEGORIES)
    a = b"".join(fmt.format(b) for b in small.blocks())
    big = prepare(full)
    assert a == b"".join(fmt.format(b) for b in big.blocks())


def test_zero_rate_windows_produce_nothing(pooldir: Path) -> None:
    for arrival in ("renewal", "servegen"):
        s = parse_scenario({"pool": "syn.npz", "duration": 2400, "seed": 1, "arrival": arrival}, base_dir=pooldir)
        reqs = list(iter_scenario_requests(s))
        t = np.array([r.t for r in reqs])
        assert t.size > 500
        assert not np.any((t >= 1200) & (t < 1800)), arrival      # the all-zero window
        assert "syn:2" not in {r.client for r in reqs}            # the never-active client
        assert np.any(t >= 1800)                                  # traffic resumes after the gap
    # a window that is entirely a collection gap: no requests, no error
    gap = parse_scenario({"pool": "syn.npz", "start": 1200, "duration": 600}, base_dir=pooldir)
    assert list(iter_scenario_requests(gap)) == []
    with pytest.raises(InputError, match="no traffic"):
        prepare(parse_scenario({"pool": "syn.npz", "start": 1200, "duration": 600, "rate": 5}, base_dir=pooldir))


def test_servegen_counts_are_fixed_per_window(pooldir: Path) -> None:
    s = parse_scenario({"pool": "syn.npz", "duration": 2400, "arrival": "servegen", "scale": 1.3}, base_dir=pooldir)
    gen = prepare(s)
    src = gen.plan.sources[0]
    exp = src.expected
    obs = np.zeros_like(exp)
    code = {n: i for i, n in enumerate(src.names)}
    for r in iter_scenario_requests(s):
        obs[code[r.client], min(int(r.t // 600), 3)] += 1
    assert np.all(np.abs(obs - exp) < 1.0)


def test_renewal_counts_and_gap_cv_follow_the_windows() -> None:
    """Many windows of one bursty client: the mean count per window is right within a few standard
    errors of the renewal variance c^2 * mean, and gaps inside a window have the family's CV."""
    w = 400
    rate = np.tile([2.0, 0.5, 1.0, 0.0], w // 4)
    edges = np.arange(w + 1) * 600.0
    fam = np.full(w, Family.GAMMA, dtype=np.int8)
    for cvv in (0.7, 2.0):
        shape = np.full(w, 1.0 / cvv**2)
        rng = np.random.default_rng(1)
        t = np.concatenate([c[0] for c in arrivals.renewal(edges, rate, fam, shape, rng)])
        counts = np.bincount((t // 600).astype(int), minlength=w)
        for r in (2.0, 0.5, 1.0):
            sel = rate == r
            m, e = counts[sel].mean(), r * 600
            se = np.sqrt(cvv**2 * e / sel.sum())
            assert abs(m - e) < 4 * se + 0.01 * e, (cvv, r, m, e)
        assert counts[rate == 0].sum() == 0
        win = (t // 600).astype(int)
        g = np.diff(t)[win[1:] == win[:-1]][(rate[win[1:]] == 2.0)[win[1:] == win[:-1]]]
        assert abs(g.std() / g.mean() / cvv - 1) < 0.1
        assert abs(g.mean() - 0.5) < 0.05


def test_equilibrium_start_keeps_short_windows_unbiased() -> None:
    """Many short independent runs of a very bursty client: the mean count over the first window
    is its expected count (a renewal process started with a whole gap would fall short)."""
    edges, rate = np.array([0.0, 100.0]), np.array([1.0])
    fam, shape = np.array([Family.GAMMA], dtype=np.int8), np.array([1 / 16.0])   # CV 4
    counts = [sum(c[0].size for c in arrivals.renewal(edges, rate, fam, shape, np.random.default_rng(i)))
              for i in range(3000)]
    se = np.sqrt(16 * 100 / 3000)
    assert abs(np.mean(counts) - 100) < 4 * se


def test_servegen_large_window_two_pass_matches_single_pass() -> None:
    edges, rate = np.array([0.0, 600.0]), np.array([50.0])
    fam, shape = np.array([Family.WEIBULL], dtype=np.int8), np.array([0.7])
    a = np.concatenate([c[0] for c in arrivals.servegen(edges, rate, fam, shape, np.random.default_rng(3))])
    b = np.concatenate([c[0] for c in arrivals.servegen(edges, rate, fam, shape, np.random.default_rng(3),
                                                         chunk_max=1000)])
    assert a.size == b.size == 30000
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    assert a[-1] < 600 and np.all(np.diff(a) >= 0)


def test_lengths_reasoning_and_multimodal(pooldir: Path) -> None:
    r = list(iter_scenario_requests(parse_scenario({"pool": "rsn.npz", "duration": 2400, "seed": 2},
                                                   base_dir=pooldir)))
    assert r and all(x.category == "reason" and 0 <= x.reason_tokens <= x.output_tokens for x in r)
    share = np.array([x.reason_tokens / x.output_tokens for x in r if x.output_tokens >= 50])
    assert np.mean(share < 0.65) > 0.2 and np.mean(share > 0.75) > 0.2  # both modes present
    m = list(iter_scenario_requests(parse_scenario({"pool": "mmx.npz", "duration": 2400, "seed": 2},
                                                   base_dir=pooldir)))
    counts = np.array([len(x.images or []) for x in m])
    assert {0, 1, 2, 4} == set(counts.tolist())
    assert abs(np.mean(counts == 1) - 0.5) < 0.08
    items = np.concatenate([x.images for x in m if x.images])
    assert items.min() >= 1 and set(np.unique(items).tolist()) <= {1, 256, 576, 1024}  # 0-token items clipped to 1
    assert all(x.category == "multimodal" and x.input_tokens >= 1 for x in m)


def test_length_correlation_sets_the_rank_correlation(pooldir: Path) -> None:
    from scipy.stats import spearmanr

    for rho in (0.0, 0.7):
        s = parse_scenario({"pool": "syn.npz", "duration": 2400, "seed": 3, "length_correlation": rho,
                            "clients": {"ids": ["3"]}}, base_dir=pooldir)
        reqs = list(iter_scenario_requests(s))
        got = spearmanr([x.input_tokens for x in reqs], [x.output_tokens for x in reqs]).statistic
        assert abs(got - rho) < 0.08, (rho, got)


def test_length_correlation_from_a_fitted_pool(tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    pool = make_pool([[20.0], [20.0]], name="rc")
    pool.extra["rank_corr"] = np.array([0.8, np.nan], dtype=np.float32)
    save_pool(pool, tmp_path)
    s = parse_scenario({"pool": "rc.npz", "duration": 600, "length_correlation": "pool"}, base_dir=tmp_path)
    reqs = list(iter_scenario_requests(s))
    for name, want in (("rc:0", 0.8), ("rc:1", 0.0)):
        x = [(r.input_tokens, r.output_tokens) for r in reqs if r.client == name]
        assert abs(spearmanr(*zip(*x, strict=True)).statistic - want) < 0.08, name
    with pytest.raises(InputError, match="length_correlation"):
        parse_scenario({"pool": "rc.npz", "duration": 600, "length_correlation": 1.5})


def test_iter_matches_file_and_fast_writer_matches_orjson(pooldir: Path, tmp_path: Path) -> None:
    s = write_scenario(pooldir, "pools:\n  - {pool: syn.npz}\n  - {pool: rsn.npz}\n  - {pool: mmx.npz}\n"
                                "duration: 2400\nseed: 4\n", "mixed.yaml")
    out = tmp_path / "m.jsonl"
    generate_to_file(s, out)
    from_file = [r.to_dict() for r in iter_requests(out)]
    streamed = [r.to_dict() for r in iter_scenario_requests(s)]
    assert from_file == streamed
    assert {r["category"] for r in streamed} == {"language", "reason", "multimodal"}
    gen = prepare(load_scenario(s))
    fmt = RowFormatter(gen.names, CATEGORIES)
    for b in gen.blocks():
        b.mm = {}
        assert fmt.format(b) == fmt.format_slow(b)
    # t is the microsecond value, written as the shortest decimal
    for line in out.read_bytes().splitlines()[1:50]:
        t = orjson.loads(line)["t"]
        assert round(t, 6) == t


def test_naive_and_constant_baselines(pooldir: Path) -> None:
    s = parse_scenario({"pool": "syn.npz", "duration": 2400, "seed": 1}, base_dir=pooldir)
    nv = naive_of(s)
    assert nv.kind == "naive" and nv.duration == 2400
    real_plan, nv_plan = prepare(s).plan, prepare(nv).plan
    assert nv_plan.mean_rate() == pytest.approx(real_plan.mean_rate())
    reqs = list(iter_scenario_requests(nv))
    t = np.array([r.t for r in reqs])
    e = real_plan.mean_rate() * 2400
    assert abs(t.size - e) < 4 * np.sqrt(e)
    g = np.diff(t)
    assert abs(g.std() / g.mean() - 1) < 0.08                       # Poisson
    assert {r.client for r in reqs} == {"naive"}
    # aggregate lengths: the mean input of the mixture of the realistic clients
    real = list(iter_scenario_requests(s))
    assert np.mean([r.input_tokens for r in reqs]) == pytest.approx(np.mean([r.input_tokens for r in real]), rel=0.1)

    c = parse_scenario({"constant": {"rate": 4, "input_tokens": 100, "output_tokens": {"from": "syn.npz"}},
                        "duration": 10}, base_dir=pooldir)
    rc = list(iter_scenario_requests(c))
    assert [r.t for r in rc] == [k / 4 for k in range(40)]
    assert {r.input_tokens for r in rc} == {100} and len({r.output_tokens for r in rc}) > 3
    f = parse_scenario({"naive": {"rate": 50, "input_tokens": 32, "output_tokens": 8}, "duration": 20, "seed": 2})
    rf = list(iter_scenario_requests(f))
    assert {(r.input_tokens, r.output_tokens) for r in rf} == {(32, 8)} and abs(len(rf) - 1000) < 130


def test_replay_azure_trace(data_dir: Path, tmp_path: Path) -> None:
    trace = data_dir / "traces" / "azure2023" / "AzureLLMInferenceTrace_code.csv"
    s = write_scenario(tmp_path, f"replay:\n  path: {trace}\n  format: azure\n  duration: 600\n"
                                 "  time_scale: 2\n  client: az\n")
    reqs = list(iter_scenario_requests(s))
    t = np.array([r.t for r in reqs])
    assert t[0] == 0.0 and t[-1] < 300 and np.all(np.diff(t) >= 0)
    assert {r.client for r in reqs} == {"az"} and len(reqs) > 100
    full = write_scenario(tmp_path, f"replay:\n  path: {trace}\n  format: azure\n", "full.yaml")
    assert sum(1 for _ in iter_scenario_requests(full)) == 8819


def test_shipped_scenarios_generate(tmp_path: Path) -> None:
    for name in ("language", "multimodal", "reasoning", "naive", "replay-azure", "mix"):
        s = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        gen = prepare(s.with_overrides(duration=30 if s.kind != "replay" else 60))
        n = sum(len(b) for b in gen.blocks())
        assert n > 10, name
    lang = prepare(load_scenario(ROOT / "scenarios" / "language.yaml"))
    assert 3 <= lang.plan.mean_rate() <= 40 and lang.plan.duration <= 120 and len(lang.names) > 20


def test_cli_generate_and_bad_scenario_exit_2(pooldir: Path, tmp_path: Path) -> None:
    s = write_scenario(pooldir, SCEN.format(arrival="renewal"), "cli.yaml")
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "servegen_load.cli"]
    r = subprocess.run([*cmd, "generate", str(s), "-o", str(out), "--seed", "3", "--duration", "600",
                        "--shard", "0/2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head = read_header(out)
    assert head["seed"] == 3 and head["duration"] == 600 and head["shard"] == "0/2"
    bad = write_scenario(tmp_path, "pools:\n  - {pool: m-large, weight: 0.7}\n  - {pool: mm-image, weight: -1}\n"
                                   "duration: 60\n", "bad.yaml")
    r = subprocess.run([*cmd, "generate", str(bad), "-o", str(tmp_path / "x.jsonl")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "bad.yaml" in r.stderr and "pools[1].weight" in r.stderr and "greater than 0" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()
