"""A fitted pool's session model, read back from its tables: what `fit` and `inspect` print and
what `workload.conversation` generates from.

A pool fitted from logs with a session column holds, per client, table ids (`session_index`)
of the fields in `meta.session_fields` (see `workload.fit`): turns per session, think time
(arrival to arrival, s), new input tokens per later turn, and (pools fitted since the sessions
fix) input tokens of first turns and of requests outside sessions; `session_share` is the share
of the client's requests that carry a session id; `meta.session_history` says whether the
log's inputs already contained the history (`included`), the history without reasoning
(`answers`: reasoning models' APIs do not send reasoning back) or were each turn's new tokens only
(`excluded`). Older pools have only the first three fields: the others are then None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .distributions import LengthTable
from .pool import ClientPool

HISTORIES = ("included", "answers", "excluded")


@dataclass(frozen=True)
class ClientSessionModel:
    """One client's fitted session tables (None: not fitted)."""

    share: float
    turns: LengthTable | None
    think_time: LengthTable | None
    new_tokens: LengthTable | None
    first_input: LengthTable | None
    single_input: LengthTable | None
    history: str


def history_of(pool: ClientPool) -> str:
    """`included`, `answers` or `excluded` (a pool without the key: `included`, the old generator's meaning)."""
    h = pool.meta.get("session_history")
    return h if h in HISTORIES else "included"


def client_model(pool: ClientPool, client: int) -> ClientSessionModel | None:
    """The client's session model, None when the pool has none for it."""
    si = pool.extra.get("session_index")
    if si is None or si.ndim != 2 or not 0 <= client < si.shape[0]:
        return None
    row = si[client]
    if row.size == 0 or int(row[0]) < 0:
        return None
    names = list(pool.meta.get("session_fields") or ("turns", "think_time", "new_tokens"))
    share_arr = pool.extra.get("session_share")
    share = float(share_arr[client]) if share_arr is not None else 1.0

    def table(field: str) -> LengthTable | None:
        if field not in names or names.index(field) >= row.size:
            return None
        tid = int(row[names.index(field)])
        if tid < 0:
            return None
        a, b = int(pool.offsets[tid]), int(pool.offsets[tid + 1])
        return LengthTable(pool.values[a:b].astype(np.float64), pool.cdf[a:b].astype(np.float64))

    return ClientSessionModel(share=share, turns=table("turns"), think_time=table("think_time"),
                              new_tokens=table("new_tokens"), first_input=table("first_input"),
                              single_input=table("single_input"), history=history_of(pool))


def describe(pool: ClientPool, max_clients: int = 5) -> list[str]:
    """Text lines about the pool's session model (empty: the pool has none)."""
    models = [(i, m) for i in range(pool.n_clients) if (m := client_model(pool, i)) is not None]
    if not models:
        return []
    h = history_of(pool)
    lines = [f"sessions: {len(models)} client(s) with sessions; history {h} "
             + {"included": "(logged inputs hold the history: later turns send history + new tokens)",
                "answers": "(logged inputs hold the history without reasoning: later turns send the prompts and "
                           "visible answers so far + new tokens)",
                "excluded": "(logged inputs are each turn's new tokens: later turns send only those)"}[h],
             "  think time = arrival to arrival (turn k+1's start - turn k's start); `run` never sends a turn "
             "before the previous response ended"]
    cap = pool.meta.get("session_input_cap")
    if cap is not None:
        lines.append(f"  later turns pile up at {cap} prompt tokens (a context limit: old turns dropped); "
                     "generated prompts stop there")
    for i, m in models[:max_clients]:
        parts = [f"{m.share:.0%} of requests in sessions"]
        if m.turns is not None:
            q = m.turns.quantile(np.array([0.5, 0.9]))
            parts.append(f"turns mean {m.turns.mean():.2f} (p50 {q[0]:g}, p90 {q[1]:g})")
        if m.think_time is not None:
            q = m.think_time.quantile(np.array([0.5, 0.9]))
            parts.append(f"think p50 {q[0]:.3g} s, p90 {q[1]:.3g} s")
        if m.new_tokens is not None:
            parts.append(f"new tokens p50 {m.new_tokens.quantile(0.5):g}")
        if m.first_input is not None:
            parts.append(f"first-turn input p50 {m.first_input.quantile(0.5):g}")
        lines.append(f"  {pool.clients[i]}: " + ", ".join(parts))
    if len(models) > max_clients:
        lines.append(f"  ... and {len(models) - max_clients} more client(s)")
    return lines
