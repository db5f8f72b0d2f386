"""The `unmask` command: gather the sub-commands (``unmask.commands``, one module per group), parse
the arguments, run the one asked for, and turn what goes wrong into one line and an exit code.

Exit codes: 0 = it ran; 1 = some input could not be used (`check`: a video could not be read;
`prepare`: not one video could be prepared); 2 = wrong options, input or paths (a report that
cannot be written, say); 130 = interrupted (Ctrl+C).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from unmask import __version__
from unmask.commands import EXIT_BAD_INPUT, EXIT_INTERRUPTED, check, dataset, prepare, train
from unmask.errors import UnmaskError

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads made
# torch 5-9x slower. OpenMP reads this once, when torch loads, so it is set before any import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS = {**prepare.COMMANDS, **train.COMMANDS, **check.COMMANDS, **dataset.COMMANDS}
"""Every sub-command's set-up by name, in the order `unmask --help` lists them."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every sub-command with its one-line help, and the arguments of ``command`` alone: a
    sub-command's set-up may import what its defaults come from, and `unmask --help` or
    `unmask check --help` must not pay for the others (torch, scikit-learn, FastAPI)."""
    parser = argparse.ArgumentParser(
        prog="unmask",
        description="Tell whether a video of a face is real or a deepfake; build, train and measure the "
                    "detector on FaceForensics++.",
    )
    parser.add_argument("--version", action="version", version=f"unmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, setup in COMMANDS.items():
        doc = (setup.__doc__ or "").strip()
        child = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        if name == command:
            child.set_defaults(handler=setup(child))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.handler(args)
    except UnmaskError as err:
        print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # the file system said no: a path that cannot be made or read, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"unmask {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"unmask {args.command}: interrupted (finished work is kept; run again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
