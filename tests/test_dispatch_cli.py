"""`servegen-load run` / `report` as a user runs them: subprocesses, signals, Prometheus, the simulator."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_dispatch_fixtures import (
    free_port,
    interrupt_when,
    make_requests,
    poisson_times,
    read_lines,
    wait_for,
    write_requests,
)

SECRET = "sk-test-DO-NOT-LEAK-4242"
CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


pytest_plugins = ["test_dispatch_fixtures"]  # fake_server, start_fake


def _spawn(args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    return subprocess.Popen([*CLI, *args], stdout=open(tmp_path / "stdout", "wb"),
                            stderr=open(tmp_path / "stderr", "wb"), env=env)


def _scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(m: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in m.items()
               if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


def _no_secret(tmp_path: Path, *files: Path) -> None:
    for f in (tmp_path / "stdout", tmp_path / "stderr", *files):
        assert SECRET.encode() not in f.read_bytes(), f"the API key leaked into {f}"


def test_sigint_mid_run_leaves_a_complete_results_file(fake_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(300, 40.0), output_tokens=40)  # ~7.5 s, ~8 in flight
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    p = _spawn(["run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--api", "completions",
                "--progress", "plain"], tmp_path)
    assert interrupt_when(p, lambda: len(read_lines(out)[1]) >= 20, "20 result lines") == 130
    head, lines = read_lines(out)
    assert head["argv"] and SECRET not in str(head)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)  # exactly one line each
    st = collections.Counter(d["status"] for d in lines)
    assert set(st) == {"ok", "cancelled"} and st["ok"] >= 20
    cancelled = [d for d in lines if d["status"] == "cancelled"]
    assert any(d["sent"] is None for d in cancelled)  # never sent
    assert any(d["sent"] is not None and d["first_token"] is not None for d in cancelled)  # cut mid-stream
    assert "cancelled" in (tmp_path / "stdout").read_text()  # the summary was printed
    _no_secret(tmp_path, out)


def test_prometheus_during_the_run_and_final_counts(fake_server, pushgateway_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(80, 30.0), output_tokens=16,
                         clients=[f"client{i}" for i in range(25)], categories=("language", "reason"))
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    port = free_port()
    p = _spawn(["run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--metrics-port", str(port),
                "--metrics-linger", "60", "--pushgateway", pushgateway_server.address, "--progress", "off"],
               tmp_path)
    try:
        # during the run: the endpoint answers with some, not all, requests counted
        mid = wait_for(lambda: (m := _scrape(port)) and 0 < _total(m, "servegen_requests_total") < 80 and m,
                       30, "a scrape mid-run", interval=0.2)
        assert _total(mid, "servegen_in_flight") >= 0
        # after the run (lingering): the final counters equal the results file
        final = wait_for(lambda: (m := _scrape(port)) and _total(m, "servegen_requests_total") == 80 and m,
                         30, "final counts", interval=0.2)
        _, lines = read_lines(out)
        assert len(lines) == 80
        ok = [d for d in lines if d["status"] == "ok"]
        assert _total(final, "servegen_requests_total", status="ok") == len(ok)
        assert _total(final, "servegen_completion_tokens_total") == sum(d["completion_tokens"] for d in ok)
        assert _total(final, "servegen_prompt_tokens_total") == sum(d["prompt_tokens"] for d in ok)
        assert _total(final, "servegen_ttft_seconds_count") == len(ok)
        assert _total(final, "servegen_itl_seconds_count") == pytest.approx(15 * len(ok))
        assert _total(final, "servegen_send_lag_seconds_count") == 80
        # bounded labels: top 20 clients by name, the rest "other"
        clients = {dict(lab).get("client") for (n, lab) in final if n == "servegen_requests_total"}
        assert "other" in clients and len(clients) <= 21
        for le in ("0.02", "0.025", "0.05"):  # the histogram agrees with the file, bucket by bucket
            n_file = sum(d["first_token"] - d["sent"] <= float(le) for d in ok)
            assert _total(final, "servegen_ttft_seconds_bucket", le=le) == n_file
        # the final values were pushed too
        pushed = pushgateway_server.metrics()
        assert sum(v for k, v in pushed.items() if k.startswith("servegen_requests_total")) == 80
        p.send_signal(signal.SIGINT)  # ends the linger; the run itself completed
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
    metrics_text = str(final)
    assert SECRET not in metrics_text
    _no_secret(tmp_path, out)


def test_run_without_endpoint_uses_the_simulator_and_report_reads_it(tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(10)], output_tokens=8))
    out = tmp_path / "res.jsonl"
    p = _spawn(["run", str(src), "-o", str(out), "--progress", "off"], tmp_path)
    assert p.wait(60) == 0, (tmp_path / "stderr").read_text()
    head, lines = read_lines(out)
    assert head["server_family"] == "sim" and head["model"]
    assert len(lines) == 10 and {d["status"] for d in lines} == {"ok"}
    assert "embedded simulator" in (tmp_path / "stderr").read_text()
    r = subprocess.run([*CLI, "report", str(out), "--json"], capture_output=True, check=True)
    import json

    s = json.loads(r.stdout)
    assert s["requests"]["scheduled"] == 10 and s["latency"]["ttft"]["n"] == 10


def test_scenario_input_is_generated_on_the_fly(fake_server, tmp_path: Path) -> None:
    scen = tmp_path / "naive.yaml"
    scen.write_text("naive:\n  rate: 20\n  input_tokens: 32\n  output_tokens: 8\nduration: 1\nseed: 1\n")
    out = tmp_path / "res.jsonl"
    r = subprocess.run([*CLI, "run", str(scen), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    head, lines = read_lines(out)
    assert head["source_kind"] == "scenario" and len(lines) >= 5
    assert {d["status"] for d in lines} == {"ok"} and {d["completion_tokens"] for d in lines} == {8}


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "servegen-load/results/v1"}\n{"id": "x", "scheduled": "soon", "status": "ok"}\n')
    r = subprocess.run([*CLI, "report", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"{bad}:2" in r.stderr and "scheduled" in r.stderr
    r = subprocess.run([*CLI, "run", str(bad), "-o", str(tmp_path / "o"), "--endpoint", "http://127.0.0.1:1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a requests file" in r.stderr


def test_sigkill_loses_at_most_the_last_second(fake_server, tmp_path: Path) -> None:
    """Flushes happen several times a second: after SIGKILL the file is whole lines only, and every
    request that finished more than a second before the kill is in it."""
    import json
    import time

    times = [0.05 * i for i in range(200)]  # 10 s at 20 req/s, each done ~95 ms after its time
    src = write_requests(tmp_path / "req.jsonl", make_requests(times))
    out = tmp_path / "res.jsonl"
    p = _spawn(["run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off"], tmp_path)
    try:
        wait_for(lambda: len(read_lines(out)[1]) >= 30, 30, "30 result lines")
        killed_at = time.time()
        p.kill()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    data = out.read_bytes()
    assert data.endswith(b"\n")
    head = json.loads(data.split(b"\n", 1)[0])
    elapsed = killed_at - head["started_unix"]
    ids = {d["id"] for d in read_lines(out)[1]}
    due = {f"r{i}" for i, t in enumerate(times) if t + 0.2 < elapsed - 1.0}
    assert due <= ids, sorted(due - ids)[:5]


def test_a_bad_line_mid_file_fails_before_anything_is_sent(fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.01 * i for i in range(400)], output_tokens=2)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    lines = src.read_bytes().split(b"\n")
    lines[350] = b'{"id": "broken"'  # line 351, due at 3.5 s: far beyond the first look-ahead fill
    src.write_bytes(b"\n".join(lines))
    out = tmp_path / "res.jsonl"
    before = fake_server.stats()["requests"]
    r = subprocess.run([*CLI, "run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--model", "m",
                        "--progress", "off"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{src}:351" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists(), "a run that never started leaves no results file"
    assert fake_server.stats()["requests"] == before, "nothing may be sent before the input is known good"


def test_a_silent_pushgateway_never_holds_the_end_of_the_run(fake_server, tmp_path: Path) -> None:
    """A Pushgateway that accepts the connection and never answers: the run ends after
    --push-timeout with a warning on stderr; Ctrl-C while it waits still exits 130."""
    import socket
    import threading

    src = write_requests(tmp_path / "req.jsonl", make_requests([0.01 * i for i in range(20)], output_tokens=2))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])  # and never read or answer
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    gateway = f"http://user:pushSECRET@127.0.0.1:{port}"
    try:
        out = tmp_path / "a.jsonl"
        r = subprocess.run([*CLI, "run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off",
                            "--pushgateway", gateway, "--push-timeout", "1"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "warning: push to http://***@127.0.0.1" in r.stderr and "no answer within 1 s" in r.stderr
        assert "warning" not in r.stdout and "pushSECRET" not in r.stdout + r.stderr + out.read_text()
        assert len(read_lines(out)[1]) == 20

        out = tmp_path / "b.jsonl"
        n = len(accepted)
        p = _spawn(["run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off",
                    "--pushgateway", gateway, "--push-timeout", "600"], tmp_path)
        try:
            wait_for(lambda: len(accepted) > n, 60, "the push to start")
            p.send_signal(signal.SIGINT)
            assert p.wait(30) == 130
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert len(read_lines(out)[1]) == 20  # the results were complete before the push
        assert "abandoned" in (tmp_path / "stderr").read_text()
    finally:
        silent.close()
        for c in accepted:
            c.close()


def test_client_names_with_line_breaks_cannot_break_the_exposition() -> None:
    """Clients named `a\\rb` and `x<U+2028>y` (from a requests file) went out raw: prometheus_client's
    parser failed on the text, and the workers' proxy, splitting at every line-break character,
    summed broken lines."""
    from servegen_load.dispatch.stream import Flight
    from servegen_load.metrics.prometheus import LoadMetrics
    from servegen_load.run.metrics_proxy import sum_texts

    names = ["a\rb", "x\u2028y", 'q"\\z', "nl\nx", "nl\\nx"]  # the last two: two clients, not one series twice
    m = LoadMetrics(top_clients=names)
    for i, name in enumerate(names):
        f = Flight(make_requests([0.0], output_tokens=4, clients=[name])[0], b"")
        f.sent, f.first_token, f.status = 1.0 + i, 1.1 + i, "ok"
        f.chunks.extend([1.1 + i, 1.2 + i])
        f.prompt_tokens, f.completion_tokens = 10, 2
        m.queue(f)
    m.observe(0.0)
    text = m.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    clients = {s.labels["client"] for s in fams["servegen_requests"].samples}
    assert len(clients) == 5 and not any(set(c) & {"\r", "\u2028"} for c in clients), clients
    assert {"nl\nx", "nl\\nx", 'q"\\z'} <= clients  # escaped as the format says, read back as named
    summed = sum_texts([text, text])
    assert all(set(line).isdisjoint({"\r", "\u2028"}) for line in summed.split("\n"))
    assert {f.name for f in text_string_to_metric_families(summed)} == set(fams)
