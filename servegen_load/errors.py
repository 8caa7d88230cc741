"""One exception hierarchy, so the CLI can turn every user mistake into one line and exit code 2."""

from __future__ import annotations


class ServegenError(Exception):
    """Base of every error the package raises on purpose."""


class InputError(ServegenError):
    """Bad user input (file, field, value). The CLI prints `str(err)` alone and exits 2.

    The message names where the problem is (file, line, field) and what was expected, so
    a user can fix it without reading a traceback.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"{field}: "
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


def printable(text: str) -> str:
    r"""`text` with control characters escaped (`\x1b`, `\n`): a server's words reach a terminal
    as one line of text, never as escape sequences that retitle it, clear it or forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
