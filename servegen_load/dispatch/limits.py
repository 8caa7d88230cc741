"""Resource limits of one run: timeouts, memory caps per request and response, and the open-file
limit thousands of streams need."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `connect`: TCP (+TLS) set-up; `first_token`: from send to the first token chunk;
    `total`: from send to the end of the response; `idle`: from one token chunk to the next (a
    stream that stalls after its first token, fault `stall_hang`, ends long before `total`).
    A request over any of them ends as `timeout`, with the timings it had."""

    connect: float = 10.0
    first_token: float = 300.0
    total: float = 1800.0
    idle: float = 120.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_token", "total", "idle"):
            v = getattr(self, name)
            if not v > 0:
                raise InputError(f"expected a timeout > 0 seconds, got {v}", field=f"--timeout-{name.replace('_', '-')}")

    def late(self, flights: Iterable[Any], now: float) -> list[tuple[Any, str]]:
        """The flights (sent, not finished) over a timeout at `now`, each with its error text.

        Both transports call this from `sweep`, a few times a second: a scan costs less than a
        timer per request, and timeouts are seconds long.
        """
        ft, total, idle = self.first_token, self.total, self.idle
        late = []
        for f in flights:
            s = f.sent
            if s is None:
                continue
            if f.first_token is None and now - s > ft:
                late.append((f, f"no first token within {ft:g}s"))
            elif now - s > total:
                late.append((f, f"response not complete within {total:g}s"))
            elif f.done:
                if now - f.done_at > idle:
                    late.append((f, f"response did not end within {idle:g}s of its data: [DONE]"))
            elif (last := f.last_token) is not None and now - last > idle:
                late.append((f, f"no token for {idle:g}s after the last one (stalled stream)"))
        return late


MAX_EVENT_BYTES = 4 << 20
MAX_PROMPT_TOKENS = 1 << 21
MAX_REQUEST_BYTES = 256 << 20
CHUNKS_PER_TOKEN = 8  # token chunks per token asked before an answer is cut (`Limits.over_chunks`)
MIN_CHUNK_CAP = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """Memory caps, so one hostile answer or one absurd request line cannot take the machine.

    `max_event_bytes` (`--max-event-bytes`): one SSE event of a response; past it the request
    ends as `protocol_error` and its connection is dropped (a token chunk is about 200 bytes; a
    response's other bytes are never held, and an error answer keeps its first 2 KiB).
    `max_prompt_tokens` (`--max-prompt-tokens`): input + media tokens of one request, checked
    before its body is built (a body costs up to ~90 bytes per token while built: one line asking
    for 2^31 tokens grew to 22 GB). `max_request_bytes`: the built body. A request over either is
    never sent: its line says `client_error` with the cap it broke, and the run goes on.
    """

    max_event_bytes: int = MAX_EVENT_BYTES
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_request_bytes: int = MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        for name in ("max_event_bytes", "max_prompt_tokens", "max_request_bytes"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise InputError(f"expected a positive integer, got {v!r}", field=f"--{name.replace('_', '-')}")

    @staticmethod
    def over_chunks(flights: Iterable[Any]) -> list[tuple[Any, str]]:
        """The flights whose answer sent far more token chunks than the tokens asked for (each
        chunk carries one token or more; `CHUNKS_PER_TOKEN` per token allows for a server that
        splits characters, `MIN_CHUNK_CAP` for one that ignores max_tokens a little): a stream
        of tiny chunks must not hold a timestamp each until the machine runs out of memory (one
        such answer gathered 1.1 million in 3 s). Both transports call this from `sweep`."""
        over = []
        for f in flights:
            n = len(f.chunks)
            if n > MIN_CHUNK_CAP and n > CHUNKS_PER_TOKEN * f.req.output_tokens:
                over.append((f, f"{n} token chunks for {f.req.output_tokens} tokens asked: "
                                f"the answer does not stop (over {CHUNKS_PER_TOKEN} chunks per token)"))
        return over

    def prompt_excess(self, req: Any) -> str | None:
        """Why `req` must not be sent (its prompt is over the cap), else None."""
        n = req.input_tokens + sum(req.images or ()) + sum(req.audio or ()) + sum(req.video or ())
        if n > self.max_prompt_tokens:
            return f"prompt of {n} tokens (input + media) over --max-prompt-tokens {self.max_prompt_tokens}"
        return None


NOFILE_WARN_BELOW = 1024 + 64  # in flight at once before a run without --max-concurrency may hit EMFILE


def raise_nofile_limit(needed: int | None) -> int:
    """Raise the soft open-file limit as far as the system allows; returns it. With `needed` (a
    --max-concurrency's sockets) above what it allows: one line, exit 2.

    Every in-flight stream holds a socket, and the usual soft limit (1024 on Linux, 256 on macOS)
    would make an open loop at a few thousand in-flight requests fail with EMFILE half-way through
    a run. The hard limit is tried first; macOS says it is unlimited but refuses more than
    OPEN_MAX (10240), hence the smaller steps. Without --max-concurrency nobody knows the need in
    advance (rate x latency), so the caller only warns when the limit is low.
    """
    try:
        import resource
    except ImportError:  # not POSIX: nothing to raise, nothing to check
        return needed or NOFILE_WARN_BELOW
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != inf:
        for want in (hard, 1 << 20, 1 << 16, 10240, 4096):
            if want == inf or want <= soft or (hard != inf and want > hard):
                continue
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            except (ValueError, OSError):
                continue
            break
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == inf:
        return 1 << 30
    if needed is not None and soft < needed:
        raise InputError(
            f"the open-file limit is {soft}, below the {needed} this run needs (one socket per "
            f"in-flight request); raise it, e.g. `ulimit -n {needed}`, or lower --max-concurrency")
    return int(soft)
