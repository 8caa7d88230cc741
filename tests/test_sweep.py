"""`plan --concurrency`: a closed-loop sweep against the embedded simulator keeps exactly N
requests in flight at level N, and reports each level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from servegen_load.results import read_results
from servegen_load.sweep import knee, parse_levels

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


def max_in_flight(sent: np.ndarray, done: np.ndarray) -> int:
    """The largest number of requests between their send and their last byte at once."""
    ev = np.concatenate([np.stack([sent, np.ones_like(sent)], 1), np.stack([done, -np.ones_like(done)], 1)])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]  # at a tie the end comes first: a slot is handed over
    return int(np.cumsum(ev[:, 1]).max())


def test_concurrency_sweep_keeps_n_in_flight(tmp_path: Path) -> None:
    out, keep = tmp_path / "sweep.json", tmp_path / "runs"
    p = subprocess.run([*CLI, "plan", str(ROOT / "scenarios" / "naive.yaml"), "--concurrency", "1,3",
                        "--concurrency-rounds", "6", "--slo", "error_rate<=0%", "-o", str(out),
                        "--results-dir", str(keep)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "closed-loop concurrency sweep" in p.stdout and "knee: concurrency" in p.stdout
    doc = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 3]
    for lv in doc["levels"]:
        n = lv["concurrency"]
        assert lv["requests"] == max(16, 6 * n) and lv["ok"] == lv["requests"] and lv["passed"]
        res = read_results(keep / f"sweep-c{n}.jsonl")
        assert max_in_flight(res["sent"], res["last_token"]) == n  # closed loop: never more, and reached
        assert np.all(res["scheduled"] == 0.0)
    assert doc["knee_concurrency"] in (1, 3) and doc["max_passing_concurrency"] == 3


def test_levels_and_knee() -> None:
    assert parse_levels("8, 1,2,2,4") == [1, 2, 4, 8]
    p = subprocess.run([*CLI, "plan", str(ROOT / "scenarios" / "naive.yaml"), "--concurrency", "0,2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--concurrency" in p.stderr and p.stderr.count("\n") == 1
    lv = [{"concurrency": c, "requests_per_s": r} for c, r in ((1, 2.0), (2, 3.9), (4, 4.0), (8, 4.05))]
    assert knee(lv) == 2
