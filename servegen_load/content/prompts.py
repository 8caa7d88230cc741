"""Prompt pieces of exact token length: filler, per-request nonces and shared prefix blocks.

The `TokenModel` says what costs one token on the target server, learned once per run
(`content.tokenizer`) or assumed (`approx_model`: one token per word, the simulator's rule):

- text: `words`, each exactly one token where it follows a space (calibration keeps only such
  words), so n words cost n tokens; a prompt or chat message adds a fixed overhead (BOS, the chat
  template), measured once and subtracted from the words, so the server counts what was intended;
- ids: `ids`, ordinary vocabulary ids (the ids of those words, never special tokens) for
  `/v1/completions` prompts sent as token ids: one token each by definition, no BOS added.

A prompt is made of pieces from one `Lexicon` (the words or the ids):

    lead  [prefix blocks]  nonce  filler

- `lead`: one constant word starting every text prompt and chat message, so the word at the
  start of a text (which some tokenizers split differently: no leading space) is always the same
  and its cost is part of the measured overhead. Id prompts have none.
- prefix blocks: `block(b)` is `block_tokens` items drawn from a generator seeded by (salt, b):
  the same block id gives the same tokens in every request of the run, so a prefix cache sees
  them as production would (Mooncake `hash_ids`, shared system prompts, session history).
- nonce: `nonce_len` items spelling a 48-bit hash of (salt, request or session id) in base
  len(items): unique per request, placed after any shared prefix so everything after it misses
  every prefix cache, including a cache warmed by an earlier run against the same server (the
  salt is random per run unless given).
- filler: the first n items of one fixed cycle, a slice of a precomputed string: O(1) per request.
"""

from __future__ import annotations

import hashlib
import math
import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Short common English words: one token each on the simulator and, with a leading space, on most
# BPE/SentencePiece vocabularies; calibration keeps those that are one token on the real server.
_WORDS_TEXT = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they "
    "which one you were all her she there would their we him been has when who will no more if out "
    "so up said what its about than into them can only other time new some could these two may "
    "first then do any like my now over such our man me even most made after also did many off "
    "before must well back through years much where your way down should because long each just "
    "state people good very make world still see own men work day get here old life both between "
    "under last never us might great same another while know year house around place since against "
    "three part small"
)
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())

# Token ids assumed safe when nothing better is known: special tokens sit below ~300 (LLaMA,
# byte-fallback SentencePiece) or at the top of the vocabulary (GPT-2, Qwen, LLaMA-3), and every
# vocabulary we know of has more than 8000 entries.
DEFAULT_ID_RANGE = (1000, 8000)
NONCE_BITS = 48            # two of a million requests share a nonce with odds 1/500
BLOCK_TOKENS = 512          # Mooncake's hash_ids block size
BLOCK_CACHE = 4096          # prefix blocks kept encoded (LRU)


@dataclass(frozen=True)
class TokenModel:
    """What one token is on the target server, and what a prompt adds around its words.

    Overheads are tokens the server counts beyond the nominal words (every word of a text, the
    lead included, counts as one): `text` for a completions text prompt (BOS), `ids` for a
    token-id prompt (0 on llama.cpp and vLLM), and for chat `chat_user` for a lone user message,
    `chat_system` added by a system message, `chat_pair` added by each (assistant, user) pair.
    """

    words: tuple[str, ...]
    ids: tuple[int, ...]
    text: int = 0
    ids_overhead: int = 0
    chat_user: int = 0
    chat_system: int = 0
    chat_pair: int = 0
    tokens_per_word: float = 1.0    # 1 when every word is one token (calibration's aim)
    source: str = "words"           # words (assumed), tokenizer:DIR, server:/tokenize
    notes: tuple[str, ...] = ()

    @property
    def lead(self) -> str:
        return self.words[0]

    def chat_overhead(self, system: bool, pairs: int) -> int:
        return self.chat_user + (self.chat_system if system else 0) + pairs * self.chat_pair

    def describe(self) -> dict[str, Any]:
        """For the results header: how prompt lengths were made exact."""
        return {"source": self.source, "words": len(self.words), "ids": len(self.ids),
                "tokens_per_word": self.tokens_per_word,
                "overhead": {"text": self.text, "ids": self.ids_overhead, "chat_user": self.chat_user,
                             "chat_system": self.chat_system, "chat_pair": self.chat_pair},
                **({"notes": list(self.notes)} if self.notes else {})}


def approx_model(note: str | None = None) -> TokenModel:
    """One token per word, no overheads, ids from DEFAULT_ID_RANGE: exact on the simulator."""
    return TokenModel(words=WORDS, ids=tuple(range(*DEFAULT_ID_RANGE)), source="words",
                      notes=(note,) if note else ())


def digest64(salt: bytes, key: str) -> int:
    h = _KEYED.get(salt)  # a keyed hasher copied costs 2/3 of a new one (the key block is hashed once)
    if h is None:
        if len(_KEYED) >= 64:
            _KEYED.clear()
        h = _KEYED[salt] = hashlib.blake2b(digest_size=8, key=salt)
    h = h.copy()
    h.update(key.encode())
    return int.from_bytes(h.digest(), "little")


_KEYED: dict[bytes, Any] = {}


class Lexicon:
    """Pieces from one item list (words joined by spaces, or ids joined by commas as JSON)."""

    def __init__(self, items: list[str], sep: str, salt: bytes, block_tokens: int = BLOCK_TOKENS) -> None:
        if not items:
            raise ValueError("a lexicon needs at least one item")
        self.items = items
        self.sep = sep
        self.salt = salt
        self.block_tokens = block_tokens
        m = len(items)
        self.nonce_len = 1 if m == 1 else max(2, math.ceil(NONCE_BITS / math.log2(m)))
        self._text = ""
        self._offs = array("q", [0])
        self._blocks: OrderedDict[int, str] = OrderedDict()
        self._grow(4096)

    # --- filler ---
    def _grow(self, count: int) -> None:
        items, sep = self.items, self.sep
        parts = [items[i % len(items)] + sep for i in range(count)]
        self._text = "".join(parts)
        offs, pos = array("q", [0]), 0
        for p in parts:
            pos += len(p)
            offs.append(pos)
        self._offs = offs

    def filler(self, n: int, phase: int = 0) -> str:
        """Items phase .. phase+n-1 of the cycle, joined ('' for n <= 0)."""
        if n <= 0:
            return ""
        phase %= len(self.items)
        end = phase + n
        if end >= len(self._offs):
            self._grow(max(end + 1, 2 * (len(self._offs) - 1)))
        return self._text[self._offs[phase]:self._offs[end] - len(self.sep)]

    # --- nonce ---
    def nonce(self, key: str) -> str:
        """`nonce_len` items spelling hash(salt, key) in base len(items)."""
        v = digest64(self.salt, key)
        items, m = self.items, len(self.items)
        out = []
        for _ in range(self.nonce_len):
            v, d = divmod(v, m)
            out.append(items[d])
        return self.sep.join(out)

    # --- prefix blocks ---
    def block(self, bid: int, n: int | None = None) -> str:
        """Block `bid`'s items (the first n of them when n is given), the same all run long."""
        s = self._blocks.get(bid)
        if s is None:
            rng = np.random.default_rng(digest64(self.salt, f"block:{bid}"))
            pick = rng.integers(0, len(self.items), self.block_tokens)
            items = self.items
            s = self.sep.join([items[i] for i in pick.tolist()])
            self._blocks[bid] = s
            if len(self._blocks) > BLOCK_CACHE:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(bid)
        if n is None or n >= self.block_tokens:
            return s
        if n <= 0:
            return ""
        # cut after the n-th item: find the n-th separator
        pos = -1
        sep = self.sep
        for _ in range(n):
            pos = s.find(sep, pos + 1)
            if pos < 0:
                return s
        return s[:pos]

    def prefix(self, blocks: list[int], tokens: int) -> str:
        """The first `tokens` items of the concatenated blocks (tokens <= len(blocks) * block_tokens)."""
        out = []
        left = tokens
        for b in blocks:
            if left <= 0:
                break
            take = min(left, self.block_tokens)
            out.append(self.block(b, take))
            left -= take
        return self.sep.join(out)


@dataclass
class Lexicons:
    """The run's text and id lexicons, built from one token model and one salt."""

    model: TokenModel
    salt: bytes = field(default_factory=lambda: os.urandom(8))
    block_tokens: int = BLOCK_TOKENS

    def __post_init__(self) -> None:
        self.text = Lexicon(list(self.model.words), " ", self.salt, self.block_tokens)
        self.ids = Lexicon([str(i) for i in self.model.ids], ",", self.salt, self.block_tokens)

    def words_for(self, tokens: int) -> int:
        """Words that cost `tokens` tokens (exact when every word is one token)."""
        tpw = self.model.tokens_per_word
        return tokens if tpw == 1.0 else max(0, round(tokens / tpw))
