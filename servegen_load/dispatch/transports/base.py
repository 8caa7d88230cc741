"""The interface between the scheduler (runner) and a transport that carries flights.

A transport sends a `Flight` when told (`submit`, synchronous: it must write now or start
connecting now), reads the stream into it (`stream.feed_sse`), and hands it back exactly once
through `hooks.on_done(flight)` with `status` set, whatever happened. Timeouts are enforced by
`sweep(now)`, which the runner calls a few times a second: a per-request timer would cost more
than a scan at thousands of requests per second, and timeouts are seconds long anyway.
"""

from __future__ import annotations

from typing import Protocol

from ..stream import Flight


class Hooks(Protocol):
    """What a transport calls back into: the scheduler's clock check and the completion sink."""

    next_due: float  # absolute perf_counter() of the next scheduled send (inf when none)

    def tick(self, now: float) -> None:
        """Send everything due at `now` (transports call it when they wake anyway)."""

    def on_done(self, f: Flight) -> None:
        """Take a finished flight (status set)."""


class Transport(Protocol):
    name: str
    spare: int  # idle connections kept open ahead of need (0: opened only when a request needs one)

    def wire(self, body: bytes) -> bytes:
        """What `Flight.wire` must hold for this transport, built ahead of the send time."""

    async def open(self) -> None: ...

    async def prewarm(self, n: int) -> int:
        """Open about `n` connections ahead of the start (0 where the transport cannot)."""

    def submit(self, f: Flight) -> None: ...

    def sweep(self, now: float) -> None:
        """End flights past a timeout (status `timeout`)."""

    def end_flight(self, f: Flight, status: str, error: str) -> None:
        """End one flight now with this status (its connection dropped); it is handed back once."""

    def cancel_all(self, reason: str) -> None:
        """End every flight now (status `cancelled`, timings kept)."""

    async def close(self) -> None: ...
