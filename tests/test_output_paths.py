"""Output paths: checked before any traffic, locked, written where they point (links, pipes, `-`).

Every test runs the real CLI in a subprocess; runs go to the C fake server on 127.0.0.1, whose
request counter shows whether anything was sent before a path error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from test_dispatch_fixtures import make_requests, poisson_times, read_lines, wait_for, write_requests

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
N = 30


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=timeout)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_requests(tmp_path / "req.jsonl", make_requests([0.01 * i for i in range(N)], output_tokens=4))


def run_args(source: Path, out: str, url: str, *extra: str) -> list[str]:
    return ["run", str(source), "-o", out, "--endpoint", url, "--api", "completions", "--progress", "off", *extra]


def one_error(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servegen-load: error: "), err
    return lines[0]


def complete(data: bytes) -> list[dict]:
    """Header + one valid line per request, nothing else (and, written to a pipe, the footer)."""
    rows = [orjson.loads(x) for x in data.splitlines()]
    assert rows[0]["format"] == "servegen-load/results/v1"
    if rows[0].get("footer"):
        assert rows.pop() == {"footer": True, "complete": True, "lines": N}
    assert sorted(d["id"] for d in rows[1:]) == sorted(f"r{i}" for i in range(N))
    assert {d["status"] for d in rows[1:]} == {"ok"}
    return rows


def test_collisions_are_refused_before_any_traffic(fake_server, source: Path, tmp_path: Path) -> None:
    before = fake_server.stats()["requests"]
    original = source.read_bytes()
    msg = one_error(cli(*run_args(source, str(source), fake_server.url)))
    assert "-o" in msg and "is also the input SOURCE" in msg
    assert source.read_bytes() == original  # the input is untouched
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)  # the same file under another name
    assert "is also the input" in one_error(cli(*run_args(source, str(link), fake_server.url)))
    out = tmp_path / "res.jsonl"
    msg = one_error(cli(*run_args(source, str(out), fake_server.url, "--summary-json", f"{tmp_path}/./res.jsonl")))
    assert "--summary-json" in msg and "is also the output of -o" in msg
    assert "standard output" in one_error(cli(*run_args(source, "-", fake_server.url, "--summary-json", "-")))
    msg = one_error(cli(*run_args(source, str(source / "x.jsonl"), fake_server.url)))  # a file in the way
    assert "cannot create" in msg and "is not a folder" in msg
    assert "is a folder" in one_error(cli(*run_args(source, str(tmp_path), fake_server.url)))
    assert fake_server.stats()["requests"] == before, "a path error must be found before anything is sent"
    assert not out.exists()
    # the same checks for generate and report
    scen = tmp_path / "s.yaml"
    scen.write_text("naive:\n  rate: 20\n  input_tokens: 8\n  output_tokens: 4\nduration: 1\nseed: 1\n")
    text = scen.read_text()
    assert "is also the input SCENARIO" in one_error(cli("generate", str(scen), "-o", str(scen)))
    assert scen.read_text() == text


def test_fit_compare_import_and_calibrate_never_overwrite_their_input(source: Path, tmp_path: Path) -> None:
    """`fit LOG -o LOG`, `compare A B --html A`, `pool import DIR -o DIR/file`, `calibrate --from
    DIR -o DIR/file`, `plan --preset P -o P` (a calibrated preset), `plan --slo-file F -o F` and
    `report --slo-file F --csv F` replaced their own input and exited 0."""
    log = tmp_path / "gw.csv"
    log.write_text("t,input_tokens,output_tokens\n" + "".join(f"{i},10,5\n" for i in range(100)))
    folder = tmp_path / "pool"
    folder.mkdir()
    trace = folder / "chunk-0-trace.csv"
    trace.write_text("0,0.5,1.0,Gamma,1.0,2.0\n")
    probes = tmp_path / "probes"
    (probes / "round-1").mkdir(parents=True)
    kept = probes / "round-1" / "probe.jsonl"
    kept.write_bytes(source.read_bytes())
    scen, preset, slo = tmp_path / "s.yaml", tmp_path / "mine.yaml", tmp_path / "slo.yaml"
    scen.write_text("naive:\n  rate: 5\n  input_tokens: 8\n  output_tokens: 4\nduration: 1\n")
    preset.write_text("base: tiny-cpu\n")
    slo.write_text("slo:\n  - ttft_p99<=2s\n")
    for args, victim, option in [(["fit", str(log), "-o", str(log)], log, "LOGS"),
                                 (["compare", str(source), str(log), "--html", str(source)], source, "A"),
                                 (["pool", "import", str(folder), "-o", str(trace)], trace, "FOLDER"),
                                 (["calibrate", "--from", str(probes), "-o", str(kept)], kept, "PATH"),
                                 (["plan", str(scen), "--slo", "ttft_p99<=2s", "--preset", str(preset), "-o",
                                   str(preset)], preset, "--preset"),
                                 (["plan", str(scen), "--slo-file", str(slo), "-o", str(slo)], slo, "--slo-file"),
                                 (["report", str(source), "--slo-file", str(slo), "--csv", str(slo)], slo,
                                  "--slo-file")]:
        before = victim.read_bytes()
        assert f"is also the input {option}" in one_error(cli(*args)), args
        assert victim.read_bytes() == before


def test_symlink_is_written_through(fake_server, source: Path, tmp_path: Path) -> None:
    target = tmp_path / "data" / "results.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    summary_target = tmp_path / "data" / "summary.json"
    summary_link = tmp_path / "summary.json"
    summary_link.symlink_to(summary_target)  # dangling until written
    r = cli(*run_args(source, str(link), fake_server.url, "--summary-json", str(summary_link)))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and summary_link.is_symlink()  # the links are kept...
    complete(target.read_bytes())  # ...and their targets hold the outputs
    assert orjson.loads(summary_target.read_bytes())["requests"]["scheduled"] == N
    assert not list(tmp_path.glob("**/.*.lock")), "the lock file is removed at the end"


def test_fifo_and_stdout_are_written_directly(fake_server, source: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = cli(*run_args(source, str(fifo), fake_server.url))
    reader.join(30)
    assert r.returncode == 0, r.stderr
    assert fifo.is_fifo()  # not replaced by a regular file
    complete(got[0])
    assert b"requests: 30 scheduled" in r.stdout  # the summary is still computed and printed

    r = cli(*run_args(source, "-", fake_server.url))  # results on stdout, everything else on stderr
    assert r.returncode == 0, r.stderr
    complete(r.stdout)
    assert b"requests: 30 scheduled" in r.stderr
    assert not Path("-").exists() and not (tmp_path / "-").exists()
    r = cli(*run_args(source, "/dev/stdout", fake_server.url))  # a link to our stdout pipe: written through
    assert r.returncode == 0, r.stderr
    complete(r.stdout)
    assert Path("/dev/stdout").is_symlink()

    res = tmp_path / "res.jsonl"
    res.write_bytes(r.stdout)
    r = cli(*run_args(source, str(tmp_path / "r2.jsonl"), fake_server.url, "--summary-json", "-"))
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["requests"]["scheduled"] == N  # stdout is the summary file, nothing else
    rep = cli("report", str(res), "--json", "-o", "-")  # the JSON file on stdout, once; the text on stderr
    assert rep.returncode == 0, rep.stderr
    assert orjson.loads(rep.stdout)["requests"]["scheduled"] == N
    scen = tmp_path / "s.yaml"
    scen.write_text("naive:\n  rate: 20\n  input_tokens: 8\n  output_tokens: 4\nduration: 1\nseed: 1\n")
    g = cli("generate", str(scen), "-o", "-", "-q")
    assert g.returncode == 0, g.stderr
    rows = [orjson.loads(x) for x in g.stdout.splitlines()]
    assert rows[0]["format"].startswith("servegen-load/requests/") and len(rows) > 5


def test_second_run_on_the_same_output_fails_fast(fake_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(200, 20.0, seed=2), output_tokens=4)  # ~10 s
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    lock = tmp_path / ".res.jsonl.lock"
    with open(tmp_path / "a.err", "wb") as err:
        a = subprocess.Popen([*CLI, *run_args(src, str(out), fake_server.url)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: len(read_lines(out)[1]) >= 5, 30, "the first run's results")
        assert lock.exists()
        b = cli(*run_args(src, str(out), fake_server.url))
        msg = one_error(b)
        assert "another run is writing this file" in msg and f"pid {a.pid}" in msg
        a.send_signal(signal.SIGINT)
        assert a.wait(30) == 130
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs)  # the first run's file is whole
    assert not lock.exists()


def test_text_outputs_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under LANG=C without UTF-8 mode, `report --html` died with UnicodeEncodeError ('\\xd7'): text
    outputs were written in the locale's encoding while the page declares charset=utf-8."""
    out = tmp_path / "page.html"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = ("import sys; from servegen_load.atomic import atomic_write\n"
            "with atomic_write(sys.argv[1]) as fh: fh.write('2 \\u00d7 faster \\u2581\\u2588')")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text(encoding="utf-8") == "2 \u00d7 faster \u2581\u2588"
