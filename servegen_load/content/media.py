"""Media items sized to token counts, encoded once per size, unique per request in microseconds.

Token rules (the simulator's, `sim.tokens`; other model families need another `patch`):

- image: a grid of a x b patches costs a*b tokens (Qwen2-VL: 14 px ViT patches merged 2x2, so
  `patch` = 28 px); `image_size(tokens)` is the most square exact grid, in pixels.
- audio: 25 tokens per second (Qwen2-Audio); a WAV of tokens/25 s, 16 kHz mono 16-bit PCM.
- video: Qwen2-VL merges 2 frames, so 2g frames of a grid of tokens/g cost `tokens`; g is the
  largest divisor of tokens up to 16 that leaves at least 64 tokens a frame (else 1).

Why it is cheap. Encoding a 1000-token image (1120 x 700 px) with zlib takes milliseconds, far
too long for the dispatcher's look-ahead, and the same bytes in every request would let a
server's multimodal cache skip the encoder. So an item is a cached prefix plus a small tail:

- PNG: a black image, whose filtered scanlines are all zero bytes. The zlib stream is pieced
  together from raw-deflate encodings of 2^i zero bytes (each ends on a full flush, so they
  concatenate; computed once each), and the adler32 of n zero bytes is closed-form
  (1 + 65536 * (n mod 65521)). The last scanline carries 8 bytes of the item's key hash and goes
  in stored deflate blocks of its own IDAT chunk (PNG allows several), with its CRC: per request
  only that row is hashed and base64-encoded. A `tEXt` chunk pads the prefix to a multiple of 3
  bytes, so base64(prefix) + base64(tail) is the base64 of the whole file.
- WAV: silence with the key hash in the last samples, the prefix again a multiple of 3 bytes.
- video: `data:video/jpeg;base64,<frame>,<frame>,...` (vLLM's frame-list form; PIL reads the
  PNG frames whatever the label), plus the simulator's `servegen` hint, which it needs.

Identical keys give identical bytes (an image repeated in a session's history stays cacheable).
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

IMAGE_PATCH = 28
TOKENS_PER_AUDIO_SECOND = 25
AUDIO_RATE = 16_000          # samples per second, mono, 16-bit
AUDIO_BYTES_PER_TOKEN = 2 * AUDIO_RATE // TOKENS_PER_AUDIO_SECOND   # 1280
VIDEO_MAX_GROUPS = 16
VIDEO_MIN_FRAME_TOKENS = 64
IMAGE_CACHE = 512            # templates kept (each a few KB: the pixels are never stored)
AUDIO_CACHE_BYTES = 256 << 20

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_ZLIB_HEADER = b"\x78\x01"
_STORED_MAX = 65535
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_ZERO_PIECES: dict[int, bytes] = {}
_PIECE_MAX = 20              # pieces up to 1 MiB of zeros are compressed, larger ones repeated


def _zero_piece(k: int) -> bytes:
    """Raw deflate of 2^k zero bytes ending on a full flush (byte-aligned, no back-references out)."""
    p = _ZERO_PIECES.get(k)
    if p is None:
        if not _ZERO_PIECES:  # all small pieces at once (~10 ms, before the first send in practice)
            for i in range(_PIECE_MAX + 1):
                c = zlib.compressobj(9, zlib.DEFLATED, -15)
                _ZERO_PIECES[i] = c.compress(bytes(1 << i)) + c.flush(zlib.Z_FULL_FLUSH)
            return _zero_piece(k)
        # pieces are self-contained, so 2^k zeros are 2^(k - max) copies of the largest piece
        p = _ZERO_PIECES[k] = _zero_piece(_PIECE_MAX) * (1 << (k - _PIECE_MAX))
    return p


def deflate_zeros(n: int) -> bytes:
    """Non-final raw deflate blocks that inflate to n zero bytes (at most log2(n) cached pieces)."""
    out = []
    k = 0
    while n:
        if n & 1:
            out.append(_zero_piece(k))
        n >>= 1
        k += 1
    return b"".join(out)


def _stored_final(data: bytes) -> bytes:
    """`data` as stored deflate blocks, the last one final."""
    out = []
    for i in range(0, max(len(data), 1), _STORED_MAX):
        part = data[i:i + _STORED_MAX]
        final = 1 if i + _STORED_MAX >= len(data) else 0
        out.append(struct.pack("<BHH", final, len(part), len(part) ^ 0xFFFF) + part)
    return b"".join(out)


def _wav_head(data_len: int) -> bytes:
    """44-byte RIFF/WAVE header of 16-bit mono PCM at AUDIO_RATE with `data_len` bytes of samples."""
    return (b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, AUDIO_RATE, 2 * AUDIO_RATE, 2, 16)
            + b"data" + struct.pack("<I", data_len))


def key_bytes(key: int) -> bytes:
    return (key & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")


# --- images -----------------------------------------------------------------------------------


def image_size(tokens: int, patch: int = IMAGE_PATCH) -> tuple[int, int]:
    """(width, height) of the most square grid of exactly `tokens` (>= 1) patches of `patch` px."""
    n = max(1, int(tokens))
    a = next(d for d in range(math.isqrt(n), 0, -1) if n % d == 0)
    return patch * (n // a), patch * a


@dataclass(frozen=True, slots=True)
class PngTemplate:
    """A black w x h PNG whose last scanline is per key: `b64(key)` in microseconds."""

    width: int
    height: int
    b64_prefix: str
    adler_rows: int          # adler32 of the zero scanlines before the last one

    @classmethod
    def build(cls, width: int, height: int) -> PngTemplate:
        row = 3 * width + 1
        zeros = (height - 1) * row
        ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        idat_a = _chunk(b"IDAT", _ZLIB_HEADER + deflate_zeros(zeros))
        pad = (-(len(_PNG_SIG) + len(ihdr) + 20 + len(idat_a))) % 3
        text = _chunk(b"tEXt", b"Comment\x00" + b"x" * pad)
        prefix = _PNG_SIG + ihdr + text + idat_a
        assert len(prefix) % 3 == 0
        adler = (1 + ((zeros % 65521) << 16)) & 0xFFFFFFFF
        return cls(width, height, base64.b64encode(prefix).decode("ascii"), adler)

    def tail(self, key: int) -> bytes:
        n = 3 * self.width
        row = b"\x00" + (key_bytes(key) + bytes(n - 8) if n >= 8 else key_bytes(key)[:n])
        adler = zlib.adler32(row, self.adler_rows)
        return _chunk(b"IDAT", _stored_final(row) + struct.pack(">I", adler)) + _IEND

    def b64(self, key: int) -> str:
        return self.b64_prefix + base64.b64encode(self.tail(key)).decode("ascii")

    def data_url(self, key: int) -> str:
        return "data:image/png;base64," + self.b64(key)


class MediaCache:
    """Per-size templates (LRU) and the content parts of one item, for one patch size."""

    def __init__(self, patch: int = IMAGE_PATCH) -> None:
        self.patch = patch
        self._png: OrderedDict[tuple[int, int], PngTemplate] = OrderedDict()
        self._wav: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._wav_bytes = 0
        self.hits = self.misses = 0

    def png(self, width: int, height: int) -> PngTemplate:
        k = (width, height)
        t = self._png.get(k)
        if t is None:
            self.misses += 1
            t = self._png[k] = PngTemplate.build(width, height)
            if len(self._png) > IMAGE_CACHE:
                self._png.popitem(last=False)
        else:
            self.hits += 1
            self._png.move_to_end(k)
        return t

    def image_url(self, tokens: int, key: int) -> str:
        return self.png(*image_size(tokens, self.patch)).data_url(key)

    # --- audio ---
    def _wav_template(self, tokens: int) -> tuple[str, int]:
        """(base64 of the prefix, bytes in the tail) of a WAV costing `tokens` (>= 1)."""
        t = self._wav.get(tokens)
        if t is not None:
            self.hits += 1
            self._wav.move_to_end(tokens)
            return t
        self.misses += 1
        data_len = tokens * AUDIO_BYTES_PER_TOKEN
        total = 44 + data_len
        cut = ((total - 8) // 3) * 3  # >= 44: a clip holds at least 1280 bytes of samples
        prefix = _wav_head(data_len) + bytes(cut - 44)
        t = (base64.b64encode(prefix).decode("ascii"), total - cut)
        self._wav[tokens] = t
        self._wav_bytes += len(t[0])
        while self._wav_bytes > AUDIO_CACHE_BYTES and len(self._wav) > 1:
            _, (s, _) = self._wav.popitem(last=False)
            self._wav_bytes -= len(s)
        return t

    def wav_b64(self, tokens: int, key: int) -> str:
        """Base64 of a WAV costing exactly `tokens` (tokens / 25 s), unique per key."""
        if tokens <= 0:
            return base64.b64encode(_wav_head(0)).decode("ascii")
        prefix, tail_len = self._wav_template(int(tokens))
        return prefix + base64.b64encode(key_bytes(key) + bytes(tail_len - 8)).decode("ascii")

    # --- video ---
    @staticmethod
    def video_groups(tokens: int) -> int:
        n = max(1, int(tokens))
        cap = min(VIDEO_MAX_GROUPS, n // VIDEO_MIN_FRAME_TOKENS)
        return next((g for g in range(cap, 1, -1) if n % g == 0), 1)

    def video(self, tokens: int, key: int) -> tuple[str, int, int, int]:
        """(data URL, frames, width, height) of a video costing `tokens` (2g frames of tokens/g)."""
        g = self.video_groups(tokens)
        w, h = image_size(max(1, int(tokens)) // g, self.patch)
        t = self.png(w, h)
        frames = [t.b64(key + i) for i in range(2 * g)]
        return "data:video/jpeg;base64," + ",".join(frames), 2 * g, w, h
