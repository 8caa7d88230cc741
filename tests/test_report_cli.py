"""`report` and `gate` as a user of other load tools expects them: rates over the run's span,
interrupted runs compared like with like, errors grouped, goodput, --warmup, CSV, --json on
stdout, refusing to merge unrelated runs, and no all-dash summary for zero requests.

Results files are written here row by row (the results format is the contract between `run` and
`report`), so every expected number is known exactly.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servegen_load.formats import RESULTS_FORMAT

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def row(i: int, t: float, *, client: str = "a", status: str = "ok", ttft: float = 0.1, tokens: int = 11,
        tpot: float = 0.01, error: str | None = None, http: int | None = 200, sent: bool = True) -> dict[str, Any]:
    ok = status == "ok"
    first = t + ttft if ok else None
    last = first + tpot * (tokens - 1) if ok and first is not None else None
    return {"id": f"r{i}", "client": client, "category": "language", "session": None, "turn": None,
            "scheduled": t, "sent": t if sent else None, "first_token": first, "first_answer_token": first,
            "last_token": last, "queue_time": 0.0 if sent else None,
            "chunk_times": [round(k * tpot, 6) for k in range(tokens)] if ok else [],
            "input_tokens": 100, "output_tokens": tokens, "reason_tokens": None, "media_tokens": None,
            "prompt_tokens": 100 if ok else None, "completion_tokens": tokens if ok else None,
            "reasoning_tokens": 0 if ok else None, "cached_tokens": 0 if ok else None, "status": status,
            "error": error, "http_status": http, "retries": 0}


def write(path: Path, rows: list[dict[str, Any]], **head: Any) -> Path:
    header = {"format": RESULTS_FORMAT, "source": "s.yaml", "started_unix": 1_800_000_000.0, **head}
    path.write_text("\n".join(json.dumps(x) for x in [header, *rows]) + "\n")
    return path


def summary(*args: str) -> dict[str, Any]:
    p = cli("report", *args, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_group_rates_use_the_run_span(tmp_path: Path) -> None:
    """A client's 3 requests at one instant are 3 / run span, not 3 / 0 s (nor 13043 req/s)."""
    rows = [row(i, i * 0.5, client="busy") for i in range(20)]  # 20 requests over 9.5 s
    rows += [row(20 + k, 4.0 + k * 1e-4, client="burst") for k in range(3)]
    res = write(tmp_path / "r.jsonl", rows)
    from servegen_load.metrics.stats import Spans, summarize
    from servegen_load.results import read_results
    from servegen_load.slo import select

    r = read_results(res)
    spans = Spans.of(r)
    burst = summarize(select(r, r["client"] == "burst"), spans=spans)
    assert burst["fidelity"]["scheduled_rate"] == pytest.approx(3 / 9.5)
    # the same through an SLO scope: throughput of the scope over the run's span
    p = cli("gate", str(res), "--slo", "scheduled_rate[client=burst]<=1req/s", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["checks"][0]["value"] == pytest.approx(3 / 9.5)


def test_interrupted_run_compares_like_with_like(tmp_path: Path) -> None:
    """Scheduled 20 over 9.5 s, interrupted after the 10th send: the scheduled rate is that of the
    10 requests due before the stop, which the achieved rate matches."""
    rows = [row(i, i * 0.5) for i in range(10)]
    rows += [row(i, i * 0.5, status="cancelled", sent=False, http=None) for i in range(10, 20)]
    s = summary(str(write(tmp_path / "r.jsonl", rows)))
    fi = s["fidelity"]
    assert s["requests"]["due"] == 10 and s["requests"]["scheduled"] == 20
    assert fi["scheduled_rate"] == pytest.approx(10 / 4.5) and fi["achieved_rate"] == pytest.approx(10 / 4.5)
    assert fi["rate_ratio"] == pytest.approx(1.0)
    assert "interrupted: the 10 requests due before the stop, of 20" in cli("report", str(tmp_path / "r.jsonl")).stdout


def test_errors_grouped_by_status_code_and_normalised_message(tmp_path: Path) -> None:
    rows = [row(i, i * 0.1) for i in range(10)]
    rows += [row(10 + k, 1 + k * 0.1, status="http_error", http=400,
                  error=f"This model's maximum context length is 8192 tokens; the request asks for {9000 + k}")
             for k in range(5)]
    rows += [row(15 + k, 2 + k * 0.1, status="http_error", http=500, error="internal error id 3fa9c0d2e1b7")
             for k in range(2)]
    rows += [row(17, 3.0, status="disconnect", http=200, error="connection closed after 12 bytes")]
    res = write(tmp_path / "r.jsonl", rows)
    groups = summary(str(res))["errors"]
    assert [(g["count"], g["status"], g["http_status"]) for g in groups] == [
        (5, "http_error", 400), (2, "http_error", 500), (1, "disconnect", 200)]
    assert groups[0]["message"] == "This model's maximum context length is N tokens; the request asks for N"
    text = cli("report", str(res)).stdout
    assert "errors (count, status, HTTP code, message" in text
    assert "     5  http_error    400  This model's maximum context length is N tokens" in text


def test_goodput_warmup_and_request_slo_alone(tmp_path: Path) -> None:
    """Requests 0-9 slow (TTFT 3 s), 10-29 fast: goodput counts the fast ones; --warmup 5 drops
    the first 10 (scheduled before 5 s); `gate --request-slo` alone reports goodput and passes."""
    rows = [row(i, i * 0.5, ttft=3.0 if i < 10 else 0.1) for i in range(30)]
    res = write(tmp_path / "r.jsonl", rows)
    s = summary(str(res), "--request-slo", "ttft<=2s,tpot<=100ms")
    g = s["goodput"]
    assert (g["good"], g["total"]) == (20, 30) and g["ratio"] == pytest.approx(20 / 30)
    assert g["rate"] == pytest.approx(20 / s["duration_s"])
    w = summary(str(res), "--request-slo", "ttft<=2s", "--warmup", "5")
    assert w["requests"]["scheduled"] == 20 and w["goodput"]["good"] == 20 and w["warmup_s"] == 5
    p = cli("gate", str(res), "--request-slo", "ttft<=2s,tpot<=100ms")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "goodput:" in p.stdout and "20 of 30 requests (66.7%) met ttft<=2s,tpot<=100ms" in p.stdout
    assert cli("gate", str(res), "--request-slo", "ttft<=2s", "--slo", "goodput_ratio>=90%").returncode == 1
    t = cli("report", str(res), "--request-slo", "ttft<=2s", "--slo", "ttft_p99<=1s")
    assert t.returncode == 0 and "goodput:" in t.stdout and "SLO ttft_p99<=1s: FAIL" in t.stdout


def test_csv_and_json_outputs(tmp_path: Path) -> None:
    rows = [row(i, i * 0.5) for i in range(5)] + [row(5, 3.0, status="timeout", http=None, error="first token")]
    res = write(tmp_path / "r.jsonl", rows)
    p = cli("report", str(res), "--csv", "-")
    assert p.returncode == 0, p.stderr
    table = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["id"] for r in table] == [f"r{i}" for i in range(6)]
    assert float(table[0]["ttft"]) == pytest.approx(0.1) and float(table[0]["tpot"]) == pytest.approx(0.01)
    assert table[5]["status"] == "timeout" and table[5]["ttft"] == "" and table[5]["error"] == "first token"
    f = tmp_path / "r.csv"
    assert cli("report", str(res), "--csv", str(f)).returncode == 0 and f.read_text() == p.stdout
    js, out = cli("report", str(res), "--json", "-o", str(tmp_path / "s.json")), json.loads(
        (tmp_path / "s.json").read_text())
    doc = json.loads(js.stdout)
    assert "samples" not in doc and out["samples"]["rows"] == 5 and len(js.stdout) < 12_000


def test_unrelated_runs_are_not_merged_unless_asked(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [row(i, i * 0.5) for i in range(5)])
    b = write(tmp_path / "b.jsonl", [row(10 + i, i * 0.5) for i in range(5)], started_unix=1_800_000_500.0)
    p = cli("report", str(a), str(b))
    assert p.returncode == 2 and "from another run" in p.stderr and "--merge-unrelated" in p.stderr
    assert p.stderr.count("\n") == 1
    assert summary(str(a), str(b), "--merge-unrelated")["requests"]["scheduled"] == 10
    g = cli("gate", str(a), str(b), "--slo", "error_rate<=1%")
    assert g.returncode == 2 and "from another run" in g.stderr
    assert cli("gate", str(a), str(b), "--slo", "error_rate<=1%", "--merge-unrelated").returncode == 0
    # two runs of one scenario share their ids: `--merge-unrelated` merges them (it once refused),
    c = write(tmp_path / "c.jsonl", [row(i, i * 0.5) for i in range(5)], started_unix=1_800_000_900.0)
    assert summary(str(a), str(c), "--merge-unrelated")["requests"]["scheduled"] == 10
    # but one file with an id twice is counted by neither report nor gate
    d = write(tmp_path / "d.jsonl", [row(i, i * 0.5) for i in range(5)] + [row(3, 2.6)])
    for cmd in (["report", str(d)], ["gate", str(d), "--slo", "error_rate<=1%"]):
        p = cli(*cmd)
        assert p.returncode == 2 and "request id 'r3' has two lines" in p.stderr, p.stderr
    # shards of one run (a common --start-at) merge without asking
    s0 = write(tmp_path / "s0.jsonl", [row(i, i * 0.5) for i in range(5)], start_at=1.8e9, shard="0/2")
    s1 = write(tmp_path / "s1.jsonl", [row(10 + i, i * 0.5) for i in range(5)], start_at=1.8e9, shard="1/2")
    assert summary(str(s0), str(s1))["requests"]["scheduled"] == 10


def test_zero_requests_is_not_a_result(tmp_path: Path) -> None:
    res = write(tmp_path / "r.jsonl", [])
    p = cli("report", str(res))
    assert p.returncode == 2 and "error: no requests to summarize" in p.stderr and "latency" not in p.stdout
    p = cli("report", str(write(tmp_path / "w.jsonl", [row(0, 1.0)])), "--warmup", "5")
    assert p.returncode == 2 and "after the 5 s warm-up" in p.stderr


def test_help_shows_no_bool_metavar() -> None:
    p = subprocess.run([*CLI, "report", "--help"], capture_output=True, text=True, timeout=60,
                       env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and "--merge-unrelated" in p.stdout and "<bool>" not in p.stdout


def test_results_read_from_a_pipe_and_one_stdout(tmp_path: Path) -> None:
    """`run -o - | report -` said "-: cannot read", and `/dev/stdin` failed on its first line (read
    twice). `--json --csv -` wrote both to stdout; `--csv -` dropped the text summary."""
    res = write(tmp_path / "r.jsonl", [row(i, 0.1 * i) for i in range(20)])
    data = res.read_text()
    for args in (["report", "-"], ["report", "/dev/stdin"], ["gate", "-", "--slo", "error_rate<=1%"]):
        p = subprocess.run([*CLI, *args], input=data, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (args, p.stderr)
        assert "20 scheduled" in p.stdout or "PASS (1 checks on 20 requests)" in p.stdout, p.stdout
    both = cli("report", str(res), "--json", "--csv", "-")
    assert both.returncode == 2 and "both write to standard output" in both.stderr
    rows = cli("report", str(res), "--csv", "-")
    assert rows.returncode == 0 and "20 scheduled" in rows.stderr and "20 scheduled" not in rows.stdout
    assert len(list(csv.reader(io.StringIO(rows.stdout)))) == 21


def test_shards_run_by_hand_sum_their_intended_load_and_one_alone_is_not_the_run(tmp_path: Path) -> None:
    """`run --shard i/2` on two machines, then `report r-*.jsonl`: the intended load was shard 0's
    share alone (32.6 of 60 requests), and `gate r-0.jsonl` passed on a part of the run."""
    common = {"start_at": 1_800_000_000.0, "source": "s.yaml"}
    r0 = write(tmp_path / "r-0.jsonl", [row(i, 0.1 * i) for i in range(6)], shard="0/2",
               intended={"source": "s.yaml", "requests": 32.6, "rate": 3.26, "duration": 10.0}, **common)
    r1 = write(tmp_path / "r-1.jsonl", [row(i, 0.1 * i) for i in range(6, 10)], shard="1/2",
               intended={"source": "s.yaml", "requests": 27.4, "rate": 2.74, "duration": 10.0}, **common)
    both = summary(str(r0), str(r1))
    assert both["intended"]["requests"] == pytest.approx(60.0) and both["intended"]["rate"] == pytest.approx(6.0)
    assert not any("shards" in w for w in both["warnings"])
    one = summary(str(r0))
    assert any("results of 1 of 2 shards (0/2)" in w for w in one["warnings"]), one["warnings"]
    g = cli("gate", str(r0), "--slo", "error_rate<=1%")
    assert g.returncode == 1 and "give every shard's file" in g.stdout
    assert cli("gate", str(r0), str(r1), "--slo", "error_rate<=1%").returncode == 0
