"""`run --ray [ADDRESS]`: the address is optional, which typer cannot express; normalised here."""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"[\w.\-]+:\d+")


def looks_like_address(token: str) -> bool:
    """`auto`, `local`, `ray://host:port`, `host:port` (never a scenario or requests file name)."""
    return token in ("auto", "local") or "://" in token or bool(_ADDRESS.fullmatch(token))


def optional_ray_address(args: list[str]) -> list[str]:
    """Insert `local` after a bare `--ray` of the `run` command (end of line, before an option, or
    before something that is not an address, such as the source file)."""
    if not args or args[0] != "run" or "--ray" not in args:
        return args
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--ray":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or nxt.startswith("-") or not looks_like_address(nxt):
                out.append("local")
    return out
