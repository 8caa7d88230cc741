"""The dispatcher on the real HTTP path: timings against the C fake server's known schedule,
one line per scheduled request, usage placements, concurrency cap, errors, timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from test_dispatch_fixtures import free_port, make_requests, poisson_times, read_lines, write_requests

from servegen_load.dispatch.limits import Timeouts
from servegen_load.dispatch.runner import RunConfig, run
from servegen_load.dispatch.transports.raw import RawTransport
from servegen_load.metrics.stats import summarize
from servegen_load.results import read_results

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server, start_fake


def _run(url: str, reqs, out: Path, **kw) -> tuple:
    cfg = RunConfig(endpoint=url, model="fake-model", output=out, progress="off", handle_signals=False, **kw)
    outcome = run(reqs, cfg)
    head, lines = read_lines(out)
    return outcome, head, lines


@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_timings_match_the_server_schedule(fake_server, tmp_path: Path, transport: str) -> None:
    """Low load (20 req/s): medians within 1 ms of the server's TTFT 20 ms, ITL/TPOT 5 ms, E2E 95 ms."""
    reqs = make_requests(poisson_times(50, 20.0), input_tokens=30, output_tokens=16)
    _, head, lines = _run(fake_server.url, reqs, tmp_path / "r.jsonl", api="completions",
                          transport=transport)
    assert head["format"] == "servegen-load/results/v1" and head["transport"] == transport
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)  # one line per request
    assert {d["status"] for d in lines} == {"ok"}
    res = read_results(tmp_path / "r.jsonl")
    s = summarize(res)
    lat = s["latency"]
    tol = 0.001 if transport == "raw" else 0.002  # aiohttp: the slower fallback, a wake-up per read
    assert abs(lat["ttft"]["p50"] - 0.020) < tol, lat["ttft"]
    assert abs(lat["tpot"]["p50"] - 0.005) < tol, lat["tpot"]
    assert abs(lat["itl"]["p50"] - 0.005) < tol, lat["itl"]
    assert abs(lat["e2e"]["p50"] - 0.095) < tol, lat["e2e"]
    assert lat["send_lag"]["p50"] < 0.002
    # usage (a separate final chunk with choices: []) counted, not chunks
    assert all(d["completion_tokens"] == 16 and d["prompt_tokens"] == 30 for d in lines)
    assert all(len(d["chunk_times"]) == 16 and d["chunk_times"][0] == 0 for d in lines)
    assert s["fidelity"]["completion_tokens"]["exact"] == 1.0
    assert s["fidelity"]["prompt_tokens"]["exact"] == 1.0


def test_chat_api_and_first_answer_token(fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.01 * i for i in range(10)], output_tokens=8)
    _, _, lines = _run(fake_server.url, reqs, tmp_path / "r.jsonl", api="chat")
    assert len(lines) == 10 and {d["status"] for d in lines} == {"ok"}
    for d in lines:
        assert d["first_answer_token"] == d["first_token"]  # no reasoning: the first token is an answer
        assert d["completion_tokens"] == 8 and d["http_status"] == 200
        assert 0.019 < d["first_token"] - d["sent"] < 0.030


def test_max_concurrency_records_queue_time(start_fake, tmp_path: Path) -> None:
    """12 requests due at once, at most 3 in flight: the server never sees more than 3, and the
    waiting shows as queue_time (about one E2E per wave), not as send lag."""
    fs = start_fake(ttft_ms=20, itl_ms=5, max_tokens=8)  # E2E 55 ms
    fs.reset()
    reqs = make_requests([0.02] * 12, output_tokens=8)
    _, _, lines = _run(fs.url, reqs, tmp_path / "r.jsonl", api="completions", max_concurrency=3)
    assert len(lines) == 12 and {d["status"] for d in lines} == {"ok"}
    assert fs.stats()["max_active"] <= 3
    qt = np.sort([d["queue_time"] for d in lines])
    assert (qt[:3] < 0.003).all()
    assert qt[-1] > 3 * 0.050  # the last wave waited for three others
    s = summarize(read_results(tmp_path / "r.jsonl"))
    assert s["latency"]["send_lag"]["max"] < 0.010  # waiting is not lag
    assert s["latency"]["user_e2e"]["max"] > s["latency"]["e2e"]["max"] + 0.15


def test_connect_error_to_a_dead_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    reqs = make_requests([0.01 * i for i in range(8)])
    outcome, _, lines = _run(f"http://127.0.0.1:{port}", reqs, tmp_path / "r.jsonl")
    assert len(lines) == 8
    assert {d["status"] for d in lines} == {"connect_error"}
    assert all("refused" in d["error"] and d["sent"] is None for d in lines)
    assert outcome.by_status == {"connect_error": 8}


def test_http_error_status_and_text(fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.0, 0.01, 0.02])
    _, _, lines = _run(fake_server.url + "/nope", reqs, tmp_path / "r.jsonl")
    assert {d["status"] for d in lines} == {"http_error"}
    assert {d["http_status"] for d in lines} == {404}
    assert all(d["error"].startswith("HTTP 404") for d in lines)


def test_first_token_timeout(start_fake, tmp_path: Path) -> None:
    slow = start_fake(ttft_ms=5000, itl_ms=5, max_tokens=4)
    reqs = make_requests([0.0, 0.01])
    _, _, lines = _run(slow.url, reqs, tmp_path / "r.jsonl", timeouts=Timeouts(first_token=0.3))
    assert {d["status"] for d in lines} == {"timeout"}
    assert all("first token" in d["error"] and d["first_token"] is None for d in lines)


def test_total_timeout_keeps_the_timings_it_had(start_fake, tmp_path: Path) -> None:
    slow = start_fake(ttft_ms=10, itl_ms=100, max_tokens=50)  # 5 s of tokens
    reqs = make_requests([0.0], output_tokens=50)
    _, _, lines = _run(slow.url, reqs, tmp_path / "r.jsonl", timeouts=Timeouts(total=0.45))
    (d,) = lines
    assert d["status"] == "timeout" and "not complete" in d["error"]
    assert d["first_token"] is not None and 2 <= len(d["chunk_times"]) <= 7


def test_a_stalled_loop_does_not_delay_the_first_token(start_fake, tmp_path: Path, monkeypatch) -> None:
    """The client's loop blocked for 40 ms just after each send (a busy machine, a GC pause):
    the first token, which reached this host 20 ms after the send, is timed at its arrival (the
    kernel's receive time), not when the loop came round at 45 ms; later tokens keep their
    read times."""
    fs = start_fake(ttft_ms=20, itl_ms=60, max_tokens=4)
    submit = RawTransport.submit

    def submit_then_stall(self: RawTransport, f) -> None:
        submit(self, f)
        asyncio.get_running_loop().call_later(0.005, time.sleep, 0.04)

    monkeypatch.setattr(RawTransport, "submit", submit_then_stall)
    reqs = make_requests([0.0, 0.3, 0.6], output_tokens=4)
    _, _, lines = _run(fs.url, reqs, tmp_path / "r.jsonl", api="chat")
    assert {d["status"] for d in lines} == {"ok"}
    for d in lines:
        assert 0.0195 < d["first_token"] - d["sent"] < 0.03, d  # read when the stall ended: >= 0.045
        assert np.allclose(np.diff(d["chunk_times"]), 0.06, atol=0.01)


def test_a_stalled_loop_does_not_delay_the_first_token_on_a_new_connection(start_fake, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """As above, on connections dialed for their request (llama.cpp's family keeps no idle ones):
    the loop blocked for 80 ms as soon as the socket's transport is made, the first token due 60
    ms after the send. uvloop resumed reading a new transport after `connection_made`, undoing
    the watch's pause there, so the transport read the first token when the stall ended."""
    from servegen_load.content.payload import PayloadOptions

    fs = start_fake(ttft_ms=60, itl_ms=60, max_tokens=4)
    adopt = RawTransport._adopt
    stalls = [0.08]  # once: later requests are sent when it ends, and must not meet another

    async def adopt_then_stall(self: RawTransport, sock, conn) -> None:
        await adopt(self, sock, conn)
        if stalls:
            asyncio.get_running_loop().call_soon(time.sleep, stalls.pop())

    monkeypatch.setattr(RawTransport, "_adopt", adopt_then_stall)
    reqs = make_requests([0.0, 0.01, 0.02], output_tokens=4)  # none finds a free connection: three dials
    _, _, lines = _run(fs.url, reqs, tmp_path / "r.jsonl", api="chat", payload=PayloadOptions(server_family="llamacpp"))
    assert {d["status"] for d in lines} == {"ok"}
    for d in lines:
        assert 0.0595 < d["first_token"] - d["sent"] < 0.075, d  # read when the stall ended: >= 0.08
        assert min(d["chunk_times"]) >= 0, d


def test_the_first_token_watch_never_costs_a_request_its_socket(start_fake, tmp_path: Path) -> None:
    """An open-file limit of 512 and 320 streams waiting for their first token at once, sent over
    2 s: each watched stream would hold a second descriptor (`_Conn._watch`), and the connects
    of the later ones would fail with EMFILE; the watch keeps to an eighth of the limit and
    every request is ok."""
    import resource
    import subprocess
    import sys

    fs = start_fake(ttft_ms=2500, itl_ms=5, max_tokens=4)  # all in flight together; connects go on
    req = write_requests(tmp_path / "q.jsonl", make_requests([0.006 * i for i in range(320)], output_tokens=4))
    out = tmp_path / "r.jsonl"
    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", "run", str(req), "--endpoint", fs.url,
                        "--api", "completions", "-o", str(out)], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    assert p.returncode == 0, p.stderr[-2000:]
    _, lines = read_lines(out)
    assert len(lines) == 320 and {d["status"] for d in lines} == {"ok"}, {d["error"] for d in lines}
    assert fs.stats()["max_active"] >= 300  # they were in flight together


def test_duration_limits_what_is_scheduled(fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.05 * i for i in range(40)], output_tokens=2)  # 2 s of requests
    outcome, _, lines = _run(fake_server.url, reqs, tmp_path / "r.jsonl", duration=0.5)
    assert len(lines) == 10 and outcome.scheduled == 10
    assert max(d["scheduled"] for d in lines) < 0.5


def test_a_signal_after_the_run_lets_the_summary_be_written(fake_server, tmp_path: Path, capfd) -> None:
    """The engine's handlers were removed when it stopped, leaving the defaults while the summary,
    --summary-json and the SLO verdict were written: a SIGTERM there killed the process (exit 143,
    nothing printed). Now the first is said and let pass; a second is the default's."""
    import os
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg = RunConfig(endpoint=fake_server.url, model="fake-model", output=tmp_path / "r.jsonl", progress="off",
                        summary_follows=True)  # as `run` sets it
        outcome = run(make_requests([0.0, 0.01], output_tokens=4), cfg)
        assert outcome.by_status == {"ok": 2}
        os.kill(os.getpid(), signal.SIGTERM)  # the process lives on to write its summary
        assert "finishing the summary" in capfd.readouterr().err
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one would end it
    finally:
        for s, h in before.items():
            signal.signal(s, h)
