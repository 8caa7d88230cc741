"""The scenario file: validation errors as one line naming the field, clock times, the rate rules,
time_scale, client filters, digests and the shipped examples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_generate import make_pool, save_pool

from servegen_load.errors import InputError
from servegen_load.scenario import load_scenario, parse_scenario, scenario_digest
from servegen_load.workload.compose import naive_of, prepare
from servegen_load.workload.distributions import Family
from servegen_load.workload.resolve import resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scen")
    # a: 3 clients over 6 windows; b: 2 clients, twice as busy, all Weibull
    a = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5] * 6, [0.1, 0.1, 0.0, 0.0, 0.1, 0.1]])
    save_pool(make_pool(a, shape=np.array([[4.0], [1.0], [0.25]]) * np.ones((1, 6)), name="pa"), d)
    cv = np.array([[3.0] * 6, [0.8] * 6])
    save_pool(make_pool(np.array([[4.0] * 6, [2.0] * 6]), family=Family.WEIBULL, shape=0.5, cv=cv, name="pb"), d)
    return d


def _err(d: Path, text: str) -> str:
    p = d / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        prepare(load_scenario(p))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(p))
    return msg


def test_bad_files_name_the_field(pools: Path) -> None:
    assert "pools[1].weight: input should be greater than 0" in _err(
        pools, "pools:\n  - {pool: pa.npz, weight: 0.7}\n  - {pool: pb.npz, weight: -1}\nduration: 60\n")
    m = _err(pools, "pool: pa.npz\nduration: 60\nclients: {top: 2, bogus: 1}\n")
    assert "clients.bogus: unknown field; expected one of: top, cv" in m
    assert "arrival: input should be 'renewal' or 'servegen'" in _err(
        pools, "pool: pa.npz\nduration: 60\narrival: poisson\n")
    assert "duration: expected the seconds of pool time" in _err(pools, "pool: pa.npz\n")
    assert "expected exactly one of pool, pools, naive, constant, replay" in _err(
        pools, "pool: pa.npz\nnaive: {rate: 1, input_tokens: 1, output_tokens: 1}\nduration: 5\n")
    assert "at most one of scale, rate, peak_rate" in _err(pools, "pool: pa.npz\nduration: 60\nrate: 3\nscale: 2\n")
    assert "start: expected seconds" in _err(pools, "pool: pa.npz\nduration: 60\nstart: '25:00'\n")
    assert "naive.output_tokens: expected a token count" in _err(
        pools, "naive: {rate: 1, input_tokens: 5, output_tokens: 0}\nduration: 5\n")
    assert "lies outside pool pa's span" in _err(pools, "pool: pa.npz\nstart: 3000\nduration: 1000\n")
    assert "clients.ids: unknown client ids ['9']" in _err(pools, "pool: pa.npz\nduration: 60\nclients: {ids: [9]}\n")
    assert "no such pool file" in _err(pools, "pool: nothere.npz\nduration: 60\n")
    assert "invalid YAML" in _err(pools, "pool: [pa.npz\nduration: 60\n")
    assert "start: not used by a naive scenario" in _err(
        pools, "naive: {rate: 1, input_tokens: 5, output_tokens: 5}\nduration: 5\nstart: 10\n")
    assert "appears twice" in _err(pools, "pools:\n  - {pool: pa.npz}\n  - {pool: pa.npz}\nduration: 60\n")
    assert "every pool has its own rate" in _err(
        pools, "pools:\n  - {pool: pa.npz, rate: 1}\n  - {pool: pb.npz, rate: 2}\nrate: 5\nduration: 60\n")


def test_clock_strings_are_not_sexagesimal(pools: Path) -> None:
    p = pools / "clock.yaml"
    p.write_text("pool: pa.npz\nstart: 20:00\nday: 2\nduration: 60\n")  # unquoted: YAML 1.1 would say 1200
    s = load_scenario(p)
    assert s.start == 72000.0 and s.pool_start() == 86400.0 + 72000.0
    assert parse_scenario({"pool": "x", "start": "01:02:03", "duration": 1}).start == 3723.0


def test_rate_rules(pools: Path) -> None:
    def means(extra: dict) -> list[float]:
        s = parse_scenario({"duration": 3600, **extra}, base_dir=pools)
        plan = resolve(s)
        return [float(x.expected.sum()) / plan.duration for x in plan.sources]

    nat_a = (np.array([1, 2, 3, 4, 5, 6]).sum() + 3 + 0.4) / 6
    assert means({"pool": "pa.npz"}) == pytest.approx([nat_a])
    assert means({"pool": "pa.npz", "rate": 10}) == pytest.approx([10.0])
    assert means({"pool": "pa.npz", "scale": 0.5}) == pytest.approx([nat_a / 2])
    # peak_rate: the busiest window's total rate
    s = parse_scenario({"pool": "pa.npz", "duration": 3600, "peak_rate": 13}, base_dir=pools)
    src = resolve(s).sources[0]
    assert src.rate.sum(axis=0).max() == pytest.approx(13.0)
    # weights share the budget; an explicit pool rate is taken out of the top-level rate first
    assert means({"pools": [{"pool": "pa.npz", "weight": 3}, {"pool": "pb.npz", "weight": 1}], "rate": 8}) \
        == pytest.approx([6.0, 2.0])
    assert means({"pools": [{"pool": "pa.npz", "weight": 1}, {"pool": "pb.npz", "rate": 1}], "rate": 8}) \
        == pytest.approx([7.0, 1.0])
    # weights without a rate: the weighted pools' own total, redistributed
    assert means({"pools": [{"pool": "pa.npz", "weight": 1}, {"pool": "pb.npz", "weight": 1}]}) \
        == pytest.approx([(nat_a + 6.0) / 2] * 2)
    # top-level rate without weights: one common factor for the pools without their own rate
    got = means({"pools": [{"pool": "pa.npz"}, {"pool": "pb.npz"}], "rate": 2 * (nat_a + 6.0)})
    assert got == pytest.approx([2 * nat_a, 12.0])


def test_time_scale_compresses_and_keeps_counts(pools: Path) -> None:
    base = resolve(parse_scenario({"pool": "pa.npz", "duration": 3600}, base_dir=pools))
    fast = resolve(parse_scenario({"pool": "pa.npz", "duration": 3600, "time_scale": 6}, base_dir=pools))
    assert fast.duration == 600 and base.duration == 3600
    assert fast.expected_total() == pytest.approx(base.expected_total())
    assert fast.mean_rate() == pytest.approx(6 * base.mean_rate())
    np.testing.assert_allclose(fast.sources[0].edges, base.sources[0].edges / 6)
    # a rate target scales the compressed curve back: same shape, the asked mean
    both = resolve(parse_scenario({"pool": "pa.npz", "duration": 3600, "time_scale": 6, "rate": 2},
                                  base_dir=pools))
    assert both.mean_rate() == pytest.approx(2.0) and both.duration == 600
    r = both.sources[0].rate.sum(axis=0)
    np.testing.assert_allclose(r / r[0], base.sources[0].rate.sum(axis=0) / base.sources[0].rate.sum(axis=0)[0])


def test_windows_cut_partially(pools: Path) -> None:
    p = resolve(parse_scenario({"pool": "pa.npz", "start": 300, "duration": 900}, base_dir=pools))
    src = p.sources[0]
    np.testing.assert_allclose(src.edges, [0, 300, 900])
    assert src.expected[0].tolist() == pytest.approx([300 * 1.0, 600 * 2.0])


def test_client_filters(pools: Path) -> None:
    def names(flt: dict) -> list[str]:
        return resolve(parse_scenario({"pool": "pa.npz", "duration": 3600, "clients": flt}, base_dir=pools)
                       ).sources[0].names

    assert names({"top": 1}) == ["pa:0"]
    assert names({"ids": ["pa:1", "2"]}) == ["pa:1", "pa:2"]
    assert names({"exclude": ["0"]}) == ["pa:1", "pa:2"]
    assert names({"cv": [0.9, 1.1]}) == ["pa:1"]                       # shapes 4, 1, 0.25 -> CV 0.5, 1, 2
    assert names({"cv": [0.4, 2.5], "top": 2}) == ["pa:0", "pa:1"]
    means = [50, 100, 150]
    assert names({"input_mean": [0, 1e9]}) == ["pa:0", "pa:1", "pa:2"]
    got = names({"output_mean": [0, 50]})
    assert got and all(n in {"pa:0", "pa:1", "pa:2"} for n in got) and len(means) == 3
    with pytest.raises(InputError, match="no client of pool pa passes the filter"):
        names({"cv": [10, 20]})


def test_gap_cv_measured_vs_fitted(pools: Path) -> None:
    meas = resolve(parse_scenario({"pool": "pb.npz", "duration": 600}, base_dir=pools)).sources[0]
    fit = resolve(parse_scenario({"pool": "pb.npz", "duration": 600, "gap_cv": "fitted"}, base_dir=pools)).sources[0]
    np.testing.assert_allclose(meas.target_cv[:, 0], [3.0, 0.8], rtol=1e-3)
    assert fit.target_cv[0, 0] == pytest.approx(2.236, rel=1e-3)      # Weibull(0.5): CV sqrt(5)


def test_digest_is_canonical_and_location_free(pools: Path, tmp_path: Path) -> None:
    for sub in ("one", "two"):
        d = tmp_path / sub
        d.mkdir()
        shutil.copy(pools / "pa.npz", d / "pa.npz")
        (d / "s.yaml").write_text("pool: pa.npz\nstart: '00:10'\nduration: 60\n" if sub == "one"
                                  else "duration: 60.0\nstart: 600\npool: ./pa.npz\nseed: 0\n")
    a, b = (scenario_digest(load_scenario(tmp_path / s / "s.yaml")) for s in ("one", "two"))
    assert a == b  # defaults filled, clock as seconds, pool files by content: not by path or place
    c = scenario_digest(load_scenario(tmp_path / "one" / "s.yaml").with_overrides(seed=1))
    assert c != a


def test_naive_of_keeps_rate_and_duration(pools: Path) -> None:
    s = parse_scenario({"pool": "pa.npz", "duration": 3600, "time_scale": 2, "rate": 7}, base_dir=pools)
    nv = naive_of(s)
    assert nv.kind == "naive" and nv.duration == 1800 and nv.naive is not None
    assert nv.naive.rate == pytest.approx(7.0)
    with pytest.raises(InputError, match="realistic"):
        naive_of(nv)


def test_shipped_scenarios_validate() -> None:
    kinds = {}
    for p in sorted((ROOT / "scenarios").glob("*.yaml")):
        kinds[p.stem] = load_scenario(p).kind
        text = p.read_text()
        assert text.startswith("#"), f"{p.name} needs a header comment"
    assert kinds == {"language": "realistic", "mix": "realistic", "multimodal": "realistic", "naive": "naive",
                     "reasoning": "realistic", "replay-azure": "replay",
                     "multiturn": "realistic"}  # payload/content: sessions and shared system prompts
