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
from .formats import REQUESTS_FORMAT

_REQUIRED = ("id", "t", "client", "category", "input_tokens", "output_tokens")
_INT_LISTS = ("images", "audio", "video")
MAX_TIME = 1e9              # seconds (~31 years): a later `t` is a unit mistake, not a schedule
MAX_TOKENS = 2**31 - 1      # token counts, as the log readers accept them
MAX_BLOCK_ID = 2**63 - 1    # prefix block ids are names, not counts: `generate` writes system blocks from 2**40

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

    def carried_tokens(self) -> int:
        """The tokens of this answer a session's next prompt carries: all of them, or without the
        reasoning where the log's prompts grew by visible answers (`history: answers`)."""
        if self.reason_tokens and self.extra.get("history") == "answers":
            return self.output_tokens - min(self.reason_tokens, self.output_tokens)
        return self.output_tokens

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


def _count(v: Any) -> int | None:
    """A token count: an integer (or an integral float, as other tools write them) in 0..MAX_TOKENS."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 0 <= v <= MAX_TOKENS else None
    if isinstance(v, float) and v.is_integer() and 0 <= v <= MAX_TOKENS:
        return int(v)
    return None


def _block_id(v: Any) -> bool:
    """A prefix block id: an integer (or integral float) in 0..MAX_BLOCK_ID."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return (isinstance(v, int) or v.is_integer()) and 0 <= v <= MAX_BLOCK_ID


def _number(v: Any) -> float | None:
    """A finite number in 0..MAX_TIME (times, think times), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if 0 <= f <= MAX_TIME else None


def _name(v: Any) -> str | None:
    """Ids, clients, sessions: strings, or integers as other tools may write them."""
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


def check_request(d: Any, path: str, line: int | None) -> tuple[float, int, int, int | None]:
    """Validate one decoded request line; (t, input_tokens, output_tokens, reason_tokens or None).

    Every rule of the record, with an error naming file, line and field: required fields present;
    `id`/`client` strings (or integers), `category` a string; `t` a number in [0, MAX_TIME];
    token counts integers in [0, MAX_TOKENS] with `reason_tokens <= output_tokens`; media lists of
    such integers; `prefix` a list of block ids in [0, MAX_BLOCK_ID]; `session` a string/integer, `turn` an integer >= 0,
    `think_time` a number >= 0.
    """
    if type(d) is dict and 6 <= len(d) <= 7:  # fast path: the lines `generate` writes (text requests)
        t, inp, out, r = d.get("t"), d.get("input_tokens"), d.get("output_tokens"), d.get("reason_tokens", -1)
        if (type(t) in (float, int) and 0 <= t <= MAX_TIME and type(inp) is int and type(out) is int
                and type(r) is int and 0 <= inp <= MAX_TOKENS and -1 <= r <= out <= MAX_TOKENS
                and type(d.get("id")) is str and type(d.get("client")) is str and type(d.get("category")) is str
                and (len(d) == 6 or r >= 0)):
            return float(t), inp, out, (r if r >= 0 else None)
    if not isinstance(d, dict):
        raise InputError("expected a JSON object per line", path=path, line=line)
    for k in _REQUIRED:
        if k not in d:
            raise InputError("missing required field", path=path, line=line, field=k)
    for k in ("id", "client"):
        if _name(d[k]) is None:
            raise InputError(f"expected a string, got {d[k]!r:.40}", path=path, line=line, field=k)
    if not isinstance(d["category"], str):
        raise InputError(f"expected a string, got {d['category']!r:.40}", path=path, line=line, field="category")
    t = _number(d["t"])
    if t is None:
        raise InputError(f"expected a time in seconds, a number in 0..{MAX_TIME:g}, got {d['t']!r:.40}",
                         path=path, line=line, field="t")
    counts: dict[str, int | None] = {}
    for k in ("input_tokens", "output_tokens", "reason_tokens"):
        v = d.get(k)
        if v is None and k == "reason_tokens":
            counts[k] = None
            continue
        c = _count(v)
        if c is None:
            raise InputError(f"expected an integer in 0..{MAX_TOKENS}, got {v!r:.40}", path=path, line=line,
                             field=k)
        counts[k] = c
    inp, out, reason = counts["input_tokens"], counts["output_tokens"], counts["reason_tokens"]
    assert inp is not None and out is not None
    if reason is not None and reason > out:
        raise InputError(f"expected at most output_tokens ({out}), got {reason}", path=path, line=line,
                         field="reason_tokens")
    for k in _INT_LISTS:
        v = d.get(k)
        if v is not None and (not isinstance(v, list) or not all(_count(x) is not None for x in v)):
            raise InputError(f"expected a list of integers in 0..{MAX_TOKENS}", path=path, line=line, field=k)
    v = d.get("prefix")
    if v is not None and (not isinstance(v, list) or not all(_block_id(x) for x in v)):
        raise InputError(f"expected a list of block ids, integers in 0..{MAX_BLOCK_ID}", path=path, line=line,
                         field="prefix")
    if d.get("session") is not None and _name(d["session"]) is None:
        raise InputError("expected a string", path=path, line=line, field="session")
    if d.get("turn") is not None and _count(d["turn"]) is None:
        raise InputError("expected an integer >= 0", path=path, line=line, field="turn")
    if d.get("think_time") is not None and _number(d["think_time"]) is None:
        raise InputError("expected a number of seconds >= 0", path=path, line=line, field="think_time")
    return t, inp, out, reason


def request_from_dict(d: Any, *, path: str = "<requests>", line: int | None = None) -> Request:
    """Validate one decoded line (`check_request`); errors name the file, line and field."""
    t, inp, out, reason = check_request(d, path, line)
    extra = {k: v for k, v in d.items() if k not in _FIELDS}
    return Request(
        id=str(d["id"]), t=t, client=str(d["client"]), category=d["category"],
        input_tokens=inp, output_tokens=out, reason_tokens=reason,
        images=_ints(d.get("images")), audio=_ints(d.get("audio")), video=_ints(d.get("video")),
        session=None if d.get("session") is None else str(d["session"]),
        turn=None if d.get("turn") is None else int(d["turn"]),
        think_time=None if d.get("think_time") is None else float(d["think_time"]),
        prefix=_ints(d.get("prefix")), extra=extra,
    )


def _ints(v: list[Any] | None) -> list[int] | None:
    return None if v is None else [int(x) for x in v]


_HEADER_TYPES: dict[str, tuple[str, Any]] = {
    # header key -> (what is expected, check); keys other tools add are kept as they are
    "seed": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "duration": (f"a number of seconds in 0..{MAX_TIME:g}", lambda v: _number(v) is not None),
    "scenario_duration": (f"a number of seconds in 0..{MAX_TIME:g}", lambda v: _number(v) is not None),
    "shard": ('"i/N"', lambda v: isinstance(v, str) and _is_shard(v)),
    "source": ("a string", lambda v: isinstance(v, str)),
    "scenario_digest": ("a string", lambda v: isinstance(v, str)),
    "kind": ("a string", lambda v: isinstance(v, str)),
}


def _is_shard(v: str) -> bool:
    a, sep, b = v.partition("/")
    return bool(sep) and a.isdigit() and b.isdigit() and int(a) < int(b)


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
    for k, (want, ok) in _HEADER_TYPES.items():
        if head.get(k) is not None and not ok(head[k]):
            raise InputError(f"expected {want} in the header, got {head[k]!r:.40}", path=str(p), line=1, field=k)
    return head


def iter_requests(path: str | Path) -> Iterator[Request]:
    """Stream the requests of a file, checking order; bad lines raise InputError with their number."""
    return (r for r, _ in iter_request_lines(path))


def iter_request_lines(path: str | Path) -> Iterator[tuple[Request, bytes]]:
    """`iter_requests` with each request's line as written (for byte-exact merges of shard files)."""
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
                raise InputError(f"invalid JSON ({str(e).split(':')[0]})", path=str(p), line=n) from None
            r = request_from_dict(d, path=str(p), line=n)
            if r.t < last_t:
                raise InputError(f"requests must be ordered by t ({r.t} < {last_t})", path=str(p), line=n, field="t")
            last_t = r.t
            yield r, raw
