"""The run's content options (`run --prompt-format/--tokenizer/--image-patch/--prefix-block/--content-salt`):
validated, the token model learned once, and the `PayloadOptions` the runner builds bodies with.

The salt makes nonces and prefix blocks differ from run to run (an earlier run's prompts stay in
a server's prefix cache) while staying identical across the workers of one run (`--workers`
passes the parent's salt on, so shared prefixes are shared across processes too).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import InputError

DEFAULTS: dict[str, Any] = {"prompt_format": "auto", "tokenizer": None, "image_patch": 28, "prefix_block": 512,
                            "content_salt": None}


def check(opts: dict[str, Any] | None) -> dict[str, Any]:
    """The options with defaults filled in; InputError naming the flag on a bad value."""
    o = {**DEFAULTS, **{k: v for k, v in (opts or {}).items() if v is not None}}
    if o["prompt_format"] not in ("auto", "ids", "text"):
        raise InputError(f"expected auto, ids or text, got {o['prompt_format']!r}", field="--prompt-format")
    if not 1 <= int(o["image_patch"]) <= 4096:
        raise InputError(f"expected pixels per token side in 1..4096, got {o['image_patch']}", field="--image-patch")
    if not 1 <= int(o["prefix_block"]) <= 1 << 20:
        raise InputError(f"expected tokens per prefix block in 1..{1 << 20}, got {o['prefix_block']}",
                         field="--prefix-block")
    salt = o["content_salt"]
    if salt is not None:
        try:
            b = bytes.fromhex(salt)
        except ValueError:
            b = b""
        if not 1 <= len(b) <= 16:
            raise InputError(f"expected 2 to 32 hex digits, got {salt!r}", field="--content-salt")
    return o


def worker_args(opts: dict[str, Any] | None) -> list[str]:
    """The flags to repeat for each worker of `run --workers`: the same content, one salt for all."""
    o = check(opts)
    salt = o["content_salt"] or os.urandom(8).hex()
    args = ["--prompt-format", o["prompt_format"], "--image-patch", str(o["image_patch"]),
            "--prefix-block", str(o["prefix_block"]), "--content-salt", salt]
    if o["tokenizer"]:
        tok = o["tokenizer"]
        args += ["--tokenizer", tok if tok in ("server", "words") else os.path.abspath(tok)]
    return args


def payload_options(family: str, api: str, endpoint: str, model: str, api_key: str | None,
                    opts: dict[str, Any] | None, insecure: bool = False) -> tuple[Any, dict[str, Any]]:
    """(PayloadOptions for the runner, the `content` entry of the results header)."""
    from ..payload import Content, PayloadOptions
    from .tokenizer import learn_token_model

    o = check(opts)
    tm = learn_token_model(tokenizer=o["tokenizer"], endpoint=endpoint, api=api, family=family, model=model,
                           api_key=api_key, prompt_format=o["prompt_format"], insecure=insecure,
                           log=lambda s: print(s, file=sys.stderr))
    salt = bytes.fromhex(o["content_salt"]) if o["content_salt"] else os.urandom(8)
    content = Content(tm, salt=salt, block_tokens=int(o["prefix_block"]), image_patch=int(o["image_patch"]))
    ids = Content.ids_for(api, family, o["prompt_format"])
    for note in tm.notes:
        print(f"servegen-load: note: {note}", file=sys.stderr)
    header = {"prompt_format": "ids" if ids else "text", "image_patch": int(o["image_patch"]),
              "prefix_block": int(o["prefix_block"]), "token_model": tm.describe()}
    return PayloadOptions(server_family=family, prompt_format=o["prompt_format"], content=content), header
