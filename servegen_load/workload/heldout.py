"""The held-out realism check: fit a log's earlier part, generate its later part, compare what a server sees.

At every scale T (1 s .. 3600 s) where the later part holds at least `MIN_BINS` windows, the
counts of requests per window of T have a Fano factor F = Var / mean and a CV = sd / mean. Four
streams are compared: the fitted (earlier) part, the generated continuation, the real later part
and the naive Poisson baseline at the fitted part's mean rate. Two properties are checked:

- burstiness kept: the generated F and CV are within a third of the fitted part's
  (|gen / fit - 1| <= 1/3), compared at the fitted part's level: when the profile rightly
  generates another level (a weekend after weekdays: a = mean count generated / fitted), rate
  variation scales F - 1 by a, so the generated F is taken as 1 + (F - 1) / a and its CV as
  sqrt(F / mean_fit) (a = 1 leaves both as measured);
- prediction: with d(x) = |log(F_x / F_real)| + |log(CV_x / CV_real)| the distance to the real
  later part, wherever the fitted part itself predicts better than Poisson (d(fit) < d(poisson))
  the generated stream must too (d(gen) < d(poisson)); where it does not, the trace drifted
  (its later part is further from its earlier part than Poisson is) and the row says "drift". A
  generated stream within sampling error of Poisson (d(gen) < d(poisson) + 4 sqrt(2 / windows):
  two standard errors of each log term) is a "tie", not a loss: at 1 s on a near-Poisson trace
  the three streams differ by less than their noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrival_fit import MIN_BINS, SCALES


@dataclass
class Row:
    scale: float
    windows: int
    fit: tuple[float, float]
    gen: tuple[float, float]
    real: tuple[float, float]
    poisson: tuple[float, float]

    fit_mean: float = float("nan")
    gen_mean: float = float("nan")

    def gen_at_fit_level(self) -> tuple[float, float]:
        """The generated (F, CV) brought to the fitted part's level (module docstring)."""
        a = self.gen_mean / self.fit_mean if self.fit_mean > 0 and self.gen_mean > 0 else 1.0
        f = 1.0 + (self.gen[0] - 1.0) / a
        return f, float(np.sqrt(max(f, 0.0) / self.fit_mean)) if self.fit_mean > 0 else self.gen[1]

    @property
    def kept(self) -> bool:
        return all(abs(g / f - 1.0) <= 1.0 / 3.0 for g, f in zip(self.gen_at_fit_level(), self.fit, strict=True)
                   if f > 0)

    def d(self, x: tuple[float, float]) -> float:
        return sum(abs(np.log(max(a, 1e-9) / max(b, 1e-9))) for a, b in zip(x, self.real, strict=True))

    @property
    def tolerance(self) -> float:
        """Two standard errors of d from sampling alone (log of a variance over n windows: sqrt(2/n),
        for F and for CV)."""
        return 4.0 * float(np.sqrt(2.0 / max(self.windows - 1, 1)))

    @property
    def verdict(self) -> str:
        if not self.d(self.fit) < self.d(self.poisson):
            return "drift"
        if self.d(self.gen) < self.d(self.poisson):
            return "beats"
        return "tie" if self.d(self.gen) < self.d(self.poisson) + self.tolerance else "LOSES"


def counts_stats(t: np.ndarray, span: float, scale: float) -> tuple[float, float, int]:
    """(Fano, CV, windows) of counts in windows of `scale` over [0, span) (t relative to the part)."""
    f, cv, nb, _ = _stats(t, span, scale)
    return f, cv, nb


def _stats(t: np.ndarray, span: float, scale: float) -> tuple[float, float, int, float]:
    nb = int(span // scale)
    if nb < 2:
        return float("nan"), float("nan"), nb, float("nan")
    n = np.bincount((t[(t >= 0) & (t < nb * scale)] // scale).astype(np.int64), minlength=nb).astype(np.float64)
    m = float(n.mean())
    v = float(n.var(ddof=1))
    return (v / m if m > 0 else float("nan")), (np.sqrt(v) / m if m > 0 else float("nan")), nb, m


def compare(fit_t: np.ndarray, fit_span: float, gen_t: np.ndarray, real_t: np.ndarray, pois_t: np.ndarray,
            span: float, scales: tuple[float, ...] = SCALES) -> list[Row]:
    """Rows of the held-out table (module docstring); times relative to each part's start."""
    rows = []
    for s in scales:
        fs = _stats(fit_t, fit_span, s)
        rs = _stats(real_t, span, s)
        if rs[2] < MIN_BINS or fs[2] < MIN_BINS:
            continue
        gs, ps = _stats(gen_t, span, s), _stats(pois_t, span, s)
        rows.append(Row(s, rs[2], fs[:2], gs[:2], rs[:2], ps[:2], fit_mean=fs[3], gen_mean=gs[3]))
    return rows


def hourly(t: np.ndarray, span: float) -> np.ndarray:
    return np.bincount((t[(t >= 0) & (t < span)] // 3600).astype(np.int64), minlength=int(span // 3600))[
        : int(span // 3600)].astype(np.float64)


def hourly_correlation(gen_t: np.ndarray, real_t: np.ndarray, span: float) -> float:
    a, b = hourly(gen_t, span), hourly(real_t, span)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def request_times(path: str | Path) -> np.ndarray:
    """Request times (s) of a requests file (`requests.iter_requests`: a bad line names itself)."""
    from ..requests import iter_requests

    return np.fromiter((r.t for r in iter_requests(path)), dtype=np.float64)


def format_rows(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        lines.append(f"{r.scale:>6g} s {r.windows:>5d} | F {r.fit[0]:7.3g} {r.gen[0]:7.3g} {r.real[0]:7.3g} "
                     f"{r.poisson[0]:7.3g} | CV {r.fit[1]:6.3g} {r.gen[1]:6.3g} {r.real[1]:6.3g} {r.poisson[1]:6.3g} "
                     f"| {'kept' if r.kept else 'OFF '} {r.verdict}"
                     + (f" (level x{r.gen_mean / r.fit_mean:.2f})" if abs(r.gen_mean / r.fit_mean - 1) > 0.05 else ""))
    return lines
