"""Where requests go: the parsed endpoint URL, the API key, and model discovery.

The API key lives only in memory (request headers). It is never written to results, logs,
metrics or error text: `scrub` is applied to every error string that could echo a header.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InputError

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
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"expected an http(s) URL like http://127.0.0.1:8000, got {url!r}", field="--endpoint")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InputError(f"bad port in {url!r}", field="--endpoint") from None
        path = parts.path.rstrip("/")
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

    def resolve(self) -> tuple[int, str]:
        """(address family, address), resolved once at start so no request pays for DNS."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise InputError(f"cannot resolve {self.host!r}: {e.strerror}", field="--endpoint") from None
        fam, _, _, _, addr = infos[0]
        return fam, str(addr[0])


def load_api_key(path: Path | None) -> str | None:
    """The key from `--api-key-file` (first line), else `OPENAI_API_KEY`, else None."""
    if path is not None:
        try:
            key = path.read_text().strip().splitlines()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror}", path=str(path), field="--api-key-file") from None
        if not key or not key[0].strip():
            raise InputError("the API key file is empty", path=str(path), field="--api-key-file")
        return key[0].strip()
    key_env = os.environ.get("OPENAI_API_KEY", "").strip()
    return key_env or None


_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+")
_MIN_PARTIAL = 6


def scrub(text: str, key: str | None) -> str:
    """Remove the key from a string that might echo request headers (error bodies, stream events).

    Also masks any `Bearer <token>`, and a prefix of the key (6 characters or more) that ends
    the text: error texts are truncated, and a cut key is still a leaked key.
    """
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1***", text)
    if key:
        if key in text:
            text = text.replace(key, "***")
        for n in range(min(len(key) - 1, len(text)), _MIN_PARTIAL - 1, -1):
            if text.endswith(key[:n]):
                return text[:-n] + "***"
    return text


async def discover_model(endpoint: Endpoint, api_key: str | None, timeout: float = 10.0) -> str:
    """The first model id the server lists at `/v1/models`."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint.url + "/models"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(url, headers=headers, ssl=endpoint.ssl_context() or True) as resp:
            if resp.status != 200:
                raise InputError(f"GET {url} answered HTTP {resp.status}; pass --model", field="--model")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        msg = scrub(str(e) or type(e).__name__, api_key)
        raise InputError(f"cannot list models at {url} ({msg}); pass --model", field="--model") from None
    try:
        return str(data["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{url} lists no model; pass --model", field="--model") from None
