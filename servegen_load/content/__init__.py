"""Request content: prompts of exact token lengths, shared prefixes, media sized to token counts.

- `prompts`: the token model (which words / ids count one token each, template overheads) and the
  pieces a prompt is made of (filler, per-request nonces, deterministic prefix blocks).
- `tokenizer`: learning the token model once per run: a local HF tokenizer (`--tokenizer DIR`),
  the server's `/tokenize`, and usage probes for the chat-template overhead.
- `media`: PNG images, WAV audio and video frames of a given token cost, encoded once per size.

- `payload`: a `Request` -> the OpenAI request body, built ahead of its send time by the dispatcher.
"""
