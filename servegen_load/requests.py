"""The Request record: the contract between workload generation and the dispatcher.

A requests file is JSONL: one header object (`format`, `seed`, `source`, ...), then one
request per line, ordered by `t`. Files are read as a stream, so a 14-day workload never has
to sit in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError

REQUESTS_FORMAT = "servegen-load/requests/v1"

_REQUIRED = ("id", "t", "client", "category", "input_tokens", "output_tokens")
_INT_LISTS = ("images", "audio", "video", "prefix")


@dataclass(slots=True)
class Request:
    """One request to send. `t` is seconds from the run's start instant.

    Token counts are what the workload asks for: `input_tokens` counts text tokens only
    (multimodal items carry their own per-item token counts in `images`/`audio`/`video`),
    `output_tokens` is the forced completion length, of which `reason_tokens` are reasoning.
    """

    id: str
    t: float
    client: str
    category: str
    input_tokens: int
    output_tokens: int
    reason_tokens: int | None = None
    images: list[int] | None = None
    audio: list[int] | None = None
    video: list[int] | None = None
    session: str | None = None
    turn: int | None = None
    think_time: float | None = None
    prefix: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "t": round(self.t, 6), "client": self.client, "category": self.category,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
        }
        for f in ("reason_tokens", "images", "audio", "video", "session", "turn", "think_time", "prefix"):
            v = getattr(self, f)
            if v is not None:
                d[f] = v
        if self.extra:
            d.update(self.extra)
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


_FIELDS = {f.name for f in dataclasses.fields(Request)} - {"extra"}


def request_from_dict(d: Any, *, path: str = "<requests>", line: int | None = None) -> Request:
    """Validate one decoded line; errors name the file, line and field."""
    if not isinstance(d, dict):
        raise InputError("expected a JSON object per line", path=path, line=line)
    for k in _REQUIRED:
        if k not in d:
            raise InputError("missing required field", path=path, line=line, field=k)
    try:
        t = float(d["t"])
        inp, out = int(d["input_tokens"]), int(d["output_tokens"])
    except (TypeError, ValueError):
        raise InputError("expected numbers for t, input_tokens, output_tokens", path=path, line=line) from None
    if not t >= 0 or t == float("inf"):
        raise InputError(f"expected a finite time >= 0, got {d['t']!r}", path=path, line=line, field="t")
    if inp < 0 or out < 0:
        raise InputError("expected token counts >= 0", path=path, line=line, field="input_tokens/output_tokens")
    for k in _INT_LISTS:
        v = d.get(k)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, int) and x >= 0 for x in v)):
            raise InputError("expected a list of non-negative integers", path=path, line=line, field=k)
    extra = {k: v for k, v in d.items() if k not in _FIELDS}
    return Request(
        id=str(d["id"]), t=t, client=str(d["client"]), category=str(d["category"]),
        input_tokens=inp, output_tokens=out,
        reason_tokens=None if d.get("reason_tokens") is None else int(d["reason_tokens"]),
        images=d.get("images"), audio=d.get("audio"), video=d.get("video"),
        session=None if d.get("session") is None else str(d["session"]),
        turn=None if d.get("turn") is None else int(d["turn"]),
        think_time=None if d.get("think_time") is None else float(d["think_time"]),
        prefix=d.get("prefix"), extra=extra,
    )


def read_header(path: str | Path) -> dict[str, Any]:
    """The header object of a requests file (first line), validated."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            first = fh.readline()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(p)) from None
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        raise InputError("expected a JSON header object on the first line", path=str(p), line=1) from None
    if not isinstance(head, dict) or head.get("format") != REQUESTS_FORMAT:
        raise InputError(f"not a requests file: first line must carry format {REQUESTS_FORMAT!r}",
                         path=str(p), line=1)
    return head


def iter_requests(path: str | Path) -> Iterator[Request]:
    """Stream the requests of a file, checking order; bad lines raise InputError with their number."""
    p = Path(path)
    read_header(p)
    last_t = 0.0
    with p.open("rb") as fh:
        fh.readline()
        for n, raw in enumerate(fh, start=2):
            if not raw.strip():
                continue
            try:
                d = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise InputError(f"invalid JSON ({e})", path=str(p), line=n) from None
            r = request_from_dict(d, path=str(p), line=n)
            if r.t < last_t:
                raise InputError(f"requests must be ordered by t ({r.t} < {last_t})", path=str(p), line=n, field="t")
            last_t = r.t
            yield r
