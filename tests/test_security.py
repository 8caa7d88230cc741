"""Security: the API key never leaks; TLS is verified unless --insecure; servers bind 127.0.0.1.

The leak tests run the real commands a user runs (`run` with `--metrics-port`, `report --json`,
`report --html`, `gate`) with a fresh random key, once from `OPENAI_API_KEY` against the
simulator with faults, once from `--api-key-file` against a hostile server that echoes the
`Authorization` header back in every place an error text is taken from (error bodies, in-stream
error events, non-JSON events, garbage lines, a body cut mid-key, a redirect's Location cut
mid-key with more text after it), then search every file
written, stdout/stderr and a `/metrics` scrape for the key and for any 8 characters of its
random part.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from test_dispatch_fixtures import (
    free_port,
    make_requests,
    poisson_times,
    read_lines,
    wait_for,
    write_requests,
)

from servegen_load.sim import SimProcess
from servegen_load.sim.server import READY_PREFIX

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


# --- helpers -------------------------------------------------------------------------------------

def listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket in LISTEN on `port`, read from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            addr, p = cols[1].split(":")
            if cols[3] != "0A" or int(p, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word little endian
            found.add(socket.inet_ntop(fam, raw))
    return found


class ThreadServer:
    """An aiohttp.web app served from a thread on 127.0.0.1 (optionally TLS)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _token(t: str) -> bytes:
    return _chunk({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]})


USAGE = _chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "echo-model", "object": "model"}]})


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for e in events:
        await resp.write(e)
    await resp.write_eof()
    return resp


def echo_app() -> web.Application:
    """Answers that quote the request's Authorization header back, in turn."""
    n = {"i": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        i = n["i"] = n["i"] + 1
        kind = i % 8
        if kind == 7:  # a redirect whose Location is cut at 200 characters inside the key, text after it
            await request.read()
            return web.Response(status=307, headers={"Location": "http://127.0.0.1:9/" + "a" * 161 + key})
        if kind == 0:
            await request.read()
            return web.json_response({"error": {"message": f"invalid credentials: {auth}"}}, status=401)
        if kind == 1:
            return await _stream(request, [_token("a"), _chunk({"error": {"message": f"rejected {auth}"}})])
        if kind == 2:  # not JSON, the key where the 80-character excerpt cuts it
            return await _stream(request, [_token("a"), b"data: " + b"x" * 66 + key.encode() + b"\n\n"])
        if kind == 3:
            return await _stream(request, [_token("a"), b"garbage " + auth.encode() + b"\n\n", _token("b"), DONE])
        if kind == 4:
            return await _stream(request, [_token("a"), b"event: error\ndata: " + auth.encode() + b"\n\n"])
        if kind == 5:  # the error body is cut at 300 bytes, in the middle of the key
            await request.read()
            return web.Response(status=500, text="y" * 288 + key + " trailing")
        return await _stream(request, [_token("a"), _token("b"), USAGE, DONE])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", _models)
    return app


def scan_for_key(key: str, blobs: dict[str, bytes]) -> None:
    secret = key.removeprefix("sk-test-")
    windows = {secret[i:i + 8] for i in range(len(secret) - 7)}
    for where, data in blobs.items():
        text = data.decode("utf-8", "replace")
        assert key not in text, f"the API key leaked into {where}"
        hit = next((w for w in windows if w in text), None)
        assert hit is None, f"part of the API key ({hit!r}) leaked into {where}"


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def scrape(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read()
    except OSError:
        return None


def after_run_commands(results: Path, out_dir: Path, env: dict[str, str]) -> dict[str, bytes]:
    """report --json, report --html, gate: their stdout/stderr (the files land in out_dir)."""
    blobs: dict[str, bytes] = {}
    cmds = {
        "report-json": ["report", str(results), "--json", "-o", str(out_dir / "summary.json")],
        "report-html": ["report", str(results), "--html", str(out_dir / "report.html")],
        "gate": ["gate", str(results), "--slo", "ttft_p99<=10s", "--slo", "error_rate<=100%",
                 "--request-slo", "ttft<=10s", "--slo", "goodput_ratio>=0%", "--json"],
    }
    for name, args in cmds.items():
        r = subprocess.run([*CLI, *args], capture_output=True, env=env, timeout=120)
        assert r.returncode in (0, 1), (name, r.stderr)
        blobs[f"{name} stdout"], blobs[f"{name} stderr"] = r.stdout, r.stderr
    assert (out_dir / "summary.json").stat().st_size and (out_dir / "report.html").stat().st_size
    return blobs


# --- the key ---------------------------------------------------------------------------------------

def test_key_from_env_never_leaks_with_faults_metrics_reports_and_gate(tmp_path: Path) -> None:
    key = "sk-test-" + secrets.token_hex(16)
    env = {**os.environ, "OPENAI_API_KEY": key}
    reqs = make_requests(poisson_times(120, 60.0, seed=8), output_tokens=10)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    port = free_port()
    faults = {"http_500": 0.1, "http_429": 0.1, "malformed_json": 0.05, "malformed_sse": 0.05,
              "disconnect_mid_stream": 0.05, "reset_before_first_byte": 0.05}
    with SimProcess("tiny-cpu", faults=faults, seed=9) as sim, \
            open(tmp_path / "run.stdout", "wb") as so, open(tmp_path / "run.stderr", "wb") as se:
        p = subprocess.Popen([*CLI, "run", str(src), "-o", str(out), "--endpoint", sim.url, "--server-family", "sim",
                              "--progress", "plain", "--metrics-port", str(port), "--metrics-linger", "60",
                              "--summary-json", str(tmp_path / "run-summary.json")], stdout=so, stderr=se, env=env)
        try:
            wait_for(lambda: len(read_lines(out)[1]) == len(reqs), 60, "every result line", interval=0.05)
            metrics = wait_for(lambda: (m := scrape(port)) and b"servegen_requests_total" in m and m, 30, "/metrics")
            assert listening_addresses(port) == {"127.0.0.1"}  # the metrics server binds loopback
            p.send_signal(signal.SIGINT)  # ends the linger
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
    _, lines = read_lines(out)
    assert {d["status"] for d in lines} >= {"ok", "http_error", "protocol_error", "disconnect"}
    blobs = after_run_commands(out, tmp_path, env)
    blobs["/metrics"] = metrics
    blobs.update(all_files(tmp_path))
    scan_for_key(key, blobs)


def test_key_from_file_never_leaks_even_when_the_server_echoes_it(tmp_path: Path) -> None:
    key = "sk-test-" + secrets.token_hex(16)
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    reqs = make_requests([0.02 * i for i in range(48)], output_tokens=2)
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "res.jsonl"
    srv = ThreadServer(echo_app())
    try:
        for transport in ("raw", "aiohttp"):
            o = out.with_suffix(f".{transport}.jsonl")
            r = subprocess.run([*CLI, "run", str(src), "-o", str(o), "--endpoint", f"http://127.0.0.1:{srv.port}",
                                "--api-key-file", str(key_file), "--server-family", "openai", "--progress", "plain",
                                "--transport", transport], capture_output=True, env=env, timeout=120)
            assert r.returncode == 0, r.stderr
            _, lines = read_lines(o)
            st = {d["status"] for d in lines}
            assert st == {"ok", "http_error", "protocol_error"}, st
            assert any("***" in (d["error"] or "") for d in lines)  # the echo was there, and masked
            blobs = {f"run {transport} stdout": r.stdout, f"run {transport} stderr": r.stderr}
            blobs.update(after_run_commands(o, tmp_path, env))
            blobs.update({k: v for k, v in all_files(tmp_path).items() if not k.endswith("key.txt")})
            scan_for_key(key, blobs)
    finally:
        srv.stop()


def gateway_app(secret: str) -> tuple[web.Application, dict[str, int]]:
    """A gateway in the Azure OpenAI manner: the key in an `api-key` header, 401 without it (or
    with a Bearer header as well); every fifth answer a 403 that quotes the key back."""
    seen = {"models": 0, "ok": 0, "refused": 0}

    def allowed(request: web.Request) -> bool:
        return request.headers.get("api-key") == secret and "Authorization" not in request.headers

    async def models(request: web.Request) -> web.Response:
        seen["models"] += 1
        return await _models(request) if allowed(request) else web.json_response({"error": "no key"}, status=401)

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not allowed(request):
            seen["refused"] += 1
            return web.json_response({"error": {"message": "missing api-key"}}, status=401)
        seen["ok"] += 1
        if seen["ok"] % 5 == 0:
            return web.json_response({"error": {"message": f"quota exceeded for key {secret}"}}, status=403)
        return await _stream(request, [_token("a"), _token("b"), USAGE, DONE])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app, seen


def test_a_key_written_as_a_header_line_is_sent_as_that_header_and_never_leaks(tmp_path: Path) -> None:
    """`api-key: KEY` in the key file (or OPENAI_API_KEY): gateways that want their own header
    (Azure OpenAI, `x-api-key`) get it on every request, model discovery and both transports
    included, and their echo of the key is masked like a Bearer key's."""
    key = "sk-test-" + secrets.token_hex(16)
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"api-key: {key}\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(20)], output_tokens=2))
    app, seen = gateway_app(key)
    srv = ThreadServer(app)
    try:
        for transport, how in (("raw", "file"), ("aiohttp", "env")):
            o = tmp_path / f"res.{transport}.jsonl"
            args = [*CLI, "run", str(src), "-o", str(o), "--endpoint", f"http://127.0.0.1:{srv.port}",
                    "--server-family", "openai", "--progress", "plain", "--transport", transport]
            r = subprocess.run(args + (["--api-key-file", str(key_file)] if how == "file" else []), capture_output=True,
                               env=env if how == "file" else {**env, "OPENAI_API_KEY": f"api-key: {key}"}, timeout=120)
            assert r.returncode == 0, r.stderr
            _, lines = read_lines(o)
            assert [d["status"] for d in lines].count("ok") == 16, [d["status"] for d in lines]
            refused = [d for d in lines if d["status"] != "ok"]
            assert {(d["status"], d["http_status"]) for d in refused} == {("http_error", 403)}
            assert all("***" in d["error"] for d in refused)  # the echo was there, and masked
            blobs = {f"run {transport} stdout": r.stdout, f"run {transport} stderr": r.stderr}
            blobs.update(after_run_commands(o, tmp_path, env))
            blobs.update({k: v for k, v in all_files(tmp_path).items() if not k.endswith("key.txt")})
            scan_for_key(key, blobs)
        assert seen["refused"] == 0 and seen["models"] == 2  # the model was discovered with the header too
    finally:
        srv.stop()


def test_an_authorization_line_key_is_masked_by_its_token_alone() -> None:
    """`Authorization: Basic CREDENTIALS` as the key: sent as written, and an echo of the
    credentials alone (without the scheme) is masked too."""
    from servegen_load.dispatch.endpoint import auth_headers, scrub

    key = "Authorization: Basic dXNlcjpzZWNyZXRwYXNz"
    assert auth_headers(key) == {"Authorization": "Basic dXNlcjpzZWNyZXRwYXNz"}
    assert auth_headers("sk-plain") == {"Authorization": "Bearer sk-plain"}
    assert "dXNlcjpz" not in scrub('{"error": "bad credentials dXNlcjpzZWNyZXRwYXNz"}', key)


# --- TLS -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """A streaming endpoint on https://127.0.0.1 with a fresh self-signed certificate."""
    d = tmp_path_factory.mktemp("tls")
    cert, pkey = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pkey), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, pkey)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _stream(request, [_token("a"), _token("b"), USAGE, DONE])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", _models)
    srv = ThreadServer(app, ctx)
    yield srv
    srv.stop()


@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_tls_certificates_are_verified_unless_insecure(tls_server: ThreadServer, transport: str,
                                                       tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(10)], output_tokens=2))
    url = f"https://127.0.0.1:{tls_server.port}"
    base = [*CLI, "run", str(src), "--endpoint", url, "--server-family", "openai", "--progress", "off",
            "--transport", transport]
    out = tmp_path / "strict.jsonl"
    r = subprocess.run([*base, "-o", str(out), "--model", "m"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr  # not one request succeeded
    _, lines = read_lines(out)
    assert len(lines) == 10
    for d in lines:
        assert d["status"] == "connect_error" and d["sent"] is None
        assert "CERTIFICATE_VERIFY_FAILED" in d["error"] or "certificate verify failed" in d["error"], d["error"]
    # without --model the model lookup meets the certificate first: one clear line, exit 2
    r = subprocess.run([*base, "-o", str(tmp_path / "x.jsonl")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "certificate" in r.stderr.lower() and r.stderr.count("\n") == 1, r.stderr
    out = tmp_path / "insecure.jsonl"
    r = subprocess.run([*base, "-o", str(out), "--insecure"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _, lines = read_lines(out)
    assert [d["status"] for d in lines] == ["ok"] * 10 and all(d["completion_tokens"] == 2 for d in lines)


# --- bind addresses --------------------------------------------------------------------------------

def test_simulator_binds_loopback_by_default() -> None:
    with SimProcess("tiny-cpu") as sim:  # the simulator `run` starts without --endpoint
        port = int(sim.url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
    p = subprocess.Popen([*CLI, "sim", "--port", "0", "--preset", "tiny-cpu"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        line = p.stdout.readline().decode()  # type: ignore[union-attr]
        assert line.startswith(READY_PREFIX), line
        port = int(line[len(READY_PREFIX):].split()[0].rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        p.terminate()
        p.wait(10)


# --- hostile keys and URL credentials --------------------------------------------------------------

HOSTILE_ENV_KEYS = {
    "newline": "sk-SECRETPART1234\nX-Injected: 1",
    "carriage return": "sk-SECRETPART1234\rX-Injected: 1",
    "non-latin-1": "sk-SECRETPART1234\u20ac",
    "latin-1 accent": "sk-SECRETPART1234\u00e9",
    "tab": "sk-SECRETPART1234\tX",
}
HOSTILE_FILE_KEYS = {
    "carriage return inside": b"sk-SECRETPART1234\rX-Injected: 1\n",
    "a framing header": b"Content-Length: SECRETPART1234\n",  # a key as a header line may not frame the request
    "NUL": b"sk-SECRETPART1234\x00X\n",
    "not UTF-8": b"sk-SECRETPART1234\xff\xfe\n",
}


def _refused_before_traffic(r: subprocess.CompletedProcess[bytes], out: Path, counter: dict[str, int]) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servegen-load: error: "), err
    assert counter["requests"] == 0, "nothing may reach the server"
    assert not out.exists()
    return lines[0]


def _counting_app() -> tuple[web.Application, dict[str, int]]:
    counter = {"requests": 0}

    async def any_request(request: web.Request) -> web.StreamResponse:
        counter["requests"] += 1
        return await _stream(request, [_token("a"), USAGE, DONE])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    return app, counter


def test_hostile_keys_are_one_line_errors_that_never_show_the_key(tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.01 * i for i in range(5)], output_tokens=1))
    out = tmp_path / "res.jsonl"
    app, counter = _counting_app()
    srv = ThreadServer(app)
    base = [*CLI, "run", str(src), "-o", str(out), "--endpoint", f"http://127.0.0.1:{srv.port}", "--model", "m",
            "--server-family", "openai", "--progress", "off"]
    clean = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    try:
        for name, key in HOSTILE_ENV_KEYS.items():
            r = subprocess.run(base, capture_output=True, env={**clean, "OPENAI_API_KEY": key}, timeout=60)
            msg = _refused_before_traffic(r, out, counter)
            assert "OPENAI_API_KEY" in msg and "the key is not shown" in msg, (name, msg)
            assert b"SECRETPART" not in r.stderr + r.stdout, name
        for name, raw in HOSTILE_FILE_KEYS.items():
            kf = tmp_path / "key.txt"
            kf.write_bytes(raw)
            r = subprocess.run([*base, "--api-key-file", str(kf)], capture_output=True, env=clean, timeout=60)
            msg = _refused_before_traffic(r, out, counter)
            assert "--api-key-file" in msg and str(kf) in msg, (name, msg)
            assert b"SECRETPART" not in r.stderr + r.stdout, name
    finally:
        srv.stop()


@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_header_injection_is_impossible_on_every_transport(transport: str, tmp_path: Path) -> None:
    """The engine refuses a key that is not one header value, whoever built its config."""
    from servegen_load.dispatch.runner import RunConfig, run
    from servegen_load.errors import InputError

    app, counter = _counting_app()
    srv = ThreadServer(app)
    try:
        cfg = RunConfig(endpoint=f"http://127.0.0.1:{srv.port}", model="m", output=tmp_path / "res.jsonl",
                        api_key="sk-SECRETPART1234\r\nX-Injected: 1", transport=transport, progress="off")
        with pytest.raises(InputError) as e:
            run(make_requests([0.0, 0.01]), cfg)
        assert "line break" in str(e.value) and "SECRETPART" not in str(e.value)
        assert counter["requests"] == 0
    finally:
        srv.stop()


def test_url_credentials_are_refused_and_never_shown(tmp_path: Path) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.01 * i for i in range(5)], output_tokens=1))
    out = tmp_path / "res.jsonl"
    app, counter = _counting_app()
    srv = ThreadServer(app)
    try:
        for workers in ([], ["--workers", "2"]):
            r = subprocess.run([*CLI, "run", str(src), "-o", str(out), "--progress", "off", *workers,
                                "--endpoint", f"http://alice:hunter2SECRET@127.0.0.1:{srv.port}"],
                               capture_output=True, timeout=60)
            msg = _refused_before_traffic(r, out, counter)
            assert "--endpoint" in msg and "credentials in the URL" in msg and "http://***@127.0.0.1" in msg
            assert b"hunter2SECRET" not in r.stderr + r.stdout
    finally:
        srv.stop()


def escaped_echo_app() -> web.Application:
    """Error answers quoting the key JSON-escaped (`\\/`, `\\u00XX`) or URL-encoded, never verbatim."""
    n = {"i": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        await request.read()
        i = n["i"] = n["i"] + 1
        if i % 4 == 1:  # JSON with every non-alphanumeric character escaped as \u00XX
            esc = "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in key)
            return web.Response(status=401, text='{"error": {"message": "bad key ' + esc + '"}}')
        if i % 4 == 2:  # the usual JSON escaping of "/"
            return web.Response(status=403, text='{"error": "bad key ' + key.replace("/", "\\/") + '"}')
        if i % 4 == 3:  # a URL the server logged
            from urllib.parse import quote

            return web.Response(status=400, text=f"see https://gw.example/denied?key={quote(key, safe='')}")
        return await _stream(request, [_token("a"), USAGE, DONE])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", _models)
    return app


def test_escaped_echoes_of_the_key_are_masked(tmp_path: Path) -> None:
    key = "sk-test-" + secrets.token_hex(8) + "/+" + secrets.token_hex(8) + "=="
    env = {**os.environ, "OPENAI_API_KEY": key}
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(16)], output_tokens=1))
    out = tmp_path / "res.jsonl"
    srv = ThreadServer(escaped_echo_app())
    try:
        r = subprocess.run([*CLI, "run", str(src), "-o", str(out), "--endpoint", f"http://127.0.0.1:{srv.port}",
                            "--server-family", "openai", "--progress", "off"], capture_output=True, env=env,
                           timeout=120)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    _, lines = read_lines(out)
    assert sorted(d["status"] for d in lines) == ["http_error"] * 12 + ["ok"] * 4
    assert all("***" in d["error"] for d in lines if d["status"] == "http_error")  # echoed, and masked
    blobs = {"run stdout": r.stdout, "run stderr": r.stderr, **all_files(tmp_path)}
    for part in key.removeprefix("sk-test-").replace("/", " ").replace("+", " ").replace("=", " ").split():
        for where, data in blobs.items():
            assert part[:8].encode() not in data, f"part of the key leaked into {where}"
