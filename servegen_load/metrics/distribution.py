"""A distribution's summary (n, mean, p50, p90, p99, max): one definition for every summary block.

Kept apart from `metrics.stats` so the blocks other modules add to a summary (content caching,
reasoning, sessions) use the same percentiles without importing the summary that imports them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


def dist(x: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """n, mean, p50, p90, p99, max of the finite values of x (None fields when empty)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)[ok]
    x = x[ok]
    out: dict[str, Any] = {"n": len(x)}
    if not len(x):
        out.update({"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None})
        return out
    if weights is None:
        out["mean"] = float(x.mean())
        qs = np.percentile(x, PERCENTILES)
    elif (weights == weights[0]).all():  # equal weights (the usual case): same answer, 10x faster
        out["mean"] = float(x.mean())
        qs = np.percentile(x, PERCENTILES, method="inverted_cdf")
    else:
        out["mean"] = float(np.average(x, weights=weights))
        qs = np.percentile(x, PERCENTILES, weights=weights, method="inverted_cdf")
    for p, q in zip(PERCENTILES, qs, strict=True):
        out[f"p{p}"] = float(q)
    out["max"] = float(x.max())
    return out
