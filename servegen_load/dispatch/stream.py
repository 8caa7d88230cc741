"""One request in flight (`Flight`) and the reading of its OpenAI SSE stream, shared by transports.

Every transport (raw asyncio protocol, aiohttp) hands the response body, already de-chunked, to
`feed_sse(flight, data, t)` with `t` = `time.perf_counter()` taken when the bytes were read. All
events found in one read share that timestamp: they arrived together.

Each `data:` event is parsed with orjson. Measured here (a 170-byte chunk): a full `orjson.loads`
plus the few dict lookups costs 0.6 µs, less than the three or four `b'...' in line` scans a
"parse only when needed" filter takes (0.9 µs), and it is exact for any JSON spacing. So we parse
every event and keep the logic obvious.

Token-bearing chunks: a choice whose `text` / `delta.content` (the answer) or
`delta.reasoning_content` / `delta.reasoning` (thinking) is a non-empty string, or that carries
`tool_calls`. Role-only, empty and `choices: []` chunks are not tokens. Token counts come from
`usage`, accepted wherever it appears (llama.cpp completions: in the last content chunk; OpenAI,
vLLM, chat: in a final chunk with `choices: []`); chunks are not tokens.

Strict and bounded (a load generator reports nothing the bytes did not prove): an event that is
not JSON, a JSON value that is not an object, a line that is no SSE field, an event over
`max_event_bytes` (`--max-event-bytes`) all make the request a `protocol_error`, and the
transport ends it at once. A partial event waits in `Flight.sse_buf`, grown in place (a
`bytearray`) and searched only where new bytes arrived: the cost is linear in the bytes read,
whatever the size of one event (the old buffer-plus-read copy made a 20 MB event cost 3.5 s).
"""

from __future__ import annotations

import re
from array import array
from typing import Any

import orjson

from ..requests import Request
from .limits import MAX_EVENT_BYTES

_loads = orjson.loads
_dumps = orjson.dumps

# Token text the template fast path may take without a parse: printable ASCII without `"` and
# `\`. Anything else (escapes, non-ASCII, control bytes, NUL) is parsed in full, so the fast
# path never accepts what orjson would reject (invalid UTF-8, raw control characters, a trailing
# backslash that escapes the template's closing quote).
plain_text = re.compile(rb"[^ !#-\[\]-~]").search


class Flight:
    """The mutable record of one scheduled request, from look-ahead to its result line.

    Times are absolute `perf_counter()` seconds except `t_rel` (the request's offset from the
    run's start instant); `results.result_line` turns them into offsets from that instant.
    """

    __slots__ = (
        "answer_seen", "attempts", "cached_tokens", "chunks", "completion_tokens", "conn", "dispatched",
        "done", "done_at", "ended", "error", "finished", "first_answer_token", "first_token",
        "http_status", "prompt_tokens", "queue_time", "reasoning_tokens", "req",
        "retries", "retry_after", "sent", "sse_buf", "stale", "status", "t_rel", "tpl_key", "tpl_left", "tpl_pre", "tpl_suf",
        "wire",
    )

    def __init__(self, req: Request, wire: bytes) -> None:
        self.req = req
        self.t_rel: float = req.t
        self.wire = wire  # what the transport sends: full HTTP request (raw) or JSON body (aiohttp)
        self.dispatched: float | None = None
        self.sent: float | None = None
        self.first_token: float | None = None
        self.first_answer_token: float | None = None
        self.queue_time: float | None = None
        self.chunks = array("d")  # perf_counter() of each token-bearing chunk
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.status: str | None = None
        self.error: str | None = None
        self.http_status: int | None = None
        self.retries = 0
        self.attempts = 0  # times the request was written to a connection (retries, resends included)
        self.stale = False  # last attempt: a reused connection closed cleanly before any answer byte
        self.retry_after: str | None = None  # the Retry-After header of an error answer (see dispatch.retry)
        self.answer_seen = False
        self.done = False  # saw `data: [DONE]`
        self.done_at = 0.0  # when (the idle timeout then runs from it: the answer's data is all there)
        self.ended = False  # saw the choice's finish_reason: no token may follow it
        self.finished = False  # result decided; the runner has it
        self.sse_buf: bytes | bytearray = b""
        # The stream's chunk template (see `learn_template`): raw bytes before and after the
        # token text of this request's plain token chunks, and the field it is learned from.
        self.tpl_pre: bytes | None = None
        self.tpl_suf = b""
        self.tpl_key = b""
        self.tpl_left = 4  # (re)learning attempts left: a stream whose chunks never repeat stops trying
        self.conn: Any = None

    @property
    def last_token(self) -> float | None:
        """When the last token chunk came: kept as `chunks[-1]`, not stored per chunk (hot path)."""
        c = self.chunks
        return c[-1] if c else None

    def fail(self, status: str, error: str) -> None:
        """Record the first failure only: later symptoms of the same failure say nothing new."""
        if self.status is None:
            self.status = status
            self.error = error


_BOM = b"\xef\xbb\xbf"


def feed_sse(f: Flight, data: bytes, t: float, cap: int = MAX_EVENT_BYTES) -> None:
    """Split SSE events out of body bytes (buffering a partial one) and handle each.

    Linear time: while an event is incomplete, each read is only appended to `f.sse_buf` and
    searched (with the last two bytes before it) for an event end; the event is joined once.
    """
    pend = f.sse_buf
    if pend and len(pend) < 3 and f.first_token is None and (bytes(pend) + data[:3])[:3] == _BOM:
        data, pend = (bytes(pend) + data)[3:], b""  # the BOM split across reads
        f.sse_buf = pend
    if not pend and data[:3] == _BOM and f.first_token is None:  # a BOM: SSE says skip it
        data = data[3:]
    if pend:
        joint = pend[-2:] + data
        # an event ends at a blank line: LF LF, CR CR, or LF CR (CRLF CRLF, LF CRLF, CRLF CR)
        if b"\n\n" not in joint and b"\n\r" not in joint and b"\r\r" not in joint:  # still incomplete
            if len(pend) + len(data) > cap:
                _too_big(f, cap)
                return
            if type(pend) is not bytearray:
                pend = bytearray(pend)
            pend += data
            f.sse_buf = pend
            return
        buf = bytes(pend) + data
    else:
        buf = data
    if b"\r" in buf:  # CRLF or CR line ends (SSE allows both; a trailing CR may be half a CRLF: see below)
        buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    start = 0
    while True:
        end = buf.find(b"\n\n", start)
        if end < 0:
            break
        ev = buf[start:end]
        start = end + 2
        if len(ev) > cap:
            _too_big(f, cap)
            return
        if ev[:6] == b"data: ":
            payload = ev[6:]
            if b"\n" not in payload and b"\r" not in payload:
                on_data(f, payload, t)
                if f.status is not None:  # failed: nothing after it is read (the transport ends it)
                    return
                continue
        _on_event_general(f, ev, t)
        if f.status is not None:
            return
    if start < len(buf):
        if len(buf) - start > cap:
            _too_big(f, cap)
            return
        f.sse_buf = buf[start:] if data[-1:] != b"\r" else buf[start:-1] + b"\r"  # the LF may follow
    else:
        f.sse_buf = b""


def end_of_stream(f: Flight) -> None:
    """The verdict on a 200 stream that ended cleanly with nothing decided yet: `ok` only for an
    answer that proves itself. Both transports call it."""
    if f.status is not None:
        return
    if not f.done:  # the answer may be cut short (fault no_done)
        msg = _json_error(f.sse_buf)
        if msg is not None:  # a JSON error answer to a stream request: the server's message, not ours
            f.fail("http_error", JSON_ANSWER + msg)
        else:
            f.fail("protocol_error", "stream ended without data: [DONE]")
    elif f.sse_buf.strip():
        f.fail("protocol_error", "stream data after data: [DONE]: "
               + bytes(f.sse_buf[:80]).decode("utf-8", "replace"))
    elif not f.chunks and f.completion_tokens != 1:
        # one token may be an end-of-sequence token the server shows as no text; more is not, and
        # none is no answer (`ok` without a first token, it fell out of every latency)
        f.fail("protocol_error", "the stream carried no token" + (
            f", and usage counts {f.completion_tokens} completion tokens" if f.completion_tokens is not None
            else " and no usage"))
    elif f.completion_tokens is None and len(f.chunks) > _max_completion(f):
        # what `_check_count` refuses in a usage, refused in the chunks when no usage counts them
        f.fail("protocol_error", f"{len(f.chunks)} token chunks arrived, but at most {max(1, f.req.output_tokens)} "
               "were asked for (max_tokens), and no usage counts them")
    else:
        f.status = "ok"


JSON_ANSWER = "server error (a JSON answer, not a stream): "  # `runner.refusal` counts it as no stream


# `"error": null` (or false, "", []) is no error; `{}` is one without words
_NO_ERROR: tuple[object, ...] = (None, False, "", [])


def _json_error(rest: bytes | bytearray) -> str | None:
    """The message of an error object left unread at the end of a body (`{"error": ...}` or
    `{"object": "error", ...}`: a server that answered a stream request with a JSON error), else None."""
    rest = bytes(rest).strip()
    if rest[:1] != b"{":
        return None
    try:
        obj = _loads(rest)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if err in _NO_ERROR:
        err = obj if obj.get("object") == "error" or obj.get("type") == "error" else None
    if err is None:
        return None
    return str(err.get("message", err) if isinstance(err, dict) else err)[:200]


def _too_big(f: Flight, cap: int) -> None:
    f.sse_buf = b""
    f.fail("protocol_error", f"stream event over {cap} bytes (--max-event-bytes)")


_SSE_FIELDS = frozenset((b"data", b"event", b"id", b"retry", b""))  # b"": a `:` comment line


def _on_event_general(f: Flight, ev: bytes, t: float) -> None:
    """The rare shapes: several `data:` lines, `event:`/`id:` lines, comments (keep-alives).

    A line that is none of these (not an SSE field) is a `protocol_error`: the SSE spec would
    skip an unknown field, but an OpenAI stream never sends one, so it means a corrupt stream
    (fault `malformed_sse`) and the answer cannot be trusted.
    """
    lines = []
    is_error = False
    for line in ev.split(b"\n"):
        if line.startswith(b"data:"):
            v = line[5:]
            lines.append(v[1:] if v[:1] == b" " else v)
        elif line.startswith(b"event:") and line[6:].strip() == b"error":  # (`event: noerror` is no error)
            is_error = True
        elif line and (b"\r" in line or line.partition(b":")[0] not in _SSE_FIELDS):
            f.fail("protocol_error", "stream line is not an SSE field: " + line[:80].decode("utf-8", "replace"))
            return
    if not lines:
        return
    payload = b"\n".join(lines)
    if is_error:
        f.fail("http_error", "server error event: " + payload[:200].decode("utf-8", "replace"))
        return
    on_data(f, payload, t)


def on_data(f: Flight, payload: bytes, t: float) -> None:
    """Handle one `data:` payload: timestamps for token chunks, usage, in-stream errors."""
    if not take_data(f, payload, t):
        f.fail("protocol_error", "stream event is not JSON: " + payload[:80].decode("utf-8", "replace"))


def take_data(f: Flight, payload: bytes, t: float) -> bool:
    """`on_data` without the verdict: False (and nothing recorded) when the payload is not JSON."""
    if f.done:  # nothing may follow [DONE] (the transports' template paths are off after it)
        f.fail("protocol_error", "stream data after data: [DONE]: " + payload[:80].decode("utf-8", "replace"))
        return True
    if (payload[:1] == b"[" or payload[:1] == b" ") and payload.strip() == b"[DONE]":  # `data:   [DONE]` too
        f.done = True
        f.done_at = t
        f.tpl_pre = None  # every later event is parsed, and so refused
        _check_count(f)  # a usage sent early, then more tokens than it counted
        return True
    try:
        obj = _loads(payload)
    except orjson.JSONDecodeError:
        return False
    if type(obj) is not dict:
        f.fail("protocol_error", "stream event is not a JSON object: " + payload[:80].decode("utf-8", "replace"))
        return True
    try:
        _take(f, obj, payload, t)
    except (TypeError, KeyError, IndexError, AttributeError):
        f.fail("protocol_error", "unexpected stream event: " + payload[:80].decode("utf-8", "replace"))
    return True


def _take(f: Flight, obj: dict[str, Any], payload: bytes, t: float) -> None:
    err = obj.get("error")
    if err not in _NO_ERROR or obj.get("object") == "error" or obj.get("type") == "error":
        # {"error": {...}} (vLLM, SGLang, OpenAI; `{}` too: an error without words), a bare
        # ErrorResponse {"object": "error", ...} or {"type": "error", "message": ...}, whatever else
        # the event carries (tokens, usage)
        if err in _NO_ERROR:
            err = obj
        msg = err.get("message", err) if isinstance(err, dict) else err
        f.fail("http_error", "server error in stream: " + str(msg)[:200])
        return
    choices = obj.get("choices")
    if choices:
        c0 = choices[0]
        # n=1 was asked: another choice's tokens are not this answer's
        if len(choices) > 1 or c0.get("index") not in (None, 0):
            f.fail("protocol_error", "stream carries more than the one choice asked for (n=1): "
                   + payload[:80].decode("utf-8", "replace"))
            return
        delta = c0.get("delta")
        if delta is None:  # /v1/completions: all text is answer
            answer = c0.get("text")
            token = bool(answer)
            key = _TEXT
            kind: type = str
        else:
            answer = delta.get("content")
            kind = list if type(answer) is list else str  # a list: content parts (Mistral)
            if not answer:
                answer = delta.get("tool_calls")
                kind = list
            key = _CONTENT
            token = bool(answer)
            if not token:
                if delta.get("reasoning_content"):
                    token, key, kind = True, _REASONING_CONTENT, str
                    if type(delta["reasoning_content"]) is not str:
                        raise TypeError
                elif delta.get("reasoning"):
                    token, key, kind = True, _REASONING, str
                    if type(delta["reasoning"]) is not str:
                        raise TypeError
        if token:
            if answer and type(answer) is not kind:  # `"text": 5` is no token: a corrupt event
                raise TypeError
            if kind is list and not all(type(x) is dict for x in answer):  # parts and tool calls are objects
                raise TypeError
            if f.ended:
                f.fail("protocol_error", "token after the choice's finish_reason: " + payload[:80].decode("utf-8", "replace"))
                return
            if f.first_token is None:
                f.first_token = t
            f.chunks.append(t)
            if answer and not f.answer_seen:
                f.answer_seen = True
                f.first_answer_token = t
            if f.tpl_left and len(obj) <= 6 and "usage" not in obj and not c0.get("finish_reason"):
                # parsed although plain: no template yet, or it changed (role chunk first,
                # reasoning to answer): learn this chunk's (not the last one's: nothing follows it)
                f.tpl_left -= 1
                learn_template(f, payload, key)
        end = c0.get("finish_reason")
        if end:
            f.ended = True
            f.tpl_pre = None  # every later event is parsed, so a token after the end is refused
        if end and _aborted(end):
            f.fail("http_error", "server ended the generation: finish_reason " + _dumps(end).decode()[:200])
    usage = obj.get("usage")
    if usage:
        _take_usage(f, usage)


# A 200 stream that ends with one of these did not generate what was asked: the server gave up
# (vLLM's "abort" and "error", SGLang's {"type": "abort", "message": ...}). Every other reason
# ("stop", "length", "content_filter", "tool_calls", and any a server invents) is an answer.
_FAILED_ENDS = frozenset({"abort", "aborted", "error", "cancelled", "canceled"})


def _aborted(end: Any) -> bool:
    if isinstance(end, dict):
        end = end.get("type")
    return isinstance(end, str) and end.lower() in _FAILED_ENDS


_TEXT = b'"text":"'
_CONTENT = b'"content":"'
_REASONING_CONTENT = b'"reasoning_content":"'
_REASONING = b'"reasoning":"'


def learn_template(f: Flight, payload: bytes, key: bytes) -> None:
    """Remember the raw bytes around the token text of a plain token chunk of this stream.

    Within one response, a server writes every plain token chunk as the same bytes except the
    token text (same id, created, model, and trailing fields): `pre + text + suf`. A later
    chunk that is exactly `pre + X + suf`, with X non-empty printable ASCII free of `"` and `\\`
    (`plain_text`), is then a token chunk of the same kind (answer or reasoning) without a JSON
    parse: such an X is a valid JSON string body that cannot close or escape the string, so the
    whole chunk is exactly as valid as the template, which was parsed. The transport checks this in
    about a third of the time a parse takes; any other chunk (usage, finish, a different field,
    per-chunk random fields) simply fails the match and is parsed.
    """
    k = payload.find(key)
    if k < 0 or payload.find(key, k + 1) >= 0:
        return
    v = k + len(key)
    j = payload.find(b'"', v)
    if j < 0:
        return
    if payload[j - 1] == 92:  # a backslash right before that quote: count them (payload[v - 1] is a quote)
        while True:  # the value's closing quote: the first quote not escaped by a backslash
            j = payload.find(b'"', j)
            if j < 0:
                return
            b = j - 1
            while b >= v and payload[b] == 92:
                b -= 1
            if (j - 1 - b) % 2 == 0:
                break
            j += 1
    f.tpl_pre = b"data: " + payload[:v]
    f.tpl_suf = payload[j:] + b"\n\n\r\n"  # as it ends a chunk of a chunked body
    f.tpl_key = key


_MAX_COUNT = 2**31 - 1  # no answer or prompt has this many tokens: a larger "count" is garbage


class _NotACount(ValueError):
    pass


def _int_or_none(v: Any, name: str = "") -> int | None:
    """A token count, or None when absent (null); anything else is no count (`_NotACount`)."""
    if type(v) is int and 0 <= v <= _MAX_COUNT:
        return v
    if v is None:
        return None
    raise _NotACount(f"usage.{name} is not a token count: {str(v)[:40]}")


def _details(usage: dict[str, Any], name: str) -> dict[str, Any] | None:
    """`usage.<name>`: an object, or None when absent (null); anything else is no count."""
    d = usage.get(name)
    if d is None or isinstance(d, dict):
        return d
    raise _NotACount(f"usage.{name} is not an object: {str(d)[:40]}")


def _no_count(f: Flight, why: str) -> None:
    """A usage refused as no count is kept nowhere: the result line, `/metrics` and the report's
    token fidelity summed 2^31 - 1 prompt tokens of requests already marked `protocol_error`."""
    f.fail("protocol_error", why)
    f.prompt_tokens = f.completion_tokens = f.reasoning_tokens = f.cached_tokens = None


def _check_count(f: Flight) -> None:
    """Each token chunk carries at least one token: fewer completion tokens than chunks is no count.
    A prompt count over what the request could hold (`_prompt_bound`) is none either.
    Nor is one far over what was asked (`max_tokens`, which counts reasoning too): a count of 4,000
    for 4 tokens asked made TPOT and token throughput a thousand times off. The margin
    (`_max_completion`: 2x + 16) leaves room for a server that counts a stop token or two; it is
    not a length check."""
    pt = f.prompt_tokens
    if pt is not None and pt > _prompt_bound(f):
        _no_count(f, f"usage.prompt_tokens is {pt}, more than this request's {len(f.wire)} bytes "
                  "(and its media) could hold")
        return
    ct = f.completion_tokens
    if ct is None:
        return
    if ct < len(f.chunks):
        _no_count(f, f"usage.completion_tokens is {ct}, but {len(f.chunks)} token chunks arrived")
    elif ct > _max_completion(f):
        _no_count(f, f"usage.completion_tokens is {ct}, but at most {max(1, f.req.output_tokens)} "
                  "were asked for (max_tokens)")


def _max_completion(f: Flight) -> int:
    """The most completion tokens (or, without usage, token chunks) an answer to `f` may carry."""
    return 2 * f.req.output_tokens + 16


PROMPT_SLACK = 65536  # tokens a server may add that the request's bytes do not carry (templates, a gateway's system prompt)


def _prompt_bound(f: Flight) -> int:
    """The most prompt tokens a usage may count for this request: a token of text or of an id list
    is at least one byte of the request, media count their own tokens, and `PROMPT_SLACK` more.
    A count of 2^31 - 1 for a 20-token prompt made input throughput 10^10 tokens/s."""
    r = f.req
    media = sum(sum(x) for x in (r.images, r.audio, r.video) if x)
    return len(f.wire) + media + PROMPT_SLACK


def _take_usage(f: Flight, usage: Any) -> None:
    """Read `usage`, strictly: the counts a report is built on are never a guess.

    A negative, fractional, string or absurd count, or fewer completion tokens than token chunks
    already seen (each chunk carries at least one token; `continuous_usage_stats` sends running
    totals, which keep this true), is a `protocol_error`.
    """
    if not isinstance(usage, dict):
        f.fail("protocol_error", "usage is not an object: " + _dumps(usage).decode()[:80])
        return
    pt = usage.get("prompt_tokens")
    ct = usage.get("completion_tokens")
    if (type(pt) is int and type(ct) is int and 0 <= pt <= _MAX_COUNT and 0 <= ct <= _MAX_COUNT
            and (len(usage) == 2 or (len(usage) == 3 and "total_tokens" in usage))):  # the usual counts only
        f.prompt_tokens = pt
        f.completion_tokens = ct
        _check_count(f)
        return
    try:
        f.prompt_tokens = _int_or_none(usage.get("prompt_tokens"), "prompt_tokens")
        f.completion_tokens = ct = _int_or_none(usage.get("completion_tokens"), "completion_tokens")
        details = _details(usage, "completion_tokens_details")
        if details is not None:
            f.reasoning_tokens = _int_or_none(details.get("reasoning_tokens"), "reasoning_tokens")
        if f.reasoning_tokens is None:
            f.reasoning_tokens = _int_or_none(usage.get("reasoning_tokens"), "reasoning_tokens")
        pdet = _details(usage, "prompt_tokens_details")
        if pdet is not None:
            f.cached_tokens = _int_or_none(pdet.get("cached_tokens"), "cached_tokens")
    except _NotACount as e:
        _no_count(f, str(e))
        return
    for part, whole, most in (("reasoning_tokens", "completion_tokens", _max_completion(f)),
                              ("cached_tokens", "prompt_tokens", _prompt_bound(f))):
        a, b = getattr(f, part), getattr(f, whole)
        if a is not None and b is not None and a > b:
            _no_count(f, f"usage counts {a} {part}, more than its {b} {whole}")
            return
        if a is not None and a > most:  # without its whole, the bound the whole has
            _no_count(f, f"usage counts {a} {part}, more than this request's {whole} could be ({most})")
            return
    _check_count(f)
