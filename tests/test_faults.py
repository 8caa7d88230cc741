"""Fault modes end up in the results as their own status, counted, and the open loop holds.

Every run here is the real CLI (`servegen-load run`) against the embedded simulator in its own
process, which injects faults by name and reports what it injected at `/sim/stats`. The
fault -> status mapping checked here is the one documented in docs/reliability.md.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_dispatch_fixtures import (
    answering,
    free_port,
    make_requests,
    poisson_times,
    read_lines,
    write_requests,
)

from servegen_load.sim import SimProcess
from servegen_load.sim.faults import FAULTS

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
STALL_S = 0.8  # stall_resume pause and slow_accept delay of the simulator
IDLE_S = 2.0  # --timeout-idle: ends stall_hang, spares stall_resume
N, RATE, TOKENS = 300, 75.0, 20


def run_cli(src: Path, out: Path, url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", str(src), "-o", str(out), "--endpoint", url, "--model", "m",
                           "--server-family", "sim", "--progress", "off", "--timeout-first-token", "5",
                           "--timeout-idle", str(IDLE_S), "--timeout-total", "30", *extra],
                          capture_output=True, text=True, timeout=timeout)


def max_gap(d: dict[str, Any]) -> float:
    ct = d["chunk_times"]
    return max((b - a for a, b in itertools.pairwise(ct)), default=0.0)


def signature(d: dict[str, Any]) -> str:
    """The fault a result line shows, by the mapping of docs/reliability.md ("none": a clean ok)."""
    st, err, ft = d["status"], d["error"] or "", d["first_token"]
    if st == "http_error":
        return {500: "http_500", 503: "http_503", 429: "http_429"}[d["http_status"]]
    if st == "disconnect":
        return "disconnect_mid_stream" if ft is not None else "reset_before_first_byte"
    if st == "timeout":
        assert ft is not None and "no token for" in err, d  # idle timeout after the first token
        return "stall_hang"
    if st == "protocol_error":
        assert ft is not None, d
        if "not an SSE field" in err:
            return "malformed_sse"
        if "not JSON" in err:
            return "malformed_json"
        assert "without data: [DONE]" in err, d
        return "no_done"
    assert st == "ok", d
    if ft - d["sent"] >= 0.75 * STALL_S:
        return "slow_accept"
    if max_gap(d) >= 0.75 * STALL_S:
        return "stall_resume"
    return "none"


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reqs = make_requests(poisson_times(N, RATE, seed=3), input_tokens=20, output_tokens=TOKENS)
    return write_requests(tmp_path_factory.mktemp("faults") / "req.jsonl", reqs)


@pytest.fixture(scope="module")
def baseline_lag_p99(requests_file: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Send-lag p99 of the same requests against the same simulator without faults."""
    out = tmp_path_factory.mktemp("base") / "res.jsonl"
    with SimProcess("tiny-cpu", seed=7) as sim:
        r = run_cli(requests_file, out, sim.url, "--summary-json", str(out.with_suffix(".sum.json")))
    assert r.returncode == 0, r.stderr
    return json.loads(out.with_suffix(".sum.json").read_text())["latency"]["send_lag"]["p99"]


def run_matrix(src: Path, out: Path, transport: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run with every fault at once (11 faults at 4.5%: about half the requests fail)."""
    faults = dict.fromkeys(FAULTS, 0.045)
    with SimProcess("tiny-cpu", faults=faults, stall_seconds=STALL_S, slow_accept_seconds=STALL_S,
                    hang_seconds=60, seed=7) as sim:
        r = run_cli(src, out, sim.url, "--transport", transport, "--summary-json", str(out.with_suffix(".sum.json")))
        return r, sim.stats()


@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_fault_matrix_every_fault_at_once(transport: str, requests_file: Path, baseline_lag_p99: float,
                                          tmp_path: Path) -> None:
    out = tmp_path / "res.jsonl"
    r, st = run_matrix(requests_file, out, transport)
    assert r.returncode == 0, r.stderr
    injected = st["faults_injected"]
    assert 0.35 * N < sum(injected.values()) < 0.65 * N and all(injected.values()), injected

    _, lines = read_lines(out)
    ids = [d["id"] for d in lines]
    assert len(ids) == N and set(ids) == {f"r{i}" for i in range(N)}  # one line per scheduled request
    # no re-send behind our back: the server saw each request once
    assert st["requests_received"] == N and all(d["retries"] == 0 for d in lines)

    seen = collections.Counter(signature(d) for d in lines)
    assert {f: seen[f] for f in FAULTS} == injected, (seen, injected)
    assert seen["none"] == N - sum(injected.values())

    # the timings each failure had are kept
    for d in lines:
        sig = signature(d)
        if sig in ("disconnect_mid_stream", "stall_hang", "malformed_sse", "malformed_json", "no_done"):
            assert d["sent"] is not None and d["first_token"] >= d["sent"] and len(d["chunk_times"]) >= 1
            assert d["last_token"] >= d["first_token"]
        if sig in ("disconnect_mid_stream", "stall_hang"):
            assert len(d["chunk_times"]) < TOKENS  # cut short
        if sig == "no_done":  # every token and the usage arrived; only [DONE] was missing
            assert d["completion_tokens"] == TOKENS and len(d["chunk_times"]) == TOKENS
        if sig.startswith("http_") or sig == "reset_before_first_byte":
            assert d["sent"] is not None and d["first_token"] is None

    # the summary counts them, and failures never leave the SLO denominators
    summary = json.loads(out.with_suffix(".sum.json").read_text())
    by_status = collections.Counter(d["status"] for d in lines)
    assert {k: v for k, v in summary["requests"]["by_status"].items() if v} == dict(by_status)
    n_ok = by_status["ok"]
    assert summary["requests"]["errors"] == N - n_ok and summary["requests"]["retries"] == 0
    assert summary["latency"]["ttft"]["n"] == n_ok and summary["latency"]["send_lag"]["n"] == N
    g = subprocess.run([*CLI, "gate", str(out), "--slo", "error_rate<=100%", "--slo", "goodput_ratio>=0%",
                        "--request-slo", "ttft<=60s", "--json"], capture_output=True, text=True, timeout=60)
    assert g.returncode == 0, g.stderr
    values = {c["metric"]: c["value"] for c in json.loads(g.stdout)["checks"]}
    assert values["error_rate"] == pytest.approx((N - n_ok) / N)
    assert values["goodput_ratio"] == pytest.approx(n_ok / N)  # every ok request is good; failures are not

    # The open loop held while half the requests failed (the default transport; the baseline is
    # the same requests without faults). This 2-core machine is shared: a run whose p99 is spoilt
    # by the OS descheduling us for tens of ms is measured once more before failing.
    if transport == "raw":
        bound = max(0.002, 2 * baseline_lag_p99)
        lag_p99 = summary["latency"]["send_lag"]["p99"]
        if lag_p99 > bound:
            r, _ = run_matrix(requests_file, out, transport)
            assert r.returncode == 0, r.stderr
            lag_p99 = json.loads(out.with_suffix(".sum.json").read_text())["latency"]["send_lag"]["p99"]
        assert lag_p99 <= bound, (lag_p99, baseline_lag_p99)


def _retried_ok_ttft(lines: list[dict[str, Any]]) -> list[float]:
    return [d["first_token"] - d["sent"] for d in lines if d["status"] == "ok" and d["retries"]]


def test_retries_only_for_429_503_before_a_token_and_count_apart(requests_file: Path, tmp_path: Path) -> None:
    faults = {"http_429": 0.15, "http_503": 0.1, "http_500": 0.1, "reset_before_first_byte": 0.1,
              "disconnect_mid_stream": 0.05}
    reqs = make_requests(poisson_times(150, 60.0, seed=5), output_tokens=8)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out, summary_file = tmp_path / "res.jsonl", tmp_path / "summary.json"
    with SimProcess("tiny-cpu", faults=faults, seed=11) as sim:
        r = run_cli(src, out, sim.url, "--retries", "2", "--summary-json", str(summary_file))
        st = sim.stats()
    assert r.returncode == 0, r.stderr
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(x.id for x in reqs)
    retries = sum(d["retries"] for d in lines)
    inj = st["faults_injected"]
    assert retries > 0 and max(d["retries"] for d in lines) <= 2
    # every re-send reached the server, and is counted apart from the requests
    assert st["requests_received"] == len(reqs) + retries
    summary = json.loads(summary_file.read_text())
    assert summary["requests"]["retries"] == retries and summary["requests"]["scheduled"] == len(reqs)
    assert summary["requests"]["retried"] == sum(1 for d in lines if d["retries"])
    # each 429/503 was either retried or is the final answer; nothing else was ever retried
    final_retryable = sum(1 for d in lines if d["status"] == "http_error" and d["http_status"] in (429, 503))
    assert inj["http_429"] + inj["http_503"] == retries + final_retryable
    assert sum(1 for d in lines if d["http_status"] == 500) == inj["http_500"]
    assert sum(1 for d in lines if d["status"] == "disconnect" and d["first_token"] is None) == \
        inj["reset_before_first_byte"]
    # a retried request waited (back-off 0.5 s at least), and is timed from its first send
    assert all(t >= 0.45 for t in _retried_ok_ttft(lines))
    # ...while every other request kept its schedule
    lags = sorted(d["sent"] - d["scheduled"] for d in lines)
    assert lags[int(0.99 * (len(lags) - 1))] < 0.010


@pytest.mark.parametrize(("max_wait", "lo", "hi"), [(5.0, 0.95, 3.0), (0.2, 0.15, 0.9)])
def test_retry_after_is_honoured_and_capped(max_wait: float, lo: float, hi: float, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(60, 40.0, seed=2), output_tokens=4)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    with SimProcess("tiny-cpu", faults={"http_429": 0.3}, seed=4) as sim:  # 429 carries Retry-After: 1
        r = run_cli(src, out, sim.url, "--retries", "1", "--retry-max-wait", str(max_wait))
    assert r.returncode == 0, r.stderr
    _, lines = read_lines(out)
    waited = _retried_ok_ttft(lines)
    assert len(waited) >= 5 and all(lo <= t <= hi for t in waited), waited


def _dies_after_one_connection() -> tuple[int, threading.Thread]:
    """A port that accepts the start-up reachability check, then refuses every connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            listener.settimeout(60)
            conn, _ = listener.accept()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_a_dead_endpoint_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.05 * i for i in range(5)]))
    out = tmp_path / "res.jsonl"
    port = free_port()
    r = run_cli(src, out, f"http://127.0.0.1:{port}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"servegen-load: error: --endpoint: connection refused at "
                                f"http://127.0.0.1:{port}: is the server running?")
    assert not out.exists()


@pytest.mark.parametrize("api", ["chat/completions", "completions"])
def test_an_api_url_given_as_the_endpoint_names_the_base_url(tmp_path: Path, api: str) -> None:
    """A pasted request URL would send every request to .../completions/v1/completions: one line
    saying which base URL to give instead, before anything is sent."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    out = tmp_path / "res.jsonl"
    r = run_cli(src, out, f"http://127.0.0.1:{free_port()}/v1/{api}/")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "is the URL of an API, not of the server" in line, line
    assert f"/v1/{api}/ is" in line and "give the base URL http://127.0.0.1:" in line, line
    assert line.endswith(f"/v1 (the API is chosen with --api, here --api {api.split('/')[0]})"), line
    assert not out.exists()


def test_a_query_string_in_the_endpoint_is_refused_not_dropped(tmp_path: Path) -> None:
    """`?api-version=...` (a gateway's) would silently go missing from every request."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    out = tmp_path / "res.jsonl"
    r = run_cli(src, out, "http://127.0.0.1:9/openai/v1?api-version=2024-02-01")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("servegen-load: error: --endpoint: a query string or fragment in the URL is not "
                                "sent with the requests; give the base URL alone, e.g. http://127.0.0.1:9/openai/v1")
    assert not out.exists()


def test_connect_errors_are_retried_then_reported(tmp_path: Path) -> None:
    """The server goes away after the start-up check: every request is a `connect_error`."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.05 * i for i in range(5)]))
    out = tmp_path / "res.jsonl"
    port, thread = _dies_after_one_connection()
    r = run_cli(src, out, f"http://127.0.0.1:{port}", "--retries", "2", "--retry-max-wait", "0.05")
    thread.join(5)
    assert r.returncode == 3, r.stderr  # not one request succeeded
    assert "could not connect" in r.stderr and "no request succeeded" in r.stderr
    _, lines = read_lines(out)
    assert len(lines) == 5
    for d in lines:
        assert d["status"] == "connect_error" and d["retries"] == 2 and d["sent"] is None
        assert "refused" in d["error"]


@pytest.mark.parametrize(("codes", "gives_up", "extra"), [
    ([404], True, ()), ([401], True, ()), ([404] * 10 + [401], False, ()), ([429], False, ()), ([503], False, ()),
    ([200], True, ()), ([404], False, ("--keep-going",))])
def test_a_run_whose_first_answers_are_all_one_refusal_stops(tmp_path: Path, codes: list[int], gives_up: bool,
                                                                   extra: tuple[str, ...]) -> None:
    """A wrong model, path or key fails every request with one 4xx from the first, a server that
    does not stream (a JSON 200) with a protocol_error: the run stops after 20 of them (exit 3, one
    line naming the refusal and the server's message) instead of sending the whole schedule; every
    scheduled request still has its line. Codes load can cause (429, 503), a mix of codes, or
    `--keep-going` keep the run going to its end."""
    n = 80
    src = write_requests(tmp_path / "req.jsonl", make_requests(poisson_times(n, 40.0)))
    out = tmp_path / "res.jsonl"
    with answering(codes) as url:
        r = run_cli(src, out, url, *extra)
    lines = read_lines(out)[1]
    assert len(lines) == n and r.returncode == 3, r.stderr
    by = collections.Counter((d["status"], d["http_status"]) for d in lines)
    # the stop cancels what is not answered yet (its head may have come: http_status set); an
    # answer already read keeps its status
    cancelled = sum(v for (st, _), v in by.items() if st == "cancelled")
    if gives_up and codes[0] == 200:  # a JSON error answer to a streamed request: no OpenAI stream
        refused = by[("http_error", 200)]
        assert 20 <= refused < n and refused + cancelled == n, by
        assert "stopped: the first 20 requests all failed with protocol_error (" in r.stderr, r.stderr
    elif gives_up:
        refused = by[("http_error", codes[0])]
        assert 20 <= refused < n and refused + cancelled == n, by
        assert (f"stopped: the first 20 requests all failed with HTTP {codes[0]} "
                f"({{\"object\": \"error\", \"message\": \"refused with {codes[0]} (sent: ") in r.stderr, r.stderr
    else:
        assert sum(v for (st, _), v in by.items() if st == "http_error") == n, by
        assert "stopped" not in r.stderr and "no request succeeded" in r.stderr, r.stderr


def test_a_refused_key_echoed_back_never_reaches_the_stop_line(tmp_path: Path) -> None:
    """A 401 that echoes the Authorization header: the line `run` stops with quotes the server's
    message, with the key masked; neither it nor the results file holds the key."""
    key = "sk-test-" + "k3y" * 8
    (tmp_path / "key").write_text(key + "\n")
    src = write_requests(tmp_path / "req.jsonl", make_requests(poisson_times(40, 40.0)))
    out = tmp_path / "res.jsonl"
    with answering([401]) as url:
        r = run_cli(src, out, url, "--api-key-file", str(tmp_path / "key"))
    assert r.returncode == 3 and "stopped: the first 20 requests all failed with HTTP 401" in r.stderr, r.stderr
    assert "refused with 401 (sent: Bearer ***" in r.stderr, r.stderr
    assert key[:12] not in r.stderr + r.stdout and key[:12] not in out.read_text()


def _nofile(soft: int, hard: int) -> Any:
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_limit


def test_a_low_open_file_limit_is_raised_or_warned_not_fatal(tmp_path: Path) -> None:
    """256 open files (macOS's default soft limit) or 1024: raised to the hard limit when it
    allows; when it does not, a run without --max-concurrency still runs, with a warning (the need
    depends on rate x latency); a --max-concurrency above the limit is one line, exit 2."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(10)], output_tokens=3))
    out = tmp_path / "res.jsonl"
    with SimProcess("tiny-cpu", seed=7) as sim:
        def cmd(o: Path, *extra: str) -> list[str]:
            return [*CLI, "run", str(src), "-o", str(o), "--endpoint", sim.url, "--model", "m",
                    "--server-family", "sim", "--progress", "off", *extra]

        raised = subprocess.run(cmd(out), capture_output=True, text=True, timeout=90, preexec_fn=_nofile(256, 4096))
        low = subprocess.run(cmd(out), capture_output=True, text=True, timeout=90, preexec_fn=_nofile(256, 256))
        over = subprocess.run(cmd(tmp_path / "over.jsonl", "--max-concurrency", "1000"), capture_output=True,
                              text=True, timeout=90, preexec_fn=_nofile(256, 256))
    assert raised.returncode == 0 and "open-file limit" not in raised.stderr, raised.stderr
    assert low.returncode == 0, low.stderr
    assert "warning: the open-file limit is 256" in low.stderr and "Traceback" not in low.stderr, low.stderr
    _, lines = read_lines(out)
    assert len(lines) == 10 and {d["status"] for d in lines} == {"ok"}
    assert over.returncode == 2 and over.stderr.strip() == (
        "servegen-load: error: the open-file limit is 256, below the 1064 this run needs (one socket per "
        "in-flight request); raise it, e.g. `ulimit -n 1064`, or lower --max-concurrency"), over.stderr


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 2.5 ", 2.5), ("0", 0.0), ("1_000", None), ("1e3", None),
                                                ("\u00a05", None), ("-5", None), ("inf", None), ("nan", None),
                                                ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_takes_delay_seconds_or_a_date_and_nothing_python_would_also_read(value: str,
                                                                                     seconds: float | None) -> None:
    """RFC 9110: digits or an HTTP date. `float` also reads "1_000", "1e3" and a no-break space:
    those are junk, so the back-off applies (a date in the past is 0 s)."""
    from servegen_load.dispatch.retry import retry_after_seconds

    assert retry_after_seconds(value) == seconds
