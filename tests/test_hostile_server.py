"""The client against a hostile server: every request ends with exactly one true status.

ONE small asyncio server on 127.0.0.1 (`Hostile`, in a thread) plays a mode chosen by the first
path segment (`http://127.0.0.1:P/<mode>/v1/...`): cut streams, corrupt SSE that a lenient fast
path would count as tokens (NUL, non-UTF-8, a backslash escaping the closing quote, a non-SSE line,
a lying chunk-size line), oversized events, redirects across origins, resets after work, a reused
connection closed after work, hangs at each stage, slow bytes, interim 1xx answers, a compressed
body, garbage instead of HTTP, a server that never reads; valid but unusual streams (`VALID`: CR
or CRLF line ends, split events and characters, comments and fields, HTTP/1.0, Content-Length,
chunk extensions, bare-LF heads) and hostile answers (`HOSTILE`: data after [DONE], JSON or HTML
200s, error events, usage that is no count, smuggling-shaped framing, bad header lines), absurd
Retry-After values, keys echoed back, resets at accept, half-closes. Each case runs through the runner `run`
uses, on both transports, and checks the accounting invariant: one line per scheduled request,
the expected status on every line, no `ok` that the bytes did not prove, tokens counted only up to
the corruption, one attempt per request unless --retries asked, the server saw what we say we
sent, and the error names the cause. The start-up probes meet the same server through the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hostile import run_cli
from test_dispatch_fixtures import make_requests, read_lines, write_requests

from servegen_load.dispatch.endpoint import Endpoint, discover_model
from servegen_load.dispatch.limits import Limits, Timeouts
from servegen_load.dispatch.runner import RunConfig, run
from servegen_load.errors import InputError

TRANSPORTS = ["raw", "aiohttp"]
N = 3  # requests per case
TOKENS = 3  # good token chunks every stream starts with
FAST = Timeouts(connect=2.0, first_token=1.5, total=8.0, idle=1.0)


def _event(text: bytes) -> bytes:
    # a plain completions token chunk, the same bytes around the text each time (the raw
    # transport learns this template and takes later chunks without a JSON parse)
    return b'data: {"id":"c1","object":"text_completion","choices":[{"index":0,"text":"' + text + \
        b'","finish_reason":null}]}\n\n'


def _chunk(payload: bytes, size: int | None = None) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload) if size is None else size, payload)


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3}}\n\n'
GOOD = [_event(b" a"), _event(b" b"), _event(b" c")]
TAIL = [USAGE, b"data: [DONE]\n\n"]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

_HEX = b"%x" % len(_event(b" d"))
# Corrupt chunks sent after the good ones, each in its own write (the template fast path's case)
CORRUPT: dict[str, bytes] = {
    "nul": _chunk(_event(b"x\x00y")),
    "nonutf8": _chunk(_event(b"\xff\xfe")),
    "backslash": _chunk(_event(b"abc\\")),  # escapes the closing quote: not JSON
    "newline": _chunk(_event(b"a\n\ngarbage line")),  # a non-SSE line inside a chunk
    "size_short": _chunk(_event(b" d"), size=len(_event(b" d")) - 3),  # the size line lies
    "size_long": _chunk(_event(b" d"), size=len(_event(b" d")) + 5),
    # "+5_b": Python's int(x, 16) takes it, HTTP does not
    "size_junk": b"+%b_%b\r\n%b\r\n" % (_HEX[:1], _HEX[1:], _event(b" d")),
    "notobject": _chunk(b"data: 5\n\n"),
    "notsse": _chunk(b"hello there\n\n"),
}


def _ev(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


_TEXT_EVENT = b'{"id":"c1","object":"text_completion","choices":[{"index":0,"text":"%b","finish_reason":null}]}'
_DONE = b"data: [DONE]\n\n"
_END = b"0\r\n\r\n"
STREAM = GOOD + TAIL  # a whole valid stream, event by event


def _body(events: list[bytes]) -> bytes:
    return HEAD + b"".join(_chunk(e) for e in events) + _END


def _split_in_two(events: list[bytes], at: int) -> list[bytes]:
    """Every event as two chunks (each its own write), split `at` bytes into its token text."""
    out = []
    for e in events:
        k = e.find(b'"text":"')
        k = k + 8 + at if k >= 0 else len(e) // 2
        out += [_chunk(e[:k]), _chunk(e[k:])]
    return out


_USAGE_LAST = _ev(b'{"id":"c1","object":"text_completion","choices":[{"index":0,"text":" c","finish_reason":"length"}],'
                  b'"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}')
_SSE_LEN = b"".join(STREAM)
_PIPELINED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%b"
              % (len(_SSE_LEN.replace(b"20,", b"99,")), _SSE_LEN.replace(b"20,", b"99,")))


def _whole(ctype: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n%b" % (ctype, len(body), body)


def _finish(reason: bytes) -> bytes:
    return _ev(b'{"id":"c1","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":%b}]}' % reason)


def _usage(v: bytes) -> bytes:
    return b'data: {"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":%b}}\n\n' % v


# Valid but unusual streams an OpenAI-compatible server may send: each write in `parts` goes out
# alone (a short pause between), `keep` says whether the connection stays open for the next one.
VALID: dict[str, tuple[list[bytes], bool]] = {
    "crlf": ([HEAD, *(_chunk(e.replace(b"\n", b"\r\n")) for e in STREAM), _END], True),
    "leadcrlf": ([b"\r\n" + HEAD, *(_chunk(e) for e in STREAM), _END], True),  # a stray CRLF before the status line
    "bom": ([HEAD, _chunk(b"\xef\xbb\xbf" + STREAM[0]), *(_chunk(e) for e in STREAM[1:]), _END], True),
    "bomsplit": ([HEAD, _chunk(b"\xef"), _chunk(b"\xbb\xbf" + STREAM[0]), *(_chunk(e) for e in STREAM[1:]), _END],
                 True),  # the BOM split across reads
    "donespaces": ([HEAD, *(_chunk(e) for e in STREAM[:-1]), _chunk(b"data:   [DONE]\n\n"), _END], True),
    "contentparts": ([_body([*(_ev(b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":'
                                   b'[{"type":"text","text":"%b"}]}}]}' % w) for w in (b" a", b" b", b" c")), *TAIL])],
                     True),
    "cr": ([HEAD, *(_chunk(e.replace(b"\n", b"\r")) for e in STREAM), _END], True),
    "crlf-split": ([HEAD, *(_chunk(p) for e in STREAM for p in (e.replace(b"\n", b"\r\n")[:-3],
                                                                 e.replace(b"\n", b"\r\n")[-3:])), _END], True),
    "multi": ([HEAD + _chunk(b"".join(STREAM)) + _END], True),  # every event in one chunk
    "split": ([HEAD, *_split_in_two(STREAM, 1), _END], True),  # every event across two chunks and reads
    "utf8": ([HEAD, *_split_in_two([_event(" \u00e9".encode()), _event(" \u00fc".encode()),
                                     _event(" \u00df".encode()), *TAIL], 2), _END], True),  # a character split
    "fields": ([HEAD, _chunk(b": ping\n\n"), _chunk(b"event: message\nid: 1\nretry: 500\n" + GOOD[0]),
                _chunk(b": keep-alive\n\ndata:" + GOOD[1][5:]), _chunk(GOOD[2]), _chunk(USAGE),
                _chunk(b"data:[DONE]\n\n"), _END], True),
    "http10": ([b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                *STREAM], False),
    "length": ([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(_SSE_LEN),
                *STREAM], True),
    "usagelast": ([HEAD, *(_chunk(e) for e in (*GOOD[:2], _USAGE_LAST, _DONE)), _END], True),
    "keepalive": ([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: keep-alive\r\n"
                   b"Keep-Alive: timeout=5, max=1000\r\nTransfer-Encoding: chunked\r\n\r\n",
                   *(_chunk(e) for e in STREAM), _END], True),
    "chunkext": ([HEAD, *(b"%04X;ext=1;q=\"a b\"\r\n%b\r\n" % (len(e), e) for e in STREAM),
                  b"0;last\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"], True),
    "badreason": ([b"HTTP/1.1 200 Fine\tby me \x80\xff\r\n" + HEAD.split(b"\r\n", 1)[1],
                   *(_chunk(e) for e in STREAM), _END], True),
    "manyheaders": ([HEAD[:-2] + b"".join(b"X-H%d: v\r\n" % i for i in range(90)) + b"\r\n",
                     *(_chunk(e) for e in STREAM), _END], True),
    # bytes after the end of the answer (a second, unasked-for answer): this answer is whole, but
    # the connection is out of step and must never carry another request
    "pipejunk": ([_body(STREAM) + _PIPELINED], True),
    "lfonly": ([HEAD.replace(b"\r\n", b"\n"), *(_chunk(e) for e in STREAM), _END], True),  # bare LF head lines
    "obsfold": ([HEAD[:-2] + b"X-Long: a\r\n  continued\r\n\r\n", *(_chunk(e) for e in STREAM), _END], True),
    "noreason": ([b"HTTP/1.1 200\r\n" + HEAD.split(b"\r\n", 1)[1], *(_chunk(e) for e in STREAM), _END], True),
    # a valid stream that proves less: no usage (counts unknown, not invented)
    "nousage": ([_body([*GOOD, _DONE])], True),
    # `"error": null` beside the usage (some gateways always send the field): no error
    "errornull": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3},"error":null}'),
                          _DONE])], True),
    # any other reason a stream ends with is an answer: OpenAI's content filter, a reason nobody knows yet
    "finfilter": ([_body([*GOOD[:2], _event(b" c").replace(b'"finish_reason":null', b'"finish_reason":"content_filter"'),
                          USAGE, _DONE])], True),
    "finnovel": ([_body([*GOOD, _finish(b'{"type":"stop","matched":2}'), USAGE, _DONE])], True),
    # an event type is a name: only `error` says error (`noerror` was taken for one)
    "evnoerror": ([_body([b"event: noerror\n" + e for e in STREAM])], True),
}
JUNK_AFTER = _body(STREAM) + b"junk\r\n"  # a whole answer, then bytes that are no answer
THIN = {"nousage": TOKENS}  # `ok` streams without usage: token chunks they carry

# Hostile answers, each with the status it truly is and a word of its error.
HOSTILE: dict[str, tuple[list[bytes], str, str]] = {
    "donetwice": ([HEAD, *(_chunk(e) for e in (*STREAM, _DONE))], "protocol_error", "after data: [DONE]"),
    "afterdone": ([HEAD, *(_chunk(e) for e in (*STREAM, _event(b" z")))], "protocol_error", "after data: [DONE]"),
    "json200": ([_whole(b"application/json", b'{"choices":[{"text":" a b c"}],"usage":{"completion_tokens":3}}')],
                "protocol_error", "without data: [DONE]"),
    "html200": ([_whole(b"text/html", b"<html>\n\n<body>Welcome to nginx!</body></html>\n")],
                "protocol_error", "SSE field"),
    "errevent": ([HEAD, _chunk(GOOD[0]), _chunk(_ev(b'{"error":{"message":"boom: out of KV cache","code":500}}'))],
                 "http_error", "boom: out of KV cache"),
    # a 200 stream the server gave up on, then ends as if all were well: vLLM's reasons, SGLang's object
    "finabort": ([HEAD, *(_chunk(e) for e in (*GOOD[:2], _finish(b'"abort"'), _DONE)), _END],
                 "http_error", 'finish_reason "abort"'),
    "finerror": ([HEAD, *(_chunk(e) for e in (*GOOD[:2], _finish(b'"error"'), _DONE)), _END],
                 "http_error", 'finish_reason "error"'),
    "finabortobj": ([HEAD, *(_chunk(e) for e in (*GOOD[:2], _finish(b'{"type":"abort","message":"out of memory"}'),
                                                  _DONE)), _END], "http_error", "out of memory"),
    "errobject": ([HEAD, _chunk(GOOD[0]), _chunk(_ev(b'{"object":"error","message":"boom: bad state","type":"InternalServerError",'
                                                     b'"code":500}')), _chunk(_DONE), _END], "http_error", "boom: bad state"),
    # far more token chunks than max_tokens allows and no usage: what a usage would be refused for
    "manynousage": ([_body([*(_event(b" w") for _ in range(40)), _DONE])], "protocol_error", "no usage counts them"),
    # a prompt count no request of these bytes could hold (it made input throughput 10^10 tokens/s)
    "promptabsurd": ([_body([*GOOD, USAGE.replace(b'"prompt_tokens":20', b'"prompt_tokens":2147483647'), _DONE])],
                     "protocol_error", "usage.prompt_tokens is 2147483647"),
    # an error in an event that also carries tokens or usage is still an error
    "errwithusage": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3},'
                                        b'"error":{"message":"boom: engine crashed"}}'), _DONE])],
                     "http_error", "boom: engine crashed"),
    "errwithtoken": ([_body([GOOD[0], _ev(_TEXT_EVENT.replace(b'"finish_reason":null}]}', b'"finish_reason":null}],'
                                                             b'"error":{"message":"boom: mid-answer"}}') % b" b"),
                             *TAIL])], "http_error", "boom: mid-answer"),
    # streams that end well but carry no token: nothing proves an answer was generated
    "doneonly": ([_body([_DONE])], "protocol_error", "no token and no usage"),
    "emptychoices": ([_body([_ev(b'{"choices":[]}')] * 3 + [_usage(b"16"), _DONE])],
                     "protocol_error", "usage counts 16 completion tokens"),
    "nodelta": ([_body([_ev(b'{"object":"chat.completion.chunk","choices":[{"index":0}]}')] * 3
                       + [_usage(b"16"), _DONE])], "protocol_error", "no token"),
    # a partial event after [DONE], then a clean end
    "afterdonepart": ([_body([*STREAM, b'data: {"choices":[{"text":"AFTER'])], "protocol_error", "after data: [DONE]"),
    # counts that cannot be: usage that is no object, parts larger than their whole
    "usagenotobj": ([_body([*GOOD, _ev(b'{"choices":[],"usage":"16 tokens"}'), _DONE])], "protocol_error", "usage"),
    "cachedover": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3,'
                                      b'"prompt_tokens_details":{"cached_tokens":5000}}}'), _DONE])],
                   "protocol_error", "cached_tokens"),
    "detailsnotobj": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3,'
                                         b'"completion_tokens_details":"lots"}}'), _DONE])],
                      "protocol_error", "completion_tokens_details is not an object"),
    "reasonover": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3,'
                                      b'"completion_tokens_details":{"reasoning_tokens":999}}}'), _DONE])],
                   "protocol_error", "reasoning_tokens"),
    # usage of 0 tokens and no token: nothing was generated (an `ok` without TTFT left the latencies)
    "zerotokens": ([_body([_ev(b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":0}}'), _DONE])],
                   "protocol_error", "usage counts 0 completion tokens"),
    "errevent2": ([HEAD, _chunk(GOOD[0]), _chunk(b'event: error\ndata: {"message":"boom: overloaded"}\n\n')],
                  "http_error", "boom: overloaded"),
    # n=1 was asked: tokens of another choice are not this answer's
    "choice1": ([_body([GOOD[0], _ev(b'{"choices":[{"index":1,"text":" x","finish_reason":null}]}'), *GOOD[1:], *TAIL])],
                "protocol_error", "more than the one choice"),
    "twochoices": ([_body([GOOD[0], _ev(b'{"choices":[{"index":0,"text":" b"},{"index":1,"text":" x"}]}'),
                           GOOD[2], *TAIL])], "protocol_error", "more than the one choice"),
    # content parts and tool calls are objects: `[null, 5]` and `[7]` are no tokens
    "partsjunk": ([_body([_ev(b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":[null,5]}}]}'),
                          _ev(b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[7]}}]}'),
                          *TAIL])], "protocol_error", "unexpected stream event"),
    # a part over what its missing whole could be (2^31 cached tokens of a 20-token prompt)
    "cachedabsurd": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"completion_tokens":3,'
                                        b'"prompt_tokens_details":{"cached_tokens":2000000000}}}'), _DONE])],
                     "protocol_error", "cached_tokens"),
    "reasonabsurd": ([_body([*GOOD, _ev(b'{"choices":[],"usage":{"prompt_tokens":20,'
                                        b'"completion_tokens_details":{"reasoning_tokens":2000000000}}}'), _DONE])],
                     "protocol_error", "reasoning_tokens"),
    # an error object without words is still an error
    "errempty": ([_body([GOOD[0], _ev(b'{"error":{}}'), *GOOD[1:], *TAIL])], "http_error", "{}"),
    # the choice ended, then more tokens (the usage counting them all): not one answer
    "afterfinish": ([_body([*GOOD[:2], _finish(b'"stop"'), GOOD[2], _event(b" d"), _usage(b"4"), _DONE])],
                    "protocol_error", "after the choice's finish_reason"),
    "errtypeonly": ([_body([GOOD[0], _ev(b'{"type":"error","message":"boom: typed error"}'), *GOOD[1:], *TAIL])],
                    "http_error", "boom: typed error"),
    "jsonerr200": ([_whole(b"application/json", b'{"object":"error","message":"boom: model not loaded","code":503}')],
                   "http_error", "boom: model not loaded"),
    "usageneg": ([_body([*GOOD, _usage(b"-3"), _DONE])], "protocol_error", "usage"),
    "usagefloat": ([_body([*GOOD, _usage(b"3.5"), _DONE])], "protocol_error", "usage"),
    "usagestr": ([_body([*GOOD, _usage(b'"3"'), _DONE])], "protocol_error", "usage"),
    "usagehuge": ([_body([*GOOD, _usage(b"1" + b"0" * 30), _DONE])], "protocol_error", ""),
    "usageearly": ([_body([GOOD[0], _usage(b"1"), *GOOD[1:], _DONE])], "protocol_error", "but 3 token chunks"),
    "usagemany": ([_body([*GOOD, _usage(b"4000"), _DONE])], "protocol_error", "were asked for"),
    "usagefew": ([_body([*GOOD, _usage(b"1"), _DONE])], "protocol_error", "usage"),
    "clandchunked": ([HEAD[:-2] + b"Content-Length: 40\r\n\r\n", *(_chunk(e) for e in STREAM), _END],
                     "protocol_error", ""),
    "bighead": ([HEAD[:-2] + b"X-Big: " + b"a" * (100 << 10) + b"\r\n\r\n"], "protocol_error", ""),
    "badversion": ([b"HTTP/2.0 200 OK\r\n" + HEAD.split(b"\r\n", 1)[1], *(_chunk(e) for e in STREAM), _END],
                   "protocol_error", ""),
    "tegzip": ([HEAD.replace(b"chunked", b"gzip, chunked"), *(_chunk(e) for e in STREAM), _END],
               "protocol_error", "gzip"),
    # no body, whatever the head says: not read until close (the error once said "body unfinished")
    "status204": ([b"HTTP/1.1 204 No Content\r\n\r\n"], "http_error", "HTTP 204: "),
    "status304": ([b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"], "http_error", "HTTP 304: "),
    "status201": ([HEAD.replace(b"200 OK", b"201 Created"), *(_chunk(e) for e in STREAM), _END], "http_error", "201"),
    "textint": ([HEAD, *(_chunk(e) for e in (*GOOD, _ev(b'{"choices":[{"index":0,"text":5}]}')))],
                "protocol_error", "unexpected stream event"),
    "nocolon": ([HEAD[:-2] + b"this is not a header\r\n\r\n", *(_chunk(e) for e in STREAM), _END],
                "protocol_error", ""),
    "spacecolon": ([HEAD[:-2] + b"Content-Length : 5\r\n\r\n", *(_chunk(e) for e in STREAM), _END],
                   "protocol_error", ""),  # a smuggling sign
    "nulheader": ([HEAD[:-2] + b"X-A: a\x00b\r\n\r\n", *(_chunk(e) for e in STREAM), _END], "protocol_error", ""),
    "interimjunk": ([b"HTTP/1.1 100 Continue\r\n\r\n", b"junk junk\r\n\r\n"], "protocol_error", ""),
    # an error answer whose body hangs or never ends is that error, never a `timeout`
    "e503hang": ([b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\nover"], "http_error", "HTTP 503"),
    "e503head": ([b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\n"], "http_error", "HTTP 503"),
    "e503big": ([b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunk(b"x" * 5000)],
                "http_error", "HTTP 503: xxx"),
    "hdr5000": ([HEAD[:-2] + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n",
                 *(_chunk(e) for e in STREAM), _END], "protocol_error", ""),  # over 128 header lines
    "lfchunks": ([HEAD, *(b"%x\n%b\n" % (len(e), e) for e in STREAM), b"0\n\n"], "protocol_error", ""),
    "badcode": ([b"HTTP/1.1 2x0 OK\r\n" + HEAD.split(b"\r\n", 1)[1], *(_chunk(e) for e in STREAM), _END],
                "protocol_error", ""),
}


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Say nothing more until the client closes (at most 30 s)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(), 30)


class Hostile:
    """The hostile server: mode = first path segment; counts the requests it read per mode."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.received: Counter[str] = Counter()
        self.redirect_to = ""
        self.noread_port = 0
        self.rst_port = 0
        self.heads: dict[str, bytes] = {}
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        noread = self.loop.run_until_complete(asyncio.start_server(self._never_read, "127.0.0.1", 0))
        self.noread_port = noread.sockets[0].getsockname()[1]
        rst = self.loop.run_until_complete(asyncio.start_server(self._rst_at_once, "127.0.0.1", 0))
        self.rst_port = rst.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        for srv in (server, noread, rst):
            srv.close()
            self.loop.run_until_complete(srv.wait_closed())

    async def _never_read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts, never reads the request, never answers: only the client's timeout ends it."""
        await asyncio.sleep(30)
        writer.close()

    async def _rst_at_once(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts, then resets the connection before reading a byte."""
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def stop(self) -> None:
        async def cancel_handlers() -> None:  # each closes its connection while the loop still runs
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_handlers(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                mode = await self._mode_of_next(reader, writer)
                if mode is None:
                    return
                if not await self._answer(mode, served, reader, writer):
                    return
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _mode_of_next(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """Read one request (head and body); its mode."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line = head.split(b"\r\n", 1)[0].split(b" ")
        method, path = line[0], line[1].decode()
        length = 0
        for h in head.split(b"\r\n")[1:]:
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        mode = path.strip("/").split("/")[0]
        if mode == "early413":  # answers before the body is read (then drains it, closes)
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo long")
            await writer.drain()
            self.received[mode] += 1
            await reader.readexactly(length)
            return None
        if length:
            await reader.readexactly(length)
        if method == b"GET":
            mode = "models-" + mode
        self.received[mode] += 1
        self.heads[mode] = head
        return mode

    async def _answer(self, mode: str, served: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False ends the connection."""
        w = writer.write

        async def send(*parts: bytes, pause: float = 0.0) -> None:
            for p in parts:
                w(p)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)

        good = [_chunk(e) for e in GOOD]
        if mode == "ok":
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return True
        after = _chunk(_event(b" e"))  # more bytes follow the corruption (a lying size line shows then)
        if mode in CORRUPT:  # good chunks one read each (template learned), then the corruption
            await send(HEAD, *good, CORRUPT[mode], after, pause=0.01)
            await _until_closed(reader)  # and then nothing: only a strict parser ends it promptly
            return False
        if mode.endswith("-batch") and mode[:-6] in CORRUPT:  # all in one write: the chunked fast loop
            await send(HEAD + b"".join(good) + CORRUPT[mode[:-6]] + after)
            await _until_closed(reader)
            return False
        if mode == "bigevent":  # one event of 1 MiB, trickled in 16 KiB writes, never ending
            await send(HEAD, *good, pause=0.005)
            big = b'data: {"choices":[{"text":"' + b"x" * (1 << 20)
            for i in range(0, len(big), 16384):
                await send(_chunk(big[i:i + 16384]))
            await _until_closed(reader)
            return False
        if mode == "blast":  # token chunks without end, many per write, as fast as the client reads
            await send(HEAD, *good)
            burst = _chunk(_event(b"x")) * 2000
            with contextlib.suppress(ConnectionError):
                while True:
                    await send(burst)
            return False
        if mode == "closeafter":  # a whole valid answer, then a close (llama.cpp does this after streams)
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return False
        if mode == "cut":  # two tokens, then a clean close mid-stream
            await send(HEAD + b"".join(good[:2]))
            return False
        if mode == "reset":  # works on it, then resets the connection
            await asyncio.sleep(0.2)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "dropafterwork":  # reads it, works, closes cleanly without a byte of answer
            await asyncio.sleep(0.3)
            return False
        if mode == "hanghead":  # reads the request, never answers
            await _until_closed(reader)
            return False
        if mode == "hangmid":  # head and one token, then silence
            await send(HEAD + good[0])
            await _until_closed(reader)
            return False
        if mode == "hangbody":  # the head promises a body that never comes
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
            await _until_closed(reader)
            return False
        if mode == "slow":  # a valid stream, a few bytes at a time
            data = HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n"
            await send(*(data[i:i + 7] for i in range(0, len(data), 7)), pause=0.0005)
            return True
        if mode == "interim":  # 100 Continue and 103 Early Hints before the real answer
            await send(b"HTTP/1.1 100 Continue\r\n\r\n", pause=0.01)
            await send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", pause=0.01)
            await send(HEAD + b"".join(good + [_chunk(e) for e in TAIL]) + b"0\r\n\r\n")
            return True
        if mode == "gzip":  # a compressed stream nobody asked for
            body = gzip.compress(b"".join(GOOD + TAIL))
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            return True
        if mode == "garbage":  # not HTTP at all, then silence
            await send(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
            await _until_closed(reader)
            return False
        if mode == "twolengths":
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789")
            await _until_closed(reader)
            return False
        if mode == "redirect":  # to another origin, which must never see the request (nor the key)
            await send(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n"
                       % self.redirect_to.encode())
            return True
        if mode == "models-cut":  # /v1/models cut short: http.client.IncompleteRead, aiohttp payload error
            await send(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"data":[')
            return False
        if mode == "models-garbage":
            await send(b"\x00\xffgarbage\r\n\r\n")
            return False
        if mode == "models-redirect":
            await send(b"HTTP/1.1 302 Found\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n" % self.redirect_to.encode())
            return True
        if mode == "models-keyecho":  # the key in the redirect's query
            auth = next((h.split(b":", 1)[1].strip() for h in self.heads[mode].split(b"\r\n")
                         if h.lower().startswith(b"authorization:")), b"")
            await send(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/next?token=%b\r\nContent-Length: 0\r\n\r\n"
                       % auth.split(b" ")[-1])
            return True
        if mode == "models-hang":
            await _until_closed(reader)
            return False
        if mode == "models-reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "models-split":  # a valid list in two pieces 20 ms apart: one read got the first only
            body = orjson.dumps({"data": [{"id": "split-model", "object": "model", "owned_by": "me"}]})
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                       % (len(body), body[:20]), body[20:], pause=0.02)
            return True
        if mode in ("models-null", "models-number", "models-empty", "models-escape"):
            ident = {"models-null": None, "models-number": 5, "models-empty": " ", "models-escape": "m\x1b[2J\n"}[mode]
            body = orjson.dumps({"data": [{"id": ident}]})
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                       % (len(body), body))
            return True
        if mode.startswith("models-"):
            body = orjson.dumps({"data": [{"id": "m"}]})
            await send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                       % (len(body), body))
            return True
        if mode == "keyecho":  # every POST (/tokenize, the overhead probes, requests): a status line with the key
            auth = next((h.split(b":", 1)[1].strip() for h in self.heads[mode].split(b"\r\n")
                         if h.lower().startswith(b"authorization:")), b"")
            await send(b"HTTP/1.1 4x4 invalid key %b\r\nContent-Length: 0\r\n\r\n" % auth)
            return False
        if mode == "headtrickle":  # a head a byte at a time, never ending
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                await send(bytes([b]))
                await asyncio.sleep(0.05)
            return False
        if mode == "tokenize":  # POST /tokenize (any prefix) cut short: http.client.IncompleteRead
            await send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"tok")
            return False
        if mode == "trailjunk":
            await send(JUNK_AFTER)
            return True
        if mode in VALID:
            parts, keep = VALID[mode]
            await send(*parts, pause=0.005)
            return keep
        if mode in HOSTILE:
            await send(*HOSTILE[mode][0], pause=0.005)
            return True  # and then nothing (an unfinished body stays unfinished): only the bytes end it
        if mode in ("pings", "pingmid"):  # keep-alive comments forever, never a(nother) token
            await send(HEAD + (good[0] if mode == "pingmid" else b""))
            for _ in range(150):  # 30 s at most
                await send(_chunk(b": ping\n\n"), pause=0.2)
            return False
        if mode in ("latejunk", "late408"):  # a whole answer, then 0.3 s later more bytes on the idle connection
            await send(_body([*STREAM]))
            await asyncio.sleep(0.3)
            if mode == "latejunk":  # a second answer (another request's usage)
                await send(_body([*GOOD, USAGE.replace(b'"prompt_tokens":20', b'"prompt_tokens":99'), _DONE]))
                return True
            await send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return False
        if mode == "donegap":  # [DONE] 0.7 s after the last token, the body's end 0.7 s after that
            await send(HEAD, *(_chunk(e) for e in GOOD))
            await asyncio.sleep(0.7)
            await send(*(_chunk(e) for e in TAIL))
            await asyncio.sleep(0.7)
            await send(_END)
            return True
        if mode == "donehang":  # the whole stream, [DONE] too, but the chunked body never ends
            await send(HEAD, *(_chunk(e) for e in STREAM))
            await _until_closed(reader)
            return False
        if mode == "halfclose":  # the head and a token, then shutdown(SHUT_WR); still reading
            await send(HEAD + good[0])
            writer.write_eof()
            await _until_closed(reader)
            return False
        if mode.startswith("r429-") or mode.startswith("r503-"):  # absurd Retry-After values
            value = {"days": b"864000", "neg": b"-30", "date": b"Fri, 31 Dec 2100 23:59:59 GMT",
                     "junk": b"soon, maybe", "nan": b"nan"}[mode[5:]]
            await send(b"HTTP/1.1 %b Busy\r\nRetry-After: %b\r\nContent-Length: 4\r\n\r\nbusy"
                       % (mode[1:4].encode(), value))
            return True
        if mode in ("connlist", "connlines"):  # `close` in a list, or on one of two Connection lines: the
            # whole answer, then 0.3 s without reading before the close (a reused connection loses its request)
            conn = b"Connection: TE, close\r\n" if mode == "connlist" else b"Connection: close\r\nConnection: keep-alive\r\n"
            await send(_body(STREAM).replace(b"Transfer-Encoding", conn + b"Transfer-Encoding", 1))
            await asyncio.sleep(0.3)
            return False
        if mode == "interimreads":  # 1xx answers, each in its own read, past the cap
            for _ in range(20):
                await send(b"HTTP/1.1 102 Processing\r\n\r\n", pause=0.005)
            await send(_body(STREAM))
            return True
        if mode == "cut503":  # an error answer whose body is cut short by a close
            await send(b"HTTP/1.1 503 Busy\r\nContent-Length: 40\r\n\r\n{\"error\": \"overloaded")
            return False
        if mode == "escape400":  # terminal escapes and a forged line in the error body
            body = b"\x1b]0;PWNED\x07\x1b[2J\x1b[31mgate: PASS\x1b[0m\r\nservegen-load: all good"
            await send(b"HTTP/1.1 400 Bad\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            return True
        if mode == "upper401":  # echoes the request head upper-cased
            head = self.heads[mode].upper()
            await send(b"HTTP/1.1 401 No\r\nContent-Length: %d\r\n\r\n%b" % (len(head), head))
            return True
        if mode in ("auth401", "auth403"):  # echoes the Authorization header, raw and JSON-escaped
            auth = next((h.split(b":", 1)[1].strip() for h in self.heads[mode].split(b"\r\n")
                         if h.lower().startswith(b"authorization:")), b"")
            body = b'{"error":"bad key %b", "escaped":"%b"}' % (auth, orjson.dumps(auth.decode())[1:-1].replace(b"-", b"\\u002d"))
            await send(b"HTTP/1.1 %b No\r\nWWW-Authenticate: Bearer realm=%b\r\nContent-Length: %d\r\n\r\n%b"
                       % (mode[4:].encode(), auth, len(body), body))
            return True
        await send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    s, other = Hostile(), Hostile()
    s.redirect_to = f"{other.url}/ok/v1/completions"
    s.other = other  # type: ignore[attr-defined]
    yield s
    s.stop()
    other.stop()


def _run(hostile: Hostile, mode: str, tmp_path: Path, transport: str, n: int = N, **cfg: Any) -> list[dict[str, Any]]:
    """Run n requests (one every 50 ms) against `mode`; check the accounting invariant; the lines."""
    out = tmp_path / f"{mode}-{transport}.jsonl"
    before = hostile.received[mode]
    input_tokens = cfg.pop("input_tokens", 20)
    port = {"noread": hostile.noread_port, "rstaccept": hostile.rst_port}.get(mode, hostile.port)
    base = f"http://127.0.0.1:{port}"
    config = RunConfig(endpoint=f"{base}/{mode}", model="m", output=out, api="completions",
                       progress="off", handle_signals=False, transport=transport,
                       timeouts=cfg.pop("timeouts", FAST), **cfg)
    reqs = make_requests([0.0 if cfg.get("max_concurrency") else 0.05 * i for i in range(n)], output_tokens=TOKENS,
                         input_tokens=input_tokens)
    outcome = run(reqs, config)
    _, lines = read_lines(out)
    assert sorted(d["id"] for d in lines) == sorted(r.id for r in reqs), lines  # one line each
    assert outcome.scheduled == n and sum(outcome.by_status.values()) == n
    for d in lines:
        assert d["status"] is not None and (d["status"] == "ok") == (d["error"] is None), d
        assert d["attempts"] == d["retries"] + (1 if d["sent"] is not None else 0), d
        if d["status"] == "ok" and mode in THIN:  # what the bytes carried, nothing invented
            assert len(d["chunk_times"]) == THIN[mode] and d["completion_tokens"] is None, d
        elif d["status"] == "ok":  # the bytes proved it: every token and the usage were read
            assert len(d["chunk_times"]) == TOKENS and d["completion_tokens"] == TOKENS, d
            assert d["prompt_tokens"] == 20, d  # this request's answer, not another one's
    if mode not in ("noread", "rstaccept"):  # the server read exactly the attempts we recorded
        assert hostile.received[mode] - before == sum(d["attempts"] for d in lines), (mode, lines)
    return lines


def _all(lines: list[dict[str, Any]], status: str, text: str) -> None:
    for d in lines:
        assert d["status"] == status, d
        assert text in d["error"], d


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_valid_stream_is_ok_slow_bytes_and_interim_answers_too(hostile: Hostile, tmp_path: Path,
                                                                  transport: str) -> None:
    for mode in ("ok", "slow", "interim"):
        for d in _run(hostile, mode, tmp_path, transport):
            assert d["status"] == "ok", (mode, d)
            assert d["attempts"] == 1 and d["prompt_tokens"] == 20


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", [*sorted(CORRUPT), "nul-batch", "size_short-batch", "newline-batch"])
def test_corrupt_stream_ends_promptly_as_protocol_error(hostile: Hostile, tmp_path: Path, transport: str,
                                                        mode: str) -> None:
    """Corruption after the template was learned: never counted, never `ok`, and the request ends
    on the corrupt bytes (the server then hangs: a lenient reader would end as `timeout`)."""
    lines = _run(hostile, mode, tmp_path, transport)
    for d in lines:
        assert d["status"] == "protocol_error", d  # not `ok`, and not `timeout`: ended by the bytes
        # the corrupt chunk is never a token (a lying size line is found one read later)
        assert len(d["chunk_times"]) <= TOKENS + mode.startswith("size_long"), d
        assert "400" not in d["error"], d  # aiohttp's parser says "400": no server answered that


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", sorted(VALID))
def test_valid_but_unusual_streams_are_ok_with_exact_counts(hostile: Hostile, tmp_path: Path, transport: str,
                                                            mode: str) -> None:
    """CRLF or CR line ends, several events per chunk, events and UTF-8 characters split across
    chunks and reads, comments and `event:`/`id:`/`retry:` fields, HTTP/1.0 until close, a
    Content-Length body, usage in the last content chunk, chunk extensions, upper-case hex and
    trailers, a garbled reason phrase, many headers: all `ok` with every token. Bytes after the end
    of an answer (a second answer nobody asked for): that answer is `ok`, and the next request
    (one at a time, so the connection would be reused) never takes the stray answer for its own."""
    lines = _run(hostile, mode, tmp_path, transport, n=4 if mode.endswith("junk") else N,
                 **({"max_concurrency": 1} if mode.endswith("junk") else {}))
    for d in lines:
        assert d["status"] == "ok" and d["attempts"] == 1, (mode, d)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_hostile_answers_have_their_true_status(hostile: Hostile, tmp_path: Path, transport: str, mode: str) -> None:
    """Data after `[DONE]`, a JSON or HTML 200, an `error` event in a 200 stream, usage that is no
    count (negative, fractional, a string, past 64 bits, fewer tokens than token chunks), both
    Content-Length and chunked, a 100 KiB header line, HTTP/2.0 or a non-numeric code on the
    status line: each ends at once (the server then hangs) with its true status."""
    _parts, status, text = HOSTILE[mode]
    lines = _run(hostile, mode, tmp_path, transport)
    _all(lines, status, text)
    if mode in ("status204", "status304"):  # ended by the head, not at a timeout
        assert not any("unfinished" in d["error"] for d in lines), lines
    assert all(len(d["chunk_times"]) <= (40 if mode == "manynousage" else TOKENS) for d in lines)
    if text.startswith("usage.") or "more than its" in text:  # a refused count is kept nowhere (metrics summed 2^31)
        assert all(d[k] is None for d in lines for k in ("prompt_tokens", "completion_tokens", "cached_tokens")), lines


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_junk_after_a_whole_answer_never_reaches_the_next_request(hostile: Hostile, tmp_path: Path,
                                                                   transport: str) -> None:
    """A whole answer, then `junk` in the same write; one request at a time. The raw transport
    keeps the answer (`ok`: its bytes proved it) and drops the connection; aiohttp's parser
    rejects the read as a whole (`protocol_error` "Bad status line"). Either way no request
    ever reads the junk as its own answer."""
    lines = _run(hostile, "trailjunk", tmp_path, transport, n=4, max_concurrency=1)
    for d in lines:
        if transport == "raw":
            assert d["status"] == "ok", d
        else:
            assert d["status"] == "protocol_error" and "junk" in d["error"], d
        assert d["attempts"] == 1, d


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_before_the_body_was_read_is_that_answer(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    """A 413 sent after the head of a large request, before its body was read: `http_error` 413
    with the server's words, not a write failure reported as `disconnect`."""
    lines = _run(hostile, "early413", tmp_path, transport, input_tokens=200_000)
    _all(lines, "http_error", "too long")
    assert all(d["http_status"] == 413 for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_half_close_after_the_head_is_a_disconnect(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    """Head and one token, then shutdown(SHUT_WR) while still reading: the body ended early."""
    lines = _run(hostile, "halfclose", tmp_path, transport)
    _all(lines, "disconnect", "")
    assert all(len(d["chunk_times"]) == 1 for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reset_at_accept_is_never_ok_nor_counted_as_sent_twice(hostile: Hostile, tmp_path: Path,
                                                               transport: str) -> None:
    """Accepted, then RST before a byte is read: `disconnect` when the request was written first,
    `connect_error` (attempts 0, `sent` null) when the reset came during connection set-up."""
    for d in _run(hostile, "rstaccept", tmp_path, transport):
        assert d["status"] in ("disconnect", "connect_error") and not d["chunk_times"], d
        assert d["attempts"] == (d["status"] == "disconnect"), d


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["r429-days", "r429-neg", "r503-date", "r503-junk", "r429-nan"])
def test_absurd_retry_after_is_capped_and_every_attempt_recorded(hostile: Hostile, tmp_path: Path,
                                                                 transport: str, mode: str) -> None:
    """--retries 2 with Retry-After of ten days, negative, a date in 2100, junk or `nan`: the wait
    is capped by --retry-max-wait (the run would outlast the test otherwise), each retry recorded."""
    lines = _run(hostile, mode, tmp_path, transport, retries=2, retry_max_wait=0.05)
    for d in lines:
        assert d["status"] == "http_error" and d["http_status"] == int(mode[1:4]), d
        assert d["attempts"] == 3 and d["retries"] == 2, d


def test_a_run_interrupted_while_requests_wait_to_retry_is_not_whole(hostile: Hostile, tmp_path: Path) -> None:
    """Every answer a 429 asking for a long wait, `--retries 3`, then Ctrl-C: the lines said
    `http_error` with `retries` 0 under a `complete` header, and a gate passed the run. A request
    whose retries were cut is `cancelled`, its last failure kept in `error`."""
    import subprocess
    import sys

    from test_dispatch_fixtures import interrupt_when

    from servegen_load.gate import run_gate
    from servegen_load.slo import build_slos

    src = write_requests(tmp_path / "req.jsonl", make_requests([0.05 * i for i in range(3)]))
    out = tmp_path / "out.jsonl"
    before = hostile.received["r429-days"]
    p = subprocess.Popen([sys.executable, "-m", "servegen_load", "run", str(src), "-o", str(out), "--endpoint",
                          f"{hostile.url}/r429-days", "--model", "m", "--api", "completions", "--progress", "off",
                          "--tokenizer", "words", "--retries", "3", "--retry-max-wait", "20"],
                         stderr=subprocess.DEVNULL)
    # the overhead probe, then the 3 requests' first attempts
    assert interrupt_when(p, lambda: hostile.received["r429-days"] - before >= 4, "4 answers of 429") == 130
    _, lines = read_lines(out)
    assert len(lines) == 3
    for d in lines:
        assert d["status"] == "cancelled" and "waiting to retry (last attempt: HTTP 429" in d["error"], d
    g = run_gate([str(out)], build_slos(["error_rate<=100%"]))
    assert not g.passed and "cancelled" in (g.incomplete or "")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["auth401", "auth403"])
def test_a_rejected_key_echoed_back_never_reaches_the_results(hostile: Hostile, tmp_path: Path, transport: str,
                                                              mode: str) -> None:
    key = "sk-hostile-echo-1234567890"
    lines = _run(hostile, mode, tmp_path, transport, api_key=key)
    for d in lines:
        assert d["status"] == "http_error" and d["http_status"] == int(mode[4:]), d
        assert "bad key" in d["error"], d
    text = (tmp_path / f"{mode}-{transport}.jsonl").read_text()
    assert key not in text and key.replace("-", "\\u002d") not in text and "1234567890" not in text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_oversized_event_is_cut_at_the_cap(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    lines = _run(hostile, "bigevent", tmp_path, transport, limits=Limits(max_event_bytes=256 << 10))
    _all(lines, "protocol_error", "over 262144 bytes")
    assert all(len(d["chunk_times"]) == TOKENS for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("mode", "status", "text"), [
    ("cut", "disconnect", "closed"),
    ("reset", "disconnect", ""),
    ("hanghead", "timeout", "no first token within 1.5s"),
    ("noread", "timeout", "no first token within 1.5s"),
    ("hangmid", "timeout", "no token for 1s"),
    ("hangbody", "timeout", "no first token"),
    ("pings", "timeout", "no first token within 1.5s"),  # comments are no tokens
    ("donehang", "timeout", "did not end within 1s of its data: [DONE]"),
    ("pingmid", "timeout", "no token for 1s"),
    ("gzip", "protocol_error", "compressed"),
    ("garbage", "protocol_error", ""),
    ("twolengths", "protocol_error", ""),
])
def test_failures_have_their_true_status(hostile: Hostile, tmp_path: Path, transport: str, mode: str,
                                         status: str, text: str) -> None:
    lines = _run(hostile, mode, tmp_path, transport)
    _all(lines, status, text)
    if mode in ("reset", "hanghead", "noread", "gzip", "garbage"):
        assert all(d["first_token"] is None and not d["chunk_times"] for d in lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["latejunk", "late408"])
def test_bytes_on_an_idle_kept_alive_connection_are_no_later_request_s_answer(hostile: Hostile, tmp_path: Path,
                                                                           transport: str, mode: str) -> None:
    """After a whole answer the server sends, 0.3 s later on the idle connection, a second answer or a
    408 before closing. aiohttp handed those bytes to the next request: `ok` with prompt_tokens 99
    and TTFT 0.2 ms for a request the server never read, or `http_error 408`."""
    out = tmp_path / f"{mode}-{transport}.jsonl"
    before = hostile.received[mode]
    reqs = make_requests([0.6 * i for i in range(4)], output_tokens=TOKENS)
    run(reqs, RunConfig(endpoint=f"{hostile.url}/{mode}", model="m", output=out, api="completions", progress="off",
                        handle_signals=False, transport=transport, timeouts=FAST))
    _, lines = read_lines(out)
    assert [d["status"] for d in lines] == ["ok"] * 4, lines
    assert all(d["prompt_tokens"] == 20 for d in lines), lines
    assert hostile.received[mode] - before == 4  # every answer was to a request the server read


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["connlist", "connlines"])
def test_close_in_a_list_of_connection_options_is_close(hostile: Hostile, tmp_path: Path, transport: str,
                                                        mode: str) -> None:
    """`Connection: TE, close` (a list) or a `close` line beside a `keep-alive` one: the raw transport
    kept the connection unless the value was exactly `close`, wrote the next request into it and
    recorded the server's close as the server's `disconnect` (5 of 15)."""
    lines = _run(hostile, mode, tmp_path, transport, n=6)
    assert all(d["status"] == "ok" and d["attempts"] == 1 for d in lines), lines


def test_interim_answers_are_capped_over_reads(hostile: Hostile, tmp_path: Path) -> None:
    """20 `102 Processing` answers, each in its own read: the cap of 16 counted per read and let
    any number through (only the first-token timeout ended them)."""
    _all(_run(hostile, "interimreads", tmp_path, "raw"), "protocol_error", "interim")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("retries", [0, 1])
def test_an_error_answer_cut_short_is_that_error(hostile: Hostile, tmp_path: Path, transport: str,
                                                 retries: int) -> None:
    """A 503 whose body the server cuts short: the raw transport said `disconnect` (the status and
    the server's words lost, and `--retries` never retried it) where aiohttp said `http_error`."""
    lines = _run(hostile, "cut503", tmp_path, transport, retries=retries, retry_max_wait=0.0)
    _all(lines, "http_error", "overloaded")
    assert all(d["http_status"] == 503 and d["attempts"] == 1 + retries for d in lines), lines


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_wait_for_the_end_runs_from_done_not_from_the_last_token(hostile: Hostile, tmp_path: Path,
                                                                      transport: str) -> None:
    """[DONE] 0.7 s after the last token and the end 0.7 s after it, idle timeout 1 s: each wait is
    within it, yet the run said "did not end within 1s of its data: [DONE]" (timed from the token)."""
    lines = _run(hostile, "donegap", tmp_path, transport)
    assert all(d["status"] == "ok" for d in lines), lines


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_redirect_across_origins_is_not_followed(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    other = hostile.other  # type: ignore[attr-defined]
    seen = other.received["ok"]
    lines = _run(hostile, "redirect", tmp_path, transport, api_key="sk-hostile-test-key")
    _all(lines, "http_error", "redirect to " + hostile.redirect_to)
    assert all(d["http_status"] == 307 for d in lines)
    assert other.received["ok"] == seen  # the other origin never saw the request (nor the key)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_the_server_worked_on_is_never_resent_unasked(hostile: Hostile, tmp_path: Path,
                                                                 transport: str) -> None:
    """Read, worked on for 0.3 s, connection closed cleanly without a byte: `disconnect`, one
    attempt, and the server saw each request once (it used to see 2 of them, the client's TTFT
    then timing the second attempt)."""
    lines = _run(hostile, "dropafterwork", tmp_path, transport)
    _all(lines, "disconnect", "closed by server")
    assert all(d["attempts"] == 1 and d["retries"] == 0 and d["first_token"] is None for d in lines)


@pytest.mark.parametrize("transport", ["raw"])  # aiohttp's pool reuses at once: docs/reliability.md
def test_a_server_that_closes_after_each_answer_loses_no_request(hostile: Hostile, tmp_path: Path,
                                                                 transport: str) -> None:
    """Back-to-back requests (one at a time, all due at once) to a server that closes every
    connection right after a complete answer while its head allows keep-alive (llama.cpp's
    server does this after every stream): the next request must never be written to the closing
    connection (that would be a `disconnect` the server did not cause, or a hidden resend). This
    server is a thread of the test process, so its close comes late (it waits for the GIL)."""
    n = 12
    out = tmp_path / f"closeafter-{transport}.jsonl"
    before = hostile.received["closeafter"]
    config = RunConfig(endpoint=f"{hostile.url}/closeafter", model="m", output=out, api="completions",
                       progress="off", handle_signals=False, transport=transport, timeouts=FAST,
                       max_concurrency=1)
    run(make_requests([0.0] * n, output_tokens=TOKENS), config)
    _, lines = read_lines(out)
    assert len(lines) == n
    _all_ok = [d for d in lines if d["status"] == "ok" and d["attempts"] == 1]
    assert len(_all_ok) == n, [d["error"] for d in lines]
    assert hostile.received["closeafter"] - before == n


def test_with_retries_a_stale_connection_drop_is_retried_and_recorded(hostile: Hostile, tmp_path: Path) -> None:
    """--retries 1: the same case is re-sent once, both attempts in the result, `sent` the first."""
    lines = _run(hostile, "dropafterwork", tmp_path, "raw", retries=1, retry_max_wait=0.0)
    for d in lines:
        assert d["status"] == "disconnect" and d["attempts"] == 2 and d["retries"] == 1, d
        assert d["sent"] - d["scheduled"] < 0.3  # the first attempt's send: the retry went 0.3 s after it


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_prompt_over_the_cap_is_never_built_nor_sent(hostile: Hostile, tmp_path: Path, transport: str) -> None:
    """input_tokens 2^31-1 once grew to 22 GB: now the request is refused before its body is built."""
    from servegen_load.requests import Request

    out = tmp_path / f"cap-{transport}.jsonl"
    before = hostile.received["ok"]
    reqs = [*make_requests([0.0, 0.05], output_tokens=TOKENS),
            Request(id="huge", t=0.02, client="a", category="language", input_tokens=2**31 - 1, output_tokens=3)]
    run(reqs, RunConfig(endpoint=f"{hostile.url}/ok", model="m", output=out, api="completions", progress="off",
                        handle_signals=False, transport=transport, timeouts=FAST))
    _, lines = read_lines(out)
    by_id = {d["id"]: d for d in lines}
    assert len(lines) == 3 and by_id["r0"]["status"] == by_id["r1"]["status"] == "ok"
    huge = by_id["huge"]
    assert huge["status"] == "client_error" and "--max-prompt-tokens" in huge["error"]
    assert huge["sent"] is None and huge["attempts"] == 0
    assert hostile.received["ok"] - before == 2


def test_sse_parsing_is_linear_in_the_bytes() -> None:
    """A 16 MB event in 4 KiB reads: the pending buffer grows in place (the old copy-per-read cost
    16 MB x 4096 reads / 2 = 32 GB of copying; here one pass). Checked by the bytes copied, not by
    a clock: the buffer is a bytearray extended in place."""
    from servegen_load.dispatch.stream import Flight, feed_sse

    f = Flight(make_requests([0.0])[0], b"")
    feed_sse(f, b'data: {"choices":[{"text":"', 0.0)
    first = f.sse_buf
    piece = b"y" * 4096
    for _ in range(4096):
        feed_sse(f, piece, 0.0, cap=64 << 20)
    assert type(f.sse_buf) is bytearray and len(f.sse_buf) == len(first) + (16 << 20)
    buf = f.sse_buf
    feed_sse(f, piece, 0.0, cap=64 << 20)
    assert f.sse_buf is buf  # extended in place, not re-copied
    feed_sse(f, b'"}]}\n\n', 1.0, cap=64 << 20)
    assert f.status is None and len(f.chunks) == 1 and f.sse_buf == b""


# --- the start-up probes, through the CLI -----------------------------------------------------


def _one_line(r: Any, *texts: str) -> str:
    assert "Traceback" not in r.err, r
    lines = [x for x in r.err.strip().splitlines() if x.startswith("servegen-load: error:")]
    assert len(lines) == 1, r
    for t in texts:
        assert t in lines[0], r
    return lines[0]


@pytest.mark.parametrize("mode", ["cut", "garbage", "redirect", "reset"])
def test_model_listing_probe_fails_in_one_line(hostile: Hostile, tmp_path: Path, mode: str) -> None:
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    other = hostile.other  # type: ignore[attr-defined]
    seen = other.received["models-ok"]
    r = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--endpoint", f"{hostile.url}/{mode}",
                "--api", "completions", "--progress", "off")
    assert r.code == 2, r
    line = _one_line(r, "pass --model", "/models")
    if mode == "redirect":
        assert "redirect" in line and "not followed" in line
        assert other.received["models-ok"] == seen


def test_a_model_list_that_arrives_in_pieces_is_read_whole(hostile: Hostile) -> None:
    assert asyncio.run(discover_model(Endpoint.parse(f"{hostile.url}/split"), None)) == "split-model"


@pytest.mark.parametrize("mode", ["null", "number", "empty", "escape"])
def test_a_listed_model_id_that_is_no_name_is_refused(hostile: Hostile, tmp_path: Path, mode: str) -> None:
    """An id of null, 5, blank or with control characters was sent as the model of every request."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    r = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--endpoint", f"{hostile.url}/{mode}",
                "--api", "completions", "--progress", "off")
    assert r.code == 2, r
    assert "\x1b" not in r.err
    _one_line(r, "no usable model id", "pass --model")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_s_words_reach_the_terminal_as_one_printable_line(hostile: Hostile, tmp_path: Path,
                                                                    transport: str) -> None:
    """An error body with escape sequences (retitle, clear the screen) and a CR LF before a forged
    `servegen-load:` line went raw to stderr, the summary and `report`."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.05 * i for i in range(3)]))
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/escape400", "--model", "m",
                "--api", "completions", "--progress", "off", "--transport", transport)
    rep = run_cli("report", out)
    for text in (r.err, r.out, rep.out, out.read_text()):
        assert "\x1b" not in text and "\r" not in text, text
        assert not any(line.startswith("servegen-load: all good") for line in text.splitlines()), text
    assert "\\x1b]0;PWNED" in r.err + r.out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_key_echoed_back_upper_cased_is_masked(hostile: Hostile, tmp_path: Path, transport: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "api-key: sk-proj-Ab12Cd34Ef56Gh78Ij90")  # sent as that header
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.05 * i for i in range(2)]))
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/upper401", "--model", "m",
                "--api", "completions", "--progress", "off", "--transport", transport)
    assert "API-KEY: ***" in out.read_text()
    for text in (r.err, r.out, out.read_text()):
        assert "CD34EF56" not in text.upper(), text


def test_model_listing_probe_that_hangs_ends_at_its_timeout(hostile: Hostile) -> None:
    with pytest.raises(InputError, match=r"no complete answer within 0\.5s"):
        asyncio.run(discover_model(Endpoint.parse(f"{hostile.url}/hang"), None, timeout=0.5))


def test_tokenize_probe_cut_short_is_a_warning_not_a_crash(hostile: Hostile, tmp_path: Path) -> None:
    """/tokenize and the overhead probes answered with a cut body (http.client.IncompleteRead,
    not an OSError): the run warns and goes on; its requests (also cut) end as one line each."""
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0, 0.05]))
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/tokenize", "--model", "m",
                "--api", "chat", "--server-family", "vllm", "--tokenizer", "server", "--progress", "off",
                "--timeout-first-token", "2")
    assert "Traceback" not in r.err, r
    assert "tokenize" in r.err, r
    _, lines = read_lines(out)
    assert len(lines) == 2 and all(d["status"] == "disconnect" for d in lines), lines


def test_start_up_probes_never_show_the_key_a_server_echoes(hostile: Hostile, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """/tokenize and /v1/models echoing the key (a status line, a redirect's query, their error
    texts) reached stderr and the results header unmasked."""
    key = "sk-Ab12Cd34Ef56Gh78Ij90KlMnOpQr"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0]))
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/keyecho", "--model", "m", "--api", "chat",
                "--server-family", "vllm", "--tokenizer", "server", "--progress", "off")
    assert "tokenize" in r.err, r  # the probe's failure is said, masked
    r2 = run_cli("run", src, "-o", tmp_path / "out2.jsonl", "--endpoint", f"{hostile.url}/keyecho",
                 "--api", "completions", "--progress", "off")
    assert "redirect" in _one_line(r2, "pass --model"), r2
    for text in (r.out, r.err, r2.out, r2.err, out.read_text()):
        assert "Ab12Cd" not in text and "KlMnOpQr" not in text, text


def test_a_probe_whose_answer_never_ends_stops_at_its_deadline(hostile: Hostile) -> None:
    """A head trickled a byte at a time held the /tokenize probe for ever (a socket timeout
    bounds each read only)."""
    from servegen_load.content.tokenizer import _Http

    http = _Http(f"{hostile.url}/headtrickle/v1", None, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.5s"):
        http.post("/headtrickle/tokenize", b"{}")
    assert time.monotonic() - t0 < 3
    http.close()


def test_caps_come_from_the_command_line(hostile: Hostile, tmp_path: Path) -> None:
    """`--max-event-bytes` and `--max-prompt-tokens` reach the runner through `servegen-load run`."""
    from servegen_load.requests import Request

    reqs = [*make_requests([0.0, 0.05], output_tokens=TOKENS),
            Request(id="big", t=0.1, client="a", category="language", input_tokens=5000, output_tokens=3)]
    src = write_requests(tmp_path / "req.jsonl", reqs)
    out = tmp_path / "out.jsonl"
    r = run_cli("run", src, "-o", out, "--endpoint", f"{hostile.url}/bigevent", "--model", "m",
                "--api", "completions", "--server-family", "sim", "--progress", "off",
                "--max-event-bytes", "65536", "--max-prompt-tokens", "4096")
    assert "Traceback" not in r.err and r.code == 3, r  # not one request succeeded
    _, lines = read_lines(out)
    by_id = {d["id"]: d for d in lines}
    assert len(lines) == 3
    assert by_id["big"]["status"] == "client_error" and "4096" in by_id["big"]["error"]
    for i in ("r0", "r1"):
        assert by_id[i]["status"] == "protocol_error" and "over 65536 bytes" in by_id[i]["error"]


@pytest.mark.parametrize("transport", ["raw", "aiohttp"])
def test_an_answer_that_never_stops_is_cut_before_it_takes_the_memory(hostile: Hostile, tmp_path: Path,
                                                                       transport: str) -> None:
    """Token chunks without end (thousands a millisecond, each a timestamp kept): cut as
    `protocol_error` once past 8 chunks per token asked and 65,536, long before the total timeout
    (a 3 s stream of them held 1.1 million timestamps, 86 MB, and a 10 MB results line)."""
    lines = _run(hostile, "blast", tmp_path, transport, n=1, timeouts=Timeouts(connect=2.0, first_token=1.5,
                                                                                total=60.0, idle=1.0))
    d = lines[0]
    assert d["status"] == "protocol_error" and "does not stop" in d["error"], d
    assert 65536 < len(d["chunk_times"]) < 4_000_000, len(d["chunk_times"])
