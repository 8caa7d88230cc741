"""Token counting rules of the simulator, one small function per modality.

The payload builder imports these so the prompts it writes cost exactly what the workload asked:

- **text**: one token per whitespace-separated word, ``len(text.split())``. A completions prompt
  given as a list of token ids counts one token per id. Chat roles and the chat template add
  nothing: a chat prompt costs the sum of its text parts plus its media items.
- **image**: Qwen2-VL rule, 14 px patches merged 2x2 into one token:
  ``ceil(w / 28) * ceil(h / 28)``. Width and height come from the PNG or JPEG header of a data URL
  (the pixels are never decoded).
- **audio**: 25 tokens per second of audio (Qwen2-Audio: one token per 40 ms frame), the duration
  read from the WAV header: ``ceil(25 * seconds)``.
- **video**: Qwen2-VL merges 2 frames temporally, so ``ceil(frames / 2) * image_tokens(w, h)``;
  or ``frames * tokens_per_frame`` when the caller states the per-frame cost.

Any media part may carry a hint ``"servegen": {"tokens": n}`` inside its ``image_url`` /
``input_audio`` / ``video_url`` object; the hint wins (a video needs one: the simulator does not
parse MP4). See `media_part_tokens`.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

TOKENS_PER_AUDIO_SECOND = 25
IMAGE_PATCH_PX = 28  # 14 px ViT patch, 2x2 merge
VIDEO_TEMPORAL_MERGE = 2


class MediaError(ValueError):
    """A media item the simulator cannot size (the server answers 400 with this message)."""


def text_tokens(text: str) -> int:
    """Tokens of a text: one per whitespace-separated word."""
    return len(text.split())


def image_tokens(width: int, height: int) -> int:
    """Tokens of one image of `width` x `height` pixels: ``ceil(w/28) * ceil(h/28)``."""
    return -(-int(width) // IMAGE_PATCH_PX) * -(-int(height) // IMAGE_PATCH_PX)


def audio_tokens(seconds: float) -> int:
    """Tokens of an audio clip: ``ceil(25 * seconds)`` (rounded to µs first, so 1.0 s is 25)."""
    return math.ceil(round(seconds * TOKENS_PER_AUDIO_SECOND, 6))


def video_tokens(frames: int, width: int, height: int) -> int:
    """Tokens of a video: ``ceil(frames / 2) * image_tokens(width, height)``."""
    return -(-int(frames) // VIDEO_TEMPORAL_MERGE) * image_tokens(width, height)


def image_size_for_tokens(tokens: int) -> tuple[int, int]:
    """A (width, height) that costs exactly `tokens` (>= 1): the most square 28-px grid a x b = n."""
    n = max(1, int(tokens))
    a = next(d for d in range(math.isqrt(n), 0, -1) if n % d == 0)
    return IMAGE_PATCH_PX * (n // a), IMAGE_PATCH_PX * a


def audio_seconds_for_tokens(tokens: int) -> float:
    """A duration that costs exactly `tokens`: tokens / 25 seconds."""
    return max(0, int(tokens)) / TOKENS_PER_AUDIO_SECOND


# --- headers -------------------------------------------------------------------------------


def image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOFn marker; None if `raw` is too short to tell.

    Raises MediaError when the bytes are neither PNG nor JPEG.
    """
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        if len(raw) < 24:
            return None
        w, h = struct.unpack(">II", raw[16:24])
        return w, h
    if raw[:2] == b"\xff\xd8":
        i = 2
        while True:
            # markers may be padded with 0xff fill bytes
            while i < len(raw) and raw[i] == 0xFF and i + 1 < len(raw) and raw[i + 1] == 0xFF:
                i += 1
            if i + 4 > len(raw):
                return None
            if raw[i] != 0xFF:
                raise MediaError("corrupt JPEG: expected a marker")
            marker = raw[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            seg_len = struct.unpack(">H", raw[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(raw):
                    return None
                h, w = struct.unpack(">HH", raw[i + 5:i + 9])
                return w, h
            i += 2 + seg_len
    if len(raw) < 8:
        return None
    raise MediaError("image is neither PNG nor JPEG")


def wav_seconds(raw: bytes, total_len: int | None = None) -> float | None:
    """Duration of a RIFF/WAVE clip from its `fmt ` and `data` chunk headers.

    `raw` may be a prefix of the file; returns None when the `data` header is not in it yet.
    `total_len` (the whole file's size) sizes a streamed WAV whose data length is unset.
    """
    if len(raw) < 12:
        return None
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise MediaError("audio is not a RIFF/WAVE file")
    i, byte_rate = 12, 0
    while i + 8 <= len(raw):
        cid, size = raw[i:i + 4], struct.unpack("<I", raw[i + 4:i + 8])[0]
        if cid == b"fmt ":
            if i + 20 > len(raw):
                return None
            byte_rate = struct.unpack("<I", raw[i + 16:i + 20])[0]  # after format, channels, rate
            if byte_rate == 0:
                raise MediaError("WAV fmt chunk has a zero byte rate")
        elif cid == b"data":
            if byte_rate == 0:
                raise MediaError("WAV data chunk before its fmt chunk")
            if size in (0, 0xFFFFFFFF) and total_len is not None:
                size = total_len - (i + 8)
            return size / byte_rate
        i += 8 + size + (size & 1)
    return None


# --- data URLs -----------------------------------------------------------------------------


def _b64_payload(url: str) -> str:
    if not url.startswith("data:"):
        raise MediaError("media must be a base64 data URL (the simulator fetches nothing) "
                         "or carry a servegen token hint")
    comma = url.find(",")
    if comma < 0 or ";base64" not in url[:comma]:
        raise MediaError("data URL must be base64-encoded")
    return url[comma + 1:]


def _decode_prefix(b64: str, n_chars: int) -> bytes:
    part = b64[:n_chars]
    part = part[: len(part) - len(part) % 4] if len(part) < len(b64) else part
    try:
        return base64.b64decode(part)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"bad base64 in data URL: {e}") from None


def _scan(b64: str, parse: Any) -> Any:
    """Decode growing prefixes of `b64` until `parse` can answer (headers sit near the start)."""
    n = 64
    while True:
        raw = _decode_prefix(b64, n)
        got = parse(raw)
        if got is not None:
            return got
        if n >= len(b64):
            raise MediaError("media header is truncated")
        n *= 8


def image_size_from_data_url(url: str) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG data URL, decoding only as much base64 as the header needs."""
    return _scan(_b64_payload(url), image_size)


def wav_seconds_from_base64(b64: str) -> float:
    """Duration of a base64 WAV (`input_audio.data`), from its header only."""
    total = len(b64) * 3 // 4 - b64[-2:].count("=")
    return _scan(b64, lambda raw: wav_seconds(raw, total))


# --- chat content parts --------------------------------------------------------------------


def _hint_tokens(obj: dict[str, Any]) -> int | None:
    hint = obj.get("servegen")
    if hint is None:
        return None
    if not isinstance(hint, dict):
        raise MediaError("servegen hint must be an object")
    if "tokens" in hint:
        return _nonneg_int(hint["tokens"], "servegen.tokens")
    if "frames" in hint:
        frames = _nonneg_int(hint["frames"], "servegen.frames")
        if "tokens_per_frame" in hint:
            return frames * _nonneg_int(hint["tokens_per_frame"], "servegen.tokens_per_frame")
        if "width" in hint and "height" in hint:
            return video_tokens(frames, _nonneg_int(hint["width"], "servegen.width"),
                                _nonneg_int(hint["height"], "servegen.height"))
    raise MediaError("servegen hint needs tokens, frames+tokens_per_frame or frames+width+height")


def _nonneg_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or int(v) != v:
        raise MediaError(f"{name} must be a non-negative integer")
    return int(v)


def media_part_tokens(part: dict[str, Any]) -> tuple[str, int, str]:
    """(kind, tokens, identity) of one chat content part that is not text.

    `identity` is a string naming the item's content (its URL or data) for prefix caching.
    Kinds: image (`image_url`), audio (`input_audio` WAV, or `audio_url` data URL), video
    (`video_url`, needs a servegen hint).
    """
    kind = part.get("type")
    if kind == "image_url":
        obj = part.get("image_url")
        obj = {"url": obj} if isinstance(obj, str) else obj
        if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
            raise MediaError("image_url part needs image_url.url")
        n = _hint_tokens(obj)
        if n is None:
            n = image_tokens(*image_size_from_data_url(obj["url"]))
        return "image", n, obj["url"]
    if kind == "input_audio":
        obj = part.get("input_audio")
        if not isinstance(obj, dict):
            raise MediaError("input_audio part needs an input_audio object")
        n = _hint_tokens(obj)
        data = obj.get("data")
        if n is None:
            if not isinstance(data, str):
                raise MediaError("input_audio.data must be base64 WAV")
            if obj.get("format", "wav") != "wav":
                raise MediaError("input_audio.format must be wav")
            n = audio_tokens(wav_seconds_from_base64(data))
        return "audio", n, str(data)
    if kind == "audio_url":
        obj = part.get("audio_url")
        if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
            raise MediaError("audio_url part needs audio_url.url")
        n = _hint_tokens(obj)
        if n is None:
            n = audio_tokens(wav_seconds_from_base64(_b64_payload(obj["url"])))
        return "audio", n, obj["url"]
    if kind == "video_url":
        obj = part.get("video_url")
        if not isinstance(obj, dict):
            raise MediaError("video_url part needs a video_url object")
        n = _hint_tokens(obj)
        if n is None:
            raise MediaError('video_url needs a hint: "servegen": {"tokens": n} or '
                             '{"frames": f, "tokens_per_frame": t} or {"frames", "width", "height"}')
        return "video", n, str(obj.get("url"))
    raise MediaError(f"unsupported content part type {kind!r}")
