"""Embedded OpenAI-compatible LLM serving simulator: an engine model behind an aiohttp server.

Public API:
  - `SimProcess` (process.py): the simulator in a child process; `.url`, `.stats()`, `.stop()`.
  - `EngineParams`, `analytic_saturation_rate`, `simulate` (engine.py): the timing model.
  - `PRESETS`, `get_preset` (presets.py): documented GPU/model pairs.
  - token rules `text_tokens`, `image_tokens`, `audio_tokens`, `video_tokens` (tokens.py).
"""

from __future__ import annotations

from .engine import EngineParams, Sequence, analytic_saturation_rate, simulate
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .tokens import audio_tokens, image_tokens, text_tokens, video_tokens

__all__ = [
    "DEFAULT_PRESET", "PRESETS", "EngineParams", "Sequence", "SimProcess", "analytic_saturation_rate",
    "audio_tokens", "get_preset", "image_tokens", "simulate", "text_tokens", "video_tokens",
]


def __getattr__(name: str):  # SimProcess pulls in aiohttp: import it only when asked for
    if name == "SimProcess":
        from .process import SimProcess
        return SimProcess
    raise AttributeError(name)
