"""Multi-turn sessions: generation (history growth, think times, rate kept, shard-invariant, fitted
session tables) and dispatch against the simulator (turns wait for the previous response, the
history grows as specified and is cached, first turns stay open loop against a slow server)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegen_load.workload.compose import generate_to_file, merge_requests
from servegen_load.workload.pool import load_pool

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()[1:]]


def by_session(reqs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reqs:
        if r.get("session") is not None:
            out[r["session"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["turn"])
    return out


NAIVE = """naive:
  rate: {rate}
  input_tokens: 300
  output_tokens: {out}
duration: {duration}
seed: 5
sessions:
  share: {share}
  turns: {{mean: 4}}
  think_time: {{mean: {think}}}
  new_tokens: {{mean: 60, cv: 0.5}}
"""


def test_generation_history_and_times(tmp_path: Path) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text(NAIVE.format(rate=40, out=25, duration=60, share=0.6, think=2.0))
    out = tmp_path / "r.jsonl"
    generate_to_file(scen, out)
    reqs = rows(out)
    ts = [r["t"] for r in reqs]
    assert ts == sorted(ts)
    sessions = by_session(reqs)
    assert len(sessions) > 100
    for sid, turns in sessions.items():
        assert [t["turn"] for t in turns] == list(range(len(turns)))
        assert turns[0]["id"] == sid and all(t["id"] == f"{sid}/{t['turn']}" for t in turns[1:])
        for a, b in itertools.pairwise(turns):
            new = b["input_tokens"] - a["input_tokens"] - a["output_tokens"]
            assert new >= 1  # input grows by the previous prompt + response + new tokens
            assert b["t"] == pytest.approx(a["t"] + b["think_time"], abs=2e-6)  # lower bound of the send time
    # the request rate is kept: share x N requests in sessions, about N in all
    n = len(reqs)
    assert 40 * 60 * 0.85 < n < 40 * 60 * 1.1
    in_sessions = sum(len(v) for v in sessions.values())
    assert 0.45 < in_sessions / n < 0.7
    think = [t["think_time"] for v in sessions.values() for t in v[1:]]
    assert 1.6 < float(np.mean(think)) < 2.4
    again = tmp_path / "r2.jsonl"
    generate_to_file(scen, again)
    assert again.read_bytes() == out.read_bytes()  # same scenario + seed, same bytes


def test_sessions_are_shard_invariant(tmp_path: Path) -> None:
    scen = tmp_path / "p.yaml"
    scen.write_text("pool: m-small\nstart: \"20:00\"\nduration: 60\nrate: 20\nseed: 2\n"
                    "sessions: {share: 0.5, turns: {mean: 3}, think_time: {mean: 1}, new_tokens: 40}\n"
                    "prefix: {share: 0.5, tokens: 600, variants: 3}\n")
    whole = tmp_path / "whole.jsonl"
    generate_to_file(scen, whole)
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.jsonl"
        generate_to_file(scen, p, shard=(i, 3))
        parts.append(p)
    merged = b"".join(merge_requests(parts))
    assert merged == b"".join(whole.read_bytes().splitlines(keepends=True)[1:])
    reqs = rows(whole)
    with_prefix = [r for r in reqs if r.get("prefix")]
    assert with_prefix and all(r["prefix_tokens"] == 600 for r in with_prefix)
    assert len({tuple(r["prefix"]) for r in with_prefix}) == 3
    for turns in by_session(reqs).values():  # a session keeps its system prompt in every turn
        assert len({tuple(t.get("prefix") or ()) for t in turns}) == 1


def test_fitted_session_tables_win(tmp_path: Path) -> None:
    """A pool fitted from logs whose sessions all have 3 turns, 2 s apart, 40 new tokens each."""
    rng = np.random.default_rng(3)
    lines = ["time,tenant,conv,prompt_tokens,completion_tokens"]
    t0 = 86400 * 19000.0
    events = []
    start = t0
    for s in range(300):
        start += float(rng.exponential(3.0))
        hist = 0
        for j in range(3):
            inp = hist + 40
            events.append((start + 2.0 * j, f"{start + 2.0 * j:.3f},t0,c{s},{inp},30"))
            hist = inp + 30
    lines += [e for _, e in sorted(events)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    cli("fit", str(tmp_path / "s.csv"), "-o", str(tmp_path / "s.npz"), "--client-column", "tenant",
        "--session-column", "conv", "--window", "60", "--min-requests", "10")
    scen = tmp_path / "g.yaml"
    scen.write_text("pool: s.npz\nduration: 600\nseed: 1\n"
                    "sessions: {share: 0.1, turns: 7, think_time: 99, new_tokens: 5}\n")
    out = tmp_path / "g.jsonl"
    generate_to_file(scen, out)
    reqs = rows(out)
    sessions = by_session(reqs)
    assert sum(len(v) for v in sessions.values()) == len(reqs)  # session_share 1 in the logs
    full = [v for v in sessions.values() if v[0]["t"] < 600 - 10]
    assert full and all(len(v) == 3 for v in full)
    for v in full:
        for a, b in itertools.pairwise(v):
            assert b["think_time"] == pytest.approx(2.0, abs=1e-3)
            assert b["input_tokens"] - a["input_tokens"] - a["output_tokens"] == 40


def test_sessions_against_a_slow_simulator(tmp_path: Path) -> None:
    """Closed loop inside sessions, open loop for session starts, history as a cached prefix."""
    preset = tmp_path / "slow.yaml"
    preset.write_text("base: tiny-cpu\nstep_base_s: 0.03\n")  # 30 ms a step: 20 tokens take > 0.6 s
    scen = tmp_path / "s.yaml"
    scen.write_text(NAIVE.format(rate=20, out=20, duration=4, share=0.8, think=0.1))
    res = tmp_path / "res.jsonl"
    summary = tmp_path / "sum.json"
    cli("run", str(scen), "-o", str(res), "--sim-preset", str(preset), "--progress", "off",
        "--summary-json", str(summary))
    reqs = rows(res)
    assert reqs and all(r["status"] == "ok" for r in reqs)
    gen = tmp_path / "gen.jsonl"
    generate_to_file(scen, gen)
    asked = {r["id"]: r for r in rows(gen)}
    assert set(asked) == {r["id"] for r in reqs}
    sessions = by_session(reqs)
    multi = [v for v in sessions.values() if len(v) > 1]
    assert len(multi) >= 5
    for turns in multi:
        for a, b in itertools.pairwise(turns):
            think = asked[b["id"]]["think_time"]
            # think time is arrival to arrival, and a turn never leaves before the previous response ended
            assert b["sent"] >= a["last_token"] - 2e-6, (a, b)
            assert b["scheduled"] >= a["scheduled"] + think - 2e-6
            new = asked[b["id"]]["input_tokens"] - asked[a["id"]]["input_tokens"] - asked[a["id"]]["output_tokens"]
            assert b["prompt_tokens"] == a["prompt_tokens"] + a["completion_tokens"] + new
            assert b["cached_tokens"] >= a["prompt_tokens"] // 16 * 16 - 16  # the history hits the cache
    firsts = np.array([r["sent"] - r["scheduled"] for r in reqs if not r.get("turn")])
    lag99 = float(np.percentile(firsts, 99))
    e2e50 = float(np.median([r["last_token"] - r["sent"] for r in reqs]))
    print(f"first-turn send lag p50 {np.median(firsts) * 1e3:.3f} ms, p99 {lag99 * 1e3:.3f} ms; e2e p50 {e2e50:.2f} s")
    # responses take ~1 s; new sessions still leave on time: a first turn that waited behind another
    # session's response would be late by about a response time (a bound a busy machine cannot blur)
    assert e2e50 > 0.5 and lag99 < 0.1 * e2e50
    s = json.loads(summary.read_text())["sessions"]
    assert s["early_turns"] == 0 and s["sessions"] == len(sessions)
    assert "0" in s["ttft_by_turn"] and "1" in s["ttft_by_turn"] and s["duration"]["p50"] > 0.5


def _reasoning_chat_log(path: Path, carry_reasoning: bool) -> None:
    """Conversations on one of two models kept for the whole session: 40% on a reasoning model
    (answers ~300 tokens after ~1500 of reasoning), the rest answering ~300 directly. Prompts grow
    by the previous prompt and answer, reasoning included only when `carry_reasoning`."""
    rng = np.random.default_rng(5)
    recs = []
    start = 1.7e9
    for s in range(1500):
        start += float(rng.exponential(20.0))
        reasoning_model = rng.random() < 0.4
        hist, t = 0, start
        for j in range(int(rng.geometric(1 / 3.5))):
            inp = hist + int(rng.lognormal(np.log(120), 0.8)) + (int(rng.lognormal(np.log(800), 0.5)) if j == 0 else 0)
            ans = int(rng.lognormal(np.log(300), 0.7)) + 1
            reason = int(rng.lognormal(np.log(1500), 0.9)) + 1 if reasoning_model else 0
            recs.append((t, json.dumps({"created": round(t, 3), "team_id": f"t{s % 2}", "conversation_id": f"c{s}",
                                        "usage": {"prompt_tokens": inp, "completion_tokens": ans + reason,
                                                  "completion_tokens_details": {"reasoning_tokens": reason}}})))
            hist = inp + ans + (reason if carry_reasoning else 0)
            t += 5 + float(rng.gamma(1.5, 20.0))
    path.write_text("".join(line + "\n" for _, line in sorted(recs)))


def _by_turn(reqs: list[dict[str, Any]], key: Callable[[dict[str, Any]], int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for v in by_session(reqs).values():
        for r in v:
            out[r["turn"]].append(key(r))
    return out


@pytest.mark.parametrize("carry_reasoning", [False, True])
def test_reasoning_sessions_grow_by_what_the_log_carried(tmp_path: Path, carry_reasoning: bool) -> None:
    """Reasoning models' APIs do not send reasoning back: prompts grow by the visible answer. Read
    as history `excluded` (prompts no longer grew by the whole output), later turns were sent
    without their history (turn 3's prompt 2,500 where the log had 2,600, flat from turn 1) and
    their reasoning came out at a third of the log's; a session also keeps its model to its end."""
    log = tmp_path / "chat.jsonl"
    _reasoning_chat_log(log, carry_reasoning)
    fit = cli("fit", str(log), "-o", str(tmp_path / "p.npz"), "--window", "600")
    assert f"history {'included' if carry_reasoning else 'answers'}" in fit.stdout + fit.stderr
    arrays = load_pool(tmp_path / "p.npz").meta["arrays"]
    assert "consecutive session turns' output tokens" in arrays["session_output_copula"]
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    for r in logged:
        r.update(session=r["conversation_id"], input_tokens=r["usage"]["prompt_tokens"],
                 reason_tokens=r["usage"]["completion_tokens_details"]["reasoning_tokens"])
    turn: dict[str, int] = defaultdict(int)
    for r in logged:
        r["turn"] = turn[r["session"]]
        turn[r["session"]] += 1
    scen = tmp_path / "g.yaml"
    scen.write_text("pool: p.npz\nduration: 30000\nseed: 1\n")
    out = tmp_path / "g.jsonl"
    generate_to_file(scen, out)
    gen = rows(out)
    assert all("reason_tokens" in r for r in gen)  # a 0 is written, not dropped, on later turns too
    want, got = _by_turn(logged, lambda r: r["input_tokens"]), _by_turn(gen, lambda r: r["input_tokens"])
    for k in (1, 3):
        assert np.median(got[k]) == pytest.approx(np.median(want[k]), rel=0.12), k
    later = [r["reason_tokens"] for r in logged if r["turn"] > 0 and r["reason_tokens"] > 0]
    made = [r["reason_tokens"] for r in gen if r["turn"] and r["reason_tokens"] > 0]
    assert np.median(made) == pytest.approx(np.median(later), rel=0.3)
