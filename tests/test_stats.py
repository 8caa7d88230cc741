"""The metric definitions (metrics/stats.py) on hand-made results with known answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from servegen_load.metrics import stats
from servegen_load.metrics.render import render_text
from servegen_load.results import RESULTS_FORMAT, read_results

_BASE: dict[str, Any] = {
    "client": "c", "category": "language", "session": None, "turn": None, "first_answer_token": None,
    "queue_time": 0.0, "input_tokens": 100, "output_tokens": 5, "reason_tokens": None, "prompt_tokens": 100,
    "reasoning_tokens": None, "cached_tokens": None, "error": None, "http_status": 200, "retries": 0,
}


def _row(i: int, **kw: Any) -> dict[str, Any]:
    d = {**_BASE, "id": f"r{i}", "status": "ok"}
    d.update(kw)
    return d


def _results(tmp_path: Path, rows: list[dict[str, Any]], name: str = "r.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in [{"format": RESULTS_FORMAT, "model": "m"}, *rows]))
    return read_results(p)


def test_the_definitions_on_one_request(tmp_path: Path) -> None:
    """sent 1.0, first token 1.1, five single-token chunks 0.1 apart: TTFT .1, E2E .5, TPOT .1, ITL .1."""
    row = _row(0, scheduled=0.998, sent=1.0, first_token=1.1, first_answer_token=1.2, last_token=1.5,
               chunk_times=[0.0, 0.1, 0.2, 0.3, 0.4], completion_tokens=5)
    s = stats.summarize(_results(tmp_path, [row]))
    lat = s["latency"]
    assert lat["ttft"]["p50"] == pytest.approx(0.1) and lat["e2e"]["p50"] == pytest.approx(0.5)
    assert lat["tpot"]["p50"] == pytest.approx(0.1)
    assert lat["itl"]["n"] == 4 and lat["itl"]["max"] == pytest.approx(0.1)
    assert lat["first_answer"]["p50"] == pytest.approx(0.2)
    assert lat["send_lag"]["p50"] == pytest.approx(0.002)
    assert lat["user_ttft"]["p50"] == pytest.approx(0.102) and lat["user_e2e"]["p50"] == pytest.approx(0.502)


def test_merged_chunks_spread_their_tokens_evenly(tmp_path: Path) -> None:
    """8 tokens in 4 chunks 0.2 s apart: each chunk holds 2 tokens, so ITL = 0.1 (weight 2 per gap)."""
    rows = [_row(0, scheduled=0.0, sent=0.0, first_token=0.1, last_token=0.7, chunk_times=[0, 0.2, 0.4, 0.6],
                 completion_tokens=8),
            _row(1, scheduled=0.0, sent=0.0, first_token=0.1, last_token=0.4, chunk_times=[0, 0.3],
                 completion_tokens=2)]  # a 0.3 s gap, one token per chunk
    s = stats.summarize(_results(tmp_path, rows))
    itl = s["latency"]["itl"]
    assert itl["p50"] == pytest.approx(0.1) and itl["max"] == pytest.approx(0.3)
    assert itl["mean"] == pytest.approx((3 * 2 * 0.1 + 0.3) / 7)  # weighted by tokens
    assert s["latency"]["tpot"]["max"] == pytest.approx(0.3)  # (0.4 - 0.1) / (2 - 1)


def test_queue_time_is_not_send_lag_but_users_feel_both(tmp_path: Path) -> None:
    row = _row(0, scheduled=1.0, queue_time=0.3, sent=1.305, first_token=1.405, last_token=1.805,
               chunk_times=[0.0, 0.4], completion_tokens=2)
    lat = stats.summarize(_results(tmp_path, [row]))["latency"]
    assert lat["send_lag"]["p50"] == pytest.approx(0.005)
    assert lat["queue_time"]["p50"] == pytest.approx(0.3)
    assert lat["ttft"]["p50"] == pytest.approx(0.1)
    assert lat["user_ttft"]["p50"] == pytest.approx(0.405)  # TTFT + send lag + queue time


def test_errors_counts_throughput_and_exclusions(tmp_path: Path) -> None:
    rows = [_row(i, scheduled=i * 0.5, sent=i * 0.5, first_token=i * 0.5 + 0.1, last_token=i * 0.5 + 0.5,
                 chunk_times=[0, 0.1, 0.2, 0.3, 0.4], completion_tokens=5) for i in range(4)]
    rows.append(_row(4, status="http_error", scheduled=2.0, sent=2.0, first_token=None, last_token=None,
                     chunk_times=[], completion_tokens=None, prompt_tokens=None, http_status=500, error="HTTP 500"))
    rows.append(_row(5, status="timeout", scheduled=2.5, sent=2.5, first_token=2.6, last_token=2.7,
                     chunk_times=[0, 0.1], completion_tokens=None, prompt_tokens=None))
    rows.append(_row(6, status="cancelled", scheduled=3.0, sent=None, first_token=None, last_token=None,
                     chunk_times=[], completion_tokens=None, prompt_tokens=None, queue_time=None))
    s = stats.summarize(_results(tmp_path, rows))
    r = s["requests"]
    assert (r["scheduled"], r["sent"], r["ok"], r["errors"]) == (7, 6, 4, 2)
    assert r["by_status"]["http_error"] == 1 and r["by_status"]["cancelled"] == 1
    assert s["latency"]["ttft"]["n"] == 4 and s["latency"]["itl"]["n"] == 16  # the timeout's chunks are out
    assert s["duration_s"] == pytest.approx(2.7)  # first scheduled (0) to the last event (2.7)
    assert s["throughput"]["requests_per_s"] == pytest.approx(4 / 2.7)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(20 / 2.7)
    assert any("cancelled" in w for w in s["warnings"])
    text = render_text(s)
    assert "http_error 1" in text and "TTFT" in text


def test_fidelity_rates_overall_and_per_category(tmp_path: Path) -> None:
    """Scheduled at 10/s for 10 s; sends drift late, stretching over 20 s: achieved ~ half the rate."""
    sched = np.arange(101) * 0.1
    sent = sched * 2
    rows = [_row(i, category="a" if i % 4 else "b", scheduled=float(t), sent=float(u), first_token=float(u) + 0.01,
                 last_token=float(u) + 0.02, chunk_times=[0], completion_tokens=1)
            for i, (t, u) in enumerate(zip(sched, sent, strict=True))]
    s = stats.summarize(_results(tmp_path, rows), lag_threshold=0.01)
    fi = s["fidelity"]
    assert fi["scheduled_rate"] == pytest.approx(10.1) and fi["achieved_rate"] == pytest.approx(5.05)
    assert fi["rate_ratio"] == pytest.approx(0.5)
    assert fi["by_category"]["b"]["scheduled"] == 26 and fi["by_category"]["a"]["scheduled"] == 75
    assert fi["by_category"]["b"]["scheduled_rate"] == pytest.approx(2.6)
    assert fi["by_category"]["a"]["rate_ratio"] == pytest.approx(0.5)
    assert fi["fell_behind"] and any("FELL BEHIND" in w for w in s["warnings"])


def test_token_fidelity_and_missing_usage(tmp_path: Path) -> None:
    rows = [_row(0, scheduled=0, sent=0, first_token=0.1, last_token=0.2, chunk_times=[0, 0.05, 0.1],
                 prompt_tokens=110, completion_tokens=5),
            _row(1, scheduled=0, sent=0, first_token=0.1, last_token=0.2, chunk_times=[0, 0.05, 0.1],
                 prompt_tokens=None, completion_tokens=None)]
    s = stats.summarize(_results(tmp_path, rows))
    fi = s["fidelity"]
    assert fi["prompt_tokens"]["mean_rel_error"] == pytest.approx(0.10) and fi["prompt_tokens"]["n"] == 1
    assert fi["completion_tokens"]["exact"] == 1.0
    assert fi["usage_coverage"] == 0.5 and any("no usage" in w for w in s["warnings"])
    assert s["latency"]["tpot"]["n"] == 2  # chunk count (3) stands in for the missing usage


def test_vectorised_itl_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 6, 200)
    tokens = counts * rng.integers(1, 3, 200) + (counts == 0)
    times = [np.cumsum(rng.random(c)) for c in counts]
    keep = rng.random(200) < 0.8
    flat = np.concatenate(times)
    v, w, rows = stats.itl(flat, counts, tokens.astype(float), rows=keep)
    ev, ew = [], []
    for i, t in enumerate(times):
        if keep[i] and len(t) > 1:
            k = max(tokens[i] / len(t), 1.0)
            ev += list(np.diff(t) / k)
            ew += [k] * (len(t) - 1)
    assert np.allclose(v, ev) and np.allclose(w, ew) and len(rows) == len(ev)


def test_percentiles_are_numpys() -> None:
    x = np.random.default_rng(1).exponential(size=1001)
    d = stats.dist(np.concatenate([x, [np.nan]]))
    assert d["n"] == 1001
    assert d["p99"] == pytest.approx(np.percentile(x, 99)) and d["max"] == x.max() and d["mean"] == pytest.approx(x.mean())
    assert stats.dist(np.array([]))["p50"] is None
