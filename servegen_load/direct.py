"""HTTP requests that go where the load goes: straight to the address, never through a proxy.

Why: urllib sends every request through the environment's proxy (`http_proxy`, `HTTPS_PROXY`),
127.0.0.1 included unless `no_proxy` lists it, and many corporate laptops and CI runners set a
proxy without it. The load itself (both transports) never takes a proxy; a side request that did
would fail or reach another server (the simulator's stats, the workers' metrics, the server's
limits), and would hand the proxy the API key.
"""

from __future__ import annotations

import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(req: str | urllib.request.Request, timeout: float) -> Any:
    """`urllib.request.urlopen` without proxies (a context manager, as urlopen's answer is)."""
    return _OPENER.open(req, timeout=timeout)
