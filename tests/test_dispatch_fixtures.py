"""Fixtures and helpers for the dispatcher tests (no tests here): the C fake server, request files.

The fake server (shared/servers/fake_server.c) is compiled once per session into a temp dir. It
emits exactly `max_tokens` tokens, the first at request + TTFT, then one every ITL, on absolute
deadlines, and puts `usage` in a separate final chunk with `choices: []` (OpenAI/vLLM style).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from servegen_load.requests import REQUESTS_FORMAT, Request

SERVERS = Path(__file__).resolve().parents[1].parent / "shared" / "servers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> Any:
    """Poll `cond` until it returns something truthy (never sleep blindly as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def interrupt_when(p: subprocess.Popen[bytes], cond: Callable[[], Any], what: str, timeout: float = 30.0) -> int:
    """Ctrl-C to `p` once `cond` holds; its exit code (killed, whatever happens, if still alive)."""
    import signal

    try:
        wait_for(cond, timeout, what)
        p.send_signal(signal.SIGINT)
        return p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class FakeServer:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return http_json(self.url + "/stats")

    def reset(self) -> None:
        http_json(self.url + "/stats/reset")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def fake_server_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fake") / "fake_server"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(SERVERS / "fake_server.c")], check=True)
    return out


@pytest.fixture(scope="session")
def start_fake(fake_server_bin: Path) -> Iterator[Callable[..., FakeServer]]:
    """Factory: `start_fake(ttft_ms=20, itl_ms=5, max_tokens=16)` -> a running FakeServer."""
    started: list[FakeServer] = []

    def start(ttft_ms: float = 20, itl_ms: float = 5, max_tokens: int = 16) -> FakeServer:
        port = free_port()
        proc = subprocess.Popen(
            [str(fake_server_bin), "--port", str(port), "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
             "--max-tokens", str(max_tokens)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fs = FakeServer(proc, port)
        started.append(fs)
        wait_for(lambda: _health(fs.url), 10, "fake server /health")
        return fs

    yield start
    for fs in started:
        fs.stop()


@pytest.fixture(scope="session")
def fake_server(start_fake: Callable[..., FakeServer]) -> FakeServer:
    """The shared fake server: TTFT 20 ms, ITL 5 ms (tests ask for their own max_tokens)."""
    return start_fake(ttft_ms=20, itl_ms=5, max_tokens=16)


def make_requests(times: Sequence[float], *, input_tokens: int = 20, output_tokens: int = 16,
                  clients: Sequence[str] = ("a", "b", "c"), categories: Sequence[str] = ("language",),
                  reason_tokens: int | None = None) -> list[Request]:
    return [Request(id=f"r{i}", t=float(t), client=clients[i % len(clients)],
                    category=categories[i % len(categories)], input_tokens=input_tokens,
                    output_tokens=output_tokens, reason_tokens=reason_tokens)
            for i, t in enumerate(times)]


def poisson_times(n: int, rate: float, seed: int = 0, start: float = 0.05) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return (start + np.cumsum(rng.exponential(1 / rate, n))).tolist()


def write_requests(path: Path, reqs: Sequence[Request]) -> Path:
    with path.open("wb") as fh:
        fh.write(orjson.dumps({"format": REQUESTS_FORMAT, "seed": 0, "source": "test"}) + b"\n")
        for r in reqs:
            fh.write(r.to_json() + b"\n")
    return path


def read_lines(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Header and complete result lines of a results file (a partial last line is left out)."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    if not lines or not lines[0]:
        return {}, []
    head = orjson.loads(lines[0])
    return head, [orjson.loads(x) for x in lines[1:-1] if x.strip()]


@contextlib.contextmanager
def serving(answer: Callable[[str], tuple[int, str, bytes]]) -> Iterator[str]:
    """A real server on 127.0.0.1 (its base URL) answering every POST with `answer(authorization
    header)` = (status, content type, body)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code, kind, body = answer(self.headers.get("Authorization", ""))
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops the SYNs of a client's first spare connections

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def answering(codes: list[int]) -> Iterator[str]:
    """`serving` the n-th request with `codes[n % len(codes)]` and a vLLM-style error body naming
    that code and echoing the request's Authorization header."""
    count = itertools.count()

    def answer(echo: str) -> tuple[int, str, bytes]:
        code = codes[next(count) % len(codes)]
        return code, "application/json", json.dumps(
            {"object": "error", "message": f"refused with {code} (sent: {echo})", "code": code}).encode()

    with serving(answer) as url:
        yield url
