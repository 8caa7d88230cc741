"""Closed-loop turns inside open-loop sessions: turn k+1 starts `think_time` after turn k started,
and never before turn k's response ended.

Sessions arrive open loop: a session's first turn (turn 0) is scheduled like any request, at its
`t`, whatever the server does. Think time has one definition everywhere (`fit` measures it,
`generate` writes it, this module keeps it): from a turn's start to the next turn's start, as a
log records arrivals. Inside a session the user also waits for the answer, so turn k+1 is due at

    due(k+1) = max(start(k) + think_time(k+1), end(k))

where start(k) is when turn k was due to leave (its scheduled time, or its own due time for a
released turn) and end(k) is when turn k's response was complete (or failed: the user then goes
on anyway, so a failed turn does not end its session). With a server faster than the think
times, the turns leave exactly at the requests file's times t(k) + think_time(k+1); a slow
server stretches the session as a real user's would. When the runner pops turn k+1 (`hold`), it
waits here: in its session's `waiting` list until turn k ends, then in a heap of due times
served by a timer of its own (`clock.make_timer`, µs precision), and goes out through
`runner.send_now`. Its `scheduled` time (the flight's `t_rel`) becomes due(k+1), so send lag
means the same for every request, and nothing here ever touches the schedule of first turns.

A turn whose predecessor never ran in this run (a requests file cut by `--duration`, a shard
without it) is sent at its own time: nothing would ever release it. Session states are dropped
oldest first beyond `MAX_STATES`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from .clock import make_timer
from .stream import Flight

MAX_STATES = 200_000


@dataclass(slots=True)
class _State:
    turn: int                     # the latest turn sent or released
    start: float                  # perf_counter() time that turn was due to leave
    ended: float | None = None    # perf_counter() when that turn's response ended
    waiting: list[Flight] = field(default_factory=list)  # later turns, in order, each behind the previous


class SessionGate:
    """The session state of one run; `runner` provides `loop`, `t0` and `send_now(flight)`."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.states: OrderedDict[str, _State] = OrderedDict()
        self.heap: list[tuple[float, int, Flight]] = []
        self._seq = itertools.count()
        self.n_parked = 0
        self.timer: Any = None
        self.released = 0

    @property
    def pending(self) -> int:
        """Turns held here (the run is not over while any is)."""
        return self.n_parked + len(self.heap)

    def hold(self, f: Flight) -> bool:
        """Called for each session flight the runner pops when due: True if it must wait here."""
        req = f.req
        s: str = req.session  # type: ignore[assignment]
        k = req.turn or 0
        st = self.states.get(s)
        if st is not None and st.waiting:  # behind turns already waiting: keep the order
            st.waiting.append(f)
            self.n_parked += 1
            return True
        if k == 0 or st is None or st.turn < k - 1:  # a first turn, or its predecessor never ran here
            self._set(s, _State(k, self.runner.t0 + f.t_rel))
            return False
        if st.turn != k - 1:  # a turn seen twice or out of order: not ours to pace
            return False
        if st.ended is None:
            st.waiting.append(f)
            self.n_parked += 1
        else:
            self._release(st, f, st.ended)
        return True

    def done(self, f: Flight) -> None:
        """Called for each finished session flight: its session's next turn may go."""
        st = self.states.get(f.req.session)  # type: ignore[arg-type]
        if st is None or st.turn != (f.req.turn or 0) or st.ended is not None:
            return
        st.ended = perf_counter()
        if st.waiting:
            g = st.waiting.pop(0)
            self.n_parked -= 1
            self._release(st, g, st.ended)

    def _set(self, s: str, st: _State) -> None:
        states = self.states
        states[s] = st
        states.move_to_end(s)
        if len(states) > MAX_STATES:
            _, old = states.popitem(last=False)
            for g in old.waiting:  # never strand a turn: it goes at once
                self.n_parked -= 1
                self.runner.send_now(g)

    def _release(self, st: _State, f: Flight, ended: float) -> None:
        r = self.runner
        due = max(ended, st.start + (f.req.think_time or 0.0))
        st.turn, st.start, st.ended = f.req.turn or 0, due, None
        f.t_rel = due - r.t0
        heapq.heappush(self.heap, (due, next(self._seq), f))
        if self.timer is None:
            self.timer = make_timer(r.loop, self._on_timer)
        if self.heap[0][2] is f:
            self.timer.arm(due)

    def _on_timer(self) -> None:
        heap = self.heap
        now = perf_counter()
        send = self.runner.send_now
        while heap and heap[0][0] <= now:
            _, _, f = heapq.heappop(heap)
            self.released += 1
            send(f)
        if heap:
            self.timer.arm(heap[0][0])

    def drain(self) -> list[Flight]:
        """Stop: every turn still held, for the runner to record as not sent."""
        out = [f for _, _, f in sorted(self.heap)]
        self.heap.clear()
        for st in self.states.values():
            out.extend(st.waiting)
            st.waiting.clear()
        self.n_parked = 0
        self.close()
        return out

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
