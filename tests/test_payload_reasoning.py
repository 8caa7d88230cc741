"""Reasoning: the simulator thinks the requested tokens first (`x_reason_tokens`), results record
reasoning tokens and the first answer token, the summary reports reasoning/answer tokens and the
time to first answer; without usage details the split is estimated from the stream's chunks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servegen_load.metrics.stats import summarize
from servegen_load.results import RESULTS_FORMAT, read_results

ROOT = Path(__file__).resolve().parents[1]


def test_reasoning_pool_against_the_simulator(tmp_path: Path) -> None:
    scen = tmp_path / "r.yaml"
    scen.write_text("pool: deepseek-r1\nstart: \"20:00\"\nduration: 3\nrate: 20\nseed: 2\n")
    gen = tmp_path / "gen.jsonl"
    subprocess.run([sys.executable, "-m", "servegen_load.cli", "generate", str(scen), "-o", str(gen)],
                   check=True, capture_output=True, timeout=60, cwd=ROOT)
    lines = gen.read_text().splitlines()
    reqs = [json.loads(x) for x in lines[1:]]
    for r in reqs:  # the pool's reasoning share on short answers: the run takes seconds, not minutes
        ratio = (r.get("reason_tokens") or 0) / r["output_tokens"]
        r["output_tokens"] = min(r["output_tokens"], 48)
        r["reason_tokens"] = round(ratio * r["output_tokens"]) if "reason_tokens" in r else None
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join([lines[0], *(json.dumps(r) for r in reqs)]) + "\n")
    out, summ = tmp_path / "o.jsonl", tmp_path / "s.json"
    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", "run", str(short), "-o", str(out),
                        "--sim-preset", "tiny-cpu", "--progress", "off", "--summary-json", str(summ)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reasoning:" in p.stdout and "time to first answer" in p.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    thinking = [r for r in rows if r["reason_tokens"]]
    assert len(thinking) > 0.5 * len(rows)
    for r in rows:
        assert r["status"] == "ok" and r["reasoning_tokens"] == (r["reason_tokens"] or 0)
        if r["reason_tokens"] and r["reason_tokens"] < r["output_tokens"]:
            assert r["first_answer_token"] > r["first_token"]  # the answer starts after the thinking
    s = json.loads(summ.read_text())
    re_ = s["reasoning"]
    assert re_["source"] == "usage" and re_["reasoning_tokens"] == re_["intended_reasoning_tokens"]
    assert re_["reasoning_tokens"] + re_["answer_tokens"] == sum(r["completion_tokens"] for r in thinking)
    # per request first_answer >= TTFT, strictly for every request that thinks before answering, so
    # the means differ whatever the load (p50s may tie when most requests answer at once)
    answered = [r for r in rows if r["first_answer_token"] is not None]
    assert any(r["first_answer_token"] > r["first_token"] for r in answered)
    fa = s["latency"]["first_answer"]
    assert fa["n"] == len(answered)
    assert fa["mean"] == pytest.approx(sum(r["first_answer_token"] - r["sent"] for r in answered) / len(answered))
    assert fa["mean"] > sum(r["first_token"] - r["sent"] for r in answered) / len(answered)


def test_reasoning_split_from_chunks_without_usage_details(tmp_path: Path) -> None:
    """vLLM streams `reasoning_content` but may report no reasoning_tokens: chunks before the first
    answer chunk are thinking; tokens are split in proportion to chunks."""
    head = {"format": RESULTS_FORMAT}
    base = {"client": "c", "category": "reason", "session": None, "turn": None, "queue_time": 0.0,
            "input_tokens": 10, "output_tokens": 40, "prompt_tokens": 10, "reasoning_tokens": None,
            "cached_tokens": None, "status": "ok", "error": None, "http_status": 200, "retries": 0}
    rows = [
        {**base, "id": "a", "scheduled": 0.0, "sent": 0.0, "first_token": 0.1, "first_answer_token": 0.4,
         "last_token": 0.5, "chunk_times": [0.0, 0.1, 0.2, 0.3, 0.4], "reason_tokens": 30, "completion_tokens": 40},
        {**base, "id": "b", "scheduled": 1.0, "sent": 1.0, "first_token": 1.1, "first_answer_token": 1.1,
         "last_token": 1.3, "chunk_times": [0.0, 0.1, 0.2, 0.2], "reason_tokens": None, "completion_tokens": 8},
    ]
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [head, *rows]) + "\n")
    s = summarize(read_results(p))["reasoning"]
    assert s["source"] == "chunks" and s["n"] == 1  # b neither asked for nor showed any thinking
    assert s["reasoning_tokens"] == pytest.approx(40 * 3 / 5) and s["answer_tokens"] == pytest.approx(16)
