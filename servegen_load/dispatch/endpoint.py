"""Where requests go: the parsed endpoint URL, the API key, and model discovery.

The API key lives only in memory (request headers). It is never written to results, logs,
metrics or error text: `scrub` is applied to every error string that could echo a header.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InputError, printable

API_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI-compatible base URL, normalised to end in `/v1` (or whatever version path was given)."""

    scheme: str
    host: str
    port: int
    base_path: str
    verify: bool = True  # verify TLS certificates (False: --insecure)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        shown = redact_url(url)
        try:
            parts = urlsplit(url if "://" in url else "http://" + url)
        except ValueError as e:  # "Invalid IPv6 URL": an unclosed [
            raise InputError(f"expected an http(s) URL like http://127.0.0.1:8000, got {shown!r} ({e})",
                             field="--endpoint") from None
        if parts.username is not None or parts.password is not None:
            # refused rather than used: a credential in the URL is shown wherever the endpoint is
            raise InputError(f"credentials in the URL ({shown}) are not supported: pass the key in "
                             "OPENAI_API_KEY or --api-key-file", field="--endpoint")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"expected an http(s) URL like http://127.0.0.1:8000, got {shown!r}", field="--endpoint")
        if parts.query or parts.fragment:  # refused, not dropped: `?api-version=...` left out would fail every request
            raise InputError(f"a query string or fragment in the URL is not sent with the requests; give the base "
                             f"URL alone, e.g. {parts.scheme}://{parts.netloc}{parts.path}", field="--endpoint")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InputError(f"bad port in {shown!r}", field="--endpoint") from None
        path = parts.path.rstrip("/")
        for api, suffix in API_PATHS.items():
            if path.endswith(suffix):  # the whole API URL pasted: requests would go to .../completions/v1/...
                base = redact_url(url).rstrip("/")[: -len(suffix)]
                raise InputError(f"{shown} is the URL of an API, not of the server: give the base URL "
                                 f"{base} (the API is chosen with --api, here --api {api})", field="--endpoint")
        if not re.fullmatch(r"v\d+\w*", path.split("/")[-1]):
            path = path + "/v1"
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8000/v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.base_path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def path(self, api: str) -> str:
        return self.base_path + API_PATHS[api]

    def ssl_context(self) -> ssl.SSLContext | None:
        """For https: the system's verifying context; with `verify=False` (--insecure) one that
        checks neither the chain nor the host name. None for http."""
        if self.scheme != "https":
            return None
        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def addresses(self) -> list[tuple[int, str]]:
        """Every (address family, address) of the host, in the resolver's order, once each:
        resolved once at start so no request pays for DNS."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise InputError(f"cannot resolve {self.host!r}: {e.strerror}", field="--endpoint") from None
        return list(dict.fromkeys((fam, str(addr[0])) for fam, _, _, _, addr in infos))


# A key written as a header line is sent as that header (`auth_headers`).
_KEY_HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+): +(\S.*)")
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "content-type", "connection", "accept",
                          "accept-encoding", "user-agent", "expect", "te", "trailer", "upgrade", "keep-alive"})


def check_key(key: str, where: str, path: str | None = None) -> str:
    """The key, if it can only ever be one header value: printable ASCII, no CR/LF/NUL (a line
    break would inject headers into every request), and, written as a header line (`auth_headers`),
    not a header that frames or routes the request. The error names the position, never the key."""
    for i, c in enumerate(key):
        if not " " <= c <= "~":
            what = ("a line break" if c in "\r\n" else "a NUL byte" if c == "\0" else
                    "a control character" if ord(c) < 32 or ord(c) == 127 else "a non-ASCII character")
            raise InputError(f"the API key holds {what} at character {i + 1}; expected printable ASCII "
                             "(the key is not shown)", path=path, field=where)
    m = _KEY_HEADER.fullmatch(key)
    if m and m[1].lower() in _OWN_HEADERS:
        raise InputError(f"the API key is written as a {m[1]!r} header, which this client sets itself; expected "
                         "`Name: value` with a header such as api-key or x-api-key, or the bare key for "
                         "`Authorization: Bearer` (the key is not shown)", path=path, field=where)
    return key


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries the key: `Authorization: Bearer KEY`, or, when the key is written as
    a header line (`api-key: KEY`, `x-api-key: KEY`, `Authorization: Basic ...`), that line.

    Why in the key and not an option: every command, `--workers` child and Ray actor already gets
    the key, in memory, from the file or the environment, and nothing else does; a header value
    is as secret as the key, so it travels the same way and is masked the same way (`scrub`).
    """
    if not api_key:
        return {}
    m = _KEY_HEADER.fullmatch(api_key)
    return {m[1]: m[2]} if m else {"Authorization": f"Bearer {api_key}"}


def secret_of(api_key: str | None) -> str | None:
    """What a server could echo of the key: the header value of a key written as a header line,
    without its scheme for `Authorization` (`Bearer TOKEN`, `Basic CREDENTIALS`: the token alone
    is the secret, and is what an echo may hold)."""
    m = _KEY_HEADER.fullmatch(api_key) if api_key else None
    if m is None:
        return api_key
    scheme, _, rest = m[2].partition(" ")
    return rest.strip() if m[1].lower() == "authorization" and rest.strip() and scheme.isalpha() else m[2]


def load_api_key(path: Path | None) -> str | None:
    """The key from `--api-key-file` (its first line), else `OPENAI_API_KEY`, else None; validated
    by `check_key` (surrounding white space is dropped)."""
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror}", path=str(path), field="--api-key-file") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the API key file is not UTF-8 text (the key is not shown)", path=str(path),
                             field="--api-key-file") from None
        first = text.strip().split("\n", 1)[0].strip()
        if not first:
            raise InputError("the API key file is empty", path=str(path), field="--api-key-file")
        return check_key(first, "--api-key-file", str(path))
    key_env = os.environ.get("OPENAI_API_KEY", "").strip()
    return check_key(key_env, "OPENAI_API_KEY") if key_env else None


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def redact_url(text: str) -> str:
    """`scheme://user:pass@host` -> `scheme://***@host`, wherever it appears in `text`."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


@functools.lru_cache(maxsize=8)
def _echo_pattern(key: str) -> re.Pattern[str]:
    """The key as a server may echo it: each character as itself, JSON-escaped (`\\u00XX` in either
    case, `\\/`) or URL-encoded (`%XX` in either case, `+` for a space), in any mix."""
    parts = []
    for c in key:
        alts = [re.escape(c)]
        for b in c.encode("utf-8"):
            alts.append(f"%(?i:{b:02x})")
        if ord(c) < 0x10000:
            alts.append(f"\\\\u(?i:{ord(c):04x})")
        if c in "/\"":
            alts.append(re.escape("\\" + c))
        if c == "\\":
            alts.append(re.escape("\\\\"))
        if c == " ":
            alts.append("\\+")
        parts.append("(?:" + "|".join(alts) + ")")
    return re.compile("".join(parts))


_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+")
_MIN_PARTIAL = 6


def scrub(text: str, key: str | None) -> str:
    """Remove the key from a string that might echo request headers (error bodies, stream events),
    and its control characters (`printable`).

    Also masks any `Bearer <token>`, and any piece of the key of 6 characters or more, wherever
    it sits: error texts are truncated (a body cut at 200 bytes, then more text after it), and a
    cut key is still a leaked key.
    """
    text = printable(text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1***", text)
    if "://" in text and "@" in text:
        text = redact_url(text)
    key = secret_of(key)
    if key:
        if key in text:
            text = text.replace(key, "***")
        if "\\" in text or "%" in text or "+" in text:
            text = _echo_pattern(key).sub("***", text)
        text = _mask_pieces(text, key)
    return text


def _mask_pieces(text: str, key: str) -> str:
    """`text` with every run made of key pieces of `_MIN_PARTIAL` characters, in any case (a server
    may echo headers upper-cased), replaced by `***`."""
    n = _MIN_PARTIAL
    if len(key) < n or len(text) < n:
        return text
    folded = text.lower()
    if len(folded) != len(text):  # a character whose lower case is longer: match the case given
        folded = text
    pieces = {key[i:i + n].lower() for i in range(len(key) - n + 1)}
    spans: list[list[int]] = []
    for i in range(len(text) - n + 1):
        if folded[i:i + n] in pieces:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + n
            else:
                spans.append([i, i + n])
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for a, b in spans:
        out += (text[last:a], "***")
        last = b
    out.append(text[last:])
    return "".join(out)


MAX_MODELS_BYTES = 4 << 20  # a /v1/models answer larger than this is refused, not read


async def discover_model(endpoint: Endpoint, api_key: str | None, timeout: float = 10.0) -> str:
    """The first model id the server lists at `/v1/models`.

    A start-up probe against a server that may be the very one misbehaving: whatever it does (cut
    the answer, reset, hang, trickle bytes, redirect elsewhere, answer garbage or gigabytes) this
    ends within `timeout` seconds in one `InputError` line ("pass --model"), never a traceback.
    Redirects are not followed: the key must not travel to another origin, and the run itself
    would not follow them either.
    """
    import aiohttp

    headers = {**auth_headers(api_key), "Accept-Encoding": "identity"}
    url = endpoint.url + "/models"
    try:
        async with asyncio.timeout(timeout), \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(url, headers=headers, ssl=endpoint.ssl_context() or True, allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                where = scrub(redact_url(resp.headers.get("Location", "")[:200]), api_key)
                raise InputError(f"GET {url} answered HTTP {resp.status} (redirect to {where!r}, not followed); "
                                 "pass --model, or the final URL as --endpoint", field="--model")
            if resp.status != 200:
                raise InputError(f"GET {url} answered HTTP {resp.status}; pass --model", field="--model")
            body = bytearray()  # `read(n)` returns what has arrived, not n bytes: a list in two pieces was cut
            while len(body) <= MAX_MODELS_BYTES and (piece := await resp.content.read(MAX_MODELS_BYTES + 1 - len(body))):
                body += piece
            if len(body) > MAX_MODELS_BYTES:
                raise InputError(f"GET {url} answered over {MAX_MODELS_BYTES} bytes; pass --model", field="--model")
            data = json.loads(body)
    except InputError:
        raise
    except aiohttp.ClientConnectorError as e:  # no server there: what `run` says, not "pass --model"
        why = e.os_error.strerror or type(e.os_error).__name__
        raise InputError(f"cannot connect to {redact_url(endpoint.url)} ({why})", field="--endpoint") from None
    except Exception as e:  # any failure of a probe is one line, not a traceback
        what = f"no complete answer within {timeout:g}s" if isinstance(e, TimeoutError) else \
            f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        msg = scrub(what[:200], api_key)
        raise InputError(f"cannot list models at {url} ({msg}); pass --model", field="--model") from None
    try:
        model = data["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{url} lists no model; pass --model", field="--model") from None
    if not isinstance(model, str) or not model.strip() or not model.isprintable():
        raise InputError(f"{url} lists no usable model id (got {printable(repr(model))[:80]}); pass --model",
                         field="--model")
    if scrub(model, api_key) != model:  # it would be printed and kept in the results
        raise InputError(f"{url} lists a model id that carries the API key; pass --model", field="--model")
    return model
