"""OpenAI request bodies -> `Job`s, and the bytes the simulator answers with.

Output length: with ``ignore_eos`` the simulator emits exactly ``max_tokens``; otherwise it stops
at a natural length, geometric with mean ``max_tokens / 4`` (capped at ``max_tokens``, at least
``min_tokens``), drawn from a hash of the body and the seed, so the same request always stops at
the same place. A chat request without a limit gets the preset's ``default_max_tokens``, a
completions request 16 (the OpenAI default).

Output text: one short word per token, each with a leading space, so the text of n tokens splits
into n words (the counting rule of `tokens`). Streaming chunks are rendered from per-request
byte templates (no JSON encoder per token); the words need no escaping.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from .engine import EngineParams, block_hashes
from .tokens import MediaError, media_part_tokens

_VOCAB = (  # 64 short English words, one token each
    "the of and to in is it that on was he for with as his they at be this from have or by one had "
    "not but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time could"
)
WORDS_STR: tuple[str, ...] = tuple(" " + w for w in _VOCAB.split()[:64])
WORDS: tuple[bytes, ...] = tuple(w.encode() for w in WORDS_STR)
WORD_MASK = len(WORDS) - 1
assert len(WORDS) == 64

IMAGE_TOKEN_ID, AUDIO_TOKEN_ID, VIDEO_TOKEN_ID = 151655, 151646, 151656
_MEDIA_IDS = {"image": IMAGE_TOKEN_ID, "audio": AUDIO_TOKEN_ID, "video": VIDEO_TOKEN_ID}

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


class BadRequest(ValueError):
    """A request the simulator answers with HTTP 400 and this message."""


@dataclass(slots=True)
class Job:
    """One parsed generation request: what the engine runs and how to render it."""

    chat: bool
    stream: bool
    include_usage: bool
    model: str
    prompt_tokens: int
    hashes: list[int]
    max_tokens: int
    output_tokens: int
    reason_tokens: int
    word0: int
    media_items: int = 0


def _int_field(obj: dict[str, Any], name: str, lo: int) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer")
    if v < lo:
        raise BadRequest(f"{name} must be >= {lo}, got {v}")
    return v


def _digest(raw: bytes, seed: int) -> bytes:
    return hashlib.blake2b(raw, digest_size=16, key=seed.to_bytes(8, "little", signed=True)).digest()


def natural_length(max_tokens: int, digest: bytes) -> int:
    """Geometric length with mean max_tokens/4 (support 1, 2, ...), capped at max_tokens."""
    p = min(1.0, 4.0 / max_tokens)
    if p >= 1.0:
        return 1
    u = ((int.from_bytes(digest[:8], "little") >> 11) + 0.5) / 2.0**53
    return min(max_tokens, 1 + int(math.log(u) / math.log1p(-p)))


def _common(obj: dict[str, Any], raw: bytes, params: EngineParams, seed: int, *, chat: bool,
            prompt_tokens: int, keys: list[Any], media: int) -> Job:
    if obj.get("n") not in (None, 1):
        raise BadRequest("the simulator supports n=1 only")
    limit = _int_field(obj, "max_completion_tokens", 1) if chat else None
    if limit is None:
        limit = _int_field(obj, "max_tokens", 1)
    if limit is None:
        limit = params.default_max_tokens if chat else 16
    min_tokens = _int_field(obj, "min_tokens", 0) or 0
    if min_tokens > limit:
        raise BadRequest(f"min_tokens ({min_tokens}) must be <= max_tokens ({limit})")
    digest = _digest(raw, seed)
    out = limit if obj.get("ignore_eos") is True else max(min_tokens, natural_length(limit, digest))
    reason = _int_field(obj, "x_reason_tokens", 0) or 0
    stream = obj.get("stream") is True
    so = obj.get("stream_options")
    include_usage = stream and isinstance(so, dict) and so.get("include_usage") is True
    model = obj.get("model")
    return Job(
        chat=chat, stream=stream, include_usage=include_usage,
        model=model if isinstance(model, str) and model else params.model,
        prompt_tokens=prompt_tokens, hashes=block_hashes(keys, params.block_size) if params.prefix_cache_tokens else [],
        max_tokens=limit, output_tokens=out, reason_tokens=min(reason, out), word0=digest[8], media_items=media,
    )


def completion_prompt_keys(prompt: Any) -> list[Any]:
    """Token keys of a completions prompt: its words, or the token ids themselves."""
    if isinstance(prompt, str):
        return prompt.split()
    if isinstance(prompt, list):
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return prompt
        if len(prompt) == 1 and isinstance(prompt[0], str | list):
            return completion_prompt_keys(prompt[0])
        raise BadRequest("prompt must be a string, a list of token ids, or a list of one of those "
                         "(batched prompts are not supported)")
    raise BadRequest("prompt is required: a string or a list of token ids")


def chat_prompt_keys(messages: Any) -> tuple[list[Any], int, int]:
    """(token keys, token count, media items) of a chat `messages` list."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    keys: list[Any] = []
    media = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        content = m.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            keys.extend(content.split())
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadRequest(f"messages[{i}].content[{j}] must be an object")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise BadRequest(f"messages[{i}].content[{j}].text must be a string")
                keys.extend(text.split())
                continue
            try:
                kind, n, ident = media_part_tokens(part)
            except MediaError as e:
                raise BadRequest(f"messages[{i}].content[{j}]: {e}") from None
            keys.extend([(kind, hash(ident))] * n)
            media += 1
    return keys, len(keys), media


def parse_completion(obj: Any, raw: bytes, params: EngineParams, seed: int) -> Job:
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    keys = completion_prompt_keys(obj.get("prompt"))
    return _common(obj, raw, params, seed, chat=False, prompt_tokens=len(keys), keys=keys, media=0)


def parse_chat(obj: Any, raw: bytes, params: EngineParams, seed: int) -> Job:
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    keys, n, media = chat_prompt_keys(obj.get("messages"))
    return _common(obj, raw, params, seed, chat=True, prompt_tokens=n, keys=keys, media=media)


def tokenize(obj: Any) -> list[int]:
    """Token ids for POST /tokenize: a stable id per word, media items as placeholder ids."""
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    if "messages" in obj:
        keys, _, _ = chat_prompt_keys(obj["messages"])
    else:
        keys = completion_prompt_keys(obj.get("prompt"))
    out = []
    for k in keys:
        if isinstance(k, int):
            out.append(k)
        elif isinstance(k, str):
            out.append(1000 + zlib.crc32(k.encode()) % 100_000)
        else:
            out.append(_MEDIA_IDS[k[0]])
    return out


# --- rendering ------------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"
GARBAGE_LINE = b"<servegen-sim garbage line: not an SSE field>\n\n"
BROKEN_JSON = b'data: {"id":"broken","object":"chunk","choices":[{"index":0,"delta":{"content":"\n\n'
ROLE = b'"role":"assistant",'
CONTENT = b'"content":"'
REASONING = b'"reasoning_content":"'
CHAT_TAIL = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
TEXT_TAIL = b'","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'


def finish_reason(job: Job) -> str:
    return "length" if job.output_tokens >= job.max_tokens else "stop"


def usage(job: Job, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": job.prompt_tokens + job.output_tokens,
        "completion_tokens": job.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": job.reason_tokens},
    }


class Renderer:
    """Per-request byte templates for stream chunks: head + word + tail, no JSON encoding."""

    __slots__ = ("created", "head", "job", "rid", "usage_head")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.rid = f"{'chatcmpl' if job.chat else 'cmpl'}-{_ID_PREFIX}{next(_ids):x}"
        self.created = int(time.time())
        model = orjson.dumps(job.model)
        if job.chat:
            common = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
                self.rid.encode(), self.created, model)
            self.head = common + b'"choices":[{"index":0,"delta":{'
            self.usage_head = common + b'"choices":[],"usage":'
        else:
            self.head = b'data: {"id":"%s","object":"text_completion","created":%d,"model":%s,' % (
                self.rid.encode(), self.created, model) + b'"choices":[{"index":0,"text":"'
            self.usage_head = b""

    def chunk(self, i: int, cached: int | None = None) -> bytes:
        """The SSE event(s) for output token i (1-based); pass `cached` on the last token."""
        job = self.job
        word = WORDS[(job.word0 + i) & WORD_MASK]
        last = cached is not None
        if job.chat:
            field = REASONING if i <= job.reason_tokens else CONTENT
            pre = self.head + ROLE + field if i == 1 else self.head + field
            if not last:
                return pre + word + CHAT_TAIL
            out = pre + word + b'"},"logprobs":null,"finish_reason":"%s"}]}\n\n' % finish_reason(job).encode()
            if job.include_usage:
                out += self.usage_head + orjson.dumps(usage(job, cached)) + b"}\n\n"
            return out
        if not last:
            return self.head + word + TEXT_TAIL
        tail = b'","logprobs":null,"finish_reason":"%s","stop_reason":null}]' % finish_reason(job).encode()
        if job.include_usage:  # llama.cpp style: usage rides on the last content chunk
            tail += b',"usage":' + orjson.dumps(usage(job, cached))
        return self.head + word + tail + b"}\n\n"

    def body(self, cached: int) -> bytes:
        """The non-streaming response."""
        job = self.job
        words = [WORDS_STR[(job.word0 + i) & WORD_MASK] for i in range(1, job.output_tokens + 1)]
        common = {"id": self.rid, "created": self.created, "model": job.model}
        if job.chat:
            k = job.reason_tokens
            message: dict[str, Any] = {"role": "assistant", "content": "".join(words[k:])}
            if k:
                message["reasoning_content"] = "".join(words[:k])
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(job)}
            d = {**common, "object": "chat.completion", "choices": [choice], "usage": usage(job, cached)}
        else:
            choice = {"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": finish_reason(job),
                      "stop_reason": None}
            d = {**common, "object": "text_completion", "choices": [choice], "usage": usage(job, cached)}
        return orjson.dumps(d)
