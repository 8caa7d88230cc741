"""Helpers of the hostile-input tests: run the CLI in-process or as the real entry point, and the
assertions every malformed input must satisfy (exit 2, one line naming the file, no traceback, no
output file or temporary `.part` left behind)."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from hypothesis import HealthCheck, settings

from servegen_load import cli

ROOT = Path(__file__).resolve().parents[1]
ERROR = "servegen-load: error: "

# modest example counts: each file runs in well under a minute on 2 shared cores
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # what pytest shows when an assertion fails
        return f"exit {self.code}\n--- stderr ---\n{self.err}\n--- stdout ---\n{self.out[:2000]}"


_get_command = typer.main.get_command
_COMMANDS: dict[tuple[int, int, int], Any] = {}


def _cached_get_command(app: typer.Typer) -> Any:
    """typer rebuilds the click command on every call (~20 ms); the tests make thousands of calls.
    Keyed by the registered commands, so a test adding one gets a fresh command."""
    key = (id(app), len(app.registered_commands), len(app.registered_groups))
    if key not in _COMMANDS:
        _COMMANDS[key] = _get_command(app)
    return _COMMANDS[key]


def run_cli(*argv: object) -> Outcome:
    """`servegen-load ARGV` in this process: `cli.main` with sys.argv patched, output captured."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["servegen-load", *(str(a) for a in argv)]
    typer.main.get_command = _cached_get_command  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        sys.argv = saved
        typer.main.get_command = _get_command
    code = exc.value.code
    return Outcome(0 if code is None else int(code), out.getvalue(), err.getvalue())


def run_entry_point(*argv: object, cwd: Path | None = None) -> Outcome:
    """The installed console script (else `python -m servegen_load.cli`), as a user runs it."""
    exe = shutil.which("servegen-load")
    cmd = [exe] if exe else [sys.executable, "-m", "servegen_load.cli"]
    p = subprocess.run([*cmd, *(str(a) for a in argv)], capture_output=True, text=True, cwd=cwd or ROOT,
                       timeout=120)
    return Outcome(p.returncode, p.stdout, p.stderr)


def leftovers(out: Path) -> list[Path]:
    """Temporary files `atomic_write` would leave beside `out` if it failed to clean up."""
    return sorted(out.parent.glob(f".{out.name}.*.part")) if out.parent.exists() else []


def assert_failed(r: Outcome, *names: object, out: Path | None = None) -> str:
    """Exit 2, exactly one stderr line `servegen-load: error: ...` naming every `names`, no
    traceback, and (with `out`) no output file and no `.part` beside it. Returns the line."""
    assert r.code == 2, r
    assert "Traceback" not in r.err, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r
    assert lines[0].startswith(ERROR), r
    for n in names:
        assert str(n) in lines[0], f"{n!s} not named in: {lines[0]}"
    if out is not None:
        assert not out.exists(), f"{out} left behind after a failure"
        assert not leftovers(out), leftovers(out)
    return lines[0]


def assert_ok(r: Outcome, out: Path | None = None) -> None:
    """Exit 0, no traceback, no error line; with `out`: the file exists and no `.part` is left."""
    assert r.code == 0, r
    assert "Traceback" not in r.err and ERROR not in r.err, r
    if out is not None:
        assert out.is_file(), r
        assert not leftovers(out), leftovers(out)


def assert_clean(r: Outcome, *names: object, out: Path | None = None) -> None:
    """A hostile input that may or may not be usable: either a clean failure or a clean success."""
    if r.code == 0:
        assert_ok(r, out)
    else:
        assert_failed(r, *names, out=out)
