"""Scale-out truthfulness: request ids checked before sending, and honest lines for dead shards.

Shards' results are merged by request id, so a duplicate id in a requests file would only be found
after the whole load was sent; `check_source_ids` finds it first (8 bytes a request: one hash
each; the file is re-read only to name the two lines).

When a worker (or Ray actor) dies, the parent knows which of its requests have a line (what the
worker flushed) and when it saw the worker end. A request without a line that was due before
that instant may have been sent: its line says `lost` ("outcome unknown"), never "cancelled before
this request was due". One due after it was never sent: `cancelled`, as the worker itself would
have written.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import orjson

from ..errors import InputError
from ..requests import Request
from ..results import unsent_line

_HEAD = b'{"id":"'


def _ids(p: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, UTF-8 id) of every request line of a requests file. Lines as our writer
    writes them (`{"id":"...` first, no escape in the id) are sliced, not parsed (3x faster)."""
    with p.open("rb") as fh:
        fh.readline()
        for n, raw in enumerate(fh, start=2):
            if raw.startswith(_HEAD):
                end = raw.find(b'"', 7)
                rid = raw[7:end]
                if end > 0 and b"\\" not in rid:
                    yield n, rid
                    continue
            if raw.strip():
                try:
                    yield n, str(orjson.loads(raw)["id"]).encode()
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise InputError("expected a request object with an id", path=str(p), line=n,
                                     field="id") from None


def check_source_ids(source: str | os.PathLike[str]) -> None:
    """InputError (file, line, field id) for the first id an earlier line already used; scenarios
    are skipped (generated ids are unique by construction)."""
    p = Path(source)
    if p.suffix.lower() in (".yaml", ".yml"):
        return
    hashes = array("q")
    add = hashes.append
    with p.open("rb") as fh:  # the `_ids` fast path, inlined: this loop is the whole cost
        fh.readline()
        for raw in fh:
            if raw.startswith(_HEAD):
                end = raw.find(b'"', 7)
                if end > 0 and 92 not in raw[7:end]:  # no backslash escape in the id
                    add(hash(raw[7:end]))
                    continue
            if raw.strip():
                try:
                    add(hash(str(orjson.loads(raw)["id"]).encode()))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    add(0)  # the second pass names the line
    if len(hashes) < 2:
        return
    s = np.sort(np.frombuffer(hashes, dtype=np.int64))
    dup = s[1:][s[1:] == s[:-1]]
    if not len(dup):
        return
    suspects = set(dup.tolist())
    first: dict[bytes, int] = {}
    for line, rid in _ids(p):
        if hash(rid) in suspects:
            if rid in first:
                raise InputError(f"duplicate request id {rid.decode('utf-8', 'replace')!r} (first on line "
                                 f"{first[rid]}): ids must be unique (results are read and merged by id)",
                                 path=str(p), line=line, field="id")
            first[rid] = line


def fill_in_lines(requests: Iterable[Request], have: set[str], who: str, rc: int | None,
                  ended: float | None) -> Iterator[bytes]:
    """Lines for the requests of a dead shard that have no line: `lost` when due at or before
    `ended` (seconds from t = 0 when the parent saw it end; None: it never got that far), else
    `cancelled`."""
    code = "" if rc is None else f" (exit {rc})"
    lost = (f"{who} died{code} after this request was due and before its result was written: "
            "it may have been sent; outcome unknown")
    never = f"{who} stopped{code} before this request was due"
    for r in requests:
        if r.id in have:
            continue
        if ended is not None and r.t <= ended:
            yield unsent_line(r, status="lost", error=lost)
        else:
            yield unsent_line(r, error=never)
