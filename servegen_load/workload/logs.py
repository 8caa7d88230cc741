"""Streaming readers of request logs into compact numpy column chunks.

Every reader turns a log into `LogChunk`s of about `chunk_rows` rows: numpy columns, never a
Python object per row, so a 10-million-row log costs about 30 bytes a row in memory
(float64 time, int32 client, int32 lengths, int64 session). Formats (`fmt`):

    azure     Azure LLM inference trace 2023 CSV: TIMESTAMP (wall clock), ContextTokens, GeneratedTokens
    mooncake  Mooncake JSONL: timestamp (ms), input_length, output_length (hash_ids ignored)
    bailian   Alibaba's Qwen-Bailian traces (qwen_trace*_blksz_16.jsonl): Mooncake's keys with
              timestamp in seconds, plus chat_id / parent_chat_id, which chain a conversation's
              turns: the session is the chain's first chat_id
    burstgpt  BurstGPT CSV: Timestamp (seconds from the trace's start), Model (read as the client:
              each model is a service with its own rate and lengths), Request tokens, Response tokens
    csv       any CSV/TSV with a header; columns named by `ColumnMap` or guessed from common names
    jsonl     one JSON object per line; same column mapping as csv
    requests  this package's requests files (header format servegen-load/requests/v1)
    results   this package's results files (header format servegen-load/results/v1); time is
              `scheduled` unless the column map says `time="sent"`
    auto      detected from the first line (see `detect_format`)

Columns (`ColumnMap` roles, the names used everywhere else):
`time` (seconds / ms / us / ns numbers, or ISO-8601 timestamps), `client` (client or tenant id),
`session` (session / conversation id), `input`, `output`, `reason` (token counts),
`image_count`, `image_tokens`, `audio_count`, `audio_tokens`, `video_count`, `video_tokens`
(items per request and the request's total tokens of that modality).

Time: `LogChunk.t` is seconds after `origin`, the time of the log's first good row (so t may be
negative for a log that is not sorted); `origin` is epoch seconds when the time column is a wall
clock (ISO timestamps or epoch numbers), else the column's own zero.

Bad rows (wrong field count, unparsable time, a numeric time more than `MAX_ABS_TIME` seconds from
0, non-integer or negative token counts, empty time/input/output) are counted per chunk in `LogChunk.bad` with the first few line numbers and
reasons; `load_log` and `warn_bad_rows` print one warning line on stderr. A file that cannot be
read as a log at all (no header, no time column, no usable row) raises `InputError`.

CSV speed: the common case (no quotes) is parsed without splitting rows into Python strings:
field boundaries come from the byte positions of delimiters and newlines, each needed column
is gathered into a fixed-width byte matrix viewed as a numpy `S` array, and numpy converts it
(`astype(float64)` or `datetime64[ns]`). Blocks with quotes go through the `csv` module.
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InputError
from ..formats import REQUESTS_FORMAT, RESULTS_FORMAT, SECOND_HEADER, first_object, format_kind, is_footer

FORMATS = ("auto", "azure", "mooncake", "bailian", "burstgpt", "csv", "jsonl", "requests", "results")
MEDIA = ("image_count", "image_tokens", "audio_count", "audio_tokens", "video_count", "video_tokens")
ROLES = ("time", "client", "session", "input", "output", "reason", *MEDIA)
TIME_UNITS = ("auto", "s", "ms", "us", "ns", "iso")
MAX_EXAMPLES = 5
_UNIT_WORDS = {"s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s", "ms": "ms", "msec": "ms",
               "millis": "ms", "milliseconds": "ms", "us": "us", "usec": "us", "micros": "us",
               "microseconds": "us", "ns": "ns", "nsec": "ns", "nanos": "ns", "nanoseconds": "ns"}
_UNIT_IN_NAME = re.compile(r"(?:^|[_\-. (\[])(" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True))
                           + r")\)?\]?$")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "auto": 1.0}  # a numeric time unit, in seconds
MAX_ABS_TIME = 1e11  # seconds (epoch: year 5138): a numeric time beyond is a wrong unit or garbage
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
BAILIAN_KEYS = (*MOONCAKE_KEYS, "chat_id", "parent_chat_id")
_ROOT = "\x00root_chat_id"  # the key `bailian` rows get for their conversation's first chat_id
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")
_PAD = 256  # zero bytes after a CSV block; fields longer than this take the slow slicing path
_REQUIRED = ("time", "input", "output")  # a row missing one of these (when mapped) is bad

JSON_CHUNK_BYTES = 16 << 20  # JSON lines decoded at once (their objects take several times that)

# Column names tried, in order, when a role is not named explicitly (case and punctuation ignored).
GUESSES: dict[str, tuple[str, ...]] = {
    # `request_time` last: nginx logs the request's latency under that name (`$request_time`) beside
    # its clock (`time_iso8601`, `time_local`, `msec`: the time the answer ended)
    "time": ("timestamp", "time", "t", "ts", "arrival_time", "arrival", "created_at",
             "created", "start_time", "scheduled", "datetime", "date", "request_timestamp", "arrival_timestamp",
             "received_at", "submitted_at", "requested_at", "event_time", "create_time", "request_start", "time_iso8601",
             "time_local", "msec", "request_time"),
    # the account that pays (a key, a team) before the end user: OpenAI's `user` field is optional and
    # mostly empty in gateway logs (LiteLLM's spend logs: api_key, user, team_id)
    "client": ("client", "client_id", "tenant", "tenant_id", "customer", "customer_id", "api_key", "api_key_id",
               "api_key_hash", "hashed_api_key", "key_hash", "org", "org_id", "organization", "organization_id",
               "account", "account_id", "team", "team_id", "project", "project_id", "app", "app_id", "application",
               "user", "user_id", "end_user"),
    "session": ("session", "session_id", "conversation", "conversation_id", "chat_id", "thread_id"),
    "input": ("input_tokens", "prompt_tokens", "request_tokens", "input_length", "contexttokens", "context_tokens",
              "num_prompt_tokens", "input_len", "prompt_len", "text_tokens", "prompt_length", "prompt_token_count",
              "input_token_count", "num_input_tokens", "tokens_in", "in_tokens",
              "usage.prompt_tokens", "usage.input_tokens",  # JSON logs of OpenAI / Anthropic responses
              "usageMetadata.promptTokenCount"),  # Gemini's
    "output": ("output_tokens", "completion_tokens", "response_tokens", "output_length", "generatedtokens", "generated_tokens",
               "num_completion_tokens", "output_len", "completion_len", "completion_length", "completion_token_count",
               "output_token_count", "candidates_token_count", "num_output_tokens", "tokens_out", "out_tokens",
               "response_length", "generated_length", "usage.completion_tokens", "usage.output_tokens",
               "usageMetadata.candidatesTokenCount"),
    "reason": ("reason_tokens", "reasoning_tokens", "thinking_tokens",
               "usage.completion_tokens_details.reasoning_tokens",  # OpenAI chat completions
               "usage.output_tokens_details.reasoning_tokens",  # OpenAI Responses API
               "usageMetadata.thoughtsTokenCount"),  # Gemini (not in its candidatesTokenCount)
    **{m: (m, m.replace("_count", "s") if m.endswith("_count") else m, f"num_{m.split('_')[0]}s")
       for m in MEDIA},
}


# Anthropic's prompt parts beside `input_tokens` (which counts only the uncached rest)
ANTHROPIC_CACHE = ("cache_read_input_tokens", "cache_creation_input_tokens")


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which column plays which role. None: guess from `GUESSES`; "": the log has no such column."""

    time: str | None = None
    time_unit: str = "auto"
    client: str | None = None
    session: str | None = None
    input: str | None = None
    output: str | None = None
    reason: str | None = None
    image_count: str | None = None
    image_tokens: str | None = None
    audio_count: str | None = None
    audio_tokens: str | None = None
    video_count: str | None = None
    video_tokens: str | None = None

    def over(self, base: ColumnMap) -> ColumnMap:
        """This map's explicit choices on top of `base` (a format preset)."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name != "time_unit" and getattr(self, f.name) is not None}
        if self.time_unit != "auto":
            changes["time_unit"] = self.time_unit
        return replace(base, **changes)


_NONE = ColumnMap(**{r: "" for r in ROLES if r != "time"})
PRESETS: dict[str, ColumnMap] = {
    "azure": replace(_NONE, time="TIMESTAMP", time_unit="iso", input="ContextTokens", output="GeneratedTokens"),
    # session guessed: AIPerf's mooncake_trace files add `session_id` for multi-turn conversations
    "mooncake": replace(_NONE, time="timestamp", time_unit="ms", session=None, input="input_length",
                        output="output_length"),
    "bailian": replace(_NONE, time="timestamp", time_unit="s", session=_ROOT, input="input_length",
                       output="output_length"),
    # session guessed: later BurstGPT releases add a `Session ID` column
    "burstgpt": replace(_NONE, time="Timestamp", time_unit="s", client="Model", session=None, input="Request tokens",
                        output="Response tokens"),
    "requests": replace(_NONE, time="t", time_unit="s", client="client", session="session", input="input_tokens",
                        output="output_tokens", reason="reason_tokens", image_count="images",
                        image_tokens="images", audio_count="audio", audio_tokens="audio", video_count="video",
                        video_tokens="video"),
    "results": replace(_NONE, time="scheduled", time_unit="s", client="client", session="session",
                       input="input_tokens", output="output_tokens", reason="reason_tokens"),
}
# Results written by other tools may carry only server usage: fall back to these keys.
_RESULTS_FALLBACK = {"input": "prompt_tokens", "output": "completion_tokens", "reason": "reasoning_tokens"}


@dataclass(slots=True)
class BadRows:
    """Rows that could not be used: how many, and the first few with line numbers and reasons."""

    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, reason: str, n: int = 1) -> None:
        self.count += n
        self._keep([(line, reason)])

    def merge(self, other: BadRows) -> None:
        self.count += other.count
        self._keep(other.examples)

    def _keep(self, new: list[tuple[int, str]]) -> None:
        """Keep the `MAX_EXAMPLES` earliest lines (whatever order the checks found them in)."""
        if new and (len(self.examples) < MAX_EXAMPLES or min(new)[0] < self.examples[-1][0]):
            self.examples = sorted([*self.examples, *new])[:MAX_EXAMPLES]

    def describe(self) -> str:
        return "; ".join(f"line {ln}: {why}" for ln, why in sorted(self.examples))


@dataclass(slots=True)
class LogChunk:
    """A block of rows as numpy columns (see the module docstring for units and origins).

    `client` holds codes into `clients` (stable across the chunks of one read); without a client
    column every row is client 0, named "all", and `has_client` is False. Missing optional
    values are -1 (`reason`, media columns, `session`). `session` codes are 64-bit hashes of the
    session ids (equal ids, equal codes), only meant for grouping.
    """

    path: str
    fmt: str
    t: np.ndarray
    client: np.ndarray
    input: np.ndarray
    output: np.ndarray
    clients: list[str]
    origin: float = 0.0
    wall_clock: bool = False
    has_client: bool = False
    reason: np.ndarray | None = None
    session: np.ndarray | None = None
    media: dict[str, np.ndarray] = field(default_factory=dict)
    rows: int = 0          # rows read (good + bad)
    bad: BadRows = field(default_factory=BadRows)
    roles: dict[str, str] = field(default_factory=dict)  # role -> the column read for it
    time_unit: str = ""    # the unit the time column was read in (s, ms, us, ns, iso)
    unit_reason: str = ""  # why: given, epoch by magnitude, the column's name, fractional values
    utc_offset: float = 0.0  # seconds east of UTC the log's ISO times carry (its first ones'; 0 for "Z" or none)

    def describe(self) -> str:
        """What was read: format, time column and unit (and why), the other roles' columns."""
        t = self.roles.get("time", "?")
        unit = f"{self.time_unit}" + (f", {self.unit_reason}" if self.unit_reason else "")
        others = ", ".join(f"{r} {c!r}" for r, c in self.roles.items() if r != "time")
        return f"{self.fmt}: time {t!r} ({unit}){'; ' + others if others else ''}"

    def __len__(self) -> int:
        return int(self.t.size)

    def take(self, keep: np.ndarray) -> LogChunk:
        """The rows where `keep` (a boolean mask or index array) holds; bad-row counts are kept."""
        return LogChunk(
            path=self.path, fmt=self.fmt, t=self.t[keep], client=self.client[keep], input=self.input[keep],
            output=self.output[keep], clients=self.clients, origin=self.origin, wall_clock=self.wall_clock,
            has_client=self.has_client, reason=None if self.reason is None else self.reason[keep],
            session=None if self.session is None else self.session[keep],
            media={k: v[keep] for k, v in self.media.items()}, rows=self.rows, bad=self.bad,
            roles=self.roles, time_unit=self.time_unit, unit_reason=self.unit_reason, utc_offset=self.utc_offset,
        )

    def time_range(self, start: float | None = None, end: float | None = None) -> LogChunk:
        """Rows with start <= t - min(t) < end (seconds after the first request); t is unchanged."""
        if self.t.size == 0 or (start is None and end is None):
            return self
        rel = self.t - self.t.min()
        keep = np.ones(self.t.size, dtype=bool)
        if start is not None:
            keep &= rel >= start
        if end is not None:
            keep &= rel < end
        return self.take(keep)

    def present(self, role: str) -> bool:
        """Whether the log has values for a role (`input`, `reason`, `image_count`, `session`, ...)."""
        if role == "client":
            return self.has_client
        col = self.media.get(role) if role in MEDIA else getattr(self, role, None)
        return col is not None and bool(np.any(col >= 0))


# --------------------------------------------------------------------------- public entry points


def read_log(path: str | Path, fmt: str = "auto", columns: ColumnMap | None = None,
             chunk_rows: int = 1_000_000) -> Iterator[LogChunk]:
    """Stream a log as `LogChunk`s of about `chunk_rows` rows (CSV: blocks of at most 262,144 rows).

    Raises InputError for structural problems (unknown format, no header, no time column,
    a named column that is not there, no usable row at all); bad rows are counted, not raised.
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}", path=str(p))
    if not p.exists():
        raise InputError("no such log file", path=str(p))
    if p.is_dir():
        raise InputError("expected a log file, got a directory", path=str(p))
    if fmt == "auto":
        fmt = detect_format(p)
    cols = (columns or ColumnMap()).over(PRESETS.get(fmt, ColumnMap()))
    if cols.time_unit not in TIME_UNITS:
        raise InputError(f"unknown time unit {cols.time_unit!r}; expected one of {', '.join(TIME_UNITS)}",
                         path=str(p))
    reader = _CsvReader(p, fmt, cols, chunk_rows) if fmt in ("azure", "burstgpt", "csv") else \
        _JsonReader(p, fmt, cols, chunk_rows)
    try:
        yield from reader.chunks()
    except (OSError, EOFError, zlib.error) as e:  # a damaged gzip, a file that cannot be read
        raise InputError(f"cannot read the log ({type(e).__name__}: {e})", path=str(p)) from None


CLOCKS = (1.0, 0.1, 0.01)  # coarse clocks a log may be written on (seconds; finer ones move nothing a server sees)


def log_clock(t: np.ndarray, share: float = 0.999) -> float:
    """The coarsest of `CLOCKS` on which (nearly) every absolute time lies, else 0.

    Why: BurstGPT and many gateways log whole seconds. Ten requests in one second then look like a
    batch sent at once, which neither `fit` should generate nor `compare` should score against
    a stream timed to the microsecond."""
    t = np.asarray(t, dtype=np.float64)
    if t.size < 2:
        return 0.0
    for c in CLOCKS:
        k = t / c
        if float(np.mean(np.abs(k - np.rint(k)) < 1e-3)) >= share:
            return c
    return 0.0


def load_log(path: str | Path, fmt: str = "auto", columns: ColumnMap | None = None,
             chunk_rows: int = 1_000_000, warn: bool = True) -> LogChunk:
    """The whole log as one chunk; prints the bad-row warning on stderr unless `warn` is False."""
    out = concat(read_log(path, fmt, columns, chunk_rows))
    if warn:
        warn_bad_rows(out)
    return out


def concat(chunks: Iterable[LogChunk]) -> LogChunk:
    """Concatenate the chunks of one read (same file and code tables)."""
    every = list(chunks)
    if not every:
        raise InputError("the log has no rows")
    bad = BadRows()
    for c in every:
        bad.merge(c.bad)
    # chunks with no good rows carry only bad-row counts (and may predate the origin and columns)
    parts = [c for c in every if len(c)] or every[-1:]
    first, last = parts[0], parts[-1]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(c, name) for c in parts])

    media = {k: np.concatenate([c.media[k] for c in parts]) for k in first.media}
    return LogChunk(
        path=first.path, fmt=first.fmt, t=cat("t"), client=cat("client"), input=cat("input"),
        output=cat("output"), clients=list(last.clients), origin=first.origin, wall_clock=first.wall_clock,
        has_client=first.has_client, reason=None if first.reason is None else cat("reason"),
        session=None if first.session is None else cat("session"), media=media,
        rows=sum(c.rows for c in every), bad=bad, roles=first.roles, time_unit=first.time_unit,
        unit_reason=first.unit_reason, utc_offset=first.utc_offset,
    )


def bad_rows_warning(chunk: LogChunk) -> str | None:
    """The warning line about skipped rows (counts and the first line numbers), None without any."""
    if not chunk.bad.count:
        return None
    return (f"servegen-load: warning: {chunk.path}: skipped {chunk.bad.count} bad row(s) of {chunk.rows} "
            f"({chunk.bad.describe()})")


def warn_bad_rows(chunk: LogChunk, stream: IO[str] | None = None) -> None:
    """One warning line on stderr when rows were skipped: counts and the first line numbers."""
    msg = bad_rows_warning(chunk)
    if msg:
        print(msg, file=stream or sys.stderr)


def detect_format(path: str | Path) -> str:
    """Guess the format from the first non-blank line.

    A JSON object line: `requests`/`results` by its `format` key, `mooncake` when it has every
    key of Mooncake's trace (`MOONCAKE_KEYS`, hash_ids included: a JSONL log with timestamp,
    input_length and output_length in seconds must not be read as Mooncake's milliseconds),
    `bailian` when it also has `chat_id` and `parent_chat_id` (Alibaba's traces: seconds), else `jsonl`. Otherwise CSV: `azure` when the header has every column of `AZURE_COLUMNS`
    (the 2023 and 2024 traces), `burstgpt` with every column of `BURSTGPT_COLUMNS`, else `csv`.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such log file", path=str(p))
    if p.is_dir():
        raise InputError("expected a log file, got a directory", path=str(p))
    try:
        with _open(p) as fh:
            first = b""
            for raw in fh:
                if raw.strip():
                    first = raw.strip().lstrip(b"\xef\xbb\xbf")
                    break
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read the log ({type(e).__name__}: {e})", path=str(p)) from None
    if not first:
        raise InputError("the log is empty", path=str(p))
    if first.startswith(b"{"):
        obj = first_object(first)  # formats' own reading of a first line, as `sniff` does
        if obj is not None:
            kind = format_kind(obj)
            if kind in ("requests", "results"):
                return kind
            if set(BAILIAN_KEYS) <= obj.keys():  # Mooncake's keys, but seconds and chained chats
                return "bailian"
            if set(MOONCAKE_KEYS) <= obj.keys():  # every key: a log that only shares a few is jsonl
                return "mooncake"
        return "jsonl"
    header = {h.strip().strip('"') for h in first.decode("utf-8", "replace").split(",")}
    if set(AZURE_COLUMNS) <= header:
        return "azure"
    if set(BURSTGPT_COLUMNS) <= header:
        return "burstgpt"
    return "csv"


# --------------------------------------------------------------------------- shared machinery


def _open(p: Path) -> IO[bytes]:
    with p.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    return p.open("rb")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _timed_name(names: list[str]) -> str | None:
    """The first column named a time word with a unit (`time_s`, `timestamp_ms`, `arrival_time_us`),
    whose unit `_Converter._numeric_unit` then reads from the name."""
    words = {_norm(g) for g in GUESSES["time"]}
    for n in names:
        m = _UNIT_IN_NAME.search(n.lower())
        if m is not None and _norm(n[:m.start(1)]) in words:
            return n
    return None


def _resolve_columns(cols: ColumnMap, names: list[str], path: str) -> dict[str, str]:
    """role -> column name present in the log. Explicit names must exist; others are guessed."""
    by_norm: dict[str, str] = {}
    for n in names:
        by_norm.setdefault(_norm(n), n)
    out: dict[str, str] = {}
    used: set[str] = set()
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    for role in ROLES:
        want = getattr(cols, role)
        if want == "":
            continue
        if want is not None:
            if want in names:
                out[role] = want
            elif _norm(want) in by_norm:
                out[role] = by_norm[_norm(want)]
            else:
                raise InputError(f"no column {want!r} for {role}; the log has: {shown}", path=path)
            continue
        for g in GUESSES[role]:
            hit = by_norm.get(_norm(g))
            if hit is not None and (hit not in used or role.endswith("_tokens")):
                out[role] = hit
                break
        if role == "time" and role not in out:
            hit = _timed_name(names)
            if hit is not None:
                out[role] = hit
        if role in out:
            used.add(out[role])
    if "time" not in out:
        raise InputError(f"no time column found (the log has: {shown}); name it with --time-column",
                         path=path)
    return out


class _Converter:
    """Turns raw column blocks into typed arrays; keeps the code tables and time origin of one read."""

    def __init__(self, path: str, fmt: str, cols: ColumnMap, roles: dict[str, str]) -> None:
        self.path, self.fmt, self.cols, self.roles = path, fmt, cols, roles
        self.time_unit = cols.time_unit
        preset = PRESETS.get(fmt)
        self.unit_reason = "" if cols.time_unit == "auto" else \
            f"the {fmt} format's unit" if preset is not None and preset.time_unit == cols.time_unit else "given"
        self.origin: float | None = None
        self.origin_ns: int | None = None
        self.utc_offset = 0.0
        self.wall_clock = False
        self.has_client = "client" in roles
        self.client_codes: dict[Any, int] = {}
        self.clients: list[str] = [] if self.has_client else ["all"]

    def convert(self, raw: dict[str, Any], lines: np.ndarray, bad: BadRows, rows: int) -> LogChunk:
        """`raw`: role -> S/U numpy array or list of JSON values, aligned with `lines` (line numbers)."""
        n = lines.size
        bad_mask = np.zeros(n, dtype=bool)
        reasons: list[tuple[np.ndarray, str]] = []

        def flag(mask: np.ndarray, why: str) -> None:
            new = mask & ~bad_mask
            if new.any():
                reasons.append((new, why))
                bad_mask[:] |= new

        t = self._time(raw["time"], flag)
        ints: dict[str, np.ndarray] = {}
        for role in ("input", "output", "reason", *MEDIA):
            if role not in raw:
                continue
            v = raw[role]
            if role in MEDIA and self.fmt == "requests":
                v = _media_from_lists(v, role.endswith("_count"))
            vals, nonnum = _numeric(v)
            flag(nonnum, f"{self.roles[role]}: expected a number")
            missing = np.isnan(vals) & ~nonnum
            if role in _REQUIRED:
                flag(missing, f"{self.roles[role]}: empty")
            ok = ~np.isnan(vals)
            flag(ok & ((vals < 0) | (vals != np.floor(vals)) | (vals > 2**31 - 1)),
                 f"{self.roles[role]}: expected a non-negative integer")
            ints[role] = np.where(ok & (vals >= 0) & (vals < 2**31), vals, -1).astype(np.int32)
        client = self._codes(raw["client"]) if "client" in raw else np.zeros(n, dtype=np.int32)
        session = _hash_codes(raw["session"]) if "session" in raw else None
        if session is not None and "client" in raw:  # a session is a client's: tenants number theirs alike
            with np.errstate(over="ignore"):
                mixed = (session.astype(np.uint64) ^ (client.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
            session = np.where(session >= 0, (mixed >> np.uint64(1)).astype(np.int64), -1)

        examples: list[tuple[int, str]] = []
        for mask, why in reasons:
            examples.extend((int(lines[i]), why) for i in np.flatnonzero(mask)[:MAX_EXAMPLES])
        for ln, why in sorted(examples)[:MAX_EXAMPLES]:
            bad.add(ln, why, 0)
        bad.count += int(bad_mask.sum())
        keep = ~bad_mask
        sel = (lambda a: a[keep]) if bad_mask.any() else (lambda a: a)
        m = int(keep.sum())

        def col(role: str) -> np.ndarray:
            return sel(ints[role]) if role in ints else np.full(m, -1, dtype=np.int32)

        return LogChunk(
            path=self.path, fmt=self.fmt, t=sel(t), client=sel(client), input=col("input"), output=col("output"),
            clients=list(self.clients), origin=self.origin or 0.0, wall_clock=self.wall_clock,
            utc_offset=self.utc_offset,
            has_client=self.has_client, reason=col("reason") if "reason" in self.roles else None,
            session=None if session is None else sel(session),
            media={k: col(k) for k in MEDIA if k in self.roles}, rows=rows, bad=bad, roles=dict(self.roles),
            time_unit=self.time_unit, unit_reason=self.unit_reason,
        )

    # -- time

    def _time(self, v: Any, flag: Any) -> np.ndarray:
        """Seconds after the origin (the first valid time of the read), nan where invalid."""
        unit = self.time_unit
        if unit == "auto" and len(v):
            vals, nonnum = _numeric(v)
            if np.mean(nonnum | np.isnan(vals)) > 0.5:
                unit = "iso"
            else:
                unit = self._numeric_unit(vals[np.isfinite(vals)], _decimal_points(v))
            self.time_unit = unit
        if unit == "iso":
            ns, badm = _iso_ns(v)
            flag(badm, f"{self.roles['time']}: expected an ISO-8601 timestamp")
            if self.origin_ns is None and (~badm).any():
                self.origin_ns = int(ns[np.argmax(~badm)])
                self.origin, self.wall_clock = self.origin_ns / 1e9, True
                self.utc_offset = _utc_offset(v, ~badm)
            return np.where(badm, np.nan, (ns - (self.origin_ns or 0)).astype(np.float64) / 1e9)
        vals, nonnum = _numeric(v)
        scale = UNIT_SECONDS[unit]
        badm = nonnum | ~np.isfinite(vals)
        flag(badm, f"{self.roles['time']}: expected a finite number")
        with np.errstate(invalid="ignore"):
            far = ~badm & (np.abs(vals) * scale > MAX_ABS_TIME)
        flag(far, f"{self.roles['time']}: expected a time within {MAX_ABS_TIME:g} s of 0 (read in {unit})")
        badm |= far
        if self.origin is None and (~badm).any():
            self.origin = float(vals[np.argmax(~badm)]) * scale
            self.wall_clock = self.fmt not in ("requests", "results") and abs(self.origin) > 1e8
        return vals * scale - (self.origin or 0.0)

    def _numeric_unit(self, finite: np.ndarray, decimals: bool = False) -> str:
        """The unit of numeric times, or an InputError naming --time-unit when it is ambiguous.

        Epoch times are told apart by magnitude (the median: a garbage row cannot decide):
        1e8..1e11 seconds (1973..5138), then ms, us, ns. Relative times (smaller) are ambiguous
        (a 7-day log in seconds and a 10-minute log in ms look alike): a unit in the column's
        name decides (`t_ms`, `time_s`, `elapsed_us`, `offset_seconds`...); fractional values,
        or values written with a decimal point (`12.0`), are seconds (ms, us and ns logs count
        whole units); else the log needs --time-unit.
        """
        mag = float(np.median(np.abs(finite))) if finite.size else 0.0
        if mag >= 1e8:
            self.unit_reason = "epoch, by magnitude"
            return "ns" if mag > 1e17 else "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"
        name = self.roles.get("time", "")
        m = _UNIT_IN_NAME.search(name.lower())
        if m:
            self.unit_reason = f"relative, unit from the column name {name!r}"
            return _UNIT_WORDS[m.group(1)]
        if decimals or (finite.size and bool(np.any(finite != np.floor(finite)))):
            self.unit_reason = "relative, fractional values"
            return "s"
        if finite.size < 2 or float(finite.max()) == float(finite.min()):
            self.unit_reason = "relative, one instant"  # no durations: the unit changes nothing
            return "s"
        raise InputError(f"{name}: relative whole-number times (not epoch), so their unit is ambiguous "
                         "(seconds? milliseconds?): give --time-unit s, ms, us or ns", path=self.path)

    # -- codes

    def _codes(self, v: Any) -> np.ndarray:
        """Client names -> int32 codes stable across chunks (a dict over distinct names only)."""
        if isinstance(v, np.ndarray):
            vals = v.tolist()
        else:
            vals = ["" if x is None else x if isinstance(x, str) else orjson.dumps(x).decode() for x in v]
        table = self.client_codes
        for u in dict.fromkeys(vals):  # first seen, first coded: a set's order changes with the process's hash seed
            if u in table:
                continue
            table[u] = len(self.clients)
            self.clients.append(u.decode("utf-8", "replace") if isinstance(u, bytes) else str(u))
        return np.fromiter(map(table.__getitem__, vals), dtype=np.int32, count=len(vals))


def _numeric(v: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (nan where empty/None) and a mask of entries that are not numbers."""
    n = len(v)
    if isinstance(v, np.ndarray) and v.dtype.kind in "SU":
        try:
            return v.astype(np.float64), np.zeros(n, dtype=bool)
        except ValueError:
            pass
        empty = np.char.strip(v) == (b"" if v.dtype.kind == "S" else "")
        if empty.any():
            w = v.copy()
            w[empty] = b"nan" if v.dtype.kind == "S" else "nan"
            try:
                vals = w.astype(np.float64)
                vals[empty] = np.nan
                return vals, np.zeros(n, dtype=bool)
            except ValueError:
                pass
        items: list[Any] = v.tolist()
    else:
        try:
            # numpy would read JSON true/false as 1/0: such rows take the per-item path (bad rows)
            if not any(type(x) is bool for x in v):
                arr = np.array(v, dtype=np.float64)
                if arr.shape == (n,):
                    return arr, np.zeros(n, dtype=bool)
        except (ValueError, TypeError, OverflowError):
            pass
        items = list(v)
    out = np.full(n, np.nan)
    bad = np.zeros(n, dtype=bool)
    for i, x in enumerate(items):
        if x is None or (isinstance(x, bytes | str) and not x.strip()):
            continue
        if isinstance(x, bool) or not isinstance(x, int | float | str | bytes):
            bad[i] = True
            continue
        try:
            out[i] = float(x)
        except (ValueError, OverflowError):
            bad[i] = True
    return out, bad


def _decimal_points(v: Any) -> bool:
    """Whether numeric times were written as decimals (`12.5`, `12.0`; JSON floats)."""
    if isinstance(v, np.ndarray) and v.dtype.kind in "SU":
        dot = b"." if v.dtype.kind == "S" else "."
        return bool(np.any(np.char.find(v[:1000], dot) >= 0))
    return any(isinstance(x, float) for x in list(v)[:1000])


_OFFSET = re.compile(r"\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*([+-])(\d\d):?(\d\d)?\s*$")  # after a time of day


def _utc_offset(v: Any, good: np.ndarray, sample: int = 1000) -> float:
    """Seconds east of UTC that most of the first good ISO times say (`+09:00`, `-0800`, `+05`);
    0 for `Z`, ` UTC` or none. Why: hours of day and weekends are the log's own (a Tokyo service's
    Saturday begins at 15:00 UTC on Friday); numpy reads the offset and drops it."""
    seen: Counter[float] = Counter()
    for i in np.flatnonzero(good)[:sample].tolist():
        x = v[i]
        m = _OFFSET.search(x.decode("latin-1") if isinstance(x, bytes) else str(x))
        seen[0.0 if m is None else (1 if m[1] == "+" else -1) * (int(m[2]) * 3600 + int(m[3] or 0) * 60)] += 1
    return seen.most_common(1)[0][0] if seen else 0.0


_CLF = re.compile(r"\s*(\d\d)/([A-Za-z]{3})/(\d{4}):(\d\d:\d\d:\d\d(?:\.\d+)?)(?:\s*([+-]\d\d):?(\d\d))?\s*$")
_MONTHS = {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                           "nov", "dec"))}
_COMMA_FRACTION = re.compile(r"\d:\d\d:\d\d,\d")


def _iso_spelling(arr: np.ndarray) -> np.ndarray:
    """Other spellings of the same instants, as ISO-8601 numpy reads: a comma before the fraction
    (log4j's `2026-01-01 00:00:00,123`, which ISO-8601 allows) and the common log format of nginx
    and Apache (`time_local`: `01/Jan/2026:00:00:01 +0000`). Judged on the first value."""
    if not arr.size:
        return arr
    first = arr[0].decode("latin-1") if arr.dtype.kind == "S" else str(arr[0])
    if _COMMA_FRACTION.search(first):
        return np.char.replace(arr, b"," if arr.dtype.kind == "S" else ",", b"." if arr.dtype.kind == "S" else ".")
    if _CLF.match(first) is None:
        return arr

    def iso(x: str) -> str:
        m = _CLF.match(x)
        mon = _MONTHS.get(m[2].lower()) if m is not None else None
        if m is None or mon is None:
            return ""  # judged bad below
        return f"{m[3]}-{mon:02d}-{m[1]}T{m[4]}" + (f"{m[5]}:{m[6]}" if m[5] else "")

    text = arr.astype("U") if arr.dtype.kind == "S" else arr
    return np.array([iso(x) for x in text.tolist()], dtype=str)


def _iso_ns(v: Any) -> tuple[np.ndarray, np.ndarray]:
    """ISO-8601 timestamps -> int64 ns since the epoch (UTC when an offset is given) and a bad mask."""
    if isinstance(v, np.ndarray) and v.dtype.kind in "SU":
        arr = v
    else:  # JSON values (or numbers that were not mostly numbers): as text
        arr = np.array(["" if x is None else str(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)],
                       dtype=str)
    arr = _iso_spelling(arr)
    n = arr.size
    utc = b" UTC" if arr.dtype.kind == "S" else " UTC"  # SQL exports (BigQuery): "2024-05-10 00:00:01.5 UTC"
    if n and bool(np.char.endswith(arr[:1], utc)[0]):
        arr = np.char.replace(arr, utc, b"" if arr.dtype.kind == "S" else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # From text, not bytes: numpy 2.4 crashes the process (SIGSEGV) casting a few hundred
            # byte strings with a UTC offset ("Z", "+02:00") to datetime64; text casts fine.
            # Non-ASCII bytes raise UnicodeDecodeError (a ValueError): the slow path below.
            d = (arr.astype("U") if arr.dtype.kind == "S" else arr).astype("datetime64[ns]")
            # numpy also reads "now" and "today" (the clock of the machine reading the log)
            first = np.char.lstrip(arr).astype(arr.dtype.kind + "1")
            digit = np.isin(first, [c.encode() if arr.dtype.kind == "S" else c for c in "0123456789"])
            return d.astype(np.int64), np.isnat(d) | ~digit
        except ValueError:
            pass
        out = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)
        for i, x in enumerate(arr.tolist()):
            s = x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            s = s.strip()
            try:
                if not s or s[0] not in "0123456789":
                    raise ValueError
                d1 = np.datetime64(s, "ns")
                if np.isnat(d1):
                    raise ValueError
                out[i] = int(d1.astype(np.int64))
            except ValueError:
                bad[i] = True
    return out, bad


def _hash_codes(v: Any) -> np.ndarray:
    """64-bit codes of ids (FNV-1a over the bytes for S arrays); -1 for empty ids."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        w = v.dtype.itemsize
        m = np.ascontiguousarray(v).view(np.uint8).reshape(v.size, w)
        h = np.full(v.size, 14695981039346656037, dtype=np.uint64)
        prime = np.uint64(1099511628211)
        with np.errstate(over="ignore"):
            for j in range(w):
                h = (h ^ m[:, j].astype(np.uint64)) * prime
        codes = (h >> np.uint64(1)).astype(np.int64)
        codes[m[:, 0] == 0] = -1
        return codes
    items = v.tolist() if isinstance(v, np.ndarray) else v
    return np.fromiter((-1 if x is None or x == "" else hash(str(x)) & 0x7FFFFFFFFFFFFFFF for x in items),
                       dtype=np.int64, count=len(items))


def _media_from_lists(v: list[Any], count: bool) -> list[Any]:
    """Requests files list per-item tokens (`images: [576, 576]`): count them, or sum their tokens."""
    out: list[Any] = []
    for x in v:
        if x is None:
            out.append(None)
        elif isinstance(x, list):
            out.append(len(x) if count else sum(y for y in x if isinstance(y, int | float)))
        else:
            out.append(x)
    return out


# --------------------------------------------------------------------------- CSV


class _CsvReader:
    """Header + blocks of whole lines; the fast path works on byte positions (see module docstring)."""

    def __init__(self, path: Path, fmt: str, cols: ColumnMap, chunk_rows: int) -> None:
        self.path, self.fmt, self.cols, self.chunk_rows = path, fmt, cols, max(1, chunk_rows)

    def chunks(self) -> Iterator[LogChunk]:
        ps = str(self.path)
        with _open(self.path) as fh:
            line_no = 0
            header = b""
            for raw in fh:
                line_no += 1
                if raw.strip():
                    header = raw.rstrip(b"\r\n").lstrip(b"\xef\xbb\xbf")
                    break
            if not header:
                raise InputError("the log is empty (expected a CSV header line)", path=ps)
            try:
                text = header.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("not a text log (the first line is not UTF-8)", path=ps, line=line_no) from None
            delim = max((",", "\t", ";", "|"), key=text.count)
            try:
                names = [h.strip() for h in next(csv.reader([text], delimiter=delim))]
            except (csv.Error, StopIteration):
                raise InputError("expected a CSV header line of column names", path=ps, line=line_no) from None
            roles = _resolve_columns(self.cols, names, ps)
            conv = _Converter(ps, self.fmt, self.cols, roles)
            index = {role: names.index(col) for role, col in roles.items()}
            self.ncols, self.delim = len(names), delim.encode()
            sample = fh.peek(65536)[:65536] if hasattr(fh, "peek") else b""
            avg = max(8, len(sample) // max(1, sample.count(b"\n"))) if sample else 64
            # blocks of at most 256k rows keep the parse temporaries small (~100 bytes a row)
            block_bytes = int(max(avg * min(self.chunk_rows, 1 << 18), 1 << 12))
            rest = b""
            first_line = line_no + 1
            produced = False
            total_bad = BadRows()
            while True:
                data = fh.read(block_bytes)
                block = rest + data
                if not data:
                    if not block.strip():
                        break
                    if not block.endswith(b"\n"):
                        block += b"\n"
                    rest = b""
                else:
                    cut = block.rfind(b"\n")
                    if cut < 0:
                        rest = block
                        continue
                    block, rest = block[:cut + 1], block[cut + 1:]
                nlines = block.count(b"\n")
                bad = BadRows()
                raw, lines, rows = self._parse(block, index, first_line, bad)
                first_line += nlines
                if rows:
                    chunk = conv.convert(raw, lines, bad, rows)
                    total_bad.merge(bad)
                    produced = produced or len(chunk) > 0
                    yield chunk
                if not data:
                    break
            if not produced:
                raise _no_rows(ps, total_bad)

    def _parse(self, block: bytes, index: dict[str, int], first_line: int,
               bad: BadRows) -> tuple[dict[str, Any], np.ndarray, int]:
        if b"\r" in block:
            block = block.replace(b"\r", b"")
        if b'"' in block:
            return self._parse_slow(block, index, first_line, bad)
        buf = np.frombuffer(block + bytes(_PAD), dtype=np.uint8)  # zero padding for `_gather`'s windows
        nl = np.flatnonzero(buf == 10)
        starts = np.empty_like(nl)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        nonblank = nl > starts
        k = self.ncols - 1
        dl = np.flatnonzero(buf == self.delim[0]) if k else np.zeros(0, dtype=np.int64)
        count = np.diff(np.searchsorted(dl, nl), prepend=0)
        good = nonblank & (count == k)
        wrong = nonblank & ~good
        rows = int(nonblank.sum())
        if wrong.any():
            idx = np.flatnonzero(wrong)
            for i in idx[:MAX_EXAMPLES]:
                bad.add(first_line + int(i), f"expected {self.ncols} fields, got {int(count[i]) + 1}", 0)
            bad.count += idx.size
            dl = dl[good[np.searchsorted(nl, dl)]]
        lines = first_line + np.flatnonzero(good)
        gdl = dl.reshape(-1, k) if k else np.zeros((lines.size, 0), dtype=np.int64)
        fstart = np.concatenate([starts[good][:, None], gdl + 1], axis=1)
        fend = np.concatenate([gdl, nl[good][:, None]], axis=1)
        raw = {role: _gather(buf, fstart[:, j], fend[:, j]) for role, j in index.items()}
        return raw, lines, rows

    def _parse_slow(self, block: bytes, index: dict[str, int], first_line: int,
                    bad: BadRows) -> tuple[dict[str, Any], np.ndarray, int]:
        """Quoted fields: the csv module, one line at a time (quoted newlines are not supported)."""
        text = block.decode("utf-8", "replace").replace("\r", "").split("\n")  # csv refuses a bare CR
        if text and text[-1] == "":
            text.pop()
        cols: dict[str, list[str]] = {r: [] for r in index}
        lines: list[int] = []
        rows = 0
        for i, rec in enumerate(csv.reader(text, delimiter=self.delim.decode())):
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            rows += 1
            if len(rec) != self.ncols:
                bad.add(first_line + i, f"expected {self.ncols} fields, got {len(rec)}")
                continue
            lines.append(first_line + i)
            for r, j in index.items():
                cols[r].append(rec[j].strip())
        raw = {r: np.array(v, dtype=str) if v else np.zeros(0, dtype="U1") for r, v in cols.items()}
        return raw, np.array(lines, dtype=np.int64), rows


def _no_rows(path: str, bad: BadRows) -> InputError:
    detail = f" ({bad.count} bad row(s): {bad.describe()})" if bad.count else ""
    return InputError(f"no usable rows in the log{detail}", path=path)


def _gather(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Fields [start, end) of a zero-padded byte buffer as a numpy `S` array, without Python strings."""
    n = start.size
    length = end - start
    w = int(length.max(initial=0))
    if n == 0 or w == 0:
        return np.zeros(n, dtype="S1")
    if w > _PAD:  # unusually long fields: plain slicing is cheaper than a huge matrix
        b = buf.tobytes()
        return np.array([b[s:e] for s, e in zip(start.tolist(), end.tolist(), strict=True)], dtype=f"S{w}")
    # rows of a sliding-window view are the w bytes from each field's start (the buffer ends with
    # _PAD zero bytes, so no window runs off it); bytes past the field's end are zeroed
    m = sliding_window_view(buf, w)[start]
    m *= np.arange(w, dtype=np.int32) < length.astype(np.int32)[:, None]
    return m.view(f"S{w}").reshape(n)


# --------------------------------------------------------------------------- JSONL


def _chain_roots(objs: list[dict[str, Any]], roots: dict[int, int]) -> None:
    """Give each `bailian` row its conversation's first chat_id (`_ROOT`), following parent_chat_id.

    A turn comes after its parent, so one pass in file order knows every parent seen; a parent
    outside the trace (sampled, or before its start) roots its children itself, so they still
    share one session. A row without a usable chat_id has no session.
    """
    for o in objs:
        cid, parent = o.get("chat_id"), o.get("parent_chat_id")
        if type(cid) is not int:
            continue
        root = cid if type(parent) is not int or parent < 0 else roots.get(parent, parent)
        roots[cid] = root
        o[_ROOT] = root


class _JsonReader:
    """One JSON object per line (jsonl, mooncake, requests, results); the first line may be a header."""

    def __init__(self, path: Path, fmt: str, cols: ColumnMap, chunk_rows: int) -> None:
        self.path, self.fmt, self.cols, self.chunk_rows = path, fmt, cols, max(1, chunk_rows)

    def chunks(self) -> Iterator[LogChunk]:
        ps = str(self.path)
        conv: _Converter | None = None
        keys: list[str] = []
        with _open(self.path) as fh:
            line_no = 0
            if self.fmt in ("requests", "results"):
                head = fh.readline()
                line_no = 1
                want = REQUESTS_FORMAT if self.fmt == "requests" else RESULTS_FORMAT
                try:
                    h = orjson.loads(head)
                except orjson.JSONDecodeError:
                    h = None
                if not isinstance(h, dict) or h.get("format") != want:
                    raise InputError(f"expected a header line with format {want!r}", path=ps, line=1)
            produced = False
            total_bad = BadRows()
            roots: dict[int, int] = {}
            while True:
                batch: list[bytes] = []
                size = 0
                for raw in fh:
                    batch.append(raw)
                    size += len(raw)
                    # rows or bytes: a trace with hundreds of hash ids a row (Bailian) decoded a
                    # million rows at once into 19 GB of Python objects
                    if len(batch) >= self.chunk_rows or size >= JSON_CHUNK_BYTES:
                        break
                if not batch:
                    break
                first = line_no + 1
                line_no += len(batch)
                bad = BadRows()
                objs, lines = _decode_lines(batch, first, bad)
                if self.fmt == "results" and objs and is_footer(objs[-1]):  # a piped run's last line
                    objs, lines = objs[:-1], lines[:-1]
                if self.fmt in ("requests", "results"):
                    again = next((i for i, o in enumerate(objs) if "format" in o), None)
                    if again is not None:  # two files in one: every request would count twice
                        raise InputError(SECOND_HEADER, path=ps, line=int(lines[again]))
                if self.fmt == "bailian":
                    _chain_roots(objs, roots)
                rows = len(objs) + bad.count
                if conv is None:
                    if not objs:
                        total_bad.merge(bad)
                        if rows:
                            yield _empty_chunk(ps, self.fmt, rows, bad)
                        continue
                    keys = list(objs[0].keys())
                    roles = self._roles(keys + _nested_keys(objs[:100], set(keys)), objs[0], ps)
                    conv = _Converter(ps, self.fmt, self.cols, roles)
                if not rows:
                    continue
                raw = {}
                for role, key in conv.roles.items():
                    raw[role] = self._column(objs, key, role)
                chunk = conv.convert(raw, lines, bad, rows)
                total_bad.merge(bad)
                produced = produced or len(chunk) > 0
                yield chunk
            if not produced:
                raise _no_rows(ps, total_bad)

    def _roles(self, keys: list[str], first: dict[str, Any], path: str) -> dict[str, str]:
        cols = self.cols
        if self.fmt in ("requests", "results"):
            # optional keys of our own records appear only on some lines: keep them even if absent here
            roles = {r: getattr(cols, r) for r in ROLES if getattr(cols, r)}
            if self.fmt == "results":  # the request's own count, else the server's usage (per row)
                for r, usage in _RESULTS_FALLBACK.items():
                    if roles.get(r) == getattr(PRESETS["results"], r):
                        roles[r] = f"{roles[r]}|{usage}"
            for r in ("input", "output"):
                if r in roles and not any(k in keys for k in roles[r].split("|")):
                    roles.pop(r)
            if roles.get("time") not in keys:
                raise InputError(f"no {roles.get('time')!r} field in the records", path=path)
            return roles
        roles = _resolve_columns(cols, keys, path)
        inp = roles.get("input", "")
        if cols.input is None and inp.endswith("input_tokens"):
            # Anthropic's usage.input_tokens leaves out the prompt's cached part (read from and
            # written to the cache): the prompt the server took is their sum
            cached = [inp[:-len("input_tokens")] + k for k in ANTHROPIC_CACHE]
            if any(k in keys for k in cached):
                roles["input"] = "+".join([inp, *cached])
        if cols.output is None and roles.get("output", "").endswith("candidatesTokenCount") and \
                roles.get("reason", "").endswith("thoughtsTokenCount"):  # Gemini counts thoughts apart
            roles["output"] += "+" + roles["reason"]
        return roles

    @staticmethod
    def _column(objs: list[dict[str, Any]], key: str, role: str) -> Any:
        if "|" in key:  # first non-null of several keys
            a, b = key.split("|", 1)
            vals = [o.get(a) if o.get(a) is not None else o.get(b) for o in objs]
        elif "+" in key:  # a count and its parts logged apart (`ANTHROPIC_CACHE`): absent parts are 0
            first, *parts = (_JsonReader._column(objs, k, role) for k in key.split("+"))
            vals = [x if x is None or type(x) not in (int, float) else x + sum(
                y for p in parts if type(y := p[i]) in (int, float)) for i, x in enumerate(first)]
        elif "." in key and not any(key in o for o in objs[:100]):  # a nested key: usage.prompt_tokens
            path = key.split(".")
            vals = [_dig(o, path) for o in objs]
        else:
            vals = [o.get(key) for o in objs]
        if role in ("client", "session"):
            return vals
        if role == "time" and vals and isinstance(vals[0], str):
            try:
                if any(type(x) is bool for x in vals):  # numpy would read true as 1.0
                    raise TypeError
                return np.array(vals, dtype=np.float64)
            except (ValueError, TypeError):
                return np.array(["" if x is None else str(x) for x in vals])
        return vals


def _nested_keys(objs: list[dict[str, Any]], top: set[str], depth: int = 3) -> list[str]:
    """Dotted names of the values inside objects (`usage.prompt_tokens`, as an OpenAI-style gateway
    logs the response's usage), in order of first appearance, at most `depth` levels down."""
    out: dict[str, None] = {}

    def walk(d: dict[str, Any], prefix: str, level: int) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and level < depth:
                walk(v, f"{prefix}{k}.", level + 1)
            elif f"{prefix}{k}" not in top:
                out.setdefault(f"{prefix}{k}")

    for o in objs:
        for k, v in o.items():
            if isinstance(v, dict):
                walk(v, f"{k}.", 2)
    return list(out)


def _dig(o: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(o, dict):
            return None
        o = o.get(part)
    return o


def _decode_lines(batch: list[bytes], first: int, bad: BadRows) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Parse a batch of lines; one fast call for the whole batch, per-line only when something is wrong."""
    nonblank = [i for i, b in enumerate(batch) if b.strip()]
    if len(nonblank) == len(batch):
        try:
            objs = orjson.loads(b"[" + b",".join(batch) + b"]")
            # one object per line: a line `{...},{...}` would shift every later line number
            if len(objs) == len(batch) and all(isinstance(o, dict) for o in objs):
                return objs, np.arange(first, first + len(batch), dtype=np.int64)
        except orjson.JSONDecodeError:
            pass
    objs_out: list[dict[str, Any]] = []
    lines: list[int] = []
    for i in nonblank:
        try:
            o = orjson.loads(batch[i])
        except orjson.JSONDecodeError as e:
            bad.add(first + i, f"invalid JSON ({str(e).split(':')[0]})")
            continue
        if not isinstance(o, dict):
            bad.add(first + i, "expected a JSON object")
            continue
        objs_out.append(o)
        lines.append(first + i)
    return objs_out, np.array(lines, dtype=np.int64)


def _empty_chunk(path: str, fmt: str, rows: int, bad: BadRows) -> LogChunk:
    z = np.zeros(0, dtype=np.int32)
    return LogChunk(path=path, fmt=fmt, t=np.zeros(0), client=z, input=z, output=z.copy(), clients=[],
                    rows=rows, bad=bad)

