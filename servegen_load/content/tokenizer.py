"""Learning the token model once per run: a local tokenizer or the server's `/tokenize`, then probes.

Order of preference for counting text tokens (`--tokenizer`):

1. `DIR`: a local Hugging Face tokenizer directory (`tokenizer.json`), read with the optional
   `tokenizers` package (`pip install 'servegen-load[tokenizers]'`). Never downloaded.
2. `server` (the default against a real server): the server's own `POST /tokenize` (vLLM and
   SGLang take `{"prompt": ...}`, llama.cpp `{"content": ...}`, the simulator either; one body
   carries both keys). One call per candidate word, 8 at a time, before the clock starts.
3. `words`: one token per word (the simulator's rule, exact there; an approximation elsewhere).
   The default for the embedded simulator, and the fallback when the server has no `/tokenize`.

Word calibration: each candidate word w is counted in context, n(w) = |tok("the " + w)| -
|tok("the")| (BOS and the anchor cancel). Words with n(w) = 1 become the filler vocabulary, their
ids the id vocabulary for token-id prompts (ordinary tokens, never special ones). With fewer than
`MIN_WORDS` such words the full list is kept and `tokens_per_word` = mean n(w) (approximate).

Overhead probes: what a prompt adds beyond its words (BOS, chat template) is measured by sending
real 1-token generations built exactly as the run builds its requests, and reading
`usage.prompt_tokens`: a lone user message, a system + user message, and the second turn of a
session (one assistant/user pair more); for completions a text prompt and an id prompt. The
differences are subtracted from the words of every request, so the server counts what the
workload asked. A server without usage leaves the overheads at 0 (noted in the results header).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import InputError
from .prompts import WORDS, TokenModel, approx_model

MIN_WORDS = 8
# Candidates: the English filler words, then single letters (one token on small vocabularies too).
CANDIDATES: tuple[str, ...] = WORDS + tuple(c for c in "abcdefghijklmnopqrstuvwxyz" if c not in WORDS)
ANCHOR = "the"
PROBE_WORDS = 64
# What a template or BOS may add to a prompt (or, with merges at its edges, take away): a count
# outside it is the server's error, not an overhead (0 and 60,000 were believed: prompts padded by
# 64 words, or clipped to their nonce)
OVERHEAD_SLACK, MAX_OVERHEAD = 8, 8192
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 4 << 20  # a probe answer larger than this is a failed probe (never read whole)
# What a start-up probe may meet on a misbehaving server (cut answers, resets, garbage, hangs):
# each is a failed probe (a warning or a note), never a traceback.
PROBE_ERRORS = (OSError, http.client.HTTPException, ValueError)

Tokenize = Callable[[list[str]], list[list[int]]]


class TokenizeUnavailable(Exception):
    """The server has no usable /tokenize (404, not JSON, no `tokens`)."""


# --- token counters ---------------------------------------------------------------------------


def local_tokenizer(path: str) -> Tokenize:
    """`texts -> ids` with a local HF tokenizer directory (or tokenizer.json), no special tokens."""
    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise InputError("expected a tokenizer directory holding tokenizer.json (or the file itself)",
                         path=str(p), field="--tokenizer")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("a local tokenizer needs the optional `tokenizers` package: "
                         "pip install 'servegen-load[tokenizers]' (or use --tokenizer server)",
                         field="--tokenizer") from None
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as e:  # the library raises plain Exceptions on bad files
        raise InputError(f"cannot load the tokenizer: {e}", path=str(f), field="--tokenizer") from None

    def run(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return run


class _Http:
    """One keep-alive connection per thread to the server's root (for /tokenize and probes)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = TIMEOUT_S,
                 ssl_context: Any = None) -> None:
        u = urlsplit(base_url)
        self.ssl_context = ssl_context
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.base_path = u.path.rstrip("/")
        self.root = self.base_path.rsplit("/", 1)[0] if self.base_path.split("/")[-1].startswith("v") else self.base_path
        from ..dispatch.endpoint import auth_headers

        self.api_key = api_key
        self.headers = {"Content-Type": "application/json", **auth_headers(api_key)}
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.https:
                c = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
            else:
                c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def close(self) -> None:
        """Close every connection: an idle keep-alive connection can hold one of the server's
        HTTP threads (llama.cpp's pool) for its keep-alive timeout, stalling the run's first requests."""
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Status and body, the whole exchange within `timeout` seconds: the socket timeout bounds
        each read only, and a server trickling its head a byte at a time held a probe for ever."""
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            c = self._conn()
            late: list[bool] = []
            timer = threading.Timer(self.timeout, _cut, (c, late))
            timer.start()
            try:
                c.request("POST", path, body=body, headers=self.headers)
                r = c.getresponse()
                return r.status, _read_bounded(r, self.timeout)
            except (OSError, http.client.HTTPException) as e:
                c.close()
                self._local.conn = None
                if late:
                    raise TimeoutError(f"no complete answer within {self.timeout:g}s") from None
                if attempt or not isinstance(e, (ConnectionError, http.client.HTTPException)):
                    raise
            finally:
                timer.cancel()
        raise AssertionError("unreachable")


def _cut(c: http.client.HTTPConnection, late: list[bool]) -> None:
    """`_Http.post`'s deadline: end the exchange (the blocked read returns at once)."""
    late.append(True)
    if c.sock is not None:
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_RDWR)


def _read_bounded(r: http.client.HTTPResponse, timeout: float) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES and within `timeout` seconds in all (a server
    trickling bytes would otherwise hold a socket timeout per byte)."""
    import time

    end = time.monotonic() + timeout
    parts: list[bytes] = []
    n = 0
    while True:
        b = r.read1(65536)
        if not b:
            return b"".join(parts)
        parts.append(b)
        n += len(b)
        if n > MAX_ANSWER_BYTES:
            raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
        if time.monotonic() > end:
            raise TimeoutError(f"answer not complete within {timeout:g}s")


def server_tokenizer(http: _Http, model: str) -> Tokenize:
    """`texts -> ids` through the server's POST /tokenize (no special tokens where it can say so)."""
    path = http.root + "/tokenize"

    failed: list[str] = []  # the first failure: the other threads stop at once

    def one(text: str) -> list[int]:
        if failed:
            raise TokenizeUnavailable(failed[0])
        body = json.dumps({"model": model, "prompt": text, "content": text, "add_special_tokens": False,
                           "add_special": False}).encode()
        try:
            status, data = http.post(path, body)
        except PROBE_ERRORS as e:
            failed.append(_masked(http, f"POST {path}: {type(e).__name__}: {e}"[:200]))
            raise TokenizeUnavailable(failed[0]) from None
        if status != 200:
            raise TokenizeUnavailable(f"POST {path} answered HTTP {status}")
        try:
            toks = json.loads(data)["tokens"]
        except (ValueError, KeyError, TypeError):
            raise TokenizeUnavailable(f"POST {path} gave no `tokens` list") from None
        if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
            raise TokenizeUnavailable(f"POST {path} gave no list of token ids")
        return toks

    def run(texts: list[str]) -> list[list[int]]:
        first = one(texts[0])  # fail fast (404) before starting the pool
        with ThreadPoolExecutor(8) as ex:
            return [first, *ex.map(one, texts[1:])]

    return run


# --- calibration ------------------------------------------------------------------------------


def calibrate_words(tokenize: Tokenize, source: str) -> TokenModel:
    """The filler words that are one token each after a space, and their ids (see module doc)."""
    texts = [ANCHOR] + [f"{ANCHOR} {w}" for w in CANDIDATES]
    out = tokenize(texts)
    base = len(out[0])
    counts = [len(ids) - base for ids in out[1:]]
    single = [(w, ids[-1]) for w, ids, n in zip(CANDIDATES, out[1:], counts, strict=True) if n == 1 and ids]
    seen: set[int] = set()
    words, ids = [], []
    for w, i in single:
        if i not in seen:
            seen.add(i)
            words.append(w)
            ids.append(i)
    if len(words) >= MIN_WORDS:
        return TokenModel(words=tuple(words), ids=tuple(ids), source=source)
    tpw = sum(max(c, 1) for c in counts[:len(WORDS)]) / len(WORDS)
    all_ids = sorted({i for ids_ in out[1:] for i in ids_[base:]} - set(out[0]))
    note = (f"only {len(words)} of {len(CANDIDATES)} words are one token: lengths are approximate "
            f"({tpw:.2f} tokens per word)")
    return TokenModel(words=WORDS, ids=tuple(all_ids) or approx_model().ids, tokens_per_word=tpw,
                      source=source, notes=(note,))


def _masked(http: _Http, text: str) -> str:
    """Server text headed for stderr and the results header: the key masked (`endpoint.scrub`)."""
    from ..dispatch.endpoint import scrub

    return scrub(text, http.api_key)


def probe_overheads(model: TokenModel, http: _Http, api: str, family: str, served_model: str,
                    prompt_format: str) -> TokenModel:
    """Measure BOS / chat-template overheads with 1-token generations built like the run's requests."""
    from ..dispatch.stream import Flight, feed_sse
    from ..requests import Request
    from .payload import Content, PayloadOptions, build_body

    content = Content(replace(model, text=0, ids_overhead=0, chat_user=0, chat_system=0, chat_pair=0))
    opts = PayloadOptions(server_family=family, prompt_format=prompt_format, content=content)
    path = http.base_path + ("/chat/completions" if api == "chat" else "/completions")
    notes = list(model.notes)

    def prompt_tokens(r: Request) -> int | None:
        body = build_body(r, api, served_model, opts)  # type: ignore[arg-type]
        try:
            status, data = http.post(path, body)
        except PROBE_ERRORS as e:
            notes.append(_masked(http, f"overhead probe failed: {type(e).__name__}: {e}"[:200]))
            return None
        if status != 200:
            notes.append(_masked(http, f"overhead probe answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}"))
            return None
        f = Flight(r, body)
        feed_sse(f, data if data.endswith(b"\n\n") else data + b"\n\n", 0.0)
        if f.prompt_tokens is None:
            notes.append("the server reports no usage: overheads assumed 0")
        return f.prompt_tokens

    n = PROBE_WORDS
    upd: dict[str, int] = {}
    if api == "chat":
        p1 = prompt_tokens(Request("probe-u", 0.0, "probe", "probe", n, 1))
        if p1 is not None:
            upd["chat_user"] = p1 - n
            p2 = prompt_tokens(Request("probe-s", 0.0, "probe", "probe", n + 32, 1, prefix=[-1],
                                       extra={"prefix_tokens": 16}))
            if p2 is not None:
                upd["chat_system"] = p2 - (n + 32) - upd["chat_user"]
            s0 = Request("probe-t0", 0.0, "probe", "probe", n, 4, session="probe-session", turn=0)
            build_body(s0, "chat", served_model, opts)  # turn 0 enters the history, not sent
            t1 = n + 4 + 32
            p3 = prompt_tokens(Request("probe-t1", 0.0, "probe", "probe", t1, 1, session="probe-session", turn=1))
            if p3 is not None:
                upd["chat_pair"] = p3 - t1 - upd["chat_user"]
    else:
        key = "ids_overhead" if content.ids_for(api, family, prompt_format) else "text"
        p = prompt_tokens(Request("probe-c", 0.0, "probe", "probe", n, 1))
        if p is not None:
            upd[key] = p - n
    odd = {k: v for k, v in upd.items() if not -OVERHEAD_SLACK <= v <= MAX_OVERHEAD}
    if odd:  # a server's count no template explains: every prompt of the run would be cut or padded by it
        notes.append(f"overhead probe not believed ({', '.join(f'{k} {v:+d}' for k, v in odd.items())} tokens: "
                     f"expected {-OVERHEAD_SLACK} to {MAX_OVERHEAD}): overheads assumed 0")
        upd = {}
    return replace(model, notes=tuple(dict.fromkeys(notes)), **upd)


def learn_token_model(*, tokenizer: str | None, endpoint: str, api: str, family: str, model: str,
                      api_key: str | None, prompt_format: str = "auto", insecure: bool = False,
                      log: Callable[[str], None] | None = None) -> TokenModel:
    """The run's token model: see the module docstring for the order of preference.

    `tokenizer`: a directory, `server`, `words`, or None (server, but words for the simulator).
    """
    say = log or (lambda s: None)
    choice = tokenizer or ("words" if family == "sim" else "server")
    from ..dispatch.endpoint import Endpoint

    ep = Endpoint.parse(endpoint)
    if insecure:
        ep = replace(ep, verify=False)
    http = _Http(ep.url, api_key, ssl_context=ep.ssl_context())  # base URL normalised to end in /v1
    try:
        return _learn(choice, http, api, family, model, prompt_format, say)
    finally:
        http.close()


def _learn(choice: str, http: _Http, api: str, family: str, model: str, prompt_format: str,
           say: Callable[[str], None]) -> TokenModel:
    if choice == "words":
        tm = approx_model("one token per word assumed" if family != "sim" else None)
    elif choice == "server":
        try:
            tm = calibrate_words(server_tokenizer(http, model), "server:/tokenize")
        except TokenizeUnavailable as e:
            tm = approx_model(f"no usable /tokenize ({e}): one token per word assumed")
            say(f"servegen-load: warning: {tm.notes[0]}")
    else:
        tm = calibrate_words(local_tokenizer(choice), f"tokenizer:{choice}")
    if family != "sim":
        tm = probe_overheads(tm, http, api, family, model, prompt_format)
    return replace(tm, notes=tuple(_masked(http, n) for n in tm.notes))  # bound for the results

