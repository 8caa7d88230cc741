"""``python -m servegen_load.sim``: the simulator as its own process (what `SimProcess` starts).

Same options as ``servegen-load sim``; prints one ready line on stdout once listening
(``servegen-load sim listening on http://HOST:PORT ...``), everything else on stderr.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m servegen_load.sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (see the ready line)")
    p.add_argument("--preset", default=None, help="preset name or YAML file (default llama3-8b-h100)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=RATE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--stall-seconds", type=float, default=5.0)
    p.add_argument("--slow-accept-seconds", type=float, default=2.0)
    p.add_argument("--hang-seconds", type=float, default=600.0)
    p.add_argument("--list-presets", action="store_true")
    p.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process dies")
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import build_config
    from .presets import DEFAULT_PRESET, format_presets
    from .server import run

    a = parser().parse_args(argv)
    try:
        if a.list_presets:
            print(format_presets())
            return 0
        cfg = build_config(a.preset or DEFAULT_PRESET, a.param, a.fault, seed=a.seed, time_scale=a.time_scale,
                           host=a.host, port=a.port, stall_seconds=a.stall_seconds,
                           slow_accept_seconds=a.slow_accept_seconds, hang_seconds=a.hang_seconds)
        run(cfg, exit_with_parent=a.exit_with_parent)
    except InputError as e:
        print(f"servegen-load sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
