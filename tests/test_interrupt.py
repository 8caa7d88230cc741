"""Interruption: SIGINT/SIGTERM, an endpoint that disappears mid-run, and SIGKILL.

Each case runs the real CLI in a subprocess against the simulator in another, and checks what is
left on disk: a results file with one valid line per scheduled request (SIGKILL: whole lines, at
most the last flush interval lost), the summary, and the documented exit code
(docs/reliability.md). Synchronisation is by polling the results file, never by sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from test_dispatch_fixtures import make_requests, poisson_times, read_lines, wait_for, write_requests

from servegen_load.dispatch.runner import FLUSH_S, HOUSEKEEPING_S
from servegen_load.gate import run_gate
from servegen_load.results import read_results
from servegen_load.sim import SimProcess
from servegen_load.slo import build_slos

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


def spawn(args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    with open(tmp_path / "stdout", "wb") as o, open(tmp_path / "stderr", "wb") as e:
        return subprocess.Popen([*CLI, *args], stdout=o, stderr=e)


def n_lines(path: Path) -> int:
    return len(read_lines(path)[1])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_one_line_per_request_a_summary_and_exit_130(sig: signal.Signals, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(400, 50.0, seed=1), output_tokens=40)  # 8 s of schedule
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    faults = {"http_429": 0.1, "disconnect_mid_stream": 0.05, "stall_hang": 0.05}
    with SimProcess("tiny-cpu", faults=faults, hang_seconds=60, seed=2) as sim:
        # --retries 1: some requests are waiting for their retry when the signal comes
        p = spawn(["run", str(src), "-o", str(out), "--endpoint", sim.url, "--model", "m", "--server-family", "sim",
                   "--progress", "off", "--retries", "1", "--timeout-idle", "30"], tmp_path)
        try:
            wait_for(lambda: n_lines(out) >= 60, 30, "60 result lines")
            p.send_signal(sig)
            assert p.wait(30) == 130
        finally:
            if p.poll() is None:
                p.kill()
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)  # exactly one line each
    st = collections.Counter(d["status"] for d in lines)
    assert st["ok"] >= 30 and st["cancelled"] > 0
    unsent = [d for d in lines if d["status"] == "cancelled" and d["sent"] is None]
    assert unsent and all(d["scheduled"] > 1.0 for d in unsent)
    res = read_results(out)  # valid for every reader, nothing skipped
    assert res.n == len(reqs) and not res.warnings and res.headers[0]["complete"] is True
    g = run_gate([str(out)], build_slos(["ttft_p99<=60s"]))  # a part of a run passes no gate
    assert not g.passed and g.checks[0].passed and f"{st['cancelled']} of 400 requests cancelled" in g.incomplete
    stdout = (tmp_path / "stdout").read_text()
    assert "400 scheduled" in stdout and "cancelled" in stdout  # the summary was printed


def test_endpoint_gone_mid_run_keeps_the_schedule_and_exits_0(tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(250, 50.0, seed=4), output_tokens=30)  # 5 s of schedule
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    sim = SimProcess("tiny-cpu", seed=3).start()
    try:
        p = spawn(["run", str(src), "-o", str(out), "--endpoint", sim.url, "--model", "m", "--server-family", "sim",
                   "--progress", "off", "--summary-json", str(tmp_path / "summary.json")], tmp_path)
        try:
            wait_for(lambda: n_lines(out) >= 50, 30, "50 result lines")
            head = read_lines(out)[0]
            os.kill(sim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            killed_at = time.time() - head["started_unix"]  # about the run's clock
            assert p.wait(60) == 0  # the run ended its schedule: exit 0, failures are results
            ended_at = time.time() - head["started_unix"]
        finally:
            if p.poll() is None:
                p.kill()
    finally:
        sim.stop()
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)
    st = collections.Counter(d["status"] for d in lines)
    assert set(st) <= {"ok", "disconnect", "connect_error"} and st["ok"] >= 50, st
    after = [d for d in lines if d["scheduled"] > killed_at + 0.3]
    assert len(after) > 50 and all(d["status"] == "connect_error" and d["sent"] is None for d in after)
    assert all("refused" in d["error"] for d in after)
    # the scheduler kept going while every request failed: the run ended with its schedule
    assert ended_at < max(r.t for r in reqs) + 5.0
    stderr = (tmp_path / "stderr").read_text()
    assert "could not connect" in stderr
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["requests"]["by_status"]["connect_error"] == st["connect_error"]
    assert summary["requests"]["scheduled"] == len(reqs)


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    rate = 100.0
    reqs = make_requests(poisson_times(1200, rate, seed=6), output_tokens=8)  # 12 s of schedule
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    with SimProcess("tiny-cpu", seed=5) as sim:
        p = spawn(["run", str(src), "-o", str(out), "--endpoint", sim.url, "--model", "m", "--server-family", "sim",
                   "--progress", "off"], tmp_path)
        try:
            wait_for(lambda: n_lines(out) >= 200, 30, "200 result lines", interval=0.02)
            # then kill at a moment set by the server's progress, not by the client's flushes
            wait_for(lambda: sim.stats()["requests_finished"] >= 333, 30, "333 finished", interval=0.005)
            p.kill()
            p.wait(10)
            finished = sim.stats()["requests_finished"]  # what the server completed by the kill
        finally:
            if p.poll() is None:
                p.kill()
    data = out.read_bytes()
    raw = data.split(b"\n")
    body, tail = raw[1:-1], raw[-1]  # tail: b"" unless the kill cut a line short
    docs = [orjson.loads(x) for x in body]  # every whole line is valid JSON
    assert all(d["status"] == "ok" for d in docs)
    if tail:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(tail)
    missing = finished - len(docs)
    # Lines are flushed every FLUSH_S (checked every HOUSEKEEPING_S): what is lost is what completed
    # within one flush interval before the kill (plus a little for a busy, shared machine).
    bound = math.ceil(rate * (FLUSH_S + HOUSEKEEPING_S + 0.15))
    print(f"SIGKILL: {finished} finished at the server, {len(docs)} lines on disk, {missing} lost (bound {bound})")
    assert 0 <= missing <= bound, (missing, bound, finished, len(docs))
    res = read_results(out)
    assert res.n == len(docs)
    # The file says it was never closed: report warns, gate fails (80 of 240 lines once passed as a whole run)
    assert res.headers[0]["complete"] is False and any("never finished" in w for w in res.warnings)
    g = run_gate([str(out)], build_slos(["error_rate<=1%"]))
    assert not g.passed and g.checks[0].passed and "never closed" in (g.incomplete or "")
    # A line cut by the kill is skipped with a clear warning, never a crash.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data.rstrip(b"\n") + b"\n" + body[-1][:25])
    res = read_results(cut)
    assert res.n == len(docs) and any("truncated last line" in w for w in res.warnings)


def test_results_through_a_pipe_end_with_a_footer_and_a_killed_pipe_fails_the_gate(tmp_path: Path) -> None:
    """`run -o - | tee`: a pipe's header cannot be rewritten as complete, so a run killed mid-way
    left 19 of 50 lines that `gate` passed as a whole run. The stream now ends with a footer line;
    without it, report warns and gate fails."""
    reqs = make_requests([0.05 * i for i in range(60)], output_tokens=4)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    with SimProcess("tiny-cpu", seed=5) as sim:
        args = [*CLI, "run", str(src), "-o", "-", "--endpoint", sim.url, "--model", "m", "--server-family", "sim",
                "--progress", "off"]
        for out, kill in ((whole, False), (killed, True)):
            with open(out, "wb") as sink:
                p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert p.stdout is not None
                for got, line in enumerate(p.stdout, start=1):
                    sink.write(line)
                    if kill and got == 20:
                        p.kill()
                        break
                p.wait(30)
    lines = whole.read_bytes().splitlines()
    assert orjson.loads(lines[0])["footer"] is True and orjson.loads(lines[-1]) == {"footer": True, "complete": True,
                                                                                     "lines": 60}
    res = read_results(whole)
    assert res.n == 60 and res.headers[0]["complete"] is True and not res.warnings
    assert run_gate([str(whole)], build_slos(["error_rate<=1%"])).passed
    res = read_results(killed)
    assert res.n == 19 and res.headers[0]["complete"] is False and any("never finished" in w for w in res.warnings)
    g = run_gate([str(killed)], build_slos(["error_rate<=1%"]))
    assert not g.passed and "never closed" in (g.incomplete or "")


@pytest.mark.parametrize("sig,times,more", [(signal.SIGINT, 1, []), (signal.SIGTERM, 1, []), (signal.SIGINT, 2, []),
                                            (signal.SIGINT, 1, ["--workers", "2"]),
                                            (signal.SIGINT, 2, ["--workers", "2"])])
def test_a_signal_during_a_hanging_start_up_probe_still_leaves_every_line(sig: signal.Signals, times: int,
                                                                          more: list[str], tmp_path: Path) -> None:
    """A server that accepts and never answers: the model listing waits (10 s), and a signal then
    ended the command with no results file (SIGTERM: killed, exit 143; with --workers, any signal;
    two Ctrl-C back to back: a header and no line). Now: exit 130 and one `cancelled`, unsent line
    per scheduled request, as after a signal mid-run."""
    import socket
    import threading

    reqs = make_requests([0.1 * i for i in range(25)], output_tokens=4)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    ls = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(ls.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    p = spawn(["run", str(src), "-o", str(out), "--endpoint", f"http://127.0.0.1:{ls.getsockname()[1]}",
               "--progress", "off", *more], tmp_path)
    try:
        wait_for(lambda: len(held) >= 2, 30, "the probe's connection")  # the reachability check, then the listing
        for i in range(times):
            if i:
                time.sleep(0.002)  # a user's second Ctrl-C, after the first was taken
            p.send_signal(sig)
        assert p.wait(8) == 130, (tmp_path / "stderr").read_text()
    finally:
        if p.poll() is None:
            p.kill()
        ls.close()
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)
    assert all(d["status"] == "cancelled" and d["sent"] is None for d in lines)
    assert "interrupted before the first request" in (tmp_path / "stderr").read_text()


def test_ctrl_c_while_the_command_loads_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The console script's imports take a few tenths of a second; Ctrl-C in them printed a
    traceback. Here the signal comes exactly while `typer` is imported."""
    code = ("import builtins, os, signal, sys\n"
            "real = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            "    if name == 'typer':\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\n"
            "sys.argv = ['servegen-load', '--version']\n"
            "from servegen_load.__main__ import main\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 130 and r.stderr.strip() == "servegen-load: interrupted", r.stderr
