"""Merging the results of shards: one file sorted by scheduled time, one line per scheduled request.

Shard files are in completion order and may be large, so the merge keeps only an index in
memory (scheduled time, file, byte offset, length per line: 24 bytes a request) and copies the
lines themselves from memory-mapped files in sorted order. Ties in `scheduled` keep file order
then line order, so the merge is deterministic.

A request id seen in two inputs means the same shard was passed twice (or two runs were mixed):
summing them would double-count silently, so it is an error.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import InputError
from ..formats import RESULTS_FORMAT
from ..results import summed_intended


def check_unique_ids(ids: np.ndarray, file_index: np.ndarray, paths: Sequence[str], *, across: bool = True) -> None:
    """Raise InputError naming one id that appears twice in one of `paths` (a line counted twice),
    or, with `across`, in two of them (a shard's file given twice)."""
    if len(ids) < 2:
        return
    order = np.lexsort((file_index, ids))
    s_ids, s_file = ids[order], file_index[order]
    same = s_ids[1:] == s_ids[:-1]
    if not across:
        same &= s_file[1:] == s_file[:-1]
    if same.any():
        k = int(np.argmax(same))
        a, b = paths[int(s_file[k])], paths[int(s_file[k + 1])]
        if a == b and s_file[k] == s_file[k + 1]:
            raise InputError(f"request id {str(s_ids[k])!r} has two lines: each request has one", path=a)
        raise InputError(f"request id {str(s_ids[k])!r} is in both {a} and {b}: each shard's results file "
                         "must be given once (files of unrelated runs: --merge-unrelated)")


def _index(path: Path, data: Any, file_no: int) -> tuple[dict[str, Any], list[float], list[int], list[int], list[str]]:
    """Header, and per result line: scheduled, offset, length (with newline), id."""
    end = data.find(b"\n")
    if end < 0:
        raise InputError("expected a header line", path=str(path), line=1)
    try:
        head = orjson.loads(data[:end])
    except orjson.JSONDecodeError:
        raise InputError("expected a JSON header object on the first line", path=str(path), line=1) from None
    if not isinstance(head, dict) or head.get("format") != RESULTS_FORMAT:
        raise InputError(f"not a results file: first line must carry format {RESULTS_FORMAT!r}", path=str(path), line=1)
    sched: list[float] = []
    offs: list[int] = []
    lens: list[int] = []
    ids: list[str] = []
    pos = end + 1
    size = len(data)
    line = 1
    while pos < size:
        nl = data.find(b"\n", pos)
        line += 1
        if nl < 0:  # a truncated last line (a killed worker): skipped, as read_results does
            break
        raw = data[pos:nl]
        if raw.strip():
            try:
                d = orjson.loads(raw)
                sched.append(float(d["scheduled"]))
                ids.append(str(d["id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputError("expected a result object with id and scheduled", path=str(path), line=line) from None
            offs.append(pos)
            lens.append(nl + 1 - pos)
        pos = nl + 1
    return head, sched, offs, lens, ids


def merge_results(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                  header: dict[str, Any], extra_lines: Iterable[bytes] = ()) -> tuple[int, set[str]]:
    """Write `out`: `header` (format added), then every line of `parts` (and `extra_lines`, e.g. the
    cancelled lines of a shard that never started) sorted by scheduled time. Returns (lines, ids).

    Written under a temporary name and renamed, so `out` is complete or absent.
    """
    from ..atomic import atomic_write

    maps: list[Any] = []
    files = []
    sched: list[np.ndarray] = []
    offs: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    fidx: list[np.ndarray] = []
    all_ids: list[str] = []
    try:
        for k, p in enumerate(parts):
            path = Path(p)
            fh = path.open("rb")
            files.append(fh)
            size = os.fstat(fh.fileno()).st_size
            data: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            maps.append(data)
            _, s, o, ln, ids = _index(path, data, k)
            sched.append(np.asarray(s, dtype=np.float64))
            offs.append(np.asarray(o, dtype=np.int64))
            lens.append(np.asarray(ln, dtype=np.int64))
            fidx.append(np.full(len(s), k, dtype=np.int32))
            all_ids += ids
        extra = list(extra_lines)
        if extra:
            maps.append(b"".join(extra))
            k = len(maps) - 1
            s, o, ln, pos = [], [], [], 0
            for raw in extra:
                d = orjson.loads(raw)
                s.append(float(d["scheduled"]))
                all_ids.append(str(d["id"]))
                o.append(pos)
                ln.append(len(raw))
                pos += len(raw)
            sched.append(np.asarray(s, dtype=np.float64))
            offs.append(np.asarray(o, dtype=np.int64))
            lens.append(np.asarray(ln, dtype=np.int64))
            fidx.append(np.full(len(s), k, dtype=np.int32))
        S = np.concatenate(sched) if sched else np.zeros(0)
        O = np.concatenate(offs) if offs else np.zeros(0, dtype=np.int64)  # noqa: E741
        L = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
        F = np.concatenate(fidx) if fidx else np.zeros(0, dtype=np.int32)
        ids_arr = np.asarray(all_ids, dtype=object)
        check_unique_ids(ids_arr.astype(str), F, [*map(str, parts), "<unstarted shards>"])
        order = np.lexsort((O, F, S))  # by scheduled, then file, then position in the file
        with atomic_write(out, "wb") as w:
            w.write(orjson.dumps({"format": RESULTS_FORMAT, **header, "lines": len(order)}) + b"\n")
            buf: list[bytes] = []
            size = 0
            for f, o, ln in zip(F[order].tolist(), O[order].tolist(), L[order].tolist(), strict=True):
                buf.append(maps[f][o:o + ln])
                size += ln
                if size > 1 << 20:
                    w.write(b"".join(buf))
                    buf.clear()
                    size = 0
            w.write(b"".join(buf))
        return len(order), set(all_ids)
    finally:
        for m in maps:
            if isinstance(m, mmap.mmap):
                m.close()
        for fh in files:
            fh.close()


def merged_header(parts: Sequence[Path], extra: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The first readable part's header (endpoint, model, timeouts, ...) with the scale-out fields
    (`extra`; the parts' own endpoint and model win, they are the normalised values) and the
    parent's command line (already without secrets)."""
    import contextlib

    heads: list[dict[str, Any]] = []
    for p in parts:
        with contextlib.suppress(OSError, ValueError), p.open("rb") as fh:
            d = orjson.loads(fh.readline())
            if isinstance(d, dict):
                heads.append(d)
    head = dict(heads[0]) if heads else {}
    shares = [h.get("intended") for h in heads]
    if len(heads) < len(parts):  # a share unread: no total rather than a wrong one
        head.pop("intended", None)
    elif len(shares) > 1 and all(isinstance(x, dict) for x in shares):  # each shard's share of the load
        head["intended"] = summed_intended(shares)  # type: ignore[arg-type]
    head.pop("format", None)
    head["complete"] = True  # written whole or not at all (`atomic_write`); a dead shard's lines say `lost`
    head.pop("shard", None)
    head.pop("shard_by", None)
    for k, v in extra.items():
        if k in ("endpoint", "model"):
            head.setdefault(k, v)
        else:
            head[k] = v
    head["argv"] = argv
    return head
