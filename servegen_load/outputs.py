"""Output paths checked before any traffic, and one writer per results file.

A run that cannot keep its results should not send a single request: the server's work would
be wasted and the load unrecorded. So before the simulator is started or the endpoint contacted,
`run_outputs` checks every path the run will write:

- no output is one of the inputs (`-o` equal to the requests file would destroy it) and no two
  outputs are the same file (`--summary-json` equal to `-o` would replace the results); symlinks
  and hard links are seen through;
- at most one output is `-` (standard output);
- each output can be created: its nearest existing folder is a writable folder (a regular file
  in the way, or a missing permission, is found now, not after the server was probed);
- the results file is locked (`flock` on `.NAME.lock` beside it) for the whole run, so a second
  run writing the same `-o` fails at once instead of interleaving lines with the first.

Pipes, devices and `-` are written directly (`atomic.atomic_write`, `results.ResultSink`); since
they cannot be read back, the run also writes its results to a private temporary file that the
summary is computed from, and any text meant for a person goes to stderr when results go to
stdout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .atomic import is_special, is_stdout, resolve_target
from .errors import InputError

Named = Sequence[tuple[str, str | None]]  # (option name, path or None)


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists): two names of one file compare equal."""
    target = resolve_target(path)
    try:
        st = os.stat(target)
    except OSError:
        return str(target), None
    return str(target), (st.st_dev, st.st_ino)


def _same(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]) -> bool:
    if a[1] is not None and b[1] is not None:
        return a[1] == b[1]
    return a[0] == b[0]


def is_fd1(path: str) -> bool:
    """True when `path` is the file standard output writes to (`/dev/stdout`, `/proc/self/fd/1`)."""
    try:
        a, b = os.stat(path), os.fstat(1)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _writable(option: str, path: str) -> None:
    """Raise InputError when `path` cannot be created or replaced (checked before any traffic)."""
    target = resolve_target(path)
    if target.is_dir():
        raise InputError("is a folder; expected a file to write", path=path, field=option)
    if is_special(target):
        if not os.access(target, os.W_OK):
            raise InputError("cannot write: permission denied", path=path, field=option)
        return
    parent = target.parent
    while not parent.exists():  # atomic_write creates missing folders: the first existing one decides
        if parent.parent == parent:
            break
        if parent.is_symlink():  # a dangling link in the way
            raise InputError(f"cannot create: {parent} is a broken symbolic link", path=path, field=option)
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create: {parent} is not a folder", path=path, field=option)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create: no write permission in {parent}", path=path, field=option)
    if parent == target.parent:  # a trial file: root passes access(), yet /proc or a read-only mount refuse
        try:
            fd, name = tempfile.mkstemp(dir=parent, prefix=".servegen-load-check-")
        except OSError as e:
            raise InputError(f"cannot create: {e.strerror}", path=path, field=option) from None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def _files_of(path: str, depth: int = 2, most: int = 100_000) -> list[str]:
    """`path`, or the files a folder input holds (a ServeGen folder, a kept --probe-dir, a folder of
    them): an output named after one of them would destroy it."""
    if not os.path.isdir(path):
        return [path]
    out: list[str] = []
    base = path.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(path):
        out.extend(os.path.join(root, f) for f in files)
        if root.count(os.sep) - base >= depth - 1:
            dirs.clear()
        if len(out) >= most:
            break
    return out


def check_paths(outputs: Named, inputs: Named = ()) -> None:
    """One InputError for the first output that collides with an input, another output, or
    cannot be written. Special files (devices, pipes) may be shared (two outputs to /dev/null)."""
    outs = [(opt, p) for opt, p in outputs if p]
    ins = [(opt, p) for opt, p in inputs if p and not is_stdout(p)]
    stdout = [opt for opt, p in outs if is_stdout(p)]
    if len(stdout) > 1:
        raise InputError(f"{' and '.join(stdout)} both write to standard output (-); give one of them a file")
    in_ids = [(opt, q, _identity(q)) for opt, p in ins for q in _files_of(p)]
    seen: list[tuple[str, str, tuple[str, tuple[int, int] | None]]] = []
    for opt, p in outs:
        if is_stdout(p):
            continue
        ident = _identity(p)
        special = is_special(ident[0])
        for iopt, ip, iid in in_ids:
            if _same(ident, iid):
                raise InputError(f"is also the input {iopt} ({ip}): writing it would destroy the input",
                                 path=p, field=opt)
        if not special:
            for sopt, sp, sid in seen:
                if _same(ident, sid):
                    raise InputError(f"is also the output of {sopt} ({sp}): one would replace the other",
                                     path=p, field=opt)
            seen.append((opt, p, ident))
        _writable(opt, p)


@contextlib.contextmanager
def output_lock(path: str, option: str = "-o") -> Iterator[Path | None]:
    """Hold an exclusive lock on `.NAME.lock` beside `path` (None for `-` and special files).

    The lock file is removed on release. A file unlinked by the previous holder between our open
    and our lock is detected (its inode is no longer the path's) and the lock taken again.
    """
    if is_stdout(path) or is_special(resolve_target(path)):
        yield None
        return
    target = resolve_target(path)
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create its folder: {e.strerror}", path=path, field=option) from None
    fd = -1
    for _ in range(8):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise InputError(f"cannot create the lock file {lock}: {e.strerror}", path=path, field=option) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise InputError(f"another run is writing this file{who}; it is locked by {lock}",
                                 path=path, field=option) from None
            raise InputError(f"cannot lock {lock}: {e.strerror}", path=path, field=option) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
        fd = -1
    if fd < 0:
        raise InputError(f"cannot lock {lock}: it keeps being replaced", path=path, field=option)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message of a second run
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@dataclass
class RunOutputs:
    """Where a run's results go and where they are read back from for the summary."""

    output: str  # as given: a path, `-`, a device or a pipe
    readback: Path  # a regular file holding the results at the end (the output, or `copy`)
    copy: Path | None  # private copy when the output cannot be read back
    to_stdout: bool  # an output is standard output: text for people goes to stderr

    def deliver(self) -> None:
        """Stream a merged results file (written to `readback`) to a special output or stdout."""
        if self.copy is None:
            return
        from .atomic import atomic_write

        with self.copy.open("rb") as src, atomic_write(self.output, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    def text(self) -> contextlib.AbstractContextManager[TextIO | None]:
        """Redirect stdout to stderr while printing for people, when results use stdout."""
        return contextlib.redirect_stdout(sys.stderr) if self.to_stdout else contextlib.nullcontext()


@contextlib.contextmanager
def run_outputs(output: str, summary_json: str | None, inputs: Named) -> Iterator[RunOutputs]:
    """Check the run's outputs against its inputs and each other, lock the results file, and
    provide the read-back copy for outputs that cannot be read; see the module docstring."""
    check_paths([("-o", output), ("--summary-json", summary_json)], inputs)
    with output_lock(output):
        copy: Path | None = None
        if is_stdout(output) or is_special(resolve_target(output)):
            fd, name = tempfile.mkstemp(prefix="servegen-load-results-", suffix=".jsonl")
            os.close(fd)
            copy = Path(name)
        try:
            yield RunOutputs(output=output, readback=copy or Path(output), copy=copy,
                             to_stdout=any(is_stdout(p) or is_fd1(p) for p in (output, summary_json) if p))
        finally:
            if copy is not None:
                with contextlib.suppress(OSError):
                    copy.unlink()
