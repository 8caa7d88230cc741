"""A row of block characters for a series (rate by hour, rate curve): one glance, in a text report."""

from __future__ import annotations

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """One block character per value, scaled to the max (a space where the value is unknown)."""
    known = [v for v in values if v is not None]
    hi = max(known, default=0.0)
    if hi <= 0:
        return "".join(" " if v is None else BLOCKS[0] for v in values)
    top = len(BLOCKS) - 1
    return "".join(" " if v is None else BLOCKS[min(int(v / hi * top + 0.5), top)] for v in values)
