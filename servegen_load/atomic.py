"""Outputs appear complete or not at all, written where the user pointed.

A regular file is written to a temporary name beside it and renamed over it, so a reader (or a
later stage of the pipeline) never sees a half-written file under the final name. What the path
names decides the rest:

- `-` is standard output (nothing is renamed or closed);
- a symlink is written through: its target is replaced atomically, the link stays a link;
- a pipe, a character device (`/dev/stdout`, `/dev/null`, `/dev/full`) or a socket is opened and
  written directly: renaming a temporary file over a device node would replace the node.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

STDOUT = "-"


def is_stdout(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and os.fspath(path) == STDOUT


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The path a write lands on: symlinks followed (even dangling ones), so the link is kept.
    A /proc magic link (`/dev/stdout` -> `pipe:[N]`) has no real name: the path itself is opened."""
    given = os.fspath(path)
    real = os.path.realpath(given)
    if not os.path.exists(real) and os.path.exists(given):
        return Path(given)
    return Path(real)


def is_special(path: str | os.PathLike[str]) -> bool:
    """True for an existing non-regular, non-directory file (pipe, device, socket): written in place."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def _stdout(mode: str) -> Iterator[IO]:
    for stream in (sys.stdout, sys.__stdout__):  # fd 1 itself, even while text is redirected to stderr
        if stream is not None:
            stream.flush()
    raw = open(1, "wb", closefd=False)  # noqa: SIM115 - fd 1 stays open
    fh: IO = raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8", newline="")
    try:
        yield fh
        fh.flush()
    except OSError as e:
        raise OSError(e.errno, e.strerror, STDOUT) from None
    finally:
        if "b" not in mode:
            with contextlib.suppress(OSError, ValueError):
                fh.detach()  # type: ignore[attr-defined]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Yield a file handle; on success the content is at `path` (see the module docstring).

    Errors name the output the user gave, never a temporary name.
    """
    if is_stdout(path):
        with _stdout(mode) as fh:
            yield fh
        return
    given = os.fspath(path)
    target = resolve_target(given)
    # text is UTF-8, what every file we write declares (HTML charset, JSON), whatever the locale
    text: dict[str, str] = {} if "b" in mode else {"encoding": "utf-8"}
    if target.is_dir():  # checked first: the rename would fail only after all the work
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), given)
    if is_special(target):
        try:
            fh = open(target, mode, **text)  # noqa: SIM115 - closed below
        except OSError as e:
            raise OSError(e.errno, e.strerror, given) from None
        try:
            with fh:
                yield fh
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, given) from None
            raise
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, given) from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would surprise users sharing outputs
    try:
        try:
            with os.fdopen(fd, mode, **text) as fh:
                yield fh
        except OSError as e:
            if e.filename is None:  # a failed write (disk full, file too large)
                raise OSError(e.errno, e.strerror, given) from None
            raise
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise OSError(e.errno, e.strerror, given) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
