"""Accumulators that fold blocks of requests into `inspect` statistics, in memory that does not grow
with the file.

A requests file can hold hundreds of millions of lines; `inspect REQUESTS [--scenario]` must read
it at disk speed without keeping a column per request. `request_scan` yields blocks of columns;
each accumulator here folds a block into per-client or per-group state and forgets it:

- counts (per client, per rate-curve bucket, per client x segment of a scenario): bincounts;
- gap CV per client-window (`WindowGaps`): the open window of each client keeps its request count,
  gap count, sum and sum of squares of gaps across blocks; requests files are time-ordered, so a
  window is closed for good when the client's next window starts, and only its (count, CV) is kept:
  one entry per client-window, never per request;
- integer lengths (tokens, items per request, tokens per item): exact value counts (`IntCounts`),
  so their quantiles, means and KS distances are exact;
- reason share (reason / output, a real number in [0, 1]): a `SHARE_BINS`-bin histogram that also
  keeps each bin's smallest value (`ShareHist`). A quantile is exact when its bin holds one
  distinct value, else low by less than 1 / SHARE_BINS; the mean is exact; the KS distance is that
  of the samples each moved down by less than 1 / SHARE_BINS; the modes use 50 bins of 2,000.

Memory: one block and its columns, plus O(clients + client-windows + distinct token counts).
"""

from __future__ import annotations

import math

import numpy as np

from .request_scan import Block

DENSE_MAX = 1 << 20  # values below are counted in a dense array (grown to the largest seen)
SHARE_BINS = 100_000
MODS = ("image", "audio", "video")


class IntCounts:
    """Exact counts of non-negative integers (dense below DENSE_MAX, sparse above or below 0)."""

    def __init__(self) -> None:
        self.dense = np.zeros(0, dtype=np.int64)
        self.sv = np.zeros(0, dtype=np.int64)
        self.sc = np.zeros(0, dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = x.astype(np.int64, copy=False)
        if int(x.max()) >= DENSE_MAX or int(x.min()) < 0:
            odd = (x >= DENSE_MAX) | (x < 0)
            v, c = np.unique(x[odd], return_counts=True)
            u, inv = np.unique(np.concatenate([self.sv, v]), return_inverse=True)
            self.sc = np.bincount(inv, weights=np.concatenate([self.sc, c]), minlength=u.size).astype(np.int64)
            self.sv = u
            x = x[~odd]
            if x.size == 0:
                return
        cnt = np.bincount(x)
        if cnt.size > self.dense.size:
            self.dense = np.concatenate([self.dense, np.zeros(cnt.size - self.dense.size, dtype=np.int64)])
        self.dense[:cnt.size] += cnt

    def add_zeros(self, k: int) -> None:
        if k > 0:
            if self.dense.size == 0:
                self.dense = np.zeros(1, dtype=np.int64)
            self.dense[0] += k

    @property
    def n(self) -> int:
        return int(self.dense.sum() + self.sc.sum())

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values ascending, their counts)."""
        dv = np.flatnonzero(self.dense)
        neg = self.sv < 0
        vals = np.concatenate([self.sv[neg], dv, self.sv[~neg]])
        cnts = np.concatenate([self.sc[neg], self.dense[dv], self.sc[~neg]])
        return vals, cnts


def quantiles(vals: np.ndarray, cnts: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99 ("inverted_cdf": the value of rank ceil(n q)) and mean of counted values."""
    n = int(cnts.sum())
    if n == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    cum = np.cumsum(cnts)
    ps = [float(vals[min(int(np.searchsorted(cum, max(math.ceil(n * q), 1))), vals.size - 1)])
          for q in (0.5, 0.9, 0.99)]
    mean = float(np.dot(vals.astype(np.float64), cnts.astype(np.float64)) / n)
    return {"p50": ps[0], "p90": ps[1], "p99": ps[2], "mean": round(mean, 4)}


class ShareHist:
    """Shares in [0, 1]: counts per bin of width 1 / SHARE_BINS, each bin's smallest value, the sum."""

    def __init__(self) -> None:
        self.cnt = np.zeros(SHARE_BINS, dtype=np.int64)
        self.lo = np.full(SHARE_BINS, np.inf)
        self.total = 0.0

    def add(self, s: np.ndarray) -> None:
        if s.size == 0:
            return
        s = np.clip(s, 0.0, 1.0)
        b = np.minimum((s * SHARE_BINS).astype(np.int64), SHARE_BINS - 1)
        self.cnt += np.bincount(b, minlength=SHARE_BINS)
        np.minimum.at(self.lo, b, s)
        self.total += float(s.sum())

    @property
    def n(self) -> int:
        return int(self.cnt.sum())

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        nz = np.flatnonzero(self.cnt)
        return self.lo[nz], self.cnt[nz]

    def stats(self) -> dict[str, object]:
        vals, cnts = self.table()
        q: dict[str, object] = dict(quantiles(vals, cnts))
        if cnts.size:
            q["mean"] = round(self.total / int(cnts.sum()), 4)
        q["modes"] = modes_from_hist(self.cnt.reshape(50, -1).sum(axis=1))
        return q


def modes_from_hist(h: np.ndarray) -> list[float]:
    """Centres of the local maxima of a 50-bin histogram on [0, 1] (smoothed over 3 bins) that hold,
    with their neighbours, >= 2% of the mass (`fidelity._modes` on counts)."""
    total = int(h.sum())
    bins = h.size
    if total == 0:
        return []
    hs = np.convolve(h, np.ones(3) / 3, mode="same")
    out = []
    for i in range(bins):
        left = hs[i - 1] if i > 0 else -1
        right = hs[i + 1] if i < bins - 1 else -1
        if hs[i] > left and hs[i] >= right and h[max(0, i - 1):i + 2].sum() >= 0.02 * total:
            out.append(round((i + 0.5) / bins, 3))
    return out


class Lengths:
    """Length fields of one group of requests (a category, or a scenario source's clients)."""

    def __init__(self) -> None:
        self.rows = 0
        self.inp = IntCounts()
        self.out = IntCounts()
        self.reason = IntCounts()
        self.share: ShareHist | None = None
        self.mm: dict[str, tuple[IntCounts, IntCounts]] = {}

    def add(self, b: Block, mask: np.ndarray | None = None) -> None:
        sel = (lambda a: a) if mask is None else (lambda a: a[mask])
        inp, out, r = sel(b.inp), sel(b.out), sel(b.reason)
        self.rows += int(inp.size)
        self.inp.add(inp)
        self.out.add(out)
        has = r >= 0
        if bool(has.any()):
            rr, oo = r[has], out[has]
            self.reason.add(rr)
            if self.share is None:
                self.share = ShareHist()
            self.share.add(rr / np.maximum(oo, 1))
        for m, (counts, items) in b.mm.items():
            cnt_acc, item_acc = self.mm.setdefault(m, (IntCounts(), IntCounts()))
            cnt_acc.add_zeros(self.rows - int(inp.size) - cnt_acc.n)  # rows of earlier blocks had none
            cnt_acc.add(sel(counts))
            if mask is None:
                item_acc.add(items)
            else:
                item_acc.add(items[np.repeat(mask, counts)])

    def finish(self, modalities: list[str]) -> None:
        """Give every modality seen anywhere in the file a zero count for this group's other rows."""
        for m in modalities:
            cnt_acc, _ = self.mm.setdefault(m, (IntCounts(), IntCounts()))
            cnt_acc.add_zeros(self.rows - cnt_acc.n)


class WindowGaps:
    """Gap CV of every (client, window) with at least `min_n` requests, fed time-ordered blocks.

    `add(t, client, win)` takes a block's requests (t non-decreasing, so each client's windows are
    non-decreasing); `finish()` returns (client, window, count, cv) sorted by client then window,
    exactly as `fidelity.window_cvs` on the whole file (up to the order of floating-point sums)."""

    def __init__(self, min_n: int) -> None:
        self.min_n = min_n
        self.win = np.zeros(0, dtype=np.int64)
        self.cnt = np.zeros(0, dtype=np.int64)
        self.ng = np.zeros(0)
        self.s1 = np.zeros(0)
        self.s2 = np.zeros(0)
        self.last = np.zeros(0)
        self.parts: list[tuple[np.ndarray, ...]] = []

    def _grow(self, n: int) -> None:
        k = n - self.win.size
        if k <= 0:
            return
        self.win = np.concatenate([self.win, np.full(k, -1, dtype=np.int64)])
        self.cnt = np.concatenate([self.cnt, np.zeros(k, dtype=np.int64)])
        self.ng, self.s1, self.s2, self.last = (np.concatenate([a, np.zeros(k)])
                                                for a in (self.ng, self.s1, self.s2, self.last))

    def _emit(self, c: np.ndarray, w: np.ndarray, cnt: np.ndarray, ng: np.ndarray, s1: np.ndarray,
              s2: np.ndarray) -> None:
        ok = (cnt >= self.min_n) & (ng >= 2)
        if not bool(ok.any()):
            return
        c, w, cnt, ng, s1, s2 = c[ok], w[ok], cnt[ok], ng[ok], s1[ok], s2[ok]
        mean = s1 / ng
        var = (s2 - ng * mean * mean) / (ng - 1)
        cv = np.where(mean > 0, np.sqrt(np.maximum(var, 0.0)) / np.where(mean > 0, mean, 1.0), 0.0)
        self.parts.append((c.astype(np.int64), w.astype(np.int64), cnt.astype(np.int64), cv))

    def add(self, t: np.ndarray, client: np.ndarray, win: np.ndarray) -> None:
        if t.size == 0:
            return
        self._grow(int(client.max()) + 1)
        key = client.astype(np.uint16) if int(client.max()) < 1 << 16 else client  # 16 bits: a radix sort
        order = np.argsort(key, kind="stable")  # time order kept inside a client: windows ascend
        c, w, tt = client[order].astype(np.int64), win[order].astype(np.int64), t[order]
        new = np.empty(c.size, dtype=bool)
        new[0] = True
        new[1:] = (c[1:] != c[:-1]) | (w[1:] != w[:-1])
        gid = np.cumsum(new) - 1
        ng_groups = int(gid[-1]) + 1
        firsts = np.flatnonzero(new)
        lasts = np.append(firsts[1:], c.size) - 1
        gc, gw = c[firsts], w[firsts]
        same = ~new[1:]
        gaps = np.diff(tt)[same]
        g_id = gid[1:][same]
        cnt = np.bincount(gid, minlength=ng_groups).astype(np.int64)
        ng = np.bincount(g_id, minlength=ng_groups).astype(np.float64)
        # float64 even without a gap (numpy's bincount of nothing is int64, whatever the weights)
        s1 = np.bincount(g_id, weights=gaps, minlength=ng_groups).astype(np.float64)
        s2 = np.bincount(g_id, weights=gaps * gaps, minlength=ng_groups).astype(np.float64)
        # a client's first group may continue the window it had open at the end of the last block
        first_of_client = np.empty(gc.size, dtype=bool)
        first_of_client[0] = True
        first_of_client[1:] = gc[1:] != gc[:-1]
        cont = first_of_client & (self.win[gc] == gw)
        cc = gc[cont]
        g0 = tt[firsts[cont]] - self.last[cc]
        cnt[cont] += self.cnt[cc]
        ng[cont] += self.ng[cc] + 1
        s1[cont] += self.s1[cc] + g0
        s2[cont] += self.s2[cc] + g0 * g0
        closed = first_of_client & ~cont & (self.win[gc] >= 0)
        k = gc[closed]
        self._emit(k, self.win[k], self.cnt[k], self.ng[k], self.s1[k], self.s2[k])
        last_of_client = np.empty(gc.size, dtype=bool)
        last_of_client[-1] = True
        last_of_client[:-1] = gc[1:] != gc[:-1]
        done = ~last_of_client
        self._emit(gc[done], gw[done], cnt[done], ng[done], s1[done], s2[done])
        o = last_of_client
        k = gc[o]
        self.win[k], self.cnt[k], self.ng[k], self.s1[k], self.s2[k] = gw[o], cnt[o], ng[o], s1[o], s2[o]
        self.last[k] = tt[lasts[o]]

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = np.flatnonzero(self.win >= 0)
        self._emit(k, self.win[k], self.cnt[k], self.ng[k], self.s1[k], self.s2[k])
        self.win[k] = -1
        if not self.parts:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z, np.zeros(0)
        c, w, cnt, cv = (np.concatenate([p[i] for p in self.parts]) for i in range(4))
        self.parts = [(c, w, cnt, cv)]
        o = np.lexsort((w, c))
        return c[o], w[o], cnt[o], cv[o]
