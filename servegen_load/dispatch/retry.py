"""Opt-in retries (`run --retries N`): off by default, because a load generator that retries
changes the load it claims to send.

What is retried, and only that: a failure before any token arrived that the server asked us to
repeat or that never reached it:

- `http_error` with HTTP 429 (rate limited) or 503 (unavailable);
- `connect_error` (connection refused, TLS or DNS failure...; never a connect *timeout*);
- a `disconnect` of a reused keep-alive connection closed cleanly before any byte of answer
  (`Flight.stale`): usually the server's idle timeout racing our write, but it may have read the
  request, so only the user's `--retries` may re-send it.

Never a timeout, another disconnect, a protocol error or other HTTP status: the server may have
done the work, and repeating it would double-count load.

When: after `Retry-After` seconds when the answer carried one (seconds or an HTTP date), else
after an exponential back-off of `BACKOFF_S * 2**k` for the k-th retry (0.5 s, 1 s, 2 s...);
either way capped at `--retry-max-wait`. The wait is a loop timer of its own: the open-loop
schedule of every other request is untouched (they are never queued behind a retry). A request
waiting to retry keeps its `--max-concurrency` slot.

What the result says: `retries` = re-sends of the request (no transport re-sends anything by
itself); `attempts` = times it was written to a connection (a connect failure writes nothing); `status`,
`error`, `http_status` of the last attempt; `sent` = when the first attempt was sent, so send
lag stays the dispatcher's own lateness and TTFT/E2E of a retried request include the failed
attempts and the waits (what a client with retries experiences). A run stopped (a signal, the
endpoint refusing it) ends a request waiting to retry as `cancelled`, its last failure in `error`:
its outcome was never decided, and a gate must not take the run as whole (it did, with every line
an `http_error` 429 and `retries` 0).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from typing import Any

from .stream import Flight

RETRYABLE_HTTP = frozenset((429, 503))
BACKOFF_S = 0.5
DEFAULT_MAX_WAIT_S = 10.0


_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_after_seconds(value: str | None, now_unix: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    v = value.strip(" \t")
    if _SECONDS.fullmatch(v):  # RFC 9110 delay-seconds (digits; a fraction tolerated): not "1_000", "1e3"
        s = float(v)
    else:
        try:
            when = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        s = when.timestamp() - (time.time() if now_unix is None else now_unix)
    if not math.isfinite(s):
        return None
    return max(0.0, s)


def retryable(f: Flight) -> bool:
    """A failure before any token that the server asked to repeat, or that never reached it."""
    if f.first_token is not None:
        return False
    if f.status == "http_error":
        return f.http_status in RETRYABLE_HTTP
    return f.status == "connect_error" or (f.status == "disconnect" and f.stale)


class Retrier:
    """Holds back retryable failures from the runner and re-submits them after their wait.

    The runner calls `take(f)` first thing in `on_done`: True means "mine, not finished yet".
    `flush()` (on stop) hands every waiting flight back with its last failure.
    """

    def __init__(self, runner: Any, max_retries: int, max_wait: float = DEFAULT_MAX_WAIT_S) -> None:
        self.runner = runner
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.closed = False
        self.total = 0  # re-sends made by this policy
        # flight -> (retries so far, first attempt's send (or submit) time, was any attempt sent)
        self._tries: dict[Flight, tuple[int, float | None, bool]] = {}
        self._waiting: dict[Flight, asyncio.TimerHandle] = {}

    def delay(self, f: Flight, k: int) -> float:
        """Seconds before the k-th retry (0-based) of `f`."""
        ra = retry_after_seconds(f.retry_after)
        d = ra if ra is not None else BACKOFF_S * (1 << min(k, 30))
        return min(d, self.max_wait)

    def take(self, f: Flight) -> bool:
        """Called with every finished flight; True when it was set aside for a retry."""
        entry = self._tries.pop(f, None)
        if entry is None:
            if self.closed or not retryable(f):
                return False  # the usual case: one dict lookup and out
            first_sent = f.sent is not None
            entry = (0, f.sent if first_sent else _submitted(f), first_sent)
        tries, anchor, any_sent = entry
        any_sent = any_sent or f.sent is not None
        if not self.closed and tries < self.max_retries and retryable(f):
            self._tries[f] = (tries + 1, anchor, any_sent)
            self._waiting[f] = self.runner.loop.call_later(self.delay(f, tries), self._resend, f)
            return True
        if any_sent and anchor is not None:  # timings from the first attempt (see the module doc)
            f.sent = anchor
        return False

    def _resend(self, f: Flight) -> None:
        del self._waiting[f]
        if self.closed or self.runner.stopping:
            self._cancel(f, "the run stopped")
            return
        # A fresh attempt: nothing of the failed one was a token (see `retryable`).
        f.status = f.error = f.retry_after = None
        f.http_status = None
        f.sent = None
        f.finished = f.done = f.stale = False
        f.sse_buf = b""
        f.conn = None
        f.retries += 1
        self.total += 1
        self.runner.transport.submit(f)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def flush(self, reason: str) -> None:
        """Stop retrying; every flight waiting for its retry ends now, `cancelled` (module doc)."""
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for f, handle in waiting.items():
            handle.cancel()
            self._cancel(f, reason)

    def _cancel(self, f: Flight, reason: str) -> None:
        f.status, f.error = "cancelled", f"{reason} while waiting to retry (last attempt: {f.error})"
        self.runner.on_done(f)


def _submitted(f: Flight) -> float | None:
    """When the transport got `f` (dispatch instant + concurrency wait): a first attempt that
    never connected has no `sent`, and this stands in for it."""
    if f.dispatched is None:
        return None
    return f.dispatched + (f.queue_time or 0.0)
