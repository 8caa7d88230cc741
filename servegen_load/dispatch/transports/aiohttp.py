"""One streaming OpenAI call over aiohttp (`--transport aiohttp`), and its transport wrapper.

aiohttp was measured far faster than httpx for this job (httpx added about 2 s to the TTFT p50
at 100 req/s). It is a second, independent HTTP stack beside the raw transport (a way to tell a
server's fault from a client's), slower per chunk than `raw` (a future wake-up and a coroutine
resume per read), so it is the fallback, not the default. Measured side by side
against the C fake server (benchmarks/dispatch.py --transports raw,aiohttp, 10 s per rate,
128-token streams, same machine and minute):

    rate   client CPU s (raw / aiohttp)   send lag p99 ms   TTFT error p99 ms
     100        1.39 / 3.20                   0.9 / 2.2         2.2 / 4.9
     300        2.84 / 5.13                   3.9 / 46          7.3 / 91
    1000        6.40 / 10.17                  7.1 / 1377      243 / 552   (aiohttp reached 871 req/s)

`call()` is the single streaming request: POST the prebuilt JSON body, timestamp each read as it
returns, feed it to `stream.feed_sse`, map every failure onto a Result status. The same truth as
the raw transport: no redirect followed (a 3xx is an `http_error` naming its Location), no
compression asked for (a compressed answer is a `protocol_error`), a corrupt stream ends the
request at once, and an exception nobody expected is a `client_error` with its message, never
a silent `ok`. aiohttp never re-sends a POST by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from time import perf_counter
from typing import Any

import aiohttp

from ..endpoint import Endpoint, auth_headers, scrub
from ..limits import MAX_EVENT_BYTES, Limits, Timeouts
from ..stream import Flight, end_of_stream, feed_sse
from .base import Hooks

_MAX_ERR_BODY = 300


async def call(session: aiohttp.ClientSession, url: str, headers: dict[str, str], f: Flight,
               api_key: str | None = None, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
    """Send `f.wire` (a JSON body) to `url` and read the SSE stream into `f`; sets `f.status`.

    `sent` and `attempts` are set once a connection carries the request (`_CONNECTED`), as the
    raw transport does: connection set-up is the client's time (send lag), never the server's
    (TTFT), and a request that never had a connection was never sent."""
    try:
        f.sent = None
        async with session.post(url, data=f.wire, headers=headers, allow_redirects=False,
                                trace_request_ctx=f) as resp:
            f.http_status = resp.status
            version = resp.version
            if version is not None and version[0] != 1:  # aiohttp takes any "HTTP/x.y"; raw does not
                f.fail("protocol_error", f"bad status line: HTTP/{version[0]}.{version[1]} on an HTTP/1.1 connection")
                resp.close()
                return
            if resp.status != 200:
                f.retry_after = resp.headers.get("Retry-After")  # read by dispatch.retry (429/503)
                body = (await resp.content.read(_MAX_ERR_BODY)).decode("utf-8", "replace").strip()
                if 300 <= resp.status < 400 and "Location" in resp.headers:
                    body = (f"redirect to {resp.headers.get('Location', '')[:200]} not followed "
                            f"(give the final URL as --endpoint); {body}")
                f.fail("http_error", scrub(f"HTTP {resp.status}: {body}", api_key))
                return
            te = resp.headers.get("Transfer-Encoding", "chunked").strip().lower()
            if te not in ("chunked", "identity"):  # aiohttp reads "gzip, chunked" as plain chunked
                f.fail("protocol_error", f"unsupported Transfer-Encoding: {te[:40]}")
                resp.close()
                return
            coding = resp.headers.get("Content-Encoding", "").strip().lower()
            if coding and coding != "identity":
                f.fail("protocol_error", f"compressed answer (Content-Encoding: {coding[:40]}) although none was asked for")
                resp.close()
                return
            content = resp.content
            f.conn = resp  # for `_framing_errors`: aiohttp may leave this read waiting on a bad body
            while True:
                data = await content.readany()
                if not data:
                    break
                feed_sse(f, data, perf_counter(), max_event_bytes)
                if f.status is not None:  # corrupt, oversized or an error event: end it now
                    resp.close()
                    return
        end_of_stream(f)
    except aiohttp.ConnectionTimeoutError:
        f.fail("timeout", f"connect timeout after {session.timeout.sock_connect:g}s")
    except aiohttp.ClientConnectorError as e:
        f.fail("connect_error", scrub(f"cannot connect: {e.os_error.strerror or e}", api_key))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
            ConnectionError) as e:  # ClientOSError: a reset before the response head (reset_before_first_byte)
        if f.done:
            end_of_stream(f)
        else:
            # no answer at all on a connection closed cleanly: maybe a stale keep-alive one
            f.stale = f.http_status is None and isinstance(e, aiohttp.ServerDisconnectedError)
            f.fail("disconnect", scrub(f"connection closed by server ({type(e).__name__})", api_key))
    except (TimeoutError, aiohttp.ServerTimeoutError):
        f.fail("timeout", "timed out")
    except aiohttp.ClientResponseError as e:  # aiohttp's parser refused the answer: its "400" is not the server's
        f.fail("protocol_error", scrub(_framing(e), api_key))
    except aiohttp.ClientError as e:
        f.fail("protocol_error", scrub(f"{type(e).__name__}: {e}"[:200], api_key))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # whatever it was, the request did not succeed: say so
        f.fail("client_error", scrub(f"{type(e).__name__}: {e}"[:200], api_key))


async def _connected(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
    """A connection (new or pooled) now carries the request: it is sent (see `call`)."""
    f = ctx.trace_request_ctx
    f.sent = perf_counter()
    f.attempts += 1


_CONNECTED = aiohttp.TraceConfig()
_CONNECTED.on_connection_create_end.append(_connected)
_CONNECTED.on_connection_reuseconn.append(_connected)
_CONNECTED.freeze()


def _framing(exc: BaseException) -> str:
    """The error text of an answer aiohttp's parser refused (its message, on one line)."""
    what = " ".join(str(getattr(exc, "message", "") or exc).split())
    return f"bad response framing ({type(exc).__name__}: {what})"[:200]


def _framing_errors(flights: Iterable[Flight]) -> list[tuple[Flight, str]]:
    """Streams whose body aiohttp's parser rejected (a lying chunk-size line...).

    aiohttp (3.14) then closes the connection and records the error on its protocol, but never
    on the response body, so a `readany()` already waiting is left waiting until our idle timeout
    (a true `protocol_error` reported late as `timeout`). Checked from `sweep`, a few times a second.
    """
    bad = []
    for f in flights:
        resp = f.conn
        conn = resp.connection if resp is not None else None
        proto = conn.protocol if conn is not None else None
        exc = proto.exception() if proto is not None else None
        if exc is not None:
            bad.append((f, _framing(exc.__cause__ or exc)))
    return bad


class _QuietConnector(aiohttp.TCPConnector):
    """aiohttp's pool, minus the kept-alive connections on which the server spoke while they sat idle.

    aiohttp parses whatever arrives on an idle connection (a second answer, a `408 Request
    Timeout` before the close, junk) and hands it to the next request on that connection as its
    answer: three of six requests ended `ok` with another request's usage and TTFT 0.2 ms, or as
    `http_error 408` for a request the server never read. Such a connection `should_close`; it is
    closed here instead of being reused (the raw transport drops any connection with unread bytes)."""

    async def _get(self, key: Any, traces: Any) -> Any:
        conns = getattr(self, "_conns", {}).get(key)
        if conns:
            for item in [x for x in conns if getattr(x[0], "should_close", False)]:
                conns.remove(item)
                item[0].close()
            if not conns:
                del self._conns[key]
        return await super()._get(key, traces)


class AiohttpTransport:
    """One task per flight over a shared `ClientSession` (connection limit off: open loop)."""

    name = "aiohttp"
    spare = 0  # aiohttp's pool opens connections on demand

    def __init__(self, endpoint: Endpoint, api: str, hooks: Hooks, timeouts: Timeouts,
                 api_key: str | None = None, limits: Limits | None = None) -> None:
        self.max_event_bytes = (limits or Limits()).max_event_bytes
        self.url = endpoint.url + ("/chat/completions" if api == "chat" else "/completions")
        self._ssl = endpoint.ssl_context() or True  # verified unless --insecure (Endpoint.verify)
        self.hooks = hooks
        self.timeouts = timeouts
        self.api_key = api_key
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                        "Accept-Encoding": "identity"}
        self.headers.update(auth_headers(api_key))
        self.session: aiohttp.ClientSession | None = None
        self.active: dict[Flight, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def wire(self, body: bytes) -> bytes:
        return body

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        connector = _QuietConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=False, ssl=self._ssl)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trace_configs=[_CONNECTED],
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect))

    async def prewarm(self, n: int) -> int:
        return 0  # aiohttp's pool opens connections on demand

    def submit(self, f: Flight) -> None:
        task = self._loop.create_task(self._run(f))  # type: ignore[union-attr]
        self.active[f] = task

    async def _run(self, f: Flight) -> None:
        try:
            await call(self.session, self.url, self.headers, f, self.api_key,  # type: ignore[arg-type]
                       self.max_event_bytes)
            if f.status == "ok":
                # One loop turn before the slot frees: a server that closes right after its answer
                # has its FIN read by then, so aiohttp's pool drops that connection instead of
                # handing it to the next request (which would end as a `disconnect` we caused).
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            f.fail("cancelled", "cancelled")
        except Exception as e:  # never a result without a true status
            f.fail("client_error", scrub(f"{type(e).__name__}: {e}"[:200], self.api_key))
        finally:
            self.finish(f)

    def finish(self, f: Flight) -> None:
        if f.finished:
            return
        f.finished = True
        f.conn = None
        self.active.pop(f, None)
        self.hooks.on_done(f)

    def end_flight(self, f: Flight, status: str, error: str) -> None:
        task = self.active.get(f)
        if status == "timeout" and f.http_status is not None and f.http_status != 200:
            # an error answer whose body never came is that error, not a timeout (--retries reads it)
            status, error = "http_error", f"HTTP {f.http_status} (body unfinished: {error})"
        f.fail(status, error)
        self.finish(f)
        if task is not None:
            task.cancel()

    def sweep(self, now: float) -> None:
        for f, msg in _framing_errors(self.active):
            self.end_flight(f, "protocol_error", scrub(msg, self.api_key))
        for f, msg in Limits.over_chunks(self.active):
            self.end_flight(f, "protocol_error", msg)
        late = self.timeouts.late(self.active, now)
        for f, msg in late:
            self.end_flight(f, "timeout", msg)

    def cancel_all(self, reason: str) -> None:
        for f in list(self.active):
            self.end_flight(f, "cancelled", reason)

    async def close(self) -> None:
        tasks = list(self.active.values())
        self.cancel_all("transport closed")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
