"""Storage failures during `run`: a file-size limit (EFBIG), a full device (ENOSPC), a closed pipe.

Each runs the real CLI in a subprocess against the C fake server on 127.0.0.1 and checks what the
user is promised: dispatching stops at the first failed write (no hang), the results file holds
only whole, valid JSON lines (no torn last line), one clear message on stderr, no traceback, and a
non-zero exit (4: results could not be written).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from test_dispatch_fixtures import make_requests, poisson_times, write_requests

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
EXIT_STORAGE = 4


def _whole_lines(data: bytes) -> list[dict]:
    """Every line of `data` parsed; fails on a torn last line or invalid JSON."""
    assert data.endswith(b"\n"), f"torn last line: {data[-80:]!r}"
    return [orjson.loads(x) for x in data.split(b"\n")[:-1]]


def _limit_file_size(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core-dumping signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_file_size_limit_stops_dispatching_and_leaves_whole_lines(fake_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(600, 60.0, seed=3), output_tokens=8)  # ~10 s of schedule
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    limit = 24_000  # the header and a few dozen lines
    before = fake_server.stats()["requests"]
    r = subprocess.run([*CLI, "run", str(src), "-o", str(out), "--endpoint", fake_server.url, "--api", "completions",
                        "--progress", "off"], capture_output=True, timeout=120, preexec_fn=_limit_file_size(limit))
    err = r.stderr.decode()
    assert r.returncode == EXIT_STORAGE, err
    assert "Traceback" not in err
    msgs = [x for x in err.splitlines() if "error:" in x]
    assert len(msgs) == 1 and "cannot write results" in msgs[0] and "File too large" in msgs[0], err
    data = out.read_bytes()
    assert len(data) <= limit
    head, *lines = _whole_lines(data)
    assert head["format"] == "servegen-load/results/v1"
    assert 0 < len(lines) < len(reqs)
    assert f"holds {len(lines)} whole result lines" in msgs[0]  # the message tells the truth about the file
    assert len({d["id"] for d in lines}) == len(lines) and {d["status"] for d in lines} <= {"ok"}
    sent = fake_server.stats()["requests"] - before
    assert sent < len(reqs) / 2, f"dispatching went on after the failure ({sent} of {len(reqs)} sent)"


def test_full_device_is_one_clean_error(fake_server, tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.01 * i for i in range(20)]))
    r = subprocess.run([*CLI, "run", str(src), "-o", "/dev/full", "--endpoint", fake_server.url,
                        "--progress", "off"], capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_STORAGE, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("servegen-load: error: cannot write results to /dev/full: "
                                                 "No space left on device")
    assert Path("/dev/full").is_char_device()  # written in place, never replaced by a regular file


def test_closed_pipe_on_stdout_stops_the_run(fake_server, tmp_path: Path) -> None:
    """`run -o - | head -c N`: the reader goes away mid-run; the run stops itself, exit 4."""
    reqs = make_requests(poisson_times(600, 60.0, seed=4), output_tokens=8)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    with open(tmp_path / "stderr", "wb") as se:
        p = subprocess.Popen([*CLI, "run", str(src), "-o", "-", "--endpoint", fake_server.url, "--api",
                              "completions", "--progress", "off"], stdout=subprocess.PIPE, stderr=se)
        try:
            assert p.stdout is not None
            got = p.stdout.read(3000)  # the header and some lines, then the reader leaves
            p.stdout.close()
            rc = p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = (tmp_path / "stderr").read_text()
    assert rc == EXIT_STORAGE, err
    assert "Traceback" not in err and "cannot write results to -: Broken pipe" in err
    assert orjson.loads(got.split(b"\n")[0])["format"] == "servegen-load/results/v1"


def test_any_command_whose_stdout_closes_exits_4_with_one_line(tmp_path: Path) -> None:
    """`gate ... | true` exited 1, a gate's FAIL, for a gate that passed; `generate -o - | head -1`
    exited 1 with nothing said. Both are a closed standard output: exit 4 and one line."""
    res = tmp_path / "res.jsonl"
    res.write_bytes(b'{"format":"servegen-load/results/v1"}\n' + b"".join(
        orjson.dumps({"id": f"r{i}", "scheduled": 0.1 * i, "status": "ok", "sent": 0.1 * i, "first_token": 0.1 * i + 0.01,
                      "last_token": 0.1 * i + 0.02, "chunk_times": [0.0, 0.01]}) + b"\n" for i in range(3)))
    scen = tmp_path / "s.yaml"
    scen.write_text("naive:\n  rate: 2000\n  input_tokens: 8\n  output_tokens: 4\nduration: 60\nseed: 1\n")
    for args in (["gate", str(res), "--slo", "error_rate<=1%"], ["generate", str(scen), "-o", "-"],
                 ["report", str(res), "--csv", "-"]):
        p = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        rc, err = p.wait(60), p.stderr.read().decode()
        assert rc == EXIT_STORAGE, (args, rc, err)
        assert err.strip().splitlines()[-1] == ("servegen-load: error: standard output was closed before "
                                                 "everything was written (broken pipe)"), err
        assert "Traceback" not in err
