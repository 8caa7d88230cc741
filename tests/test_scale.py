"""Scale-out without Ray: `run --shard i/N --start-at T`, `report` of several shards, `run --workers N`.

Every test runs the real CLI in subprocesses against the C fake server on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from test_dispatch_fixtures import make_requests, poisson_times, wait_for, write_requests

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server, start_fake

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
SCENARIO = "naive:\n  rate: 40\n  input_tokens: 32\n  output_tokens: 8\nduration: 1.5\nseed: 3\n"
REALISTIC = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"


def read(path: Path) -> tuple[dict, list[dict]]:
    lines = path.read_bytes().splitlines()
    return orjson.loads(lines[0]), [orjson.loads(x) for x in lines[1:]]


def schedule(lines: list[dict]) -> list[tuple[str, float]]:
    return sorted((d["id"], d["scheduled"]) for d in lines)


def realistic_scenario(tmp_path: Path, seconds: float = 2.0) -> Path:
    """The shipped language scenario (many clients of unequal traffic), cut to a few seconds."""
    text = REALISTIC.read_text().replace("pool: m-large", "pool: m-large")
    out = []
    for line in text.splitlines():
        if line.startswith("duration:"):
            line = f"duration: {seconds}"
        out.append(line)
    p = tmp_path / "language.yaml"
    p.write_text("\n".join(out) + "\n")
    return p


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def run_shards(source: Path, url: str, n: int, tmp_path: Path) -> list[Path]:
    """The N shards as N concurrent processes started together by the ready barrier, driven as any
    orchestrator would: each says `ready` on stdout when set up; then all get one t = 0 on stdin."""
    outs = [tmp_path / f"shard-{i}.jsonl" for i in range(n)]
    procs = [subprocess.Popen([*CLI, "run", str(source), "-o", str(o), "--endpoint", url, "--progress", "off",
                               "--shard", f"{i}/{n}", "--start-barrier"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, o in enumerate(outs)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n", p.stderr
        start = time.time() + 0.5
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start:.6f}\n".encode())
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for o in outs:
        head, _ = read(o)
        assert head["start_at"] == pytest.approx(start) and head["started_unix"] == pytest.approx(start)
    return outs


# --- step 1: --shard / --start-at / report of several files -------------------------------------


@pytest.mark.parametrize("kind", ["scenario", "requests"])
def test_shards_union_is_the_unsharded_run(fake_server, tmp_path: Path, kind: str) -> None:
    if kind == "scenario":
        source = realistic_scenario(tmp_path)
    else:
        reqs = make_requests(poisson_times(60, 40, seed=2), clients=[f"c{i}" for i in range(7)])
        source = write_requests(tmp_path / "reqs.jsonl", reqs)
    full = tmp_path / "full.jsonl"
    r = run_cli("run", str(source), "-o", str(full), "--endpoint", fake_server.url, "--progress", "off")
    assert r.returncode == 0, r.stderr
    _, whole = read(full)
    parts = run_shards(source, fake_server.url, 3, tmp_path)
    per = [read(p)[1] for p in parts]
    assert all(per), "every shard has requests"
    clients = [{d["client"] for d in lines} for lines in per]
    assert not (clients[0] & clients[1]) and not (clients[1] & clients[2]) and not (clients[0] & clients[2])
    assert schedule([d for lines in per for d in lines]) == schedule(whole)
    # the shards started together: nobody is late by more than scheduling noise
    lags = sorted(d["sent"] - d["scheduled"] for lines in per for d in lines)
    assert lags[len(lags) // 2] < 0.05
    # report of the N files summarises them as the one run
    rep = run_cli("report", *map(str, parts), "--json")
    assert rep.returncode == 0, rep.stderr
    s = orjson.loads(rep.stdout)
    assert s["requests"]["scheduled"] == len(whole) and s["latency"]["ttft"]["n"] == len(whole)


def test_report_refuses_a_shard_given_twice(fake_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(10, 40, seed=1), clients=["a", "b"])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    parts = run_shards(source, fake_server.url, 2, tmp_path)
    r = run_cli("report", str(parts[0]), str(parts[1]), str(parts[0]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is in both" in r.stderr and str(parts[0]) in r.stderr


def test_start_at_in_the_past_keeps_times_relative_to_it(fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.0, 0.2, 4.0], clients=["a"])  # start-up takes ~2 s on a busy machine
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "late.jsonl"
    r = run_cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off",
                "--start-at", f"{time.time() - 1.0:.6f}", "--lag-threshold-ms", "5000")
    assert r.returncode == 0, r.stderr
    assert "in the past" in r.stderr
    _, lines = read(out)
    by_id = {d["id"]: d for d in lines}
    assert by_id["r0"]["sent"] - by_id["r0"]["scheduled"] > 0.9   # due 1 s before we started: sent at once
    assert by_id["r1"]["sent"] - by_id["r1"]["scheduled"] > 0.7
    assert by_id["r1"]["sent"] - by_id["r0"]["sent"] < 0.05      # both overdue: sent together
    assert by_id["r2"]["sent"] - by_id["r2"]["scheduled"] < 0.1   # still in the future: on time


def test_start_barrier_withdrawn_or_garbled_sends_nothing(fake_server, tmp_path: Path) -> None:
    """End of stdin before t = 0 (the coordinator gave up): exit 130, nothing sent; a line that is
    not a unix time: exit 2, one line."""
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.0, 0.1], clients=["a"]))
    for stdin, code, word in ((b"", 130, "withdrawn"), (b"soon\n", 2, "--start-barrier")):
        out = tmp_path / "o.jsonl"
        r = subprocess.run([*CLI, "run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--progress",
                            "off", "--tokenizer", "words", "--start-barrier"], input=stdin, capture_output=True, timeout=60)
        assert r.stdout == b"ready\n" and r.returncode == code, r.stderr
        assert word in r.stderr.decode().splitlines()[-1]
        assert not out.exists()  # the engine never reached t = 0 (the results file is opened there)


def test_fell_behind_is_said_once(fake_server, tmp_path: Path) -> None:
    """A run that starts 1 s late falls behind: the summary says so, and nothing repeats it."""
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.0, 0.1, 0.2], clients=["a"]))
    r = run_cli("run", str(source), "-o", str(tmp_path / "o.jsonl"), "--endpoint", fake_server.url, "--progress",
                "off", "--tokenizer", "words", "--start-at", f"{time.time() - 1.0:.6f}")
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).lower().count("fell behind") == 1, r.stdout + r.stderr


def test_bad_shard_and_start_at_are_one_line(tmp_path: Path) -> None:
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.0]))
    for flag, value, word in (("--shard", "3/3", "--shard"), ("--shard", "x", "--shard"),
                              ("--start-at", "1790000000000", "milliseconds"),
                              # months past (the README's literal example, copied): everything at once
                              ("--start-at", f"{time.time() - 86400 * 90:.0f}", "in the past")):
        r = run_cli("run", str(source), "-o", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:1",
                    "--model", "m", flag, value)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and word in r.stderr, r.stderr


# --- step 2: --workers N|auto --------------------------------------------------------------------


def parts_lines(out: Path) -> int:
    """Result lines the workers of a `--workers` run have written so far (in its parts directory)."""
    n = 0
    for p in out.parent.glob(f".{out.name}.parts-*/part-*.jsonl"):
        n += max(0, p.read_bytes().count(b"\n") - 1)
    return n


def scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_workers_send_the_single_process_schedule(fake_server, tmp_path: Path) -> None:
    from test_dispatch_fixtures import free_port

    reqs = make_requests(poisson_times(80, 40, seed=5), clients=[f"c{i}" for i in range(7)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    single = tmp_path / "single.jsonl"
    r = run_cli("run", str(source), "-o", str(single), "--endpoint", fake_server.url, "--progress", "off")
    assert r.returncode == 0, r.stderr
    out, summ, port = tmp_path / "merged.jsonl", tmp_path / "summary.json", free_port()
    p = subprocess.Popen([*CLI, "run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--workers", "2",
                          "--summary-json", str(summ), "--metrics-port", str(port), "--metrics-linger", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: summ.exists(), 60, "the merged summary")
        m = scrape(port)  # lingering: the final sums of both workers
        assert m is not None
        total = sum(v for (n, _), v in m.items() if n == "servegen_requests_total")
        assert total == 80
        ttft_n = sum(v for (n, _), v in m.items() if n == "servegen_ttft_seconds_count")
        assert ttft_n == 80
        seen = {dict(lab).get("client") for (n, lab), _ in m.items() if n == "servegen_requests_total"}
        assert seen == {f"c{i}" for i in range(7)}  # both workers' clients (disjoint shards) in the one /metrics
        head, merged = read(out)
        p.send_signal(signal.SIGTERM)  # ends the linger
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert head["workers"] == 2 and "shard" not in head and head["started_unix"] == head["start_at"]
    assert "2 workers ready after" in err  # t = 0 chosen by the ready barrier, not a guessed lead
    lags = sorted(d["sent"] - d["scheduled"] for d in merged)
    assert lags[len(lags) // 2] < 0.05
    assert schedule(merged) == schedule(read(single)[1])
    sched = [d["scheduled"] for d in merged]
    assert sched == sorted(sched) and len(merged) == 80
    assert {d["status"] for d in merged} == {"ok"}
    s = orjson.loads(summ.read_bytes())
    assert s["requests"]["scheduled"] == 80 and s["latency"]["ttft"]["n"] == 80
    assert not list(tmp_path.glob(".merged.jsonl.parts-*")), "parts are removed after a good merge"


def test_workers_sigint_with_the_embedded_simulator_is_complete(tmp_path: Path) -> None:
    """One simulator for both workers; SIGINT to the parent: exit 130 and one line per scheduled request."""
    reqs = make_requests([0.1 * i for i in range(150)], output_tokens=8, clients=["a", "b", "c", "d"])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "merged.jsonl"
    p = subprocess.Popen([*CLI, "run", str(source), "-o", str(out), "--workers", "2", "--progress", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: parts_lines(out) >= 6 or p.poll() is not None, 60, "first results of the workers",
                 interval=0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err.count("started the embedded simulator") == 1 and "shared by all workers" in err
    head, merged = read(out)
    assert sorted(d["id"] for d in merged) == sorted(r.id for r in reqs)
    st = {d["status"] for d in merged}
    assert "ok" in st and "cancelled" in st
    assert head["workers"] == 2


def test_workers_killed_worker_is_filled_in(fake_server, tmp_path: Path) -> None:
    """A worker that dies without a results line for its shard: the parent writes its cancelled lines."""
    reqs = make_requests([0.05 * i for i in range(100)], clients=["a", "b", "c", "d"])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "merged.jsonl"
    p = subprocess.Popen([*CLI, "run", str(source), "-o", str(out), "--endpoint", fake_server.url,
                          "--workers", "2", "--start-at", f"{time.time() + 30:.3f}", "--progress", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids = wait_for(lambda: children(p.pid, 2), 30, "two workers")
        os.kill(kids[0], signal.SIGKILL)  # still waiting for --start-at: it has written nothing
        wait_for(lambda: len(children(p.pid, 1)) == 1, 10, "the kill")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1 and "failed (exit -9): killed by SIGKILL" in err, err
    _, merged = read(out)
    assert sorted(d["id"] for d in merged) == sorted(r.id for r in reqs)
    assert {d["status"] for d in merged} == {"cancelled"}
    assert any("worker" in d["error"] and "stopped" in d["error"] for d in merged)


def children(pid: int, want: int) -> list[int]:
    """Child pids of `pid` that run the CLI (from /proc), or [] until `want` of them exist."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"servegen_load.cli" in cmd:
            out.append(int(d.name))
    return sorted(out) if len(out) >= want else []


def test_workers_auto_follows_the_peak_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from servegen_load.run import workers
    from servegen_load.run.spec import RunSpec

    times = [0.0005 * i for i in range(1800)] + [5 + 0.1 * i for i in range(10)]  # 1800 in the first second
    source = write_requests(tmp_path / "reqs.jsonl", make_requests(times))
    spec = RunSpec.build(source=str(source), output=str(tmp_path / "r.jsonl"), workers="auto")
    assert workers.schedule_shape(spec)[:2] == (1800.0, 1810)
    want = -(-1800 // int(workers.PROCESS_RATE))
    n, total, _ = workers.resolve_workers(spec, local_sim=False)
    assert n == min(want, workers.cores()) and total == 1810
    err = capsys.readouterr().err
    assert ("cannot hold" in err) == (want > workers.cores())
    assert workers.resolve_workers(spec.replace(duration=3.0), local_sim=False)[0] == n  # the peak is before 3 s
    with pytest.raises(Exception, match="--workers"):
        RunSpec.build(source=str(source), output="r.jsonl", workers="two")


def test_workers_push_one_summed_group(fake_server, pushgateway_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(40, 40, seed=9), clients=[f"c{i}" for i in range(5)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    r = run_cli("run", str(source), "-o", str(tmp_path / "m.jsonl"), "--endpoint", fake_server.url,
                "--workers", "2", "--pushgateway", pushgateway_server.address, "--progress", "off")
    assert r.returncode == 0, r.stderr
    pushed = pushgateway_server.metrics()
    # the group job="servegen-load" (no shard label: Debian's Pushgateway persists groups other runs left)
    reqs_total = {k: v for k, v in pushed.items()
                  if k.startswith("servegen_requests_total{") and 'job="servegen-load"' in k and "shard=" not in k}
    assert sum(reqs_total.values()) == 40  # both workers, summed, in one group


def test_ray_address_is_optional_on_the_command_line() -> None:
    from servegen_load.run.ray_address import optional_ray_address as norm

    assert norm(["run", "s.yaml", "-o", "r", "--ray"]) == ["run", "s.yaml", "-o", "r", "--ray", "local"]
    assert norm(["run", "--ray", "s.yaml", "-o", "r"]) == ["run", "--ray", "local", "s.yaml", "-o", "r"]
    assert norm(["run", "--ray", "--workers", "2", "s.yaml"])[:3] == ["run", "--ray", "local"]
    for addr in ("auto", "ray://head:10001", "10.0.0.5:6379", "head-svc:6379"):
        assert norm(["run", "s.yaml", "--ray", addr]) == ["run", "s.yaml", "--ray", addr]
    assert norm(["report", "--ray"]) == ["report", "--ray"]


# --- truthfulness under scale-out (issue 12) ------------------------------------------------------


@pytest.mark.parametrize("more", [["--workers", "2"], []])
def test_duplicate_ids_are_refused_before_anything_is_sent(fake_server, tmp_path: Path, more: list[str]) -> None:
    reqs = make_requests([0.01 * i for i in range(40)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    lines = source.read_bytes().split(b"\n")
    assert b'"id":"r25"' in lines[26]  # line 27 (the header is line 1)
    lines[26] = lines[26].replace(b'"id":"r25"', b'"id":"r3"')
    source.write_bytes(b"\n".join(lines))
    out = tmp_path / "merged.jsonl"
    before = fake_server.stats()["requests"]
    r = run_cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off", *more)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"servegen-load: error: {source}:27: id: duplicate request id 'r3' (first on line 5): ids must be unique "
        "(results are read and merged by id)"], r.stderr
    assert fake_server.stats()["requests"] == before, "nothing may be sent"
    assert not out.exists() and not list(tmp_path.glob(".merged.jsonl.parts-*"))


def _shard_of(pid: int) -> int:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    part = next(a for a in cmd if b"part-" in a)
    return int(part.rsplit(b"part-", 1)[1].split(b".")[0])


def test_worker_killed_mid_run_lines_say_what_is_known(fake_server, tmp_path: Path) -> None:
    """SIGKILL to one worker mid-run: its flushed lines are kept, requests it may have sent are
    `lost` (outcome unknown), only requests due after its death are `cancelled` 'before due'."""
    reqs = make_requests(poisson_times(500, 80, seed=7), output_tokens=16, clients=[f"c{i}" for i in range(8)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "merged.jsonl"
    p = subprocess.Popen([*CLI, "run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--api",
                          "completions", "--workers", "2", "--progress", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids = wait_for(lambda: children(p.pid, 2), 30, "two workers")
        wait_for(lambda: parts_lines(out) >= 60, 60, "results from the workers", interval=0.05)
        victim = _shard_of(kids[0])
        killed_at = time.time()
        os.kill(kids[0], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1 and f"worker {victim}/2 failed (exit -9)" in err, err
    head, merged = read(out)
    assert sorted(d["id"] for d in merged) == sorted(r.id for r in reqs)  # one line per scheduled request
    dead = [d for d in merged if f"worker {victim}/2 " in (d["error"] or "")]
    lost = [d for d in dead if d["status"] == "lost"]
    assert lost and all("may have been sent" in d["error"] and d["sent"] is None for d in lost)
    kill_rel = killed_at - head["start_at"]
    before_due = [d for d in dead if d["status"] == "cancelled"]
    assert all("before this request was due" in d["error"] for d in before_due)
    assert all(d["scheduled"] > kill_rel for d in before_due), "a request due before the kill is not 'never sent'"
    assert {d["status"] for d in dead} <= {"lost", "cancelled"}
    assert any(d["status"] == "ok" and d["client"] in {x["client"] for x in dead} for d in merged)  # flushed: kept


def test_workers_stop_when_the_endpoint_refuses_the_run(tmp_path: Path) -> None:
    """A wrong model name refuses every request with one 404: the worker that sees 20 of them
    stops, the parent stops the other, and the run exits 3 with one line (as a single process
    does) instead of sending the whole schedule; every scheduled request still has its line."""
    from test_dispatch_fixtures import answering

    reqs = make_requests(poisson_times(200, 20, seed=3), clients=[f"c{i}" for i in range(4)])  # 10 s
    source, out = write_requests(tmp_path / "reqs.jsonl", reqs), tmp_path / "merged.jsonl"
    with answering([404]) as url:
        r = run_cli("run", str(source), "-o", str(out), "--endpoint", url, "--model", "m", "--workers", "2",
                    "--progress", "off")
    assert r.returncode == 3, r.stderr
    stop = [x for x in r.stderr.splitlines() if x.startswith("servegen-load: stopped:")]
    assert len(stop) == 1 and "worker " in stop[0] and "the first 20 requests all failed with HTTP 404" in stop[0], r.stderr
    assert "failed (exit" not in r.stderr, r.stderr
    _, lines = read(out)
    assert sorted(d["id"] for d in lines) == sorted(x.id for x in reqs)
    statuses = [d["status"] for d in lines]
    assert set(statuses) == {"http_error", "cancelled"} and statuses.count("cancelled") > 100, statuses


def test_a_shard_whose_every_request_failed_does_not_stop_the_others(tmp_path: Path) -> None:
    """One client's requests all fail (HTTP 500), the other's succeed; with --workers 2 each is a
    shard. The failing shard runs its schedule and exits 3 (none of its requests succeeded): a
    result, not a worker failure, so the healthy shard goes on (it was stopped, 25 of its 30
    requests `cancelled`), and the merged run exits 0 like the single process."""
    import dataclasses
    import json

    from aiohttp import web
    from test_security import ThreadServer

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("max_tokens") == 5:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for t in ("a", "b", "c", "d"):
            await resp.write(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": t}}]}) + b"\n\n")
        await resp.write(b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":4}}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    bad = make_requests([0.3 * i for i in range(3)], output_tokens=5, clients=["bad"])
    good = make_requests([0.1 * i for i in range(30)], output_tokens=4, clients=["good"])
    reqs = sorted([*(dataclasses.replace(r, id=f"b{r.id}") for r in bad), *good], key=lambda r: r.t)
    source, out = write_requests(tmp_path / "reqs.jsonl", reqs), tmp_path / "merged.jsonl"
    srv = ThreadServer(app)
    try:
        r = run_cli("run", str(source), "-o", str(out), "--endpoint", f"http://127.0.0.1:{srv.port}", "--model", "m",
                    "--api", "chat", "--workers", "2", "--progress", "off", "--keep-going")
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    assert "failed (exit" not in r.stderr and "cancelled" not in r.stderr, r.stderr
    _, lines = read(out)
    by = {(d["client"], d["status"]) for d in lines}
    assert by == {("bad", "http_error"), ("good", "ok")}, by
    assert len(lines) == 33


@pytest.mark.parametrize("source", ["language", "naive"])
def test_workers_report_the_whole_runs_intended_load(tmp_path: Path, source: str) -> None:
    """The merged results of --workers 2 said one shard's intended load (48.9 requests of 90) as
    the run's: each shard now records its share (1/N when split by request) and the merge sums them."""
    from servegen_load.run.source import open_source
    from servegen_load.sim import SimProcess

    if source == "language":
        scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    else:
        scen = tmp_path / "naive.yaml"
        scen.write_text("naive: {rate: 8, input_tokens: 10, output_tokens: 4}\nduration: 4\nseed: 2\n")
    want = open_source(str(scen), duration=4.0).info["intended"]
    out = tmp_path / "w.jsonl"
    with SimProcess("tiny-cpu") as sim:
        r = run_cli("run", str(scen), "-o", str(out), "--endpoint", sim.url, "--server-family", "sim",
                    "--duration", "4", "--workers", "2", "--progress", "off", timeout=120)
    assert r.returncode == 0, r.stderr
    got = read(out)[0]["intended"]
    assert abs(got["requests"] / want["requests"] - 1) < 0.01 and abs(got["rate"] / want["rate"] - 1) < 0.01, (got, want)
