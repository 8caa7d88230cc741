"""`SimProcess`: the simulator in a child process, so it runs on its own core and event loop,
never on the load generator's.

    with SimProcess("tiny-cpu", params={"max_num_seqs": 8}, faults={"http_500": 0.1}) as sim:
        ...  # send requests to sim.url
        print(sim.stats()["faults_injected"])

The child is ``python -m servegen_load.sim --port 0 ...``; the parent waits for the ready line it
prints (``servegen-load sim listening on http://127.0.0.1:PORT ...``) and reads the URL from it.
Arguments are validated in the parent first, so a bad value raises `InputError` here.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..direct import urlopen
from ..errors import ServegenError
from .config import build_config, config_args
from .presets import DEFAULT_PRESET
from .server import READY_PREFIX


class SimStartError(ServegenError):
    """The simulator process died or stayed silent instead of printing its ready line."""


class SimProcess:
    """A simulator child process: `.url`, `.stats()`, `.stop()`; a context manager."""

    def __init__(self, preset: str = DEFAULT_PRESET, params: dict[str, Any] | None = None,
                 faults: dict[str, float] | None = None, *, seed: int = 0, time_scale: float = 1.0,
                 host: str = "127.0.0.1", port: int = 0, stall_seconds: float = 5.0,
                 slow_accept_seconds: float = 2.0, hang_seconds: float = 600.0,
                 startup_timeout: float = 30.0, flags: tuple[str, str] = ("--param", "--time-scale")) -> None:
        self.params = dict(params or {})
        self.config = build_config(preset, self.params, faults, seed=seed, time_scale=time_scale, host=host,
                                   port=port, stall_seconds=stall_seconds,
                                   slow_accept_seconds=slow_accept_seconds, hang_seconds=hang_seconds, flags=flags)
        self.startup_timeout = startup_timeout
        self.url: str = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> SimProcess:
        if self.proc is not None:
            return self
        cmd = [sys.executable, "-m", "servegen_load.sim", "--exit-with-parent",
               *config_args(self.config, self.params)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, start_new_session=True)
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + self.startup_timeout
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimStartError(f"simulator printed no ready line within {self.startup_timeout:g} s"
                                        f"{self._stderr_tail()}")
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise SimStartError(f"simulator exited with code {self.proc.returncode}{self._stderr_tail()}")
                buf += chunk
        finally:
            sel.close()
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        if not line.startswith(READY_PREFIX):
            raise SimStartError(f"unexpected first line from the simulator: {line!r}")
        return line[len(READY_PREFIX):].split()[0]

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
            if text:
                return ": " + text.splitlines()[-1]
        return ""

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        """GET a JSON endpoint of the simulator."""
        with urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        """The simulator's /sim/stats (requests, faults injected, engine counters, saturation rate)."""
        return self.get("/sim/stats")

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate the child (SIGTERM, then SIGKILL after `timeout`); returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return proc.returncode

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
