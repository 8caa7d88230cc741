"""The ready barrier: processes of one run share t = 0 only once every one of them is set up.

Why: a start instant fixed before the processes start (now + a guessed lead) is a bet on how long
start-up takes. On a loaded machine interpreter start, imports, opening the shard and opening
connections took 1.5-4 s longer than the 5 s guessed, so whole shards started late and their
requests went out in a burst. With the barrier nobody guesses: each process does all its start-up,
then says it is ready and waits; when all are ready the coordinator picks ONE instant, now +
`MARGIN_S` (enough to deliver the instant and take the last steps before the clock starts:
results header, a collection), and gives it to all of them.

Protocol of one process (`run --start-barrier`, what `run --workers` starts its children with, and
what any orchestrator that holds the processes' stdin and stdout can drive): when set up it writes
the line `ready` to stdout, then reads one line from stdin, t = 0 as unix seconds. End of input
instead means the coordinator gave up (a signal, another process failed): the process ends as
interrupted, having sent nothing. `run --ray` follows the same order through actor calls
(`ray_actors`: `prepare` is the ready report, `run` carries the instant).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import stat
import subprocess
import sys
import time
from collections.abc import Sequence

from ..errors import InputError

READY = b"ready"
MARGIN_S = 0.5  # from the last ready report to t = 0
READY_TIMEOUT_S = 300.0


class StartWithdrawn(Exception):
    """The coordinator closed the barrier without a start instant: stop as if interrupted."""


def choose_start(margin: float = MARGIN_S) -> float:
    """The one shared t = 0 (unix seconds), picked when every process is ready."""
    return time.time() + margin


def parse_start(line: bytes) -> float:
    """The start instant from the coordinator's line (end of input: `StartWithdrawn`)."""
    if not line:
        raise StartWithdrawn
    try:
        t = float(line.decode("ascii", "replace").strip())
    except ValueError:
        raise InputError(f"expected t = 0 as unix seconds on stdin, got {line[:40]!r}", field="--start-barrier") from None
    if not 0 < t < 1e11:
        raise InputError(f"expected t = 0 as unix seconds on stdin, got {t:g}", field="--start-barrier")
    return t


async def stdin_gate() -> float:
    """The process side: `ready` on stdout, then t = 0 from one line of stdin (the event loop
    stays free meanwhile, so a signal still interrupts)."""
    out = sys.stdout.buffer
    out.write(READY + b"\n")
    out.flush()
    fd = sys.stdin.fileno()
    if not (stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)):
        return parse_start(sys.stdin.buffer.readline())  # a file, /dev/null or a terminal: read it plainly
    pipe = open(os.dup(fd), "rb", buffering=0)  # noqa: SIM115 (the transport closes it)
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return parse_start(await reader.readline())
    finally:
        transport.close()


def await_ready(procs: Sequence[subprocess.Popen[bytes]], stop: list[int],
                timeout: float = READY_TIMEOUT_S) -> set[int]:
    """The coordinator side: wait until every process wrote `ready` on its stdout (a pipe), one
    exited, a signal was recorded in `stop`, or `timeout`; the indices of the ready ones."""
    ready: set[int] = set()
    buffers: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, p in enumerate(procs):
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, i)
        while len(ready) < len(procs) and not stop and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                i = key.data
                chunk = os.read(key.fd, 4096)
                if not chunk:  # the process ended before it was ready
                    sel.unregister(key.fileobj)
                    return ready
                buffers[i] = buffers.get(i, b"") + chunk
                if READY + b"\n" in buffers[i]:
                    ready.add(i)
                    sel.unregister(key.fileobj)
    return ready


def release(procs: Sequence[subprocess.Popen[bytes]], start: float | None) -> None:
    """Give every process t = 0 (None: withdraw the start); their stdout is drained from now on
    by `drain` so a process printing its summary never blocks on a full pipe."""
    line = b"" if start is None else f"{start:.6f}\n".encode()
    for p in procs:
        if p.stdin is None:
            continue
        with contextlib.suppress(OSError):
            if line:
                p.stdin.write(line)
            p.stdin.close()
        if p.stdout is not None:
            os.set_blocking(p.stdout.fileno(), False)


def drain(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Discard what the processes wrote to stdout since the last call (their own summaries: the
    coordinator prints the merged one)."""
    for p in procs:
        if p.stdout is None or p.stdout.closed:
            continue
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(p.stdout.fileno(), 1 << 16):
                pass
