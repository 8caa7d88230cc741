"""Inspect for requests files: statistics measured on the requests, and fidelity to the scenario."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_generate import make_pool, save_pool

from servegen_load.workload.compose import generate_to_file
from servegen_load.workload.distributions import Family
from servegen_load.workload.fidelity import inspect_requests, read_columns, window_cvs
from servegen_load.workload.pool import load_pool


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fid")
    rates = np.array([[3.0, 2.0, 4.0], [1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.05, 0.05, 0.05]])
    shape = np.array([[0.5], [2.0], [1.0], [1.0]]) * np.ones((1, 3))
    save_pool(make_pool(rates, family=Family.GAMMA, shape=shape, name="fp"), d)
    for arrival in ("renewal", "servegen"):
        (d / f"{arrival}.yaml").write_text(f"pool: fp.npz\nduration: 1800\nseed: 2\narrival: {arrival}\n")
        generate_to_file(d / f"{arrival}.yaml", d / f"{arrival}.jsonl")
    return d


def _inspect(path: Path, scenario: Path | None = None) -> dict:
    buf = io.StringIO()
    st = inspect_requests(path, scenario=scenario, as_json=True, file=buf)
    assert json.loads(buf.getvalue())["requests"] == st["requests"]
    return st


def test_statistics_measured_on_requests(setup: Path) -> None:
    p = setup / "renewal.jsonl"
    st = _inspect(p)
    lines = [orjson.loads(x) for x in p.read_bytes().splitlines()[1:]]
    inp = np.array([x["input_tokens"] for x in lines])
    assert st["requests"] == len(lines) and st["clients"] == 4
    assert st["duration_s"] == 1800
    q = st["lengths"]["language"]["input_tokens"]
    assert q["p50"] == float(np.quantile(inp, 0.5, method="inverted_cdf"))
    counts = sorted(np.unique([x["client"] for x in lines], return_counts=True)[1])[::-1]
    assert st["top_share"]["top1"] == pytest.approx(counts[0] / len(lines), abs=1e-4)
    assert st["top_share"]["top10"] == 1.0
    assert len(st["rate_curve"]["rates"]) == 48
    assert sum(st["rate_curve"]["rates"]) * st["rate_curve"]["bucket_s"] == pytest.approx(len(lines))
    assert st["cv"]["p10"] <= st["cv"]["p50"] <= st["cv"]["p90"]


def test_window_cvs_are_exact() -> None:
    t = np.array([0.0, 1.0, 3.0, 6.0, 10.0, 601.0, 602.0, 603.0])
    cl = np.zeros(t.size, dtype=np.int64)
    _c, w, n, cv = window_cvs(t, cl, np.array([0.0, 600.0, 1200.0]), min_n=3)
    g = np.array([1.0, 2.0, 3.0, 4.0])
    assert list(w) == [0, 1] and list(n) == [5, 3]
    assert cv[0] == pytest.approx(g.std(ddof=1) / g.mean()) and cv[1] == 0.0


def test_fidelity_servegen_counts_are_exact(setup: Path) -> None:
    st = _inspect(setup / "servegen.jsonl", setup / "servegen.yaml")
    f = st["fidelity"]
    assert f["digest_match"] and f["kind"] == "realistic"
    assert f["total"]["observed"] == pytest.approx(f["total"]["expected"], abs=4)
    assert f["counts"]["max_abs_deviation"] < 1.0
    assert f["counts"]["dispersion"] is None and f["counts"]["dof"] >= 5
    ks = {r["field"]: r["ks"] for r in f["lengths"]}
    assert set(ks) == {"input_tokens", "output_tokens"} and max(ks.values()) < 0.05
    cv = f["gap_cv"][0]
    assert cv["client_windows"] >= 3 and abs(cv["median_ratio_target"] - 1) < 0.2


def test_fidelity_renewal_and_mismatch(setup: Path) -> None:
    st = _inspect(setup / "renewal.jsonl", setup / "renewal.yaml")
    c = st["fidelity"]["counts"]
    assert c["dispersion"] is not None and 0.05 < c["dispersion"] < 5
    assert abs(c["total_z"]) < 4
    # the same requests against another scenario: the digest says so
    st2 = _inspect(setup / "renewal.jsonl", setup / "servegen.yaml")
    assert not st2["fidelity"]["digest_match"]


def test_fidelity_follows_header_overrides_and_shards(setup: Path) -> None:
    out = setup / "shard.jsonl"
    generate_to_file(setup / "servegen.yaml", out, shard="1/2", duration=600, seed=9)
    st = _inspect(out, setup / "servegen.yaml")
    f = st["fidelity"]
    assert f["digest_match"]
    assert f["counts"]["max_abs_deviation"] < 1.0
    assert f["total"]["observed"] == pytest.approx(f["total"]["expected"], abs=3)
    assert 0 < f["total"]["expected"] < 0.9 * 600 * 4.55


def test_naive_fidelity(setup: Path) -> None:
    (setup / "nv.yaml").write_text("naive: {rate: 20, input_tokens: {from: fp.npz}, output_tokens: 7}\n"
                                   "duration: 300\nseed: 1\n")
    generate_to_file(setup / "nv.yaml", setup / "nv.jsonl")
    f = _inspect(setup / "nv.jsonl", setup / "nv.yaml")["fidelity"]
    assert abs(f["counts"]["z"]) < 4 and f["counts"]["expected"] == 6000
    assert abs(f["gap_cv"][0]["realised"] - 1) < 0.05
    ks = {r["field"]: r["ks"] for r in f["lengths"]}
    assert ks["output_tokens"] == 0.0 and ks["input_tokens"] < 0.03


def test_plain_text_and_cli(setup: Path) -> None:
    buf = io.StringIO()
    inspect_requests(setup / "servegen.jsonl", scenario=setup / "servegen.yaml", file=buf)
    text = buf.getvalue()
    assert "requests:" in text and "fidelity vs" in text and "KS fp input_tokens" in text
    assert "\x1b[" not in text  # not a terminal: no colour codes
    r = subprocess.run([sys.executable, "-m", "servegen_load.cli", "inspect", str(setup / "servegen.jsonl"),
                        "--scenario", str(setup / "servegen.yaml"), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fidelity"]["counts"]["max_abs_deviation"] < 1.0


def test_multimodal_and_reason_columns(setup: Path) -> None:
    save_pool(make_pool([[2.0, 2.0, 2.0]], category="multimodal", name="fm"), setup)
    save_pool(make_pool([[2.0, 2.0, 2.0]], category="reason", name="fr"), setup)
    (setup / "mm.yaml").write_text("pools: [{pool: fm.npz}, {pool: fr.npz}]\nduration: 1800\narrival: servegen\n")
    generate_to_file(setup / "mm.yaml", setup / "mm.jsonl")
    cols = read_columns(setup / "mm.jsonl")
    assert set(cols.categories) == {"multimodal", "reason"}
    cnt, items = cols.mm["image"]
    assert cnt.sum() == items.size
    st = _inspect(setup / "mm.jsonl", setup / "mm.yaml")
    assert "image_count" in st["lengths"]["multimodal"] and "reason_share" in st["lengths"]["reason"]
    ks = {(r["pool"], r["field"]): r["ks"] for r in st["fidelity"]["lengths"]}
    assert ks[("fm", "image_count")] < 0.05 and ks[("fm", "image_tokens")] < 0.05
    assert ks[("fr", "reason_share")] < 0.1


def test_m_large_slice_fidelity(tmp_path: Path) -> None:
    try:
        load_pool("m-large")
    except Exception as e:
        pytest.skip(f"shipped pool m-large not available: {e}")
    s = tmp_path / "s.yaml"
    s.write_text("pool: m-large\nstart: '20:00'\nduration: 600\nseed: 3\narrival: servegen\n")
    generate_to_file(s, tmp_path / "r.jsonl")
    f = _inspect(tmp_path / "r.jsonl", s)["fidelity"]
    assert f["counts"]["max_abs_deviation"] < 1.0
    assert abs(f["gap_cv"][0]["median_ratio_pool_cv"] - 1) < 0.1
    assert max(r["ks"] for r in f["lengths"]) < 0.01
