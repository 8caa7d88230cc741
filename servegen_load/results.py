"""The Result record: one JSONL line per scheduled request, streamed to disk as results arrive.

File layout: a header line `{"format": "servegen-load/results/v1", "endpoint", "model", "api",
"started_unix", "source", "argv", ...}`, then one object per scheduled request, in completion
order (not schedule order), every field always present (null when not reached/not given):

- `id, client, category, session, turn`: from the request.
- `scheduled, sent, first_token, first_answer_token, last_token`: seconds from the run's start
  instant on the monotonic clock (`time.perf_counter`), rounded to the µs. `sent` is when the
  request bytes were handed to the socket (after any connection set-up and concurrency wait);
  `first_answer_token` is the first non-reasoning content chunk (== `first_token` unless the
  model thinks first).
- `queue_time`: seconds waiting for a `--max-concurrency` slot (0 without a limit).
- `chunk_times`: offset of each token-bearing chunk from `first_token` (the first is 0).
- `input_tokens, output_tokens, reason_tokens`: what the request asked for; `media_tokens` the
  tokens of its images/audio/video (null without any): the intended prompt is the sum of both.
- `prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens`: the server's `usage`.
- `status`: ok | http_error | timeout | disconnect | connect_error | protocol_error | cancelled |
  client_error (the client itself failed, or refused to send a request over a cap: `error` says
  which); `error` (short text, never a credential), `http_status`, `retries` (re-sends asked for
  by `--retries`), `attempts` (times the request was written to a connection; `sent` is the
  first one's). `lost` is written only by
  a scale-out parent for a request whose worker died after it was due: it may have been sent, its
  outcome is unknown (never `cancelled`, which promises it was not sent or was stopped by us).

The sink buffers encoded lines and the runner flushes it several times a second, so a crash
(even SIGKILL) loses at most the last flush interval; a final line without its newline can only
be such a crash artefact, and the reader skips it with a warning instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import stat
import tempfile
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .errors import InputError
from .formats import RESULTS_FORMAT, SECOND_HEADER, is_footer
from .requests import Request

STATUSES = ("ok", "http_error", "timeout", "disconnect", "connect_error", "protocol_error", "cancelled", "lost",
            "client_error")

TIME_FIELDS = ("scheduled", "sent", "first_token", "first_answer_token", "last_token", "queue_time")
COUNT_FIELDS = ("input_tokens", "output_tokens", "reason_tokens", "prompt_tokens", "completion_tokens",
                "reasoning_tokens", "cached_tokens", "http_status", "turn", "media_tokens")
TEXT_FIELDS = ("id", "client", "category", "session", "status", "error")

_dumps = orjson.dumps
_NL = orjson.OPT_APPEND_NEWLINE
_NP = orjson.OPT_SERIALIZE_NUMPY


def _rel(x: float | None, t0: float) -> float | None:
    return None if x is None else round((x - t0) * 1e6) / 1e6  # µs; 3x faster than round(x, 6)


def _offsets(chunks: Any, first: float | None) -> Any:
    """Chunk times as µs-rounded offsets from the first token, as a numpy array orjson writes natively.

    In place after the subtraction, through the ufuncs with a 0-d array for 1e6 (a Python float
    operand costs a conversion per call): 0.9 µs less per request, the same values bit for bit.
    """
    if first is None or not len(chunks):
        return []
    a = _frombuffer(chunks) if isinstance(chunks, array) else np.asarray(chunks, dtype=np.float64)
    o = _subtract(a, first)
    _multiply(o, _E6, out=o)
    _rint(o, out=o)
    _divide(o, _E6, out=o)
    return o


_frombuffer, _subtract, _multiply, _divide, _rint = np.frombuffer, np.subtract, np.multiply, np.divide, np.rint
_E6 = np.array(1e6)


def _media(req: Request) -> int | None:
    """Tokens of the request's images/audio/video (the intended prompt is input_tokens + this)."""
    if not (req.images or req.audio or req.video):
        return None
    return sum(req.images or ()) + sum(req.audio or ()) + sum(req.video or ())


def result_dict(f: Any, t0: float) -> dict[str, Any]:
    """The Result of a finished `dispatch.stream.Flight` (duck-typed), times relative to `t0`.

    `_rel` written out inline (one call per request instead of seven): this runs once per request
    on the event loop.
    """
    req: Request = f.req
    ft = f.first_token
    x = f.t_rel
    sched = None if x is None else round(x * 1e6) / 1e6
    x = f.sent
    sent = None if x is None else round((x - t0) * 1e6) / 1e6
    first = None if ft is None else round((ft - t0) * 1e6) / 1e6
    x = f.first_answer_token
    fat = None if x is None else round((x - t0) * 1e6) / 1e6
    x = f.last_token
    last = None if x is None else round((x - t0) * 1e6) / 1e6
    x = f.queue_time
    qt = None if x is None else round(x * 1e6) / 1e6
    return {
        "id": req.id, "client": req.client, "category": req.category,
        "session": req.session, "turn": req.turn,
        "scheduled": sched, "sent": sent, "first_token": first,
        "first_answer_token": fat, "last_token": last,
        "queue_time": qt,
        "chunk_times": _offsets(f.chunks, ft),
        "input_tokens": req.input_tokens, "output_tokens": req.output_tokens,
        "reason_tokens": req.reason_tokens,
        "media_tokens": _media(req) if (req.images or req.audio or req.video) else None,  # payload hook
        "prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
        "reasoning_tokens": f.reasoning_tokens, "cached_tokens": f.cached_tokens,
        "status": f.status, "error": f.error, "http_status": f.http_status, "retries": f.retries,
        "attempts": f.attempts,
    }


_LINE_OPT = _NL | _NP


def result_line(f: Any, t0: float) -> bytes:
    """One encoded JSONL line for a finished flight."""
    return _dumps(result_dict(f, t0), option=_LINE_OPT)


def unsent_line(req: Request, status: str = "cancelled", error: str = "run stopped before this request was due") -> bytes:
    """The line of a scheduled request that was never dispatched (run interrupted)."""
    return _dumps({
        "id": req.id, "client": req.client, "category": req.category,
        "session": req.session, "turn": req.turn,
        "scheduled": round(req.t, 6), "sent": None, "first_token": None, "first_answer_token": None,
        "last_token": None, "queue_time": None, "chunk_times": [],
        "input_tokens": req.input_tokens, "output_tokens": req.output_tokens,
        "reason_tokens": req.reason_tokens, "media_tokens": _media(req),  # payload hook
        "prompt_tokens": None, "completion_tokens": None, "reasoning_tokens": None, "cached_tokens": None,
        "status": status, "error": error, "http_status": None, "retries": 0, "attempts": 0,
    }, option=_NL)


def _regular(fh: Any) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
    except OSError:
        return False


_COUNT_WIDTH = 20  # characters of the header's `lines` slot (JSON allows the spaces before a number)
FOOTER = {"footer": True, "complete": True}  # the last line of results written to a pipe (`ResultSink`)
INCOMPLETE = ("the run that wrote it never finished (killed, or still running): requests after its last line "
              "have no line")


class ResultSink:
    """Append-only results file: header first, then encoded lines buffered until `flush()`.

    Lines are encoded by the caller as each request finishes (spreading the cost). `flush()` hands
    the batch to a writer thread, so the event loop never waits on the disk (a page-cache write
    can block for tens of ms under dirty-page throttling); the thread writes each batch with one
    unbuffered `write`, so the file only ever ends on a whole line. `close()` drains the thread.

    The first failed write (disk full, file-size limit, I/O error, a closed pipe) ends writing:
    a regular file is cut back to the end of the last whole batch (a partial write would leave a
    torn line), later batches are dropped, and `error` holds the failure (the runner polls it and
    stops dispatching; `flush()`/`close()` raise it, naming the file). `path` may be `-` (standard
    output), a pipe or a device; `copy`, when given, receives the same bytes (a regular file
    the summary is read back from when `path` cannot be read back).
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any],
                 copy: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.name = os.fspath(path)
        self._fhs = []
        try:
            if self.name == "-":
                self._fhs.append(open(1, "wb", buffering=0, closefd=False))  # noqa: SIM115
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fhs.append(open(self.path, "wb", buffering=0))  # noqa: SIM115 - closed in close()
            if copy is not None:
                self._fhs.append(open(copy, "wb", buffering=0))  # noqa: SIM115 - closed in close()
        except OSError as e:
            for fh in self._fhs:
                fh.close()
            raise OSError(e.errno, e.strerror, self.name) from None
        self._good = [0] * len(self._fhs)  # bytes of whole lines written, per file
        self._cut = [self.name != "-"] + [True] * (len(self._fhs) - 1)  # stdout may be appended to
        self.error: OSError | None = None
        # `"complete": false` until `close()` rewrites it in place as `true ` (the same length: a
        # reader can tell a run killed mid-way, which leaves whole lines only, from a finished one).
        # Where it cannot (a pipe, a device), the header says `"footer": true` and `close()` ends the
        # stream with `FOOTER` (a killed `run -o - | ...` gated as a whole run passed).
        head = {"format": RESULTS_FORMAT, **header}
        self._flag = -1
        self._footer = not _regular(self._fhs[0])  # a pipe's header cannot be rewritten: a last line says it
        self._count_at = -1
        if self._footer:
            head["footer"] = True
        else:
            head["complete"] = False
            head["lines"] = 0  # a 20-digit slot `close()` fills: a file cut later (head -100) says so
        line = _dumps(head, option=_NL)
        if "complete" in head:
            self._flag = line.rindex(b"false")
            slot = line.rindex(b'"lines":0') + len(b'"lines":')
            line = line[:slot] + b" " * (_COUNT_WIDTH - 1) + line[slot:]
            self._count_at = slot
        self._write(line)
        if self.error is not None:
            self._close_files()
            raise self.error
        self._buf: list[bytes] = []
        self.count = 0
        self.written = 0  # result lines on disk (after the header)
        self._q: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="results-writer", daemon=True)
        self._thread.start()

    def add(self, line: bytes) -> None:
        self._buf.append(line)
        self.count += 1

    def flush(self) -> None:
        if self.error is not None:
            self._buf.clear()
            raise self.error
        if self._buf:
            data = b"".join(self._buf)
            n = len(self._buf)
            self._buf.clear()
            self._q.put((data, n))

    def _write(self, data: bytes) -> None:
        """Write one batch to every file; on failure cut each file back to its last whole batch."""
        for i, fh in enumerate(self._fhs):
            try:
                view = memoryview(data)
                while view:
                    n = fh.write(view)
                    if not n:
                        raise OSError(errno.EIO, "the device accepted no more bytes")
                    view = view[n:]
                self._good[i] += len(data)
            except OSError as e:  # disk full, file too large, I/O error, broken pipe
                if self._cut[i]:
                    with contextlib.suppress(OSError, ValueError):
                        fh.truncate(self._good[i])  # not for pipes and devices: nothing to cut there
                self.error = OSError(e.errno, e.strerror, self.name)
                return

    def _writer(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self.error is None:
                self._write(item[0])
                if self.error is None:
                    self.written += item[1]

    def _close_files(self) -> None:
        for fh in self._fhs:
            if not fh.closed:
                try:
                    fh.close()
                except OSError as e:
                    if self.error is None:
                        self.error = OSError(e.errno, e.strerror, self.name)

    def close(self) -> None:
        if self._fhs and not self._fhs[0].closed:
            if self.error is None:
                self.flush()
            self._buf.clear()
            self._q.put(None)
            self._thread.join()
            if self.error is None and self._flag >= 0:
                count = b"%*d" % (_COUNT_WIDTH, self.written)
                for fh in self._fhs:
                    with contextlib.suppress(OSError):
                        os.pwrite(fh.fileno(), count, self._count_at)
                        os.pwrite(fh.fileno(), b"true ", self._flag)
            if self.error is None and self._footer:
                self._write(_dumps({**FOOTER, "lines": self.written}, option=_NL))
            self._close_files()
        if self.error is not None:
            raise self.error


@dataclass
class Results:
    """Result columns merged from one or more files: numpy arrays, NaN where a field was null.

    `chunk_times` is ragged: the chunk offsets of row i are
    `chunk_times[chunk_offsets[i]:chunk_offsets[i + 1]]`.
    """

    n: int
    headers: list[dict[str, Any]]
    paths: list[str]
    cols: dict[str, np.ndarray]
    chunk_times: np.ndarray
    chunk_offsets: np.ndarray
    file_index: np.ndarray
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    @property
    def chunk_counts(self) -> np.ndarray:
        return np.diff(self.chunk_offsets)


class _Columns:
    """Accumulates rows straight into typed arrays: a multi-GB results file never becomes dicts."""

    def __init__(self) -> None:
        self.num = {k: array("d") for k in TIME_FIELDS + COUNT_FIELDS}
        self.retries = array("q")
        self.text: dict[str, list[Any]] = {k: [] for k in TEXT_FIELDS}
        self.chunks = array("d")
        self.counts = array("q")
        self.n = 0

    def add(self, d: dict[str, Any], path: str, line: int) -> None:
        for k, arr in self.num.items():
            v = d.get(k)
            if v is None:
                arr.append(_NAN)
            elif type(v) is float or type(v) is int:
                arr.append(v)
            else:
                raise InputError(f"expected a number or null, got {v!r}", path=path, line=line, field=k)
        for a, b in _IN_ORDER:  # a TTFT or E2E below zero is no measurement (an edited or foreign file)
            ta, tb = d.get(a), d.get(b)
            if ta is not None and tb is not None and tb < ta - _ORDER_SLACK:
                raise InputError(f"expected a time at or after {a} ({ta}), got {tb}", path=path, line=line, field=b)
        r = d.get("retries") or 0
        if type(r) is not int:
            raise InputError(f"expected an integer, got {r!r}", path=path, line=line, field="retries")
        self.retries.append(r)
        for k, lst in self.text.items():
            lst.append(d.get(k))
        ct = d.get("chunk_times") or ()
        before = len(self.chunks)
        try:
            self.chunks.extend(ct)
        except TypeError:
            del self.chunks[before:]
            raise InputError("expected a list of numbers", path=path, line=line, field="chunk_times") from None
        self.counts.append(len(self.chunks) - before)
        self.n += 1


_NAN = float("nan")
_IN_ORDER = (("sent", "first_token"), ("first_token", "last_token"))
# Slack for two clocks: a first token stamped by the kernel (`_Conn.rx_read`, the wall clock
# converted once per read) against later tokens stamped in user space
_ORDER_SLACK = 0.001


def _load_file(path: Path, cols: _Columns, warnings: list[str]) -> dict[str, Any]:
    try:
        fh = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(path)) from None
    with fh:
        first = fh.readline()
        try:
            head = orjson.loads(first)
        except orjson.JSONDecodeError:
            raise InputError("expected a JSON header object on the first line", path=str(path), line=1) from None
        if not isinstance(head, dict) or head.get("format") != RESULTS_FORMAT:
            raise InputError(f"not a results file: first line must carry format {RESULTS_FORMAT!r}",
                             path=str(path), line=1)
        where = str(path)
        ended = False
        first = cols.n
        for n, raw in enumerate(fh, start=2):
            if not raw.strip():
                continue
            try:
                d = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                if not raw.endswith(b"\n") and not fh.read(1):
                    warnings.append(f"{path}:{n}: skipped a truncated last line (the run was killed mid-write)")
                    continue
                raise InputError(f"invalid JSON ({e})", path=where, line=n) from None
            if not isinstance(d, dict):
                raise InputError("expected a JSON object per line", path=where, line=n)
            if ended:
                raise InputError("a line after the closing footer line", path=where, line=n)
            if "format" in d and "id" not in d:
                raise InputError(SECOND_HEADER, path=where, line=n)
            if is_footer(d):
                ended = bool(d.get("complete"))
                if isinstance(d.get("lines"), int):
                    head["lines"] = d["lines"]
                continue
            for k in ("id", "scheduled", "status"):
                if k not in d:
                    raise InputError("missing required field", path=where, line=n, field=k)
            if d["status"] not in STATUSES:
                raise InputError(f"unknown status {d['status']!r}; expected one of {', '.join(STATUSES)}",
                                 path=where, line=n, field="status")
            cols.add(d, where, n)
    if head.get("footer") is True:  # written to a pipe: whole only if its closing line came
        head["complete"] = ended
    if head.get("complete") is False:
        warnings.append(f"{path}: {INCOMPLETE}")
    elif isinstance(head.get("lines"), int) and cols.n - first < head["lines"]:
        head["missing"] = head["lines"] - (cols.n - first)
        warnings.append(f"{path}: {head['missing']} of its {head['lines']} result lines are missing (the file was "
                        "cut after the run)")
    return head


def shards_of(headers: list[dict[str, Any]]) -> tuple[set[int], int] | None:
    """(the shard indices present, N) when the files are `--shard i/N` parts of one run, else None."""
    seen: set[int] = set()
    total = None
    for h in headers:
        sh = h.get("shard")
        if not isinstance(sh, str) or "/" not in sh:
            return None
        i, _, n = sh.partition("/")
        if not (i.isdigit() and n.isdigit()) or (total is not None and int(n) != total):
            return None
        seen.add(int(i))
        total = int(n)
    return (seen, total) if total is not None else None


def missing_shards(headers: list[dict[str, Any]]) -> str | None:
    """Why these `--shard` files are not the whole run, if they are not (a gate on 19 of 52 requests,
    shard 0 of 2, passed as the run)."""
    got = shards_of(headers)
    if got is None or len(got[0]) == got[1]:
        return None
    have, n = got
    return (f"results of {len(have)} of {n} shards ({', '.join(f'{i}/{n}' for i in sorted(have))}): "
            "give every shard's file")


def intended_of(headers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the run meant to schedule: one header's, or the sum of the shards' shares (each shard's
    header holds its own share; the first alone said 32.6 of a 60-request run)."""
    shares = [h.get("intended") for h in headers]
    if not shares or not all(isinstance(x, dict) for x in shares):
        return None
    if len(headers) == 1 or shards_of(headers) is None:
        return shares[0]  # type: ignore[return-value]
    return summed_intended(shares)  # type: ignore[arg-type]


def summed_intended(shares: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's intended load from its shards' shares (`requests` and `rate` add up; None where a
    share lacks one): `report` of shards run by hand, and the merge of `--workers` parts."""
    total = dict(shares[0])
    for k in ("requests", "rate"):
        vals = [x.get(k) for x in shares]
        total[k] = sum(vals) if all(isinstance(v, int | float) for v in vals) else None
    return total


@contextlib.contextmanager
def spooled(paths: Sequence[str]) -> Iterator[list[str]]:
    """`paths` with `-` (standard input) and other streams (a pipe, `/dev/stdin`) copied to
    temporary files first: reading a results file looks at its first line, then reads it whole,
    and a pipe can be read once (`run -o - | report -` said "cannot read")."""
    with contextlib.ExitStack() as stack:
        out = []
        for p in paths:
            if p != "-" and (not os.path.exists(p) or stat.S_ISREG(os.stat(p).st_mode)):
                out.append(p)
                continue
            src = stack.enter_context(open(0 if p == "-" else p, "rb", closefd=p != "-"))
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="servegen-load-stdin-", suffix=".jsonl"))
            shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            out.append(tmp.name)
        yield out


def read_results(*paths: str | os.PathLike[str]) -> Results:
    """Read and merge results files into numpy columns (InputError names file:line on bad input).

    Streams each file line by line into typed arrays, so memory is about 8 bytes per number.
    """
    if not paths:
        raise InputError("no results files given")
    acc = _Columns()
    headers: list[dict[str, Any]] = []
    warnings: list[str] = []
    sizes = []
    for p in paths:
        before = acc.n
        headers.append(_load_file(Path(p), acc, warnings))
        sizes.append(acc.n - before)
    n = acc.n
    cols: dict[str, np.ndarray] = {k: np.frombuffer(a, dtype=np.float64).copy() if n else np.zeros(0)
                                   for k, a in acc.num.items()}
    cols["retries"] = np.frombuffer(acc.retries, dtype=np.int64).copy() if n else np.zeros(0, dtype=np.int64)
    for k, lst in acc.text.items():
        arr = np.empty(n, dtype=object)
        arr[:] = lst
        cols[k] = arr
    if n:
        cols["id"] = cols["id"].astype(str)
    counts = np.frombuffer(acc.counts, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.frombuffer(acc.chunks, dtype=np.float64).copy() if len(acc.chunks) else np.zeros(0)
    file_index = np.repeat(np.arange(len(paths), dtype=np.int32), sizes)
    return Results(n=n, headers=headers, paths=[str(p) for p in paths], cols=cols, chunk_times=flat,
                   chunk_offsets=offsets, file_index=file_index, warnings=warnings)
