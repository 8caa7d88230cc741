"""Sessions that mean what the log meant: fit the earlier part of a synthetic session log (history
excluded or included), generate the later part from the pool alone, and compare with the real
later part: turns per session, think time (arrival to arrival) and later turns' inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegen_load.metrics.realism import compare_streams, stream_stats
from servegen_load.workload.logs import ColumnMap, load_log

ROOT = Path(__file__).resolve().parents[1]
SPAN = 7200.0
SPLIT = 3600.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


def session_log(path: Path, history: str, seed: int = 0, shared_ids: bool = False, cap: int | None = None) -> None:
    """Two tenants; sessions start as Poisson (0.35/s), 1 + Poisson(2.5) turns, lognormal think time
    (median 20 s, arrival to arrival), lognormal first inputs, new tokens and outputs; plus single
    requests (0.3/s). `history` included: a later turn's input is the previous input + output + new.
    `shared_ids`: each tenant numbers its sessions from 0 (the same ids in both). `cap`: the model's
    context, where the client drops the oldest turns (the prompt stays at the cap)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, str]] = []
    for tenant, rate, med_first in (("a", 0.25, 900.0), ("b", 0.10, 300.0)):
        n = rng.poisson(rate * SPAN)
        starts = np.sort(rng.uniform(0.0, SPAN, n))
        for i, t in enumerate(starts.tolist()):
            k = 1 + rng.poisson(2.5)
            inp = int(rng.lognormal(np.log(med_first), 0.6)) + 1
            for j in range(k):
                if j:
                    t += float(rng.lognormal(np.log(20.0), 0.8))
                    new = int(rng.lognormal(np.log(60.0), 0.9)) + 1
                    inp = inp + out + new if history == "included" else new  # noqa: F821 (out from j-1)
                    inp = min(inp, cap or inp)
                out = int(rng.lognormal(np.log(150.0), 0.7)) + 1
                if t < SPAN:
                    rows.append((t, f"{t:.3f},{tenant},{i if shared_ids else f'{tenant}-{i}'},{inp},{out}"))
        m = rng.poisson(rate * 1.2 * SPAN)
        for t in rng.uniform(0.0, SPAN, m).tolist():
            rows.append((t, f"{t:.3f},{tenant},,{int(rng.lognormal(np.log(2000.0), 0.5)) + 1},"
                            f"{int(rng.lognormal(np.log(100.0), 0.7)) + 1}"))
    rows.sort()
    path.write_text("t,tenant,conversation,prompt_tokens,completion_tokens\n"
                    + "\n".join(r for _, r in rows) + "\n")


def later_part(tmp: Path, history: str, shared_ids: bool = False,
               cap: int | None = None) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    log = tmp / f"{history}.csv"
    session_log(log, history, shared_ids=shared_ids, cap=cap)
    pool = tmp / f"{history}.npz"
    fit = cli("fit", str(log), "-o", str(pool), "--time-unit", "s", "--session-column", "conversation",
              "--client-column", "tenant", "--range", f"0:{SPLIT}", "--window", "600")
    assert fit.returncode == 0, fit.stderr
    scen = tmp / f"{history}.yaml"
    scen.write_text(f"pool: {pool.name}\nduration: {SPAN - SPLIT}\nseed: 5\n")  # no `sessions:` section
    out = tmp / f"{history}.jsonl"
    gen = cli("generate", str(scen), "-o", str(out))
    assert gen.returncode == 0, gen.stderr
    return log, out, fit


def requests(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()[1:]]


@pytest.mark.parametrize("history,shared_ids", [("excluded", False), ("included", False), ("excluded", True)])
def test_held_out_sessions_match(tmp_path: Path, history: str, shared_ids: bool) -> None:
    """`shared_ids`: tenants number their sessions alike; grouped by id alone, two tenants' sessions
    merged (3.5 turns fitted as 6.4, and `compare` measured the log the same wrong way)."""
    log, gen, fit = later_part(tmp_path, history, shared_ids)
    assert f"history {history}" in fit.stderr and "think time = arrival to arrival" in fit.stderr
    assert "turns mean" in fit.stderr
    real = load_log(log, "csv", ColumnMap(session="conversation", client="tenant", time_unit="s"))
    c = compare_streams(stream_stats(load_log(gen)), stream_stats(real.time_range(SPLIT, None)))
    turns = c.row("session.turns")
    assert turns.deviation is not None and turns.deviation <= 0.10, (turns.a, turns.b)
    assert c.row("session.think.ks").a <= 0.08
    assert c.row("session.later_input.ks").a <= 0.08, history
    share = c.row("session.share")
    assert abs(share.a - share.b) <= 0.05
    reqs = requests(gen)
    later = [r for r in reqs if r.get("turn")]
    assert later and all((r.get("history") == "excluded") == (history == "excluded") for r in later)


def test_sessions_at_the_context_limit_stay_there(tmp_path: Path) -> None:
    """Later turns of a log at a model's context (the client drops old turns, the prompt stays at
    1,500 tokens): grown by history alone, generated prompts went far past anything logged."""
    log, gen, fit = later_part(tmp_path, "included", cap=1500)
    assert "history included" in fit.stderr and "pile up at 1500 prompt tokens" in fit.stderr
    real = load_log(log, "csv", ColumnMap(session="conversation", client="tenant", time_unit="s"))
    c = compare_streams(stream_stats(load_log(gen)), stream_stats(real.time_range(SPLIT, None)))
    assert c.row("session.later_input.ks").a <= 0.08
    later = np.array([r["input_tokens"] for r in requests(gen) if r.get("turn")])
    assert later.size > 500 and np.mean(later > 1500) <= 0.005 and np.mean(later == 1500) >= 0.2


def test_inspect_prints_the_session_model(tmp_path: Path) -> None:
    _, _, _ = later_part(tmp_path, "excluded")
    r = cli("inspect", str(tmp_path / "excluded.npz"))
    assert r.returncode == 0, r.stderr
    assert "history excluded" in r.stdout and "think p50" in r.stdout and "turns mean" in r.stdout
