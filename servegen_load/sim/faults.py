"""Fault injection: at most one fault per request, drawn from a seeded RNG in arrival order.

``--fault NAME=RATE`` (repeatable) gives each fault a probability; the rates must sum to at most
1 and the rest of the requests are served normally. Each fault's observable symptom:

=========================  ===================================================================
http_500 / http_503        an error status with an OpenAI-style JSON error body, at once
http_429                   status 429 with ``Retry-After: 1``
reset_before_first_byte    the request is read, then the TCP connection is reset (RST), no bytes
disconnect_mid_stream      after `at` tokens have been streamed the connection is reset
stall_resume               after `at` tokens no chunk for ``stall_seconds``, then the rest
stall_hang                 after `at` tokens nothing more; the connection stays open until the
                           client gives up (or ``hang_seconds`` pass)
malformed_sse              after token `at` a garbage line that is not an SSE field
malformed_json             after token `at` a ``data:`` line whose JSON is broken
no_done                    the stream ends (cleanly) without ``data: [DONE]``
slow_accept                ``slow_accept_seconds`` pass before any response byte, then normal
=========================  ===================================================================

`at` is drawn uniformly from 1..n-1 for an n-token output (1 when n == 1). Non-streaming
requests get the closest equivalent: the mid-stream resets and ``no_done`` cut the body short,
the malformed faults send a broken JSON body, the stalls delay or hold the response.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import InputError

FAULTS = (
    "http_500", "http_503", "http_429", "reset_before_first_byte", "disconnect_mid_stream",
    "stall_resume", "stall_hang", "malformed_sse", "malformed_json", "no_done", "slow_accept",
)
HTTP_FAULTS = {"http_500": 500, "http_503": 503, "http_429": 429}


def parse_faults(items: list[str] | None) -> dict[str, float]:
    """``["http_500=0.1", ...]`` -> {name: rate}; unknown names or bad rates are InputErrors."""
    rates: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise InputError(f"expected NAME=RATE, got {item!r}", field="--fault")
        if name not in FAULTS:
            raise InputError(f"unknown fault {name!r}; expected one of {', '.join(FAULTS)}", field="--fault")
        try:
            rate = float(value)
        except ValueError:
            raise InputError(f"{name}: rate must be a number in [0, 1], got {value!r}", field="--fault") from None
        if not 0.0 <= rate <= 1.0:
            raise InputError(f"{name}: rate must be in [0, 1], got {rate}", field="--fault")
        rates[name] = rates.get(name, 0.0) + rate
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise InputError(f"fault rates sum to {total:g}; at most one fault per request, so the sum must be <= 1",
                         field="--fault")
    return rates


@dataclass(slots=True)
class Fault:
    name: str
    at: int = 1
    """Token index after which a mid-stream fault strikes (1-based)."""


@dataclass
class FaultPlan:
    """Draws each request's fault and counts what it injected."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._table = [(n, r) for n, r in self.rates.items() if r > 0]

    def draw(self, output_tokens: int) -> Fault | None:
        """This request's fault (counted as injected), or None."""
        if not self._table:
            return None
        u = self._rng.random()
        at = 1 + self._rng.randrange(max(1, output_tokens - 1))
        acc = 0.0
        for name, rate in self._table:
            acc += rate
            if u < acc:
                self.injected[name] += 1
                return Fault(name, at)
        return None
