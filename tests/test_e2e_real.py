"""`servegen-load run` end to end against a real llama.cpp server, on both APIs, with live metrics.

What must hold on a real server (not the simulator): every scheduled request has exactly one result
line, all `ok`; the forced output length is exact by the server's own usage count (the tiny model
stops early by itself, so this proves the length forcing); TTFT/TPOT are plausible; and the metrics a
Prometheus server scrapes from `run --metrics-port` (or reads from a Pushgateway after
`run --pushgateway`) count exactly the requests that were sent.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from real_servers import InferenceServer, free_port

from servegen_load.requests import REQUESTS_FORMAT

# (id, t, client, category, input_tokens, output_tokens): two clients, lengths all different, over ~1.2 s.
REQUESTS = [
    ("a0", 0.00, "alice", "language", 40, 12),
    ("b0", 0.05, "bob", "language", 90, 31),
    ("a1", 0.20, "alice", "language", 25, 7),
    ("b1", 0.40, "bob", "language", 120, 40),
    ("a2", 0.55, "alice", "language", 60, 18),
    ("b2", 0.80, "bob", "language", 33, 25),
    ("a3", 1.00, "alice", "language", 70, 2),
    ("b3", 1.20, "bob", "language", 48, 36),
]
N = len(REQUESTS)
OUTPUT_TOKENS = {r[0]: r[5] for r in REQUESTS}
DASHBOARD = Path(__file__).resolve().parents[1] / "docker" / "grafana" / "dashboards" / "servegen-load.json"


def write_requests(path: Path) -> Path:
    lines = [{"format": REQUESTS_FORMAT, "seed": 0, "source": "tests/test_e2e_real.py (hand-written)"}]
    lines += [{"id": i, "t": t, "client": c, "category": cat, "input_tokens": inp, "output_tokens": out}
              for i, t, c, cat, inp, out in REQUESTS]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "servegen_load.cli", *args]


@functools.cache
def run_help() -> str:
    p = subprocess.run(cli("run", "--help"), capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "No such command" in p.stdout + p.stderr:
        pytest.xfail("`servegen-load run` is not implemented yet")
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def run_args(server: InferenceServer, requests: Path, out: Path, api: str, *extra: str) -> list[str]:
    run_help()
    return cli("run", str(requests), "--endpoint", server.url, "--model", server.model, "--api", api,
               "--server-family", server.family, "-o", str(out), *extra)


def read_results(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "format" not in r]  # the header line names the format


def check_results(results: list[dict[str, Any]]) -> None:
    assert sorted(r["id"] for r in results) == sorted(OUTPUT_TOKENS), "one result line per request"
    bad = [(r["id"], r["status"], r.get("error")) for r in results if r["status"] != "ok"]
    assert not bad, f"requests not ok: {bad}"
    for r in results:
        assert r["completion_tokens"] == OUTPUT_TOKENS[r["id"]], f"{r['id']}: forced length not exact: {r}"
        assert r["prompt_tokens"] and r["prompt_tokens"] > 0
        ttft = r["first_token"] - r["sent"]
        assert 0 < ttft < 5, f"{r['id']}: TTFT {ttft}"
        assert r["sent"] >= r["scheduled"] - 1e-3  # open loop: never sent before its time
        assert r["last_token"] >= r["first_token"]
        if r["completion_tokens"] > 1:
            tpot = (r["last_token"] - r["first_token"]) / (r["completion_tokens"] - 1)
            assert 0 <= tpot < 1, f"{r['id']}: TPOT {tpot}"  # 0 when every chunk came in one read


def check_dashboard_queries_have_data(prom: Any) -> None:
    """Every Grafana panel query over our own metrics returns series from a real run's exporter
    (label names, selectors and suffixes as the dashboard writes them)."""
    dash = json.loads(DASHBOARD.read_text())
    subst = {"$__rate_interval": "1m", "$job": "servegen", "$category": ".*", "$client": ".*"}
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            if "servegen_" not in expr or "vllm:" in expr:
                continue
            for k in sorted(subst, key=len, reverse=True):
                expr = expr.replace(k, subst[k])
            assert prom.wait_query(expr), f"panel {p['title']!r}: no data for {expr}"


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_run_exact_lengths_against_llamacpp(api: str, llamacpp_server: InferenceServer, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    p = subprocess.run(run_args(llamacpp_server, write_requests(tmp_path / "req.jsonl"), out, api),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    check_results(read_results(out))


@pytest.mark.vllm
@pytest.mark.timeout(1200)  # a fresh machine installs and starts vLLM inside the fixture
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_run_exact_lengths_against_vllm(api: str, vllm_server: InferenceServer, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    p = subprocess.run(run_args(vllm_server, write_requests(tmp_path / "req.jsonl"), out, api),
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    check_results(read_results(out))


def test_run_metrics_scraped_by_prometheus(llamacpp_server: InferenceServer, prometheus_server,
                                           tmp_path: Path) -> None:
    port = free_port()
    prom = prometheus_server({"servegen": f"http://127.0.0.1:{port}/metrics",
                              "llamacpp": llamacpp_server.metrics_url})
    before = llamacpp_server.metrics().get("llamacpp:tokens_predicted_total", 0.0)
    out = tmp_path / "results.jsonl"
    # --metrics-linger keeps /metrics up after the last result until Prometheus has seen it; SIGTERM ends it.
    proc = subprocess.Popen(
        run_args(llamacpp_server, write_requests(tmp_path / "req.jsonl"), out, "completions",
                 "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--metrics-linger", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        ok = 'job="servegen"'
        assert prom.wait_value(f"sum(servegen_ttft_seconds_count{{{ok}}})", N, timeout=60) == N
        assert prom.wait_value(f"sum(servegen_requests_total{{{ok}}})", N) == N
        assert prom.wait_value(f'sum(servegen_requests_total{{{ok}, status="ok"}})', N) == N
        assert prom.wait_value(f"sum(servegen_e2e_seconds_count{{{ok}}})", N) == N
        total_out = sum(OUTPUT_TOKENS.values())
        assert prom.wait_value(f"sum(servegen_completion_tokens_total{{{ok}}})", total_out) == total_out
        assert prom.wait_value(f"sum(servegen_in_flight{{{ok}}})", 0) == 0
        # The server's own count, through the same Prometheus: at least what we forced.
        assert prom.wait_value('sum(llamacpp:tokens_predicted_total{job="llamacpp"})',
                               lambda v: v >= before + total_out) >= before + total_out
        p99 = prom.value(f"histogram_quantile(0.99, sum by (le) (servegen_ttft_seconds_bucket{{{ok}}}))")
        assert p99 is not None and 0 < p99 < 5
        check_dashboard_queries_have_data(prom)
    finally:
        proc.send_signal(signal.SIGTERM)  # our own child, by pid: ends the linger
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output[-3000:]
    check_results(read_results(out))


def test_run_pushgateway_reaches_prometheus(llamacpp_server: InferenceServer, prometheus_server,
                                            pushgateway_server, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    p = subprocess.run(
        run_args(llamacpp_server, write_requests(tmp_path / "req.jsonl"), out, "chat",
                 "--pushgateway", pushgateway_server.url),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    check_results(read_results(out))
    pushed = pushgateway_server.metrics()
    assert sum(v for k, v in pushed.items() if k.startswith("servegen_ttft_seconds_count")) == N
    prom = prometheus_server({"pushgateway": f"{pushgateway_server.url}/metrics"})
    job = 'job="servegen-load"'  # the job name run pushes under; honor_labels keeps it
    assert prom.wait_value(f"sum(servegen_ttft_seconds_count{{{job}}})", N) == N
    assert prom.wait_value(f"sum(servegen_requests_total{{{job}}})", N) == N
    total_out = sum(OUTPUT_TOKENS.values())
    assert prom.wait_value(f"sum(servegen_completion_tokens_total{{{job}}})", total_out) == total_out
