"""Side requests (the simulator's stats, the workers' metrics, the server's limits) go straight to
their address, as the load does, whatever proxy the environment names.

urllib sends 127.0.0.1 through `http_proxy` unless `no_proxy` lists it, and many laptops and CI
runners set a proxy without it. The proxy here is a port nobody listens on: a request that took it
would be refused.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from servegen_load.calibrate.probe import server_limits
from servegen_load.run.metrics_proxy import WorkerMetrics
from servegen_load.sim.process import SimProcess


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with socket.socket() as s:  # a port that was free: nothing listens there
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # urllib reads the proxies when it builds its shared opener, on the first `urlopen` of the
    # process: as in a fresh command, not as left by earlier tests
    monkeypatch.setattr(urllib.request, "_opener", None)
    yield proxy


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess() as s:
        yield s


def test_the_proxy_would_refuse(dead_proxy: str, sim: SimProcess) -> None:
    """The premise: plain urllib takes the proxy for 127.0.0.1 here, and fails."""
    with pytest.raises(OSError):
        urllib.request.urlopen(sim.url + "/health", timeout=5)


def test_simulator_stats_ignore_the_proxy(dead_proxy: str, sim: SimProcess) -> None:
    assert "saturation_rate" in sim.stats()


def test_server_limits_ignore_the_proxy(dead_proxy: str, sim: SimProcess) -> None:
    assert server_limits(sim.url).get("max_model_len", 0) > 0


def test_worker_metrics_ignore_the_proxy(dead_proxy: str, sim: SimProcess, tmp_path) -> None:
    port = int(sim.url.rsplit(":", 1)[1])
    text = WorkerMetrics([port], [tmp_path / "never-written.prom"], timeout=5).text()
    assert "vllm:" in text, text[:300]
