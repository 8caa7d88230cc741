"""Fast columnar JSONL writer for requests: numpy columns -> the bytes of many lines at once.

A line has the fields of `Request.to_dict`, in its order:

    {"id":"m-large:7#12","t":3.25,"client":"m-large:7","category":"language","input_tokens":812,"output_tokens":95}

`t` is written from integer microseconds as the shortest decimal (the value of round(t, 6)),
`reason_tokens` only where a request has one, `images`/`audio`/`video` only where non-empty.

Rows without lists are formatted without a Python object per row. A block of n rows becomes one
n x W uint8 matrix whose columns are fixed regions, one per piece of the line: per-client text
(`{"id":"<client>#` and `,"client":...,"input_tokens":`, gathered from padded per-client rows),
constants, and integers right-aligned in a region as wide as the block's widest value (written
four digits at a time from a "0000".."9999" lookup table). Unused bytes of a region are 0; one
boolean compaction `m[m != 0]` drops them, leaving the lines back to back. No JSON byte is ever 0,
so the padding cannot collide with content. Rows with multimodal lists go through orjson
(`format_slow`, byte-identical for rows without lists; tested).

Measured on 1.07M m-large requests (2 shared cores, best of 3): orjson per row ~0.56M rows/s;
a variable-length byte scatter (int64 index matrices) ~0.8M rows/s and +100 MB; digit-by-digit
fixed-width matrix ~1.0M rows/s; with the 4-digit lookup table ~1.4M rows/s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_P10 = np.array([10 ** i for i in range(1, 19)], dtype=np.int64)


def ndigits(v: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative integers (0 has one)."""
    return 1 + np.searchsorted(_P10, v, side="right")


def _bytes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


_C_T, _C_DOT, _C_OUT = _bytes(b'","t":'), _bytes(b"."), _bytes(b',"output_tokens":')
_C_REASON, _C_END = _bytes(b',"reason_tokens":'), _bytes(b"}\n")


def _padded(texts: list[bytes]) -> np.ndarray:
    """Texts as rows of a uint8 matrix, padded with zero bytes (removed when the block is compacted)."""
    w = max((len(t) for t in texts), default=0)
    out = np.zeros((len(texts), w), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i, :len(t)] = _bytes(t)
    return out


def _put(m: np.ndarray, c: int, block: np.ndarray) -> int:
    """Write a column block (n x w, or w broadcast to every row) at column c; return the next column."""
    w = block.shape[-1]
    m[:, c:c + w] = block
    return c + w


_LUT4 = np.array([list(f"{i:04d}".encode()) for i in range(10000)], dtype=np.uint8)


def _digits(m: np.ndarray, c: int, v: np.ndarray, w: np.ndarray, region: int) -> int:
    """Write v in decimal, zero-padded to w digits, right-aligned in `region` columns from c.

    Four digits at a time from a lookup table of "0000".."9999", then the positions left of
    each row's w digits are zeroed (padding, removed by the final compaction)."""
    chunks = -(-region // 4)
    full = np.empty((v.size, 4 * chunks), dtype=np.uint8)
    q = v
    for i in range(chunks):
        r = q % 10000
        q = q // 10000
        full[:, 4 * (chunks - 1 - i):4 * (chunks - i)] = _LUT4[r]
    full = full[:, 4 * chunks - region:]
    full *= np.arange(region, dtype=np.int16)[None, :] >= (region - w)[:, None]
    m[:, c:c + region] = full
    return c + region


class RowFormatter:
    """Formats `compose.Batch` blocks as JSONL bytes for a fixed list of client names."""

    def __init__(self, names: list[str], categories: tuple[str, ...]) -> None:
        self.names = names
        self.categories = categories
        enc = [orjson.dumps(n) for n in names]          # quoted, escaped
        self._idm = _padded([b'{"id":' + e[:-1] + b"#" for e in enc])
        self._mid = _padded([b',"client":' + e + b',"category":' + orjson.dumps(cat) + b',"input_tokens":'
                             for e in enc for cat in categories])

    def format(self, b: Any) -> bytes:
        """The JSONL bytes of a block (rows in block order)."""
        if b.mm and any(int(cnt.sum()) for cnt, _ in b.mm.values()):
            return self.format_slow(b)
        n = len(b)
        if n == 0:
            return b""
        cl = b.client.astype(np.intp)
        key = cl * len(self.categories) + b.cat.astype(np.intp)
        mid = self._mid
        sec, frac = np.divmod(b.t_us, 1_000_000)
        # fraction: strip trailing zeros, keep at least one digit
        tz = np.zeros(n, dtype=np.int64)
        for p in (10, 100, 1000, 10000, 100000):
            tz += (frac % p == 0)
        tz = np.where(frac == 0, 5, tz)
        has_r = b.reason is not None and bool(np.any(b.reason >= 0))
        ints = [(b.k, ndigits(b.k)), (sec, ndigits(sec)), (frac // 10 ** tz, 6 - tz),
                (b.inp, ndigits(b.inp)), (b.out, ndigits(b.out))]
        if has_r:
            rmask = b.reason >= 0
            ints.append((np.maximum(b.reason, 0), np.where(rmask, ndigits(np.maximum(b.reason, 0)), 0)))
        iw = [int(w.max()) for _, w in ints]
        width = (self._idm.shape[1] + iw[0] + 6 + iw[1] + 1 + iw[2] + mid.shape[1] + iw[3] + 17 + iw[4]
                 + ((17 + iw[5]) if has_r else 0) + 2)
        m = np.zeros((n, width), dtype=np.uint8)
        c = 0
        c = _put(m, c, self._idm[cl])
        c = _digits(m, c, *ints[0], iw[0])
        c = _put(m, c, _C_T)
        c = _digits(m, c, *ints[1], iw[1])
        c = _put(m, c, _C_DOT)
        c = _digits(m, c, *ints[2], iw[2])
        c = _put(m, c, mid[key])
        c = _digits(m, c, *ints[3], iw[3])
        c = _put(m, c, _C_OUT)
        c = _digits(m, c, *ints[4], iw[4])
        if has_r:
            m[rmask, c:c + 17] = _C_REASON
            c = _digits(m, c + 17, *ints[5], iw[5])
        c = _put(m, c, _C_END)
        flat = m.reshape(-1)
        return flat[flat != 0].tobytes()

    def format_slow(self, b: Any) -> bytes:
        """Per-row orjson formatting (multimodal rows with lists), same field order and t format."""
        t = b.t_us.tolist()
        cl, kk, ct = b.client.tolist(), b.k.tolist(), b.cat.tolist()
        inp, out = b.inp.tolist(), b.out.tolist()
        reason = b.reason.tolist() if b.reason is not None else None
        lists: dict[str, list[int]] = {}
        offs: dict[str, list[int]] = {}
        for m, (cnt, items) in b.mm.items():
            offs[m] = np.concatenate([[0], np.cumsum(cnt)]).tolist()
            lists[m] = items.tolist()
        lines = []
        for i in range(len(t)):
            nm = self.names[cl[i]]
            s, f = divmod(t[i], 1_000_000)
            ts = f"{s}.{f:06d}".rstrip("0")
            ts = ts + "0" if ts.endswith(".") else ts
            d: dict[str, Any] = {"id": f"{nm}#{kk[i]}", "t": 0, "client": nm, "category": self.categories[ct[i]],
                                 "input_tokens": inp[i], "output_tokens": out[i]}
            if reason is not None and reason[i] >= 0:
                d["reason_tokens"] = reason[i]
            for m, key in (("image", "images"), ("audio", "audio"), ("video", "video")):
                if m in lists and offs[m][i + 1] > offs[m][i]:
                    d[key] = lists[m][offs[m][i]:offs[m][i + 1]]
            line = orjson.dumps(d).replace(b'"t":0,', b'"t":' + ts.encode() + b",", 1)
            lines.append(line)
        return b"\n".join(lines) + b"\n" if lines else b""
