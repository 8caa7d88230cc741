"""`report --csv`: one row per request, the columns spreadsheets and pandas users expect.

Latencies are computed by `metrics.stats` (the one place they are defined) and written in
seconds; a value that does not apply (TTFT of a failed request, TPOT of a one-token answer) is
an empty cell. Rows are in schedule order. `-` writes to stdout.
"""

from __future__ import annotations

import csv
import sys
from typing import IO

import numpy as np

from ..metrics import stats
from ..results import Results

COLUMNS = ("id", "client", "category", "status", "http_status", "scheduled", "sent", "ttft", "tpot", "e2e",
           "user_ttft", "user_e2e", "send_lag", "queue_time", "input_tokens", "output_tokens", "prompt_tokens",
           "completion_tokens", "reasoning_tokens", "cached_tokens", "retries", "error")


def request_table(res: Results) -> dict[str, np.ndarray]:
    """The per-request columns of `COLUMNS` (NaN where a value does not apply)."""
    c = res.cols
    ok = c["status"] == "ok"
    v = stats.request_metrics(res)
    out: dict[str, np.ndarray] = {k: c[k] for k in ("id", "client", "category", "status", "http_status", "scheduled",
                                                    "sent", "queue_time", "input_tokens", "output_tokens",
                                                    "prompt_tokens", "completion_tokens", "reasoning_tokens",
                                                    "cached_tokens", "retries", "error")}
    for k in ("ttft", "tpot", "e2e", "user_ttft", "user_e2e", "send_lag"):
        out[k] = v[k]
    out["ttft"] = np.where(ok, out["ttft"], np.nan)
    return out


def _cell(x: object) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if x != x else f"{x:.6f}".rstrip("0").rstrip(".") if not x.is_integer() else str(int(x))
    return str(x)


def write_csv(res: Results, path: str) -> None:
    """Write the per-request table to `path` (`-`: stdout), atomically for a file."""
    from ..atomic import atomic_write

    cols = request_table(res)
    order = np.argsort(res.cols["scheduled"], kind="stable")
    lists = [cols[k][order].tolist() for k in COLUMNS]

    def emit(fh: IO[str]) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in zip(*lists, strict=True):
            w.writerow([_cell(x) for x in row])

    if path == "-":
        emit(sys.stdout)
        sys.stdout.flush()
    else:
        with atomic_write(path) as fh:
            emit(fh)
