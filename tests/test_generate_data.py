"""Generation against ServeGen's own data: one hour of m-large reproduces each client's per-window
counts and gap CVs of the source CSVs; lengths match the pool over 1M requests; deepseek-r1's
reasoning shares are bimodal; mm-image's image counts follow the pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servegen_load.scenario import parse_scenario
from servegen_load.workload.compose import Batch, Generation, prepare
from servegen_load.workload.fidelity import _modes, window_cvs
from servegen_load.workload.pool import SHIPPED, load_pool

START_WINDOW = 120  # 20:00


def _shipped_or_skip(name: str) -> None:
    assert name in SHIPPED
    try:
        load_pool(name)
    except Exception as e:  # the shipped pools are built by the importer
        pytest.skip(f"shipped pool {name} not available: {e}")


def _csv_hour(data_dir: Path) -> dict[str, np.ndarray]:
    """rate, iat_cv per client for the six windows from 20:00, straight from the trace CSVs."""
    out = {}
    for f in (data_dir / "servegen" / "language" / "m-large").glob("chunk-*-trace.csv"):
        cid = f.name[len("chunk-"):-len("-trace.csv")]
        rows = np.loadtxt(f, delimiter=",", usecols=(0, 1, 2), max_rows=START_WINDOW + 6)[START_WINDOW:]
        assert rows[0, 0] == 72000.0
        out[cid] = rows[:, 1:]
    return out


def _columns(gen: Generation) -> Batch:
    return Batch.concat(list(gen.blocks()))


@pytest.fixture(scope="module")
def hour(data_dir: Path) -> dict:
    _shipped_or_skip("m-large")
    csv = _csv_hour(data_dir)
    runs = {}
    for arrival in ("renewal", "servegen"):
        gen = prepare(parse_scenario({"pool": "m-large", "start": "20:00", "duration": 3600, "seed": 11,
                                      "arrival": arrival}))
        b = _columns(gen)
        ids = [n.split(":", 1)[1] for n in gen.names]
        exp = np.array([csv[i][:, 0] * 600 for i in ids])
        cv = np.array([csv[i][:, 1] for i in ids])
        obs = np.zeros_like(exp)
        t = b.t_us / 1e6
        np.add.at(obs, (b.client, np.minimum((t // 600).astype(int), 5)), 1)
        runs[arrival] = {"gen": gen, "b": b, "t": t, "exp": exp, "cv": cv, "obs": obs}
    return runs


def test_servegen_mode_reproduces_each_client_window_count(hour: dict) -> None:
    r = hour["servegen"]
    assert r["exp"].sum() > 1.1e6
    assert np.abs(r["obs"] - r["exp"]).max() < 1.0   # counts fixed per window (float32 rates: floor/ceil)


def test_renewal_mode_counts_within_renewal_noise(hour: dict) -> None:
    """Renewal counts vary: a window of expected count e and gap CV c has variance ~ c^2 e. Over the
    client-windows with e >= 100 the total deviation is within 4 standard errors and the dispersion
    sum((o-e)^2 / (c^2 e)) / dof is of order 1 (it would be ~13 against Poisson variance)."""
    r = hour["renewal"]
    e, o, c = r["exp"], r["obs"], np.maximum(r["cv"], 0.05)
    big = e >= 100
    assert big.sum() > 150
    z = (o - e)[big].sum() / np.sqrt((c**2 * e)[big].sum())
    disp = ((o - e)[big] ** 2 / (c**2 * e)[big]).mean()
    pois = ((o - e)[big] ** 2 / e[big]).mean()
    assert abs(z) < 4, z
    assert 0.4 < disp < 2.5, disp
    assert pois > 3 * disp          # burstier than Poisson, as in the data
    assert o[~(e > 0)].sum() == 0   # inactive windows stay empty


@pytest.mark.parametrize("arrival", ["renewal", "servegen"])
def test_gap_cv_per_client_window_matches_the_csv(hour: dict, arrival: str) -> None:
    r = hour[arrival]
    cl, w, _cnt, cv = window_cvs(r["t"], r["b"].client, np.arange(7) * 600.0, 200)
    ref = r["cv"][cl, w]
    ratio = cv / ref
    assert cv.size > 150
    assert abs(np.median(ratio) - 1) < 0.05
    assert np.mean(np.abs(ratio - 1) <= 0.15) >= 0.8


def test_length_quantiles_match_the_pool_over_a_million_requests(hour: dict) -> None:
    r = hour["renewal"]
    b, gen = r["b"], r["gen"]
    assert len(b) >= 1_000_000
    # the mixture weighted by the requests each client actually got: in renewal mode counts vary
    # around the expected ones (extreme-CV windows by their whole CV), and the lengths' property is
    # that each request draws from its own client's table
    from servegen_load.workload.resolve import aggregate_tables

    src = gen.plan.sources[0]
    pos = {n: i for i, n in enumerate(src.names)}
    cnt = np.bincount(b.client, minlength=len(gen.names))
    w = np.zeros(src.pool.table_index.shape[:2])
    assert np.unique(src.dwin).size == 1
    for g, n in enumerate(gen.names):
        w[src.idx[pos[n]], int(src.dwin[0])] += cnt[g]
    agg = aggregate_tables(src.pool, w)
    for field, x in (("input_tokens", b.inp), ("output_tokens", b.out)):
        want = agg[field].quantile(np.array([0.5, 0.9, 0.99]))
        got = np.quantile(x, [0.5, 0.9, 0.99], method="inverted_cdf")
        np.testing.assert_allclose(got, np.maximum(np.rint(want), 1), rtol=0.03, err_msg=field)


def test_deepseek_reasoning_share_is_bimodal() -> None:
    _shipped_or_skip("deepseek-r1")
    gen = prepare(parse_scenario({"pool": "deepseek-r1", "start": 0, "duration": 86400, "seed": 3}))
    b = _columns(gen)
    assert b.reason is not None and np.all((b.reason >= 0) & (b.reason <= b.out))
    ok = b.out >= 20
    share = b.reason[ok] / b.out[ok]
    modes = _modes(share)
    assert any(abs(m - 0.36) <= 0.05 for m in modes), modes
    assert any(abs(m - 0.94) <= 0.05 for m in modes), modes
    ref = gen.plan.sources[0].aggregate()["reason_ratio"]
    h, _ = np.histogram(share, bins=25, range=(0, 1))
    hp, _ = np.histogram(ref.values, bins=25, range=(0, 1), weights=np.diff(ref.cdf, prepend=0.0))
    assert 0.5 * np.abs(h / h.sum() - hp / hp.sum()).sum() < 0.03


def test_mm_image_items_follow_the_pool() -> None:
    _shipped_or_skip("mm-image")
    gen = prepare(parse_scenario({"pool": "mm-image", "start": 0, "duration": 86400, "seed": 4}))
    b = _columns(gen)
    cnt, items = b.mm["image"]
    assert cnt.sum() == items.size and items.min() >= 1
    agg = gen.plan.sources[0].aggregate()
    for field, x in (("image_count", cnt), ("image_tokens", items), ("text_tokens", b.inp)):
        want = agg[field].quantile(np.array([0.5, 0.9]))
        lo = 0 if field == "image_count" else 1
        got = np.quantile(x, [0.5, 0.9], method="inverted_cdf")
        np.testing.assert_allclose(got, np.maximum(np.rint(want), lo), rtol=0.03, atol=1, err_msg=field)
