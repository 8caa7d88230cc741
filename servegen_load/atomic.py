"""Outputs appear complete or not at all: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Yield a file handle; on success rename it onto `path`, on error remove it.

    A reader (or a later stage of the pipeline) never sees a half-written file under the
    final name, which is what `--output` promises.
    """
    target = Path(path)
    if target.is_dir():  # checked first: the rename would fail only after all the work
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:  # errors name the output the user gave, not the temporary name
        raise OSError(e.errno, e.strerror, str(target)) from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would surprise users sharing outputs
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(target)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
