"""The console script (and `python -m servegen_load`).

Loading the command (typer, rich, numpy) takes a few tenths of a second; Ctrl-C meanwhile is an
interruption like any other (one line, exit 130), not a traceback from an import.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("servegen-load: interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
