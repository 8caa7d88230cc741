"""A lean HTTP/1.1 streaming transport on raw asyncio protocols: the default for `run`.

Why not aiohttp on the hot path: every token chunk through aiohttp costs a parser callback, a
StreamReader buffer, a future wake-up and a coroutine resume before we can timestamp it. Here a
chunk costs one `data_received` call. Measured against the C fake server (benchmarks/dispatch.py,
same runs, 128-token streams): aiohttp used 2.3x (100 req/s) to 1.6x (1000 req/s) the CPU of
this transport, and its send lag and TTFT error p99 were 10-40x larger from 300 req/s up; at
1000 req/s it could not keep the rate.

The per-chunk path, cheapest first:
1. `data_received` with the fast path armed (`_Conn._arm`: a 200 chunked answer, nothing
   buffered, a learned template): the read is one chunk holding one plain token event of this
   stream that matches the stream's template (`stream.learn_template`: same bytes around the
   token text as an earlier chunk), its size line says exactly its length and its token text is
   plain printable ASCII (`stream.plain_text`): append the timestamp, nothing else. One list
   index (`_HEADS`, shared by all connections), one join and one compare, no state checks
   (arming replaces them), no per-chunk store but the timestamp (`Flight.last_token` is
   `chunks[-1]`): about 0.45 µs of Python per chunk. No per-connection table either: with 640
   streams open a per-connection dict of heads was a cache miss per read, and dropping it cut
   the client's user CPU by 8 % at 1000 req/s (it looks 3 % dearer in `benchmarks/
   client_cost.py`, whose one connection keeps everything in cache). Fast is never lenient: what
   this path takes, a full parse would accept (tests/test_fast_path.py).
2. `_fast_reads`: several whole template chunks in one read (the loop ran late): one split at the
   template suffix, then a lookup and a compare per chunk, so falling behind does not make a
   chunk dearer (`benchmarks/client_cost.py`: 1.0/0.77/0.66 µs per token at 2/4/8 chunks per
   read, all of a request's Python work included; 0.58 at 1). Whatever the read's size: a client
   far behind reads 100+ chunks at once, and reads over 8 KiB used to take the strict loop at
   1.0 µs a token (0.61 at 32 chunks a read), so falling behind made it fall further behind.
3. `_chunked`'s loop, for reads mixing template chunks with others (the last read: final token,
   usage, `[DONE]`): whole chunks with one `data:` event each, template match (about 1 µs) or
   one orjson parse (`stream.take_data`, about 2 µs). Once a parse in it has taught the template
   (a stream's first read when the loop ran late: head, first token and many more), the rest of
   the read goes to `_fast_reads` whole if it ends like a template chunk.
4. The general path: split chunks, several events per chunk, CRLF events, comments.

Connections: a keep-alive pool (LIFO, unbounded: one socket per in-flight request). Before the
clock starts the runner has about the first second's worth opened (`prewarm`); then spares are
kept open in the background (`_top_up`), as many as the schedule's next 0.3 s needs beyond what
completions free (`Runner._provision`: bursts find their connections open), so connection set-up
stays off the send path. A request that still finds none opens one and writes at once (`_dial`:
a server on this host has finished the handshake when `connect` returns); where the handshake is
still under way (TLS, a far server) it waits for the first connection freed or opened, whichever
comes first (`_wait`).
Chunked / Content-Length / read-until-close bodies, TLS through the loop. No pipelining, no
proxies, no redirects (a 3xx is an `http_error` naming its Location), no compression (we send no
Accept-Encoding; a compressed answer is a `protocol_error`): use `--transport aiohttp` for proxies.

No hidden resends: a request written to a reused keep-alive connection that the server then
closes without a byte of answer may have been read and worked on (nothing on the wire tells an
idle-timeout race from a crash after work), so it ends as `disconnect` (`Flight.stale`) and is
re-sent only under `--retries` (dispatch.retry), as a recorded attempt. To keep that race rare,
a connection idle for more than `IDLE_REUSE_S` is closed instead of reused (servers' keep-alive
timeouts are 5 s and up: uvicorn, llama.cpp, Node); a finished connection is reusable only
`PARK_S` after its answer, and never once the server is seen closing right after its answers
(llama.cpp does after every stream, while its head says `Keep-Alive`). Once `PROVEN_AFTER`
connections have outlived their park, the server is taken to keep its connections and a finished
one is reused at once, as the C reference and every pooled client do. That matters for CPU: a
connection written to again within the kernel's delayed-ACK time (40 ms) is in TCP's interactive
("pingpong") mode and ACKs every few token segments, while one reused after 50 ms ACKs nearly every
segment. Measured at 1000 req/s x 128 tokens: 40 fewer segments per request and a sixth less
system CPU (a tenth of the client's CPU).

Garbage ends a request at once as `protocol_error`, with the connection dropped: a status line
that is not HTTP/1.x, bad or contradictory framing (a chunk-size line that is not hex or does not
match the bytes that follow, a bad Content-Length), an SSE event that is not a JSON object or a
line that is no SSE field, an event over `--max-event-bytes`.

Timestamps: `sent` is taken just before the request bytes are written (like the C reference
client), chunk times at `data_received` entry, except until a flight's first token: on Linux over
plain HTTP those reads are the kernel's receive times of the segments (`_Conn._watch`), so a loop
that runs late, or a process that waits for a CPU, does not add its delay to TTFT. Each read
also asks the scheduler to send whatever is already due, so a busy loop never delays a send
behind a long run of reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import platform
import re
import select
import socket
import ssl
import struct
import sys
from array import array
from collections import deque
from collections.abc import Coroutine
from time import perf_counter, time
from typing import Any

from ..endpoint import Endpoint, auth_headers, scrub
from ..limits import Limits, Timeouts, raise_nofile_limit
from ..stream import Flight, end_of_stream, feed_sse, plain_text, take_data
from .base import Hooks

_IDLE, _HEAD, _CHUNKED, _LENGTH, _UNTIL_CLOSE = range(5)
_MAX_HEAD = 64 * 1024
_MAX_SIZE_LINE = 1024  # a chunk-size line (hex size and extensions)
_MAX_TRAILERS = 64 * 1024
_MAX_ERR_BODY = 2048
_MAX_INTERIM = 16  # 1xx responses before the final one
_MAX_HEADERS = 128  # header lines of one head (aiohttp's limit too)
# 200 chunked heads already parsed (per transport): the same bytes get the same verdict without a
# parse, which was a tenth of a request's Python work (benchmarks/client_cost.py).
_HEAD_CACHE = 16
_HEAD_CACHE_BYTES = 4096
SPARE_CONNECTIONS = 16
SPARE_CONNECTS = 8  # spares being opened at once: each connect is loop time a due send waits behind
IDLE_REUSE_S = 2.0  # an idle connection older than this is closed, not reused (see the module doc)
CLOSES_AFTER_S = 0.5  # closed by the server this soon after an answer: it closes after every answer
PARK_S = 0.05  # a connection is reusable this long after its answer ended (see `_complete`)
PROVEN_AFTER = 32  # connections that outlived PARK_S: from then on a finished one is reused at once
# A header line: a token name right before its colon (no space: a smuggling sign), a value
# without control bytes but HTAB (RFC 9110 5.5); what aiohttp's parser also demands.
_header_line = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*").fullmatch
_chunk_size = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?").fullmatch

# The token-chunk fast path (`data_received`) in one comparison. A read of n bytes that is one
# whole chunk can only start with one size line (size + len(hex(size)) + 4 = n grows strictly
# with size), so the expected head is looked up by length, and the read must equal head + the
# stream's template prefix + the token text + its suffix. Same acceptance as searching for the
# CRLF, formatting the size and matching both ends, at about half the interpreter work: bytes
# find/startswith/endswith parse their arguments the slow way, a join and a compare do not.
_FAST_MAX = 8192  # reads up to this long (token chunks are about 200 bytes)
_HEADS: list[bytes | None] = [None] * (_FAST_MAX + 1)
for _s in range(_FAST_MAX):
    _h = b"%x\r\n" % _s
    if len(_h) + _s + 2 <= _FAST_MAX:
        _HEADS[len(_h) + _s + 2] = _h
del _s, _h
# Token texts already found plain (`stream.plain_text`): token vocabularies repeat, and a set
# lookup costs less than a regex call. Bounded: past it, texts are checked and not remembered.
_PLAIN: set[bytes] = set()
_PLAIN_MAX = 1 << 16
_join = b"".join


def _plain(mid: bytes) -> bool:
    """Whether `mid` is non-empty token text the fast path may take (see `stream.plain_text`)."""
    if not mid or plain_text(mid) is not None:
        return False
    if len(mid) <= 32 and len(_PLAIN) < _PLAIN_MAX:
        _PLAIN.add(mid)
    return True


_SIZES = {b"%x" % _n: _n for _n in range(_FAST_MAX + 1)}

# Kernel receive timestamps for first tokens (`_Conn._watch`): Linux's SO_TIMESTAMPNS (35 on
# x86, ARM, POWER, s390, RISC-V; Python does not export it). A TCP recvmsg then carries the time
# the last segment it read reached this host, as a `struct timespec` in CLOCK_REALTIME.
_SO_TIMESTAMPNS = 35 if sys.platform == "linux" and platform.machine() in {
    "x86_64", "i686", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64"} else 0
_TIMESPEC = struct.Struct("@ll")
_RX_BYTES = 256 * 1024  # one read's most, as the loop's own reads
_RX_ANC = socket.CMSG_SPACE(_TIMESPEC.size) if _SO_TIMESTAMPNS else 0
_RX_ONCE = (select.EPOLLIN | select.EPOLLONESHOT) if _SO_TIMESTAMPNS else 0


# (template prefix, its length, template suffix, minus its length, the flight's chunk times)
_Fast = tuple[bytes, int, bytes, int, "array[float]"]


def _fast_of(pre: bytes, suf: bytes, chunks: array[float]) -> _Fast:
    """The fast paths' view of a flight's learned template (see `_Fast`)."""
    return pre, len(pre), suf, -len(suf), chunks


def _fast_reads(data: bytes, t: float, fast: _Fast) -> bool:
    """Several whole template chunks in one read (the loop ran late); True if taken.

    Split at the template suffix, then each piece must be exactly the head its length allows +
    prefix + plain token text, the single-chunk acceptance at about the single-chunk cost per
    chunk, so falling behind does not make a chunk dearer. Nothing is recorded unless the whole
    read passes; any other read goes to the strict path whole.
    """
    pre, lpre, suf, _, chunks = fast
    ls = len(suf)
    if data[len(data) - ls:] != suf:
        return False
    parts = data.split(suf)
    parts.pop()  # the empty tail after the last suffix
    if len(parts) < 2:
        return False
    for p in parts:
        n = len(p) + ls
        head = _HEADS[n] if n <= _FAST_MAX else None
        if head is None:
            return False
        lh = len(head)
        mid = p[lh + lpre:]
        if not (mid in _PLAIN or _plain(mid)) or _join((head, pre, mid)) != p:
            return False
    chunks.extend([t] * len(parts))
    return True


class _Conn(asyncio.Protocol):
    """One keep-alive connection; carries at most one flight at a time."""

    __slots__ = (
        "alive",
        "dropped",
        "errbody",
        "fast",
        "flight",
        "got",
        "hooks",
        "idle_since",
        "interim",
        "keep",
        "ok",
        "owner",
        "rbuf",
        "rem",
        "reused",
        "rx",
        "rx_err",
        "served",
        "state",
        "tail",
        "tr",
        "watching",
    )

    def __init__(self, owner: RawTransport) -> None:
        self.owner = owner
        self.hooks = owner.hooks
        self.tr: asyncio.Transport | None = None
        self.flight: Flight | None = None
        self.state = _IDLE
        self.rbuf = b""
        self.rem = 0
        self.keep = True
        self.interim = 0
        self.ok = False
        self.got = False
        self.reused = False
        self.served = False  # has carried a complete answer
        self.alive = False
        self.errbody = b""
        self.idle_since = 0.0
        self.fast: _Fast | None = None  # while the fast path is on (`_arm`)
        self.tail = b""  # a dialed request's bytes the socket did not take (`RawTransport._dial`)
        self.dropped = False  # its flight ended before the transport was made: close on arrival
        # While a flight waits for its first token (`watching`), its answer is read by recvmsg
        # on `rx`, a duplicate of the socket's descriptor, not by the transport (`_watch`).
        self.rx: socket.socket | None = None
        self.watching = False
        self.rx_err: OSError | None = None  # what recvmsg met, for `connection_lost`

    # --- asyncio callbacks ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.dropped:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.tr = transport  # type: ignore[assignment]
        self.alive = True
        if self.tail:
            transport.write(self.tail)  # type: ignore[attr-defined]
            self.tail = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.owner.rx_poll is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)

    def data_received(self, data: bytes) -> None:
        t = perf_counter()
        hooks = self.hooks
        if t >= hooks.next_due:
            hooks.tick(t)
        fast = self.fast
        if fast is not None:
            # Hottest path: one read = one chunk = one plain token event matching the stream's
            # template (stream.learn_template): record the time, no parse. `fast` is armed only
            # while nothing is pending (`_arm`), so there is no state to check here. The read must
            # be exactly: the one size line its length allows (lowercase hex, as servers write it),
            # the template prefix, plain token text, the template suffix (ends with the event's
            # blank line and the chunk's CRLF). See `_HEADS`. Anything else takes the strict path.
            n = len(data)
            head = _HEADS[n] if n <= _FAST_MAX else None
            if head is not None:
                mid = data[len(head) + fast[1]:fast[3]]
                if _join((head, fast[0], mid, fast[2])) == data and (mid in _PLAIN or _plain(mid)):
                    fast[4].append(t)
                    return
            if _fast_reads(data, t, fast):
                return
            self.fast = None
        if self.watching:  # the transport read before the watch did (see `_adopt`): this answer has no
            self.watching = False  # kernel stamp, and `rx_read` must not stamp a later token before this one
        self._strict(data, t)

    def _strict(self, data: bytes, t: float) -> None:
        """A read the fast path did not take, by the state of the answer."""
        st = self.state
        if st == _CHUNKED:
            self._chunked(data, t)
            self._arm()
        elif st == _HEAD:
            self._head(data, t)
            self._arm()
        elif st == _LENGTH:
            self._length(data, t)
        elif st == _UNTIL_CLOSE:
            self._payload(data, t)
        else:  # bytes nobody asked for on an idle connection: drop the connection
            self.alive = False
            if self.tr is not None:
                self.tr.abort()

    def _watch(self) -> None:
        """Read this flight's answer by recvmsg until its first token, for the kernel's receive time.

        Why: TTFT is the one time users gate on, and a read stamped in user space is late by
        however long this process waited for a CPU or for its loop to come round; on a machine
        shared with the server or another process that was most of the TTFT error at 300 req/s.
        The kernel stamps each segment as it arrives (SO_TIMESTAMPNS), whatever the loop is
        doing, so the first token's time is when it reached this host. Only until then: the
        transport's own reads (the token fast path) stay as they are. Meanwhile the transport is
        paused and its socket read through a duplicate descriptor (the loop allows one watcher
        per descriptor), kept for the connection's life and armed one-shot in the transport's
        own epoll (`RawTransport.rx_poll`): a loop reader per request cost 20 system calls.
        Plain HTTP on Linux only: TLS bytes are the TLS layer's to read.
        """
        tr = self.tr
        owner = self.owner
        if self.watching or owner.rx_poll is None or tr is None or tr.is_closing():
            return
        rx = self.rx
        try:
            if rx is None:
                if len(owner.rx_conns) >= owner.rx_budget:  # descriptors are for sockets first
                    return
                sock = tr.get_extra_info("socket")
                rx = self.rx = socket.socket(sock.family, sock.type, 0, os.dup(sock.fileno()))
                owner.rx_conns[rx.fileno()] = self
                owner.rx_poll.register(rx.fileno(), _RX_ONCE)
            else:
                owner.rx_poll.modify(rx.fileno(), _RX_ONCE)
        except OSError:
            return
        self.watching = True
        tr.pause_reading()

    def _unwatch(self) -> None:
        """Back to the transport's reads (see `_watch`); a one-shot still armed fires once, unheeded."""
        if self.watching:
            self.watching = False
            tr = self.tr
            if tr is not None and not tr.is_closing():
                tr.resume_reading()

    def rx_read(self) -> None:
        """One read while watching for the first token (`_watch`), stamped by the kernel.

        The stamp is the arrival of the last segment the read took. Segments that wait unread
        are merged by the kernel under the latest one's time, so a first token read after later
        ones had come (the loop more than a token interval late) is stamped when the last of them
        came: still no later than the read, and exact whenever the loop is less late than that.
        """
        f = self.flight
        if not self.watching or f is None or not self.alive:  # ended meanwhile: the transport closes it
            self._unwatch()
            return
        rx: socket.socket = self.rx  # type: ignore[assignment]
        try:
            data, anc, _, _ = rx.recvmsg(_RX_BYTES, _RX_ANC)
        except (BlockingIOError, InterruptedError):
            self.owner.rx_poll.modify(rx.fileno(), _RX_ONCE)  # type: ignore[union-attr]
            return
        except OSError as e:  # reset: the transport's next read ends the connection; this says why
            self.rx_err = e
            self._unwatch()
            return
        t = perf_counter()
        if not data:  # EOF: the transport's next read sees it too
            self._unwatch()
            return
        hooks = self.hooks
        if t >= hooks.next_due:
            hooks.tick(t)
        at = t
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                sec, ns = _TIMESPEC.unpack_from(raw)
                k = sec + ns * 1e-9 - (time() - perf_counter())  # realtime -> perf_counter
                if f.sent is not None and f.sent <= k <= t:  # a clock step in between: keep t
                    at = k
        self._strict(data, at)
        f = self.flight  # a new flight if this answer ended here and the connection was reused
        if f is None or f.first_token is not None or self.state not in (_HEAD, _CHUNKED):
            self._unwatch()
        elif self.watching:
            self.owner.rx_poll.modify(rx.fileno(), _RX_ONCE)  # type: ignore[union-attr]

    def _arm(self) -> None:
        """Turn the `data_received` fast path on when nothing is pending between reads.

        Nothing pending: a 200 chunked answer between chunks (no partial size line, chunk data or
        SSE event buffered), with a learned template, before `[DONE]` and any failure. Every
        change of that (a new flight, an end, a read that is not a template chunk) turns it off.
        """
        f = self.flight
        if (f is None or self.state != _CHUNKED or not self.ok or self.rbuf or self.rem or f.sse_buf
                or f.tpl_pre is None or f.status is not None):
            return
        self.fast = _fast_of(f.tpl_pre, f.tpl_suf, f.chunks)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.fast = None
        self._unwatch()
        rx = self.rx
        if rx is not None:
            self.rx = None
            self.owner.rx_conns.pop(rx.fileno(), None)
            with contextlib.suppress(OSError, ValueError):  # ValueError: the transport closed its epoll
                self.owner.rx_poll.unregister(rx.fileno())  # type: ignore[union-attr]
            rx.close()
        exc = exc or self.rx_err
        f = self.flight
        if f is None:
            if self.served and perf_counter() - self.idle_since < CLOSES_AFTER_S:
                # Closed by the server right after an answer, with no idle timeout behind it
                # (llama.cpp does this after every stream while it says `Keep-Alive`): reusing
                # its connections would race that close, so this transport stops reusing them.
                self.owner.reuse = False
            return
        self.flight = None
        if self.state == _UNTIL_CLOSE and (exc is None or f.done):
            self._end(f)
            return
        if f.done and self.ok:  # saw [DONE]; only the chunked terminator was missing
            self._end(f)
            return
        if not self.got and self.reused and exc is None:
            # A clean EOF on a reused keep-alive connection before any byte of answer: the server
            # may have closed it idle just as we wrote, or read the request, worked, and closed.
            # Nothing tells them apart, so it is not re-sent here (only under --retries).
            f.stale = True
            f.fail("disconnect", "connection closed by server before any byte of answer (an idle keep-alive "
                   "connection, opened ahead or reused; the request may have been received: not re-sent "
                   "without --retries)")
        else:
            why = f"connection closed by server ({exc})" if exc else "connection closed by server"
            if not self.owner.cut_error(f, self, why):
                f.fail("disconnect", why)
        self.owner.finish(f)

    # --- request/response ---
    def start(self, f: Flight, reused: bool) -> None:
        self.bind(f, reused)
        f.sent = perf_counter()
        self.tr.write(f.wire)  # type: ignore[union-attr]
        self._watch()

    def bind(self, f: Flight, reused: bool) -> None:
        """Make `f` this connection's flight, its answer still to come (`start` also sends)."""
        self.flight = f
        f.conn = self
        self.fast = None
        self.state = _HEAD
        self.rbuf = b""
        self.rem = 0
        self.got = False
        self.reused = reused
        self.errbody = b""
        self.interim = 0  # 1xx answers so far, whichever reads brought them
        f.attempts += 1

    def _head(self, data: bytes, t: float) -> None:
        f = self.flight
        if f is None:
            return
        self.got = True
        if not self.rbuf:  # the head seen before, byte for byte: the verdict the full parse gave it
            i = data.find(b"\r\n\r\n")
            if 0 <= i < _HEAD_CACHE_BYTES:
                keep = self.owner.heads.get(data[:i + 4])
                if keep is not None:
                    f.http_status = 200
                    self.keep = keep
                    self.ok = True
                    self.state = _CHUNKED
                    self.rem = 0
                    if len(data) > i + 4:
                        self._chunked(data[i + 4:], t)
                    return
        buf = self.rbuf + data if self.rbuf else data
        if buf[:1] in (b"\r", b"\n"):  # empty lines before the status line (a server's stray CRLF after its last answer)
            buf = buf.lstrip(b"\r\n")
            if not buf:
                return
        while True:
            if buf[:5] != b"HTTP/"[:len(buf)]:  # garbage ends the request now, not at a timeout
                self._protocol_error("answer is not HTTP: " + repr(bytes(buf[:40]))[2:-1])
                return
            i = buf.find(b"\r\n\r\n")
            end = 4
            j = buf.find(b"\n\n", 0, i if i >= 0 else len(buf))
            if j >= 0:  # bare LF line ends (RFC 9112 2.2 lets a recipient take them; aiohttp does)
                i, end = j, 2
            if i < 0:
                if len(buf) > _MAX_HEAD:
                    self._protocol_error("response head over 64 KiB")
                else:
                    self.rbuf = buf
                return
            if i > _MAX_HEAD:
                self._protocol_error("response head over 64 KiB")
                return
            self.rbuf = b""
            whole = buf[:i + end]
            lines = buf[:i].split(b"\r\n") if end == 4 else buf[:i].replace(b"\r\n", b"\n").split(b"\n")
            try:
                ver, code_s = lines[0].split(b" ", 2)[:2]
                code = int(code_s) if code_s.isdigit() and len(code_s) == 3 else -1
            except ValueError:
                code = -1
            if code < 100 or ver not in (b"HTTP/1.1", b"HTTP/1.0"):
                self._protocol_error("bad status line: " + lines[0][:60].decode("latin-1"))
                return
            buf = buf[i + end:]
            if code >= 200:
                break
            self.interim += 1
            if code == 101 or self.interim > _MAX_INTERIM:
                self._protocol_error(f"unexpected interim response {code}" if code == 101
                                     else f"over {_MAX_INTERIM} interim (1xx) responses")
                return
            if not buf:  # interim response: the real head follows
                return
        if len(lines) > _MAX_HEADERS + 1:
            self._protocol_error(f"over {_MAX_HEADERS} header lines")
            return
        rest = buf
        f.http_status = code
        chunked = False
        length = -1
        conn_tokens: set[bytes] = set()
        coding = b""
        location = b""
        plain = code == 200 and self.interim == 0 and end == 4 and len(whole) <= _HEAD_CACHE_BYTES
        for line in lines[1:]:
            if _header_line(line) is None and line[:1] not in (b" ", b"\t"):  # obs-fold lines pass
                self._protocol_error("bad header line: " + repr(bytes(line[:60]))[2:-1])
                return
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"transfer-encoding":
                te = v.strip().lower()
                if te != b"chunked" and te != b"identity":
                    self._protocol_error("unsupported Transfer-Encoding: " + te[:40].decode("latin-1"))
                    return
                chunked = te == b"chunked"
            elif k == b"content-length":
                lv = v.strip()
                if not lv.isdigit() or (length >= 0 and int(lv) != length):
                    self._protocol_error("bad Content-Length: " + lv[:40].decode("latin-1"))
                    return
                length = int(lv)
            elif k == b"connection":  # a list of options, on any number of lines (`TE, close`)
                conn_tokens.update(x.strip() for x in v.lower().split(b","))
            elif k == b"retry-after":  # read by dispatch.retry (429/503)
                f.retry_after = v.strip().decode("latin-1")
                plain = False
            elif k == b"content-encoding":
                coding = v.strip().lower()
            elif k == b"location":
                location = v.strip()
        if chunked and length >= 0:  # RFC 9112 6.3: a smuggling sign, to be handled as an error
            self._protocol_error("both Content-Length and Transfer-Encoding: chunked")
            return
        keep = b"close" not in conn_tokens and (ver == b"HTTP/1.1" or b"keep-alive" in conn_tokens)
        self.keep = keep
        self.ok = code == 200
        if self.ok and coding and coding != b"identity":
            self._protocol_error("compressed answer (Content-Encoding: " + coding[:40].decode("latin-1")
                                 + ") although none was asked for")
            return
        if 300 <= code < 400 and location:
            self.errbody = b"redirect to " + location[:200] + b" not followed (give the final URL as --endpoint); "
        if code == 204 or code == 304:  # never a body, whatever the head says (RFC 9112 6.3)
            chunked, length = False, 0
        if chunked:
            if plain:  # remembered for `_head`'s fast path (bounded: a Date header changes each second)
                heads = self.owner.heads
                if len(heads) >= _HEAD_CACHE:
                    heads.clear()
                heads[whole] = keep
            self.state = _CHUNKED
            self.rem = 0
            if rest:
                self._chunked(rest, t)
        elif length >= 0:
            self.state = _LENGTH
            self.rem = length
            if length == 0:
                if rest:  # bytes after an empty answer: the connection is out of step
                    self.keep = False
                self._complete()
            elif rest:
                self._length(rest, t)
        else:
            self.state = _UNTIL_CLOSE
            self.keep = False
            if rest:
                self._payload(rest, t)

    def _chunked(self, data: bytes, t: float) -> None:
        """Strip chunked framing; `rem` = bytes left of the current chunk plus its CRLF.

        Fast path (nearly every read of a token stream): the read holds whole chunks, each one
        whole `data: ...` event ending in a blank line. A chunk matching the stream's template
        (see `data_received`) is recorded without a parse, any other is handed to `take_data`.
        This matters most when the loop runs late and reads carry several chunks each: the work
        per chunk must not grow then. Anything else (split chunks, several events per chunk,
        CRLF events) takes the general path. (Scanning each chunk for a second blank line would
        cost more than the JSON parse itself: two events in one chunk fail the parse instead.)
        """
        f = self.flight
        if self.ok and not self.rbuf and not self.rem and f is not None and not f.sse_buf:
            pos = 0
            n = len(data)
            find = data.find
            bulk = True
            while pos < n:
                if bulk and pos and f.tpl_pre is not None:
                    # The template is known now (a stream that began while the loop ran late: its
                    # head, first token and many more in one read): the rest in one pass if it is
                    # all template chunks, as in `data_received`, not a chunk at a time.
                    bulk = False
                    ts = f.tpl_suf  # checked here first: the copy below only for a read that may pass
                    if data[n - len(ts):] == ts and _fast_reads(data[pos:], t, _fast_of(f.tpl_pre, ts, f.chunks)):
                        return
                i = find(b"\r\n", pos)
                if i < 0 or i - pos > 8:
                    break
                size_line = data[pos:i]
                size = _SIZES.get(size_line)  # plain lowercase hex up to _FAST_MAX, in one lookup
                if size is None:
                    try:
                        size = int(size_line, 16)
                    except ValueError:
                        break
                    if size_line != b"%x" % size:  # not plain lowercase hex: the strict path judges it
                        break
                s = i + 2
                e = s + size
                if size == 0 and i + 4 == n and data[s:] == b"\r\n":  # the last chunk, no trailers
                    self.rem = 0
                    self._complete()
                    return
                if size == 0 or e + 2 > n:
                    break
                pre = f.tpl_pre
                suf = f.tpl_suf
                # template + plain token text, as in `data_received` (the suffix first: it is what a
                # stream's last token, usage and [DONE] chunks differ in, and the cheapest look)
                if pre is not None and data[e + 2 - len(suf):e + 2] == suf:
                    mid = data[s + len(pre):e + 2 - len(suf)]
                    if (mid in _PLAIN or _plain(mid)) and _join((pre, mid, suf)) == data[s:e + 2]:
                        f.chunks.append(t)
                        pos = e + 2
                        continue
                if data[e - 2:e + 2] != b"\n\n\r\n" or data[s:s + 6] != b"data: ":
                    break
                payload = data[s + 6:e - 2]
                if b"\n" in payload or b"\r" in payload:
                    break
                if not take_data(f, payload, t):
                    break
                if f.status is not None:  # an error event, or not a JSON object: end it now
                    self._protocol_error("")
                    return
                pos = e + 2
            if pos:
                if pos >= n:
                    return
                data = data[pos:]
        buf = self.rbuf + data if self.rbuf else data
        self.rbuf = b""
        n = len(buf)
        pos = 0
        rem = self.rem
        parts = []
        while pos < n:
            if rem > 2:
                take = rem - 2
                if take > n - pos:
                    take = n - pos
                parts.append(buf[pos:pos + take])
                pos += take
                rem -= take
                continue
            if rem > 0:  # the CRLF that ends a chunk's data: checked, a lying size line shows here
                take = rem if rem <= n - pos else n - pos
                if buf[pos:pos + take] != b"\r\n"[2 - rem:2 - rem + take]:
                    self._protocol_error("chunk data does not end where its chunk-size line says")
                    return
                pos += take
                rem -= take
                continue
            i = buf.find(b"\r\n", pos)
            if i < 0:
                if n - pos > _MAX_SIZE_LINE or buf.find(b"\n", pos) >= 0:  # a bare LF ends no size line
                    self._protocol_error("bad chunk size line (no CRLF end)")
                    return
                self.rbuf = buf[pos:]
                break
            m = _chunk_size(buf, pos, i)
            if m is None:
                self._protocol_error("bad chunk size line: " + repr(bytes(buf[pos:min(i, pos + 40)]))[2:-1])
                return
            size = int(m.group(1), 16)
            if size == 0:  # last chunk; then optional trailers and an empty line
                end = i + 4 if buf[i + 2:i + 4] == b"\r\n" else buf.find(b"\r\n\r\n", i) + 4
                if end < 4:
                    if n - pos > _MAX_TRAILERS:
                        self._protocol_error("chunked trailers over 64 KiB")
                        return
                    self.rbuf = buf[pos:]
                    break
                self.rem = 0
                if end < n:  # bytes after the answer (nobody asked): the connection is out of step
                    self.keep = False
                if parts:
                    self._payload(parts[0] if len(parts) == 1 else b"".join(parts), t)
                self._complete()
                return
            pos = i + 2
            rem = size + 2
        self.rem = rem
        if parts:
            self._payload(parts[0] if len(parts) == 1 else b"".join(parts), t)

    def _length(self, data: bytes, t: float) -> None:
        self.got = True
        n = len(data)
        if n >= self.rem:
            if n > self.rem:  # bytes after the answer (nobody asked): the connection is out of step
                self.keep = False
            if self.rem:
                self._payload(data[:self.rem] if n > self.rem else data, t)
            self.rem = 0
            self._complete()
        else:
            self.rem -= n
            self._payload(data, t)

    def _payload(self, data: bytes, t: float) -> None:
        f = self.flight
        if f is None:
            return
        if self.ok:
            feed_sse(f, data, t, self.owner.max_event_bytes)
            if f.status is not None:  # the stream proved corrupt or reported an error: end it now
                self._protocol_error("")
        elif len(self.errbody) < _MAX_ERR_BODY:
            self.errbody += data[:_MAX_ERR_BODY]
            if len(self.errbody) >= _MAX_ERR_BODY:  # the status is known: no need to read a huge body
                self.flight = None
                self.alive = False
                if self.tr is not None:
                    self.tr.abort()
                if f is not None:
                    self._end(f)

    def _complete(self) -> None:
        f = self.flight
        self.flight = None
        self.state = _IDLE
        self.idle_since = perf_counter()
        self.served = True
        owner = self.owner
        at_once = False
        if self.keep and self.alive and owner.reuse:
            if owner.kept >= PROVEN_AFTER:  # a server that keeps its connections: reuse at once
                at_once = True
            else:
                # Parked PARK_S later: a server that closes right after its last byte (even one
                # descheduled between its write and its close) has its FIN read by then
                # (`connection_lost` above), so no request is ever written into that close. A
                # queue the transport drains when it needs a connection (`_unpark`), not a timer.
                owner.parked.append(self)
        elif self.tr is not None:
            self.alive = False
            self.tr.close()
        if f is not None:
            self._end(f)
        if at_once:  # after `_end`: a waiting flight taking it over resets what `_end` reads
            owner.release(self, True)

    def _park(self) -> None:
        if self.alive and self.flight is None and self.owner.reuse:
            self.owner.kept += 1
            self.owner.release(self, True)
        elif self.tr is not None and self.flight is None:
            self.alive = False
            self.tr.close()

    def _end(self, f: Flight) -> None:
        if not self.ok:
            body = self.errbody[:300].decode("utf-8", "replace").strip()
            f.fail("http_error", scrub(f"HTTP {f.http_status}: {body}", self.owner.api_key))
        else:
            end_of_stream(f)
        self.owner.finish(f)

    def _protocol_error(self, msg: str) -> None:
        f = self.flight
        self.flight = None
        self.alive = False
        if self.tr is not None:
            self.tr.abort()
        if f is not None:
            f.fail("protocol_error", msg)
            self.owner.finish(f)


class RawTransport:
    """Connection pool + flights on `_Conn` protocols; see the module docstring."""

    name = "raw"

    def __init__(self, endpoint: Endpoint, api: str, hooks: Hooks, timeouts: Timeouts,
                 api_key: str | None = None, limits: Limits | None = None) -> None:
        self.endpoint = endpoint
        self.max_event_bytes = (limits or Limits()).max_event_bytes
        self.hooks = hooks
        self.timeouts = timeouts
        self.api_key = api_key
        self.idle: list[_Conn] = []
        self.parked: deque[_Conn] = deque()  # finished answers' connections, until PARK_S has passed
        self.heads: dict[bytes, bool] = {}  # head bytes -> keep-alive, see `_head`
        self.active: set[Flight] = set()
        self.waiting: deque[Flight] = deque()  # submitted, no connection yet (see `submit`)
        self._tasks: set[asyncio.Task[None]] = set()
        head = (f"POST {endpoint.path(api)} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
                "User-Agent: servegen-load\r\nContent-Type: application/json\r\n"
                "Accept: text/event-stream\r\n")
        head += "".join(f"{k}: {v}\r\n" for k, v in auth_headers(api_key).items())
        self._prefix = (head + "Content-Length: ").encode("latin-1")
        self._ssl: ssl.SSLContext | None = endpoint.ssl_context()
        # First tokens read with their kernel receive time (`_Conn._watch`): the connections
        # watching, by their duplicate descriptor, in one epoll the loop watches.
        self.rx_poll: select.epoll | None = None
        self.rx_conns: dict[int, _Conn] = {}
        self.rx_budget = 0  # duplicate descriptors it may hold (set in `open`)
        self._addr: tuple[int, str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory = functools.partial(_Conn, self)
        self.spare = SPARE_CONNECTIONS
        self.reuse = True  # False once the server is seen closing right after its answers
        self.kept = 0  # connections that outlived their park (see PROVEN_AFTER)
        self._spare_pending = 0
        self._spare_tasks: set[asyncio.Task[None]] = set()
        self._spare_backoff_until = 0.0
        self._closing = False

    def wire(self, body: bytes) -> bytes:
        return b"%b%d\r\n\r\n%b" % (self._prefix, len(body), body)

    async def open(self) -> None:
        """Resolve the host once and open the first spare connections before the clock starts."""
        self._loop = asyncio.get_running_loop()
        if _SO_TIMESTAMPNS and self._ssl is None:
            self.rx_poll = select.epoll()
            # an eighth of the open-file limit (the runner raised it already): the watch's
            # duplicates never cost a request its socket, only the kernel stamps past the budget
            self.rx_budget = raise_nofile_limit(None) // 8
            self._loop.add_reader(self.rx_poll.fileno(), self._rx_ready)
        self._addr = await self._answering(self.endpoint.addresses())
        self._top_up()
        if self._spare_tasks:
            await asyncio.gather(*list(self._spare_tasks), return_exceptions=True)

    def _rx_ready(self) -> None:
        conns = self.rx_conns
        for fd, _ in self.rx_poll.poll(0):  # type: ignore[union-attr]
            c = conns.get(fd)
            if c is not None:
                c.rx_read()

    async def _answering(self, addrs: list[tuple[int, str]]) -> tuple[int, str]:
        """The first of the host's addresses that takes a connection (kept as an idle one when the
        transport keeps spares); the first address when none does (each request then fails with
        the server's answer).

        Why: `localhost` resolves to ::1 first on many hosts, while vLLM, llama.cpp and `sim`
        listen on 127.0.0.1 only. `create_connection` tries each address in turn on every
        connect; this transport resolves once and connects with the chosen address, so it
        tries them once, here.
        """
        if len(addrs) > 1:
            for addr in addrs:
                try:
                    conn = await self._connect(addr)
                except (OSError, TimeoutError):
                    continue
                if self.spare:
                    conn.idle_since = perf_counter()
                    self.idle.append(conn)
                elif conn.tr is not None:  # no idle connections held (llama.cpp parks a thread on each)
                    conn.tr.close()
                return addr
        return addrs[0]

    async def prewarm(self, n: int) -> int:
        """Open up to `n` idle connections now (before the clock starts); returns how many opened.

        Every request in flight holds a connection, so the first second of an open-loop run at
        rate R opens about R x (response time) of them; doing that while the clock runs puts
        connection set-up on the send path of most early requests. The runner asks for about the
        first second's worth of requests.
        """
        opened = 0
        while opened < n:
            batch = min(64, n - opened)
            got = await asyncio.gather(*(self._connect() for _ in range(batch)), return_exceptions=True)
            conns = [c for c in got if isinstance(c, _Conn)]
            for c in conns:
                c.idle_since = perf_counter()
            self.idle.extend(conns)
            opened += len(conns)
            if len(conns) < batch:  # the server refuses or stalls: stop trying
                break
        return opened

    def _top_up(self) -> None:
        """Keep `spare` idle connections open ahead of need, opened in the background.

        Why: a request that finds no idle connection waits for TCP (+TLS) set-up, several loop
        turns, and that wait is send lag; while load ramps up (every new in-flight request needs
        a new connection) it was most of the send-lag tail. Spares cost the server a few idle
        sockets. The runner raises `spare` ahead of bursts. At most SPARE_CONNECTS are opened at
        once (each finished one starts the next), so a burst's sends never queue behind a
        hundred connects. A failing server (refused, timeout) pauses the top-up for a second.
        """
        if self._closing or self._loop is None or perf_counter() < self._spare_backoff_until:
            return
        need = self.spare - len(self.idle) - self._spare_pending
        for _ in range(min(need, SPARE_CONNECTS - self._spare_pending)):
            self._spare_pending += 1
            task = self._loop.create_task(self._connect_spare())
            self._spare_tasks.add(task)
            task.add_done_callback(self._spare_tasks.discard)

    async def _connect_spare(self) -> None:
        try:
            conn = await self._connect()
        except (OSError, TimeoutError):
            self._spare_backoff_until = perf_counter() + 1.0
            return
        except asyncio.CancelledError:
            return
        finally:
            self._spare_pending -= 1
        self.release(conn, False)
        self._top_up()

    async def _connect(self, addr: tuple[int, str] | None = None) -> _Conn:
        """A new connection to `addr` (by default the address `open` chose)."""
        fam, host = addr or self._addr  # type: ignore[misc]
        ep = self.endpoint
        async with asyncio.timeout(self.timeouts.connect):
            _, conn = await self._loop.create_connection(  # type: ignore[union-attr]
                self._factory, host, ep.port, family=fam, ssl=self._ssl,
                server_hostname=ep.host if self._ssl else None)
        return conn

    def _unpark(self, now: float) -> None:
        """Move the parked connections whose answer ended over PARK_S ago to the idle pool."""
        parked = self.parked
        due = now - PARK_S
        while parked and parked[0].idle_since <= due:
            parked.popleft()._park()

    def submit(self, f: Flight) -> None:
        """Send `f` on an idle connection now, else on a new one (`_dial`)."""
        self.active.add(f)
        if self.parked:
            self._unpark(perf_counter())
        idle = self.idle
        if len(idle) <= self.spare >> 1:
            self._top_up()
        oldest = (f.dispatched or perf_counter()) - IDLE_REUSE_S
        while idle:
            c = idle.pop()
            if c.alive and c.flight is None:
                if c.idle_since < oldest:  # may be closing under us (keep-alive timeout): drop it
                    c.alive = False
                    c.tr.close()  # type: ignore[union-attr]
                    continue
                c.start(f, True)
                return
        if self._ssl is None:
            self._dial(f)
        else:
            self._wait(f, None)

    def _dial(self, f: Flight) -> None:
        """Open a connection for `f` and send on it now, in this loop turn (plain HTTP).

        Why not `create_connection` first: it takes four loop turns (connect, connected, protocol
        made, waiter) before a byte can be written, and when the server falls behind, turns get
        long: thousands of streams' reads land in one turn. Measured at 1000 req/s with one
        core taken, turns of 0.3-0.9 s made requests that needed a new connection wait 0.1-0.6 s
        for it. The C reference writes on the first writable event. Here a local server (any
        address of this host) has finished the handshake by the time `connect` returns, so the
        request goes out at once and the transport is made around the sent socket (`_adopt`);
        a far server's handshake is still under way, so `f` waits for it or for the first
        connection freed (`_wait`), whichever comes first.
        """
        fam, host = self._addr  # type: ignore[misc]
        sock: socket.socket | None = None
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex((host, self.endpoint.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            t = perf_counter()
            try:
                n = sock.send(f.wire)
            except OSError as e:  # not connected yet: EAGAIN on Linux, ENOTCONN on BSD and macOS
                if not isinstance(e, (BlockingIOError, InterruptedError)) and e.errno != errno.ENOTCONN:
                    raise
                self._wait(f, sock)
                return
        except OSError as e:
            if sock is not None:
                sock.close()
            f.fail(*self._connect_failure(e))
            self.finish(f)
            return
        conn = _Conn(self)
        conn.bind(f, False)
        f.sent = t
        conn.tail = f.wire[n:]
        self._spawn(self._adopt(sock, conn))

    async def _adopt(self, sock: socket.socket, conn: _Conn) -> None:
        """Make the transport of a dialed socket whose request is sent; the socket is the loop's
        from here on, closed by it even on failure."""
        try:
            await self._loop.create_connection(lambda: conn, sock=sock)  # type: ignore[union-attr]
        except OSError as e:
            f = conn.flight
            if f is not None:
                self.end_flight(f, *self._connect_failure(e))
            return
        # Watched only now: uvloop starts reading a transport made around a socket after
        # `connection_made`, undoing a pause made there (so the transport, not the watch, read the
        # first token, and the watch stamped a later one before it). The head may have come.
        f = conn.flight
        if f is not None and f.first_token is None and conn.state in (_HEAD, _CHUNKED):
            conn._watch()

    def _wait(self, f: Flight, sock: socket.socket | None) -> None:
        """`f` waits for the first connection freed or for one connect of its own (on `sock`,
        when a dial's handshake is under way), whichever comes first.

        Not a connection of its own: a connect costs several loop turns, and on a busy machine
        each turn is a scheduler slice. Measured at 1000 req/s with one core taken, connects
        took 39 ms at p50 and 211 ms at p99 while connections came free every millisecond, and
        the requests that waited for their own connect were the whole send-lag tail.
        """
        self.waiting.append(f)
        self._spawn(self._connect_for_waiting(sock))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)  # type: ignore[union-attr]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_waiting(self) -> Flight | None:
        """The longest-waiting flight not ended while it waited (timeout, cancel), taken off."""
        waiting = self.waiting
        while waiting:
            f = waiting.popleft()
            if not f.finished:
                return f
        return None

    def release(self, c: _Conn, reused: bool) -> None:
        """A free connection: the longest-waiting flight takes it, else the idle pool (closed
        instead once `close` has begun: its pool is gone)."""
        if self._closing:
            c.alive = False
            c.tr.close()  # type: ignore[union-attr]
            return
        f = self._next_waiting()
        if f is not None:
            c.start(f, reused)
            return
        c.idle_since = perf_counter()
        self.idle.append(c)

    async def _connect_for_waiting(self, sock: socket.socket | None) -> None:
        """One connect per flight that found no idle connection (or the end of its dial's
        handshake on `sock`); on failure the longest-waiting flight still waiting fails with the
        error (none left: the error goes nowhere)."""
        try:
            conn = await (self._connect() if sock is None else self._handshake(sock))
        except asyncio.CancelledError:
            return
        except (OSError, TimeoutError) as e:
            f = self._next_waiting()
            if f is not None:
                f.fail(*self._connect_failure(e))
                self.finish(f)
            return
        self.release(conn, False)

    async def _handshake(self, sock: socket.socket) -> _Conn:
        """Wait for a dialed socket's handshake to end, then make its transport."""
        loop = self._loop
        fd = sock.fileno()
        ready = loop.create_future()  # type: ignore[union-attr]
        loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(self.timeouts.connect):
                await ready
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException:
            loop.remove_writer(fd)  # type: ignore[union-attr]
            sock.close()
            raise
        loop.remove_writer(fd)  # type: ignore[union-attr]
        _, conn = await loop.create_connection(self._factory, sock=sock)  # type: ignore[union-attr]
        return conn

    def _connect_failure(self, e: OSError | TimeoutError) -> tuple[str, str]:
        """A failed connect's status and error text."""
        if isinstance(e, TimeoutError):
            return "timeout", f"connect timeout after {self.timeouts.connect:g}s"
        return "connect_error", scrub(_os_error_text(e, self.endpoint), self.api_key)

    def finish(self, f: Flight) -> None:
        if f.finished:
            return
        f.finished = True
        f.conn = None
        self.active.discard(f)
        self.hooks.on_done(f)

    def cut_error(self, f: Flight, c: _Conn, why: str) -> bool:
        """An error answer whose body never finished (timed out, or cut by the server) is that
        error, not a timeout or a disconnect: its status and message are kept and `--retries`
        reads them, as it does from aiohttp, which reports the status before the body."""
        if f.http_status is None or f.http_status == 200:
            return False
        body = c.errbody[:300].decode("utf-8", "replace").strip()
        f.fail("http_error", scrub(f"HTTP {f.http_status}: {body} (body unfinished: {why})", self.api_key))
        return True

    def end_flight(self, f: Flight, status: str, error: str) -> None:
        c = f.conn
        if c is not None:
            if status == "timeout":
                self.cut_error(f, c, error)  # recorded first, so the `fail` below says nothing new
            c.flight = None
            c.fast = None
            c.alive = False
            if c.tr is not None:
                c.tr.abort()
            else:  # dialed, its transport not made yet (`_adopt`)
                c.dropped = True
        f.fail(status, error)
        self.finish(f)

    def sweep(self, now: float) -> None:
        self._unpark(now)
        for f, msg in Limits.over_chunks(self.active):
            self.end_flight(f, "protocol_error", msg)
        late = self.timeouts.late(self.active, now)
        for f, msg in late:
            self.end_flight(f, "timeout", msg)
        oldest = now - IDLE_REUSE_S
        if self.idle and (len(self.idle) > 64 or self.idle[0].idle_since < oldest):
            keep = []
            for c in self.idle:
                if c.alive and c.idle_since < oldest:
                    c.alive = False
                    c.tr.close()  # type: ignore[union-attr]
                elif c.alive:
                    keep.append(c)
            self.idle = keep
        self._top_up()

    def cancel_all(self, reason: str) -> None:
        for f in list(self.active):
            self.end_flight(f, "cancelled", reason)

    async def close(self) -> None:
        self._closing = True
        for task in [*self._spare_tasks, *self._tasks]:
            task.cancel()
        self.cancel_all("transport closed")
        for c in self.parked:
            if c.tr is not None:
                c.tr.close()
        self.parked.clear()
        for c in self.idle:
            if c.tr is not None:
                c.tr.close()
        self.idle.clear()
        pending = list(self._tasks) + list(self._spare_tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.rx_poll is not None:
            self._loop.remove_reader(self.rx_poll.fileno())  # type: ignore[union-attr]
            self.rx_poll.close()


def _os_error_text(e: OSError, ep: Endpoint) -> str:
    where = f"{ep.host}:{ep.port}"
    if e.errno == errno.ECONNREFUSED:
        return f"connection refused by {where}"
    if e.errno == errno.EMFILE:
        return "too many open files (raise `ulimit -n`)"
    if isinstance(e, ssl.SSLError):
        return f"TLS error with {where}: {e.reason or e}"
    return f"cannot connect to {where}: {e.strerror or e}"
