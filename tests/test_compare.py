"""compare: the realism statistics are right on streams whose answer is known, the distance gates CI
(exit 0 / 1 / 2), and the JSON, text and HTML outputs carry the same table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_load.metrics.realism import compare_streams, stream_stats, wasserstein
from servegen_load.workload.distributions import LengthTable
from servegen_load.workload.logs import LogChunk

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT.parent / "shared" / "data" / "traces" / "azure2023"
CODE = AZURE / "AzureLLMInferenceTrace_code.csv"
CONV = AZURE / "AzureLLMInferenceTrace_conv.csv"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def chunk(t: np.ndarray, inp: np.ndarray | None = None, out: np.ndarray | None = None,
          client: np.ndarray | None = None) -> LogChunk:
    n = t.size
    inp = np.full(n, 100, dtype=np.int32) if inp is None else inp.astype(np.int32)
    out = np.full(n, 10, dtype=np.int32) if out is None else out.astype(np.int32)
    has = client is not None
    cl = client.astype(np.int32) if has else np.zeros(n, dtype=np.int32)
    names = [f"c{i}" for i in range(int(cl.max()) + 1)] if has else ["all"]
    return LogChunk(path="mem", fmt="csv", t=t, client=cl, input=inp, output=out, clients=names, has_client=has)


def test_burstiness_of_known_processes() -> None:
    rng = np.random.default_rng(0)
    poisson = np.cumsum(rng.exponential(0.1, 200_000))
    s = stream_stats(chunk(poisson))
    for scale in (1.0, 10.0, 60.0, 600.0):
        cv, fano = s.burst[scale]
        assert fano == pytest.approx(1.0, abs=0.25 if scale < 600 else 0.8)
        assert cv == pytest.approx(np.sqrt(1.0 / (10 * scale)), rel=0.3)
    assert s.gap_cv == pytest.approx(1.0, abs=0.02) and s.gap_cv_window == pytest.approx(1.0, abs=0.05)
    periodic = stream_stats(chunk(np.arange(0, 20_000, 0.1)))
    assert periodic.burst[10.0][1] < 0.01 and periodic.gap_cv < 1e-6
    # a renewal process with gamma gaps of CV 3: Fano -> CV^2 = 9 at long scales
    bursty = stream_stats(chunk(np.cumsum(rng.gamma(1 / 9, 0.9, 200_000))))
    assert bursty.burst[600.0][1] == pytest.approx(9.0, rel=0.5)


def test_clients_lengths_and_identity() -> None:
    rng = np.random.default_rng(1)
    n = 50_000
    t = np.sort(rng.uniform(0, 3600, n))
    client = rng.choice(20, n, p=np.arange(20, 0, -1) / 210)
    inp = rng.integers(1, 4000, n)
    out = (inp // 10 + rng.integers(0, 50, n)).astype(np.int64)
    a = chunk(t, inp, out, client)
    c = compare_streams(a, a)
    assert c.distance == 0.0 and c.row("rate.corr").a == pytest.approx(1.0)
    assert c.row("clients.top1").a == pytest.approx(20 / 210, abs=0.01)
    assert c.row("clients.count").a == 20
    assert c.row("lengths.rank_corr").a > 0.9 and c.row("input.ks").a == 0.0
    shifted = chunk(t, inp * 2, out, client)
    d = compare_streams(shifted, a)
    assert d.row("input.p50").deviation == pytest.approx(1.0, rel=0.02)
    assert d.row("input.w1").a == pytest.approx(1.0, rel=0.02)  # W1 of x -> 2x is mean(x)
    assert d.worst == "input.p10" or d.distance >= 1.0
    assert compare_streams(shifted, a, ignore=["input.*"]).distance == 0.0


def test_renderers_agree() -> None:
    import io

    from rich.console import Console

    from servegen_load.metrics.realism import render_html, render_rich, render_text

    rng = np.random.default_rng(5)
    a = chunk(np.cumsum(rng.exponential(0.1, 20_000)))
    b = chunk(np.cumsum(rng.gamma(0.25, 0.4, 20_000)))
    c = compare_streams(a, b, ignore=["gap.*"])
    buf = io.StringIO()
    Console(file=buf, width=120).print(render_rich(c, 0.5))
    text, page = render_text(c, 0.5), render_html(c, 0.5)
    for r in c.rows:
        assert r.label in buf.getvalue() and r.label in text and r.label in page
    verdict = f"distance {c.distance:.3f} (worst: {c.worst})"
    assert verdict in text and verdict in page and "FAIL" in text and "ignored: gap.*" in text
    assert not c.worst.startswith("gap.")
    d = c.to_dict(0.5)
    assert d["pass"] is False and d["distance"] == pytest.approx(c.distance)


def test_wasserstein_matches_scipy() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 500, 3000), rng.integers(50, 700, 2000)
    got = wasserstein(LengthTable.from_samples(x), LengthTable.from_samples(y))
    assert got == pytest.approx(wasserstein_distance(x, y), rel=1e-9)


def test_cli_gate_exit_codes_and_outputs(tmp_path: Path) -> None:
    same = cli("compare", str(CODE), str(CODE), "--max-distance", "0")
    assert same.returncode == 0, same.stderr
    assert "distance 0.000" in same.stdout and "PASS" in same.stdout and "Fano factor per 10 s" in same.stdout

    html = tmp_path / "cmp.html"
    diff = cli("compare", str(CODE), str(CONV), "--max-distance", "0.5", "--json", "--html", str(html))
    assert diff.returncode == 1, diff.stderr
    d = json.loads(diff.stdout)
    assert d["pass"] is False and d["distance"] > 0.5 and d["worst"]
    keys = {r["key"] for r in d["rows"]}
    assert {"rate.corr", "burst.fano.10s", "burst.fano.60s", "input.ks", "output.w1", "gap.cv"} <= keys
    assert "clients.top1" not in keys  # neither trace has client ids
    page = html.read_text()
    assert "<table>" in page and "<style>" in page and "FAIL" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page

    loose = cli("compare", str(CODE), str(CONV), "--max-distance", "1000")
    assert loose.returncode == 0


@pytest.mark.parametrize("args, message", [
    (["/nonexistent.csv", str(CODE)], "nonexistent"),
    ([str(CODE), str(CONV), "--format-a", "parquet"], "unknown log format"),
    ([str(CODE), str(CONV), "--results-time", "when"], "scheduled or sent"),
])
def test_cli_bad_input_is_exit_2(args: list[str], message: str) -> None:
    r = cli("compare", *args, "--max-distance", "1")
    assert r.returncode == 2 and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_results_file_against_requests_file(tmp_path: Path) -> None:
    """A run's results (scheduled/sent times) against the requests it was given: same stream, tiny lag."""
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.exponential(0.05, 20_000))
    req = [{"format": "servegen-load/requests/v1", "seed": 0}]
    res = [{"format": "servegen-load/results/v1"}]
    for i, x in enumerate(t):
        client = f"c{i % 5}"
        req.append({"id": f"{client}#{i}", "t": round(float(x), 6), "client": client, "category": "language",
                    "input_tokens": 100 + i % 300, "output_tokens": 5 + i % 50})
        res.append({"id": f"{client}#{i}", "client": client, "scheduled": round(float(x), 6),
                    "sent": round(float(x) + 0.002, 6), "input_tokens": 100 + i % 300,
                    "output_tokens": 5 + i % 50, "prompt_tokens": 100 + i % 300, "completion_tokens": 5 + i % 50,
                    "status": "ok"})
    order = rng.permutation(len(res) - 1) + 1  # results arrive in completion order
    (tmp_path / "req.jsonl").write_text("".join(json.dumps(x) + "\n" for x in req))
    (tmp_path / "res.jsonl").write_text(json.dumps(res[0]) + "\n" + "".join(json.dumps(res[i]) + "\n" for i in order))
    for when in ("scheduled", "sent"):
        r = cli("compare", str(tmp_path / "res.jsonl"), str(tmp_path / "req.jsonl"), "--results-time", when,
                "--json", "--max-distance", "0.01")
        assert r.returncode == 0, r.stdout + r.stderr
        rows = {x["key"]: x for x in json.loads(r.stdout)["rows"]}
        assert rows["clients.top1"]["deviation"] == 0.0 and rows["rate.corr"]["a"] > 0.999
