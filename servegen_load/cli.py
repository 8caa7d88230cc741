"""Command line: thin typer commands, one per pipeline stage; the logic lives in the modules.

Every user mistake surfaces as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import sys

import typer

from .errors import InputError

app = typer.Typer(
    name="servegen-load",
    help="Realistic per-client LLM workloads (ServeGen) and an open-loop load generator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(help="Client pools: import ServeGen data, list shipped pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


# --- workload commands (pool import, generate, inspect) ---


# --- fit / compare commands ---


# --- run / sim commands ---


# --- verdict commands (report, gate, plan) ---


def main() -> None:
    """Entry point: map expected errors to one-line messages and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except InputError as e:
        print(f"servegen-load: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"servegen-load: error: {e.filename}: {e.strerror}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("servegen-load: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and friends
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
