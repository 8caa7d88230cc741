"""Request -> OpenAI request body (bytes), built ahead of the send time by the dispatcher.

`build_body(request, api, model, options)` is the one entry point (the runner's look-ahead calls
it, never the send path). What it writes:

- a prompt the server counts as exactly `input_tokens` (+ media tokens): token ids on
  `/v1/completions` where the server takes them (`prompt_format` ids/auto: llama.cpp, vLLM,
  SGLang, the simulator), else text of calibrated one-token words, less the BOS/chat-template
  overhead measured once per run (`content.tokenizer`, `content.prompts`);
- caching on purpose: a per-request nonce right after any shared prefix, so unique prompts miss
  every prefix cache (llama.cpp and vLLM cache by default) while shared prefix blocks (`prefix`
  block ids: Mooncake `hash_ids`, a scenario's shared system prompt) and a session's history
  are the same tokens in every request that has them;
- chat: a system message for the prefix, the session's history as user/assistant messages (the
  assistant turns as `output_tokens` words: what the server produced under forced lengths), then
  the new user message, with images/audio/video as OpenAI content parts sized to their token
  counts (`content.media`); completions: all of it concatenated (media folded into text tokens,
  since completions carry no media, with a warning);
- the family's output-length forcing, streaming with usage, and `x_reason_tokens` for the
  simulator (it streams that many reasoning tokens before the answer).

Sessions: turn k's body is built from the session's earlier turns, kept here (sizes and keys
only, never text) from the moment their own bodies were built; a request's `input_tokens` and
media lists describe the whole prompt, history included (see `workload.conversation`); a turn
marked `history: excluded` (its log counted only the new tokens) is sent without the history.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..requests import Request
from .media import IMAGE_PATCH, MediaCache
from .prompts import BLOCK_TOKENS, Lexicons, TokenModel, approx_model, digest64

Api = Literal["chat", "completions"]
PromptFormat = Literal["auto", "ids", "text"]
PROMPT_FORMATS = ("auto", "ids", "text")

# How each server family is told to produce exactly `output_tokens` tokens. `max_tokens` alone
# lets the model stop at EOS, so it proves nothing about length; see shared/servers/README.md.
FAMILIES: dict[str, dict[str, Any]] = {
    "vllm": {"ignore_eos": True, "min_tokens": True, "ids": True},
    "sglang": {"ignore_eos": True, "ids": True},
    "llamacpp": {"ignore_eos": True, "ids": True},
    "sim": {"ignore_eos": True, "min_tokens": True, "x_reason_tokens": True, "ids": True, "hints": True},
    "openai": {"max_completion_tokens": True},  # the public API rejects unknown fields
}

MAX_SESSIONS = 100_000   # session histories kept (LRU); a session evicted mid-way restarts its prefix
_MEDIA_KINDS = (("image", "images"), ("audio", "audio"), ("video", "video"))
# Big strings (media, id lists) go into the encoded body in place of these (orjson never sees them).
_PLACEHOLDER = re.compile(rb'"@sg-[a-z]+-?[0-9]*@"')


@dataclass(slots=True)
class _Turn:
    user_words: int                               # filler words of the user message
    media: list[tuple[str, int, int]]             # (kind, tokens, key) of the items it introduced
    output: int                                   # the assistant's answer in the history, tokens


@dataclass(slots=True)
class _Session:
    key: str
    prefix: list[int]
    prefix_tokens: int
    turns: list[_Turn] = field(default_factory=list)


class Content:
    """The run's content state: token model, lexicons (salted), media cache, session histories."""

    def __init__(self, model: TokenModel | None = None, *, salt: bytes | None = None,
                 block_tokens: int = BLOCK_TOKENS, image_patch: int = IMAGE_PATCH) -> None:
        self.model = model or approx_model()
        self.salt = salt if salt is not None else os.urandom(8)
        self.lex = Lexicons(self.model, self.salt, block_tokens)
        self.block_tokens = block_tokens
        self.media = MediaCache(image_patch)
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.folded_media = 0  # media tokens sent as text on /v1/completions
        self.shape: _Shape | None = None  # the run's constant body bytes (`build_body`)

    @staticmethod
    def ids_for(api: str, family: str, prompt_format: str) -> bool:
        """Token-id prompts? Only on completions; `auto` where the family takes them."""
        if api != "completions" or prompt_format == "text":
            return False
        return prompt_format == "ids" or bool(FAMILIES.get(family, {}).get("ids"))

    # --- structure ---
    def _session(self, r: Request) -> tuple[_Session, int]:
        """The session state for `r` (a fresh one for a request without a session, or for a turn whose
        log counted only its new tokens: `history: excluded`, see `workload.conversation`) and its turn."""
        if r.session is None or r.extra.get("history") == "excluded":
            return _Session(r.id, r.prefix or [], 0), 0
        j = r.turn or 0
        st = self.sessions.get(r.session)
        if st is None or j == 0:
            st = _Session(r.session, r.prefix or [], 0)
            self.sessions[r.session] = st
            if len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(r.session)
            del st.turns[j:]  # a rebuilt turn replaces itself and anything after it
        return st, j

    def _new_media(self, r: Request, st: _Session) -> list[tuple[str, int, int]]:
        have: dict[str, int] = {}
        for t in st.turns:
            for kind, _, _ in t.media:
                have[kind] = have.get(kind, 0) + 1
        out = []
        n_turn = len(st.turns)
        for kind, attr in _MEDIA_KINDS:
            items = getattr(r, attr)
            if not items:
                continue
            for i, tok in enumerate(items[have.get(kind, 0):]):
                out.append((kind, int(tok), digest64(self.salt, f"{st.key}/{n_turn}/{kind}{i}")))
        return out

    def plan(self, r: Request, api: str, ids: bool) -> tuple[_Session, bool]:
        """Decide the words of this request's new user text (appends its turn); (session, folded)."""
        if r.session is None and not r.prefix and not (r.images or r.audio or r.video):
            return self._plan_single(r, api, ids), False
        st, _ = self._session(r)
        new_media = self._new_media(r, st)
        m = self.model
        hist = st.turns
        first = not hist
        media_tok = sum(t for _, t, _ in new_media) + sum(t for h in hist for _, t, _ in h.media)
        folded = api != "chat" and media_tok > 0
        target = r.input_tokens + (media_tok if folded else 0)
        lex = self.lex.ids if ids else self.lex.text
        if api == "chat":
            leads = 1 + 2 * len(hist)
            overhead_no_sys = m.chat_overhead(False, len(hist))
            overhead_sys = m.chat_overhead(True, len(hist))
        else:
            leads = 0 if ids else 1
            overhead_no_sys = overhead_sys = m.ids_overhead if ids else m.text
        fixed = leads + lex.nonce_len + sum(h.user_words + h.output for h in hist)
        if first:  # the prefix is decided once per session: as much of it as fits
            cover = len(st.prefix) * self.block_tokens
            pt = r.extra.get("prefix_tokens")  # the prefix's length when its last block is partial
            want = min(pt, cover) if isinstance(pt, int) and not isinstance(pt, bool) and pt >= 0 else cover
            sys_cost = (1 + overhead_sys - overhead_no_sys) if api == "chat" else 0
            room = target - overhead_no_sys - fixed - sys_cost
            st.prefix_tokens = max(0, min(want, room))
        has_sys = st.prefix_tokens > 0
        overhead = overhead_sys if has_sys else overhead_no_sys
        if api == "chat" and has_sys:
            fixed += 1  # the system message's lead
        words = target - overhead - fixed - st.prefix_tokens
        words = self.lex.words_for(max(0, words))
        st.turns.append(_Turn(words, new_media, max(1, r.carried_tokens())))
        if folded:
            if not self.folded_media:
                import sys

                print("servegen-load: warning: /v1/completions carries no images/audio/video: their tokens "
                      "are sent as prompt text (use --api chat for multimodal requests)", file=sys.stderr)
            self.folded_media += media_tok
        return st, folded

    def _plan_single(self, r: Request, api: str, ids: bool) -> _Session:
        """`plan` for the common request: no session, prefix or media (the general path's arithmetic
        with its zeros taken out: a request's look-ahead work is on the event loop)."""
        st = _Session(r.id, [], 0)
        m = self.model
        lex = self.lex.ids if ids else self.lex.text
        if api == "chat":
            fixed, overhead = 1, m.chat_overhead(False, 0)
        else:
            fixed, overhead = (0, m.ids_overhead) if ids else (1, m.text)
        words = r.input_tokens - overhead - fixed - lex.nonce_len
        out = r.carried_tokens()
        st.turns.append(_Turn(self.lex.words_for(words if words > 0 else 0), [], out if out > 1 else 1))
        return st

    # --- emission ---
    def messages(self, st: _Session, family: str, splices: dict[bytes, bytes]) -> list[dict[str, Any]]:
        lex = self.lex.text
        lead = self.model.lead
        msgs: list[dict[str, Any]] = []
        if st.prefix_tokens:
            msgs.append({"role": "system", "content": lead + " " + lex.prefix(st.prefix, st.prefix_tokens)})
        last = len(st.turns) - 1
        nonce = lex.nonce(st.key)
        for i, t in enumerate(st.turns):
            text = lead + " " + nonce if i == 0 else lead
            if t.user_words:
                text += " " + lex.filler(t.user_words)
            if t.media:
                parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
                parts.extend(self._media_part(kind, tok, key, family, splices) for kind, tok, key in t.media)
                msgs.append({"role": "user", "content": parts})
            else:
                msgs.append({"role": "user", "content": text})
            if i < last:
                msgs.append({"role": "assistant", "content": lead + " " + lex.filler(t.output, phase=1)})
        return msgs

    def prompt(self, st: _Session, ids: bool) -> str:
        """The completions prompt: text, or the ids as a JSON list body (without brackets)."""
        lex = self.lex.ids if ids else self.lex.text
        if len(st.turns) == 1 and not st.prefix_tokens:  # one turn, no prefix: the loop below, unrolled
            w = st.turns[0].user_words
            nonce = lex.nonce(st.key)
            if w:
                nonce = nonce + lex.sep + lex.filler(w)
            return nonce if ids else self.model.lead + lex.sep + nonce
        parts = [] if ids else [self.model.lead]
        if st.prefix_tokens:
            parts.append(lex.prefix(st.prefix, st.prefix_tokens))
        parts.append(lex.nonce(st.key))
        for t in st.turns:
            if t.user_words:
                parts.append(lex.filler(t.user_words))
            if t is not st.turns[-1]:
                parts.append(lex.filler(t.output, phase=1))
        return lex.sep.join(parts)

    def _media_part(self, kind: str, tokens: int, key: int, family: str,
                    splices: dict[bytes, bytes]) -> dict[str, Any]:
        ph = f"@sg-media-{len(splices)}@"
        if kind == "image":
            splices[f'"{ph}"'.encode()] = b'"' + self.media.image_url(tokens, key).encode() + b'"'
            return {"type": "image_url", "image_url": {"url": ph}}
        if kind == "audio":
            splices[f'"{ph}"'.encode()] = b'"' + self.media.wav_b64(tokens, key).encode() + b'"'
            return {"type": "input_audio", "input_audio": {"data": ph, "format": "wav"}}
        url, frames, w, h = self.media.video(tokens, key)
        splices[f'"{ph}"'.encode()] = b'"' + url.encode() + b'"'
        obj: dict[str, Any] = {"url": ph}
        if FAMILIES.get(family, {}).get("hints"):
            obj["servegen"] = {"frames": frames, "width": w, "height": h}
        return {"type": "video_url", "video_url": obj}


@dataclass(frozen=True, slots=True)
class PayloadOptions:
    """What the dispatcher knows about the server when it builds bodies.

    `extra` is merged last into every body (e.g. `temperature`, vendor fields). `prompt_format`:
    `ids` (token-id prompts on completions), `text`, or `auto` (ids on completions where the
    family takes them). `content`: the run's `Content` (token model, salt, caches, session
    histories); None uses a shared default (one token per word, a random salt).
    """

    server_family: str = "vllm"
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_format: str = "auto"
    content: Content | None = None


_DEFAULT: Content | None = None


def default_content() -> Content:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Content()
    return _DEFAULT


def intended_prompt_tokens(r: Request) -> int:
    """What the server should count: text tokens plus every media item's tokens."""
    return r.input_tokens + sum(r.images or ()) + sum(r.audio or ()) + sum(r.video or ())


def build_body(request: Request, api: Api, model: str, options: PayloadOptions) -> bytes:
    """The JSON body of one streaming request; fields follow OpenAI plus the family's length forcing.

    Why two paths: every field but the prompt (or messages) is the same for every request of a
    run with the same lengths, so `_Shape` keeps those bytes, encoded once by orjson from the very
    dict the straightforward path encodes, cut at the prompt, and only the prompt is encoded per
    request (ids: not encoded at all). `_build_generic` is that straightforward path; the two give
    the same bytes (tests/test_payload_splice.py), and anything unusual (odd types, `extra` that
    touches the prompt) takes the generic one.
    """
    family = FAMILIES.get(options.server_family)
    if family is None:
        raise ValueError(f"unknown server family {options.server_family!r}; expected one of {sorted(FAMILIES)}")
    content = options.content or default_content()
    shape = _shape(content, api, model, options, family)
    n_out = request.output_tokens
    n_out = n_out if n_out > 1 else 1
    rt = request.reason_tokens if shape.reason else None
    if shape.head is None or type(n_out) is not int or (rt is not None and type(rt) is not int):
        return _build_generic(request, api, model, options, family, content, shape.ids)
    tail = shape.tails.get((n_out, rt))
    if tail is None:
        tail = shape.tail(n_out, rt, request)
        if tail is None:
            return _build_generic(request, api, model, options, family, content, shape.ids)
    st, _ = content.plan(request, api, shape.ids)
    if api == "chat":
        splices: dict[bytes, bytes] = {}
        mid = _dumps(content.messages(st, options.server_family, splices))
        if splices:  # one pass over the messages, whatever the number of items
            mid = _PLACEHOLDER.sub(lambda m: splices[m.group(0)], mid)
    elif shape.ids:
        return _join((shape.head, b"[", content.prompt(st, True).encode(), b"]", tail))
    else:
        mid = _dumps(content.prompt(st, False))
    return _join((shape.head, mid, tail))


_dumps = orjson.dumps
_join = b"".join
_SLOT = "@sg-slot@"  # stands for the prompt / messages while the constant parts are encoded
_SLOT_B = b'"@sg-slot@"'
_MAX_TAILS = 4096


class _Shape:
    """The constant bytes of a run's bodies: the head before the prompt, the tail per length."""

    __slots__ = ("api", "content", "family", "head", "ids", "model", "options", "reason", "tails")

    def __init__(self, content: Content, api: str, model: str, options: PayloadOptions,
                 family: dict[str, Any]) -> None:
        self.content, self.api, self.model, self.options, self.family = content, api, model, options, family
        self.ids = content.ids_for(api, options.server_family, options.prompt_format)
        self.reason = bool(family.get("x_reason_tokens"))
        self.tails: dict[tuple[int, int | None], bytes] = {}
        self.head: bytes | None = b""
        if self.tail(1, None, None) is None:
            self.head = None  # `extra` replaces the prompt or uses our marker: always the generic path

    def tail(self, n_out: int, rt: int | None, request: Request | None) -> bytes | None:
        """Encode the body dict with a marker for the prompt; keep what follows it (None: no marker)."""
        body = _fields(self.api, self.model, self.family, self.options, n_out, rt, _SLOT)
        raw = _dumps(body)
        if raw.count(_SLOT_B) != 1 or raw.count(b'"@sg-') != 1:
            return None
        head, tail = raw.split(_SLOT_B)
        if self.head == b"":
            self.head = head
        elif head != self.head:
            return None
        if len(self.tails) >= _MAX_TAILS:
            self.tails.clear()
        self.tails[(n_out, rt)] = tail
        return tail


def _shape(content: Content, api: str, model: str, options: PayloadOptions, family: dict[str, Any]) -> _Shape:
    s = content.shape
    if s is None or s.options is not options or s.api != api or s.model != model or s.family is not family:
        s = content.shape = _Shape(content, api, model, options, family)
    return s


def _fields(api: str, model: str, family: dict[str, Any], options: PayloadOptions, n_out: int,
            rt: int | None, prompt: Any) -> dict[str, Any]:
    """The body dict, in its field order, with `prompt` as the prompt or messages."""
    body: dict[str, Any] = {"model": model}
    body["messages" if api == "chat" else "prompt"] = prompt
    if family.get("max_completion_tokens") and api == "chat":
        body["max_completion_tokens"] = n_out
    else:
        body["max_tokens"] = n_out
    if family.get("ignore_eos"):
        body["ignore_eos"] = True
    if family.get("min_tokens"):
        body["min_tokens"] = n_out
    if family.get("x_reason_tokens") and rt:
        body["x_reason_tokens"] = rt  # the simulator thinks this many tokens first
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if options.extra:
        body.update(options.extra)
    return body


def _build_generic(request: Request, api: str, model: str, options: PayloadOptions, family: dict[str, Any],
                   content: Content, ids: bool) -> bytes:
    """The straightforward body: the whole dict through orjson, big strings spliced in after."""
    n_out = max(1, request.output_tokens)
    st, _ = content.plan(request, api, ids)
    splices: dict[bytes, bytes] = {}
    if api == "chat":
        prompt: Any = content.messages(st, options.server_family, splices)
    elif ids:
        prompt = "@sg-prompt@"
        splices[b'"@sg-prompt@"'] = b"[" + content.prompt(st, True).encode() + b"]"
    else:
        prompt = content.prompt(st, False)
    raw = _dumps(_fields(api, model, family, options, n_out, request.reason_tokens, prompt))
    if splices:  # one pass over the body, whatever the number of items
        raw = _PLACEHOLDER.sub(lambda m: splices[m.group(0)], raw)
    return raw

