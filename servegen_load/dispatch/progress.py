"""The live progress line: rich on a terminal (~2 updates/s), plain lines every ~5 s otherwise.

Written to stderr so stdout stays the summary (pipe-able); the runner calls `update` from its
low-frequency housekeeping task, never from the hot path.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Literal

Mode = Literal["auto", "live", "plain", "off"]


@dataclass(slots=True)
class Snapshot:
    elapsed: float
    total: float | None
    sent: int
    in_flight: int
    queued: int
    done: int
    errors: int
    ttft_p50: float | None
    ttft_p99: float | None
    lag_p99: float | None


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}ms"


def format_line(s: Snapshot) -> str:
    total = f"/{s.total:.0f}s" if s.total else "s"
    q = f" queued {s.queued}" if s.queued else ""
    return (f"{s.elapsed:6.1f}{total}  sent {s.sent}  in flight {s.in_flight}{q}  done {s.done}  "
            f"errors {s.errors}  TTFT p50 {_ms(s.ttft_p50)} p99 {_ms(s.ttft_p99)}  lag p99 {_ms(s.lag_p99)}")


class Progress:
    PLAIN_EVERY = 5.0

    def __init__(self, mode: Mode = "auto") -> None:
        if mode == "auto":
            mode = "live" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self._live = None
        self._last_plain = 0.0
        if mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), auto_refresh=False, transient=False)
            self._live.start()

    def due(self) -> bool:
        """Whether a line would be shown now: the runner builds a snapshot only then."""
        if self.mode == "off":
            return False
        return self._live is not None or time.monotonic() - self._last_plain >= self.PLAIN_EVERY

    def update(self, s: Snapshot, final: bool = False) -> None:
        if self.mode == "off":
            return
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(format_line(s)), refresh=True)
            return
        now = time.monotonic()
        if final or now - self._last_plain >= self.PLAIN_EVERY:
            self._last_plain = now
            print(format_line(s), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
