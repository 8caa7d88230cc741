"""`servegen-load gate`: SLO verdicts and bootstrap regression checks on real simulator runs.

Runs go through the real CLI (`run`, `report`, `gate`) against the embedded simulator started
here with a chosen time scale: the healthy configuration at time_scale 2 (latencies large
against host jitter), a 30% slower one at 2.6, and one with a slow engine step (params override)
for the SLO failure. Each run is ~4 s of Poisson traffic at 20 req/s with its own seed and id
prefix (no prefix-cache hits across runs on the shared simulator).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from servegen_load.gate import compare, ratio_ci
from servegen_load.requests import REQUESTS_FORMAT
from servegen_load.sim.process import SimProcess

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
BASE_SCALE = 2.0
HEALTHY_SLOS = ["--slo", "ttft_p99<=2s", "--slo", "tpot_p50<=50ms", "--slo", "error_rate<=0.5%",
                "--slo", "ttft_p99[category=multimodal]<=4s", "--request-slo", "ttft<=2s,tpot<=100ms",
                "--slo", "goodput_ratio>=95%"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def write_requests(path: Path, seed: int, rate: float = 20.0, duration: float = 4.0) -> Path:
    """Poisson arrivals, two categories, three clients, lengths drawn per request (seeded)."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, int(rate * duration * 2)))
    t = t[t < duration]
    with path.open("wb") as fh:
        fh.write(orjson.dumps({"format": REQUESTS_FORMAT, "seed": seed, "source": "test_gate"}) + b"\n")
        for i, x in enumerate(t):
            fh.write(orjson.dumps({
                "id": f"s{seed}-{i}", "t": round(float(x), 6), "client": f"c{i % 3}",
                "category": "multimodal" if i % 4 == 0 else "language",
                "input_tokens": int(rng.integers(50, 150)), "output_tokens": int(rng.integers(16, 48)),
            }) + b"\n")
    return path


def run(tmp: Path, name: str, url: str, seed: int) -> Path:
    req = write_requests(tmp / f"{name}.requests.jsonl", seed)
    out = tmp / f"{name}.results.jsonl"
    p = cli("run", str(req), "-o", str(out), "--endpoint", url, "--progress", "off")
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gate")
    out: dict[str, Path] = {}
    with SimProcess(time_scale=BASE_SCALE) as sim:
        for k in range(1, 5):
            out[f"A{k}"] = run(tmp, f"A{k}", sim.url, seed=k)
    with SimProcess(time_scale=BASE_SCALE * 1.3) as sim:
        out["slow"] = run(tmp, "slow", sim.url, seed=11)
    with SimProcess(time_scale=BASE_SCALE, params={"step_base_s": 0.04}) as sim:
        out["sluggish"] = run(tmp, "sluggish", sim.url, seed=12)
    return out


def test_healthy_run_passes_every_slo(runs: dict[str, Path]) -> None:
    p = cli("gate", str(runs["A1"]), *HEALTHY_SLOS)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "SLO checks"
    rows = [ln for ln in lines if ln.startswith(("ttft_p99", "tpot_p50", "error_rate", "goodput_ratio"))]
    assert len(rows) == 5 and all(" PASS" in r for r in rows)
    assert any("category=multimodal" in r for r in rows)
    assert lines[-1].startswith("gate: PASS (5 checks on ")


def test_slow_engine_fails_the_slo_with_exit_1(runs: dict[str, Path]) -> None:
    p = cli("gate", str(runs["sluggish"]), *HEALTHY_SLOS)
    assert p.returncode == 1, p.stdout + p.stderr
    tpot = next(ln for ln in p.stdout.splitlines() if ln.startswith("tpot_p50"))
    assert "FAIL" in tpot and "<= 50 ms" in tpot
    assert "gate: FAIL" in p.stdout and "tpot_p50<=50ms" in p.stdout.splitlines()[-1]


def test_json_output_and_warmup(runs: dict[str, Path]) -> None:
    full = json.loads(cli("gate", str(runs["A1"]), "--slo", "ttft_p99<=2s", "--json").stdout)
    warm = json.loads(cli("gate", str(runs["A1"]), "--slo", "ttft_p99<=2s", "--json", "--warmup", "1").stdout)
    assert full["passed"] and warm["passed"] and warm["warmup_s"] == 1
    assert 0 < warm["requests"] < full["requests"]
    p = cli("gate", str(runs["A1"]), "--slo", "ttft_p99<=2s", "--warmup", "1")
    assert p.stdout.startswith("warm-up: requests scheduled before 1 s excluded")


def test_same_configuration_never_flags_a_regression(runs: dict[str, Path], tmp_path: Path) -> None:
    for a, b in (("A1", "A2"), ("A2", "A3"), ("A3", "A4")):
        base = tmp_path / f"{a}.json"
        r = cli("report", str(runs[a]), "--json", "-o", str(base))
        assert r.returncode == 0, r.stderr
        assert json.loads(base.read_text())["samples"]["rows"] > 50
        p = cli("gate", str(runs[b]), "--baseline", str(base), "--max-regression", "10%")
        assert p.returncode == 0, f"{b} vs {a}:\n{p.stdout}"
        assert "regression vs baseline (95% bootstrap CI of current/baseline)" in p.stdout
        rows = [ln for ln in p.stdout.splitlines() if ln.startswith(("ttft_p", "tpot_p", "e2e_p"))]
        assert len(rows) == 9 and all(" PASS" in r for r in rows)


def test_thirty_percent_slowdown_fails_the_regression_check(runs: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    assert cli("report", str(runs["A1"]), "--json", "-o", str(base)).returncode == 0
    p = cli("gate", str(runs["slow"]), "--baseline", str(base), "--max-regression", "10%")
    assert p.returncode == 1, p.stdout
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith(("ttft_p", "tpot_p", "e2e_p")) and " FAIL" in ln]
    assert any(ln.startswith("tpot_p50") for ln in failed) and any(ln.startswith("e2e_p50") for ln in failed)
    assert "tpot_p50 regression" in p.stdout.splitlines()[-1]
    # a results file works as the baseline too, and SLOs and regressions combine in one verdict
    p2 = cli("gate", str(runs["slow"]), "--baseline", str(runs["A1"]), "--slo", "ttft_p99<=2s")
    assert p2.returncode == 1 and "SLO checks" in p2.stdout and "regression vs baseline" in p2.stdout


def test_bad_baseline_and_nothing_to_check_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"format": "servegen-load/summary/v1"}))
    p = cli("gate", str(runs["A1"]), "--baseline", str(summary))
    assert p.returncode == 2 and "no per-request `samples`" in p.stderr
    p = cli("gate", str(runs["A1"]))
    assert p.returncode == 2 and "nothing to check" in p.stderr
    p = cli("gate", str(runs["A1"]), "--baseline", str(runs["A2"]), "--max-regression", "ten")
    assert p.returncode == 2 and "--max-regression" in p.stderr


def test_bootstrap_is_seeded_and_calibrated() -> None:
    """Same distribution: the CI's lower bound stays under 1.1 for every seed; 1.3x: above it."""
    rng = np.random.default_rng(0)
    lows = []
    for _ in range(30):
        a = rng.lognormal(np.log(0.05), 0.5, 150)
        b = rng.lognormal(np.log(0.05), 0.5, 150)
        lows.append(ratio_ci(a, b, 50)[1])
    assert max(lows) < 1.1
    a = rng.lognormal(np.log(0.05), 0.5, 400)
    b = rng.lognormal(np.log(0.05 * 1.3), 0.5, 400)
    assert ratio_ci(b, a, 50)[1] > 1.1
    assert ratio_ci(b, a, 90) == ratio_ci(b, a, 90)  # seeded: identical twice
    cols = {"ttft": a, "tpot": a, "e2e": a}
    few = compare({k: v[:5] for k, v in cols.items()}, cols, max_regression=0.1)  # too few measured now: no pass
    assert all(not r.passed and "too few ok requests" in r.note for r in few)
    thin = compare(cols, {k: v[:5] for k, v in cols.items()}, max_regression=0.1)  # a thin baseline: nothing to say
    assert all(r.passed and r.note.startswith("skipped") for r in thin)


def test_a_run_with_too_few_ok_requests_fails_the_regression_gate(runs: dict[str, Path], tmp_path: Path) -> None:
    """Every request failed (an outage), or none was kept: a gate on --baseline alone went green
    with every percentile check "skipped". Now each check fails, saying why (exit 1)."""
    base = tmp_path / "base.json"
    assert cli("report", str(runs["A1"]), "--json", "-o", str(base)).returncode == 0
    head, *lines = runs["A2"].read_text().splitlines()
    failed = []
    for line in lines:
        d = json.loads(line)
        d.update(status="http_error", error="HTTP 500: boom", http_status=500, first_token=None, last_token=None,
                 chunk_times=[], completion_tokens=None)
        failed.append(json.dumps(d))
    outage = tmp_path / "outage.jsonl"
    outage.write_text("\n".join([head, *failed]) + "\n")
    for results in (outage, runs["A2"]):
        args = ["--warmup", "1e6"] if results == runs["A2"] else []  # a warm-up that keeps no request
        p = cli("gate", str(results), "--baseline", str(base), *args)
        assert p.returncode == 1, p.stdout
        rows = [ln for ln in p.stdout.splitlines() if ln.startswith(("ttft_p", "tpot_p", "e2e_p"))]
        assert len(rows) == 9 and all("FAIL" in r and "too few ok requests" in r for r in rows), p.stdout
