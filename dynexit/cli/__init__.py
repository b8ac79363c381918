"""The ``dynexit`` command line: one parser, one error protocol.

===========================  ===========================================  ======================
command                      what it does                                 module
===========================  ===========================================  ======================
solve, curve, calibrate,     thresholds / temperatures fitted on a val    :mod:`dynexit.cli.tables`
demo                         ExitTable, reported on the test table
train, table, bench          train a model, write its ExitTable, time     :mod:`dynexit.cli.models`
                             real early exit
zoo, report                  the shipped zoo (list, info, reproduce) and  :mod:`dynexit.cli.zoo`
                             its results page
profile                      each exit's latency (ms per image) on this   :mod:`dynexit.cli.profile`
                             machine, stored beside the weights
===========================  ===========================================  ======================

Every bad argument or file ends in one clear line on stderr, ``dynexit CMD: error: ...``, and exit
code 2, never a traceback: argparse errors and :class:`~dynexit.cli.args.UsageError` (raised by the
commands), and any ValueError or OSError a command raises, all go through :func:`run`. Arguments
are checked as they are parsed (the types in :mod:`dynexit.cli.args`), so a bad one is refused
before any model or data loads. ``python -m dynexit`` (and under torchrun, ``-m dynexit train``)
runs :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from dynexit.cli.args import Parser, UsageError


def build_parser() -> argparse.ArgumentParser:
    """The one ``dynexit`` parser: every command group registers its subcommands on it."""
    from dynexit.cli import models, profile, tables, zoo

    parser = Parser(prog="dynexit", description="Explore early-exit image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (tables, models, zoo, profile):
        group.add_commands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen command; returns the exit status.

    Every user error (UsageError, any ValueError or OSError) is one stderr line and exit 2; Ctrl-C is 130.
    """
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # argparse would blame the top-level parser; name the subcommand they were given to
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # UsageError is a ValueError
        prog = getattr(err, "prog", None) or (f"{parser.prog} {args.command}" if args is not None else parser.prog)
        if isinstance(err, OSError) and err.strerror:
            msg = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
        else:
            msg = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    """The ``dynexit`` console script (``pyproject``: ``dynexit.cli:main``): exit status of the command run."""
    return run(build_parser(), argv)
