"""The ``dynexit`` command line: solve, curve, demo (and the model commands when present).

Every bad argument or file ends in one clear line on stderr, ``dynexit CMD: error: ...``, and exit
code 2, never a traceback: argparse errors, :class:`UsageError`, and any ValueError or OSError a
command raises all go through :func:`run`. Arguments are checked as they are parsed (the types
below), so a bad one is refused before any model or data loads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


class UsageError(ValueError):
    """A problem with what the user asked for: printed as one line, exit 2.

    ``prog`` is the command it belongs to (``dynexit bench``); :func:`run` fills it in.
    """

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Exact option names only (``--data`` is not ``--data-root``), and errors as UsageError."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message, self.prog)


# ----------------------------------------------------------------------------- argument types
# Each checks one value as argparse reads it, so a bad one is refused before anything loads.

def budget_arg(text: str) -> float:
    """A budget: a positive, finite number of MFLOPs per image."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (a budget is MFLOPs per image)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"a budget is a positive, finite number of MFLOPs per image, got {text!r}")
    return value


def _comma_items(text: str, what: str) -> list[str]:
    """The items of a comma-separated list, stripped; every item must be there (``1,,2``, ``256,`` and
    ``''`` are errors: a stray comma is a typo, not a value to drop)."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} (an empty item)")
    return items


_INFINITIES = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def _finite_float(item: str, text: str, what: str) -> float:
    try:
        value = float(item)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} ({item!r} is not a number)") from None
    if not math.isfinite(value):  # nan, or a number beyond the float range such as 1e999
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} ({item!r} is not a finite number)")
    return value


def floats_arg(text: str) -> list[float]:
    """Comma-separated finite numbers (e.g. loss weights ``1,0.5,1``); no empty items, no nan or inf."""
    return [_finite_float(item, text, "finite numbers") for item in _comma_items(text, "finite numbers")]


def thresholds_arg(text: str) -> list[float]:
    """Comma-separated thresholds: finite numbers, or the words ``inf`` (nobody leaves there) and ``-inf``
    (everyone does). Infinity must be written as a word: ``1e999`` (which float() rounds to inf) and
    ``nan`` are errors, and so are empty items."""
    what = "numbers (or the words inf and -inf)"
    return [_INFINITIES[item.lower()] if item.lower() in _INFINITIES else _finite_float(item, text, what)
            for item in _comma_items(text, what)]


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float_arg(text: str) -> float:
    """A positive, finite number (e.g. ``--epochs 0.5``: half an epoch)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def positive_ints_arg(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. batch sizes ``256,1``; no empty items."""
    items = _comma_items(text, "positive integers")
    try:
        return [positive_int_arg(item) for item in items]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def output_file(suffix: str = ".json"):
    """The argparse type of a file to write, e.g. ``output_file(".npz")``: not empty, not a folder, and
    its folder exists (nothing is created silently); errors suggest a ``result{suffix}`` name."""
    from dynexit.bench import check_output_path

    def check(text: str) -> str:
        try:
            check_output_path(text, suffix)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    check.__name__ = f"{suffix.lstrip('.')} output file"
    return check


output_file_arg = output_file(".json")


def directory_arg(text: str) -> str:
    """An existing folder (what it must hold is checked by the command, before it loads anything)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")
    return str(path)


def existing_file_arg(text: str) -> str:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: {'a folder, not a file' if path.exists() else 'no such file'}")
    return str(path)


def _load_table(path):
    from dynexit.table import ExitTable

    try:
        return ExitTable.load(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _pair(args):
    """The (val, test) tables; UsageError when they are not of one model, or val is the test split
    (its meta says split "test", or it is the test table itself): thresholds and temperatures are
    fitted on val, and fitting them on test would report a result tuned on the data it is scored on."""
    from dynexit.bench import check_fit_table

    val, test = _load_table(args.val), _load_table(args.test)
    if val.num_exits != test.num_exits or not np.allclose(val.costs, test.costs):
        raise UsageError(f"{args.val} and {args.test} are not tables of the same model "
                         f"(exits {val.num_exits} vs {test.num_exits}, costs differ)")
    try:
        check_fit_table(val, test, val_name=str(args.val), test_name=str(args.test))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return val, test


def _fmt(values, digits=4):
    return "[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]"


def _criterion(args) -> str:
    """The criterion for ``args.solver``; a --criterion given to a solver that chooses its own score is an error."""
    from dynexit import solvers

    takes = "criterion" in solvers.get(args.solver)._get_param_names()
    if args.criterion is not None and not takes:
        raise UsageError(f"--criterion {args.criterion}: the {args.solver} solver chooses its own exit score on val; "
                         "drop --criterion, or pick a solver that takes one (geometric, genetic, lagrangian)")
    return args.criterion or "max_prob"


def _score_name(fitted) -> str:
    """What the fitted thresholds apply to: a criterion's name or the learned exit score."""
    score = getattr(fitted, "criterion", None)
    return score if isinstance(score, str) else "learned exit score"


def cmd_solve(args) -> int:
    from dynexit import metrics, solvers

    val, test = _pair(args)
    try:
        solver = solvers.make(args.solver, args.budget, _criterion(args)).fit(val)
    except ValueError as err:
        raise UsageError(str(err)) from None
    result = solver.evaluate(test)
    oracle = metrics.oracle(test)
    print(f"model        {test.meta.get('model', '?')}  ({test.num_samples} test samples, {test.num_exits} exits)")
    print(f"solver       {args.solver}  score {_score_name(solver)}  budget {args.budget:.4g} MFLOPs")
    print(f"thresholds   {_fmt(solver.thresholds_)}")
    print(f"val          accuracy {solver.expected_accuracy_:.4f}  mean cost {solver.expected_cost_:.4g} MFLOPs"
          + (f"  ({result.spending_note()})" if result.spending_note() else ""))
    print(f"test         accuracy {result.accuracy:.4f}  mean cost {result.mean_cost:.4g} MFLOPs  "
          f"speedup {result.speedup:.2f}x  (final exit {test.exit_accuracy()[-1]:.4f} at {test.costs[-1]:.4g})")
    print(f"oracle       accuracy {oracle.accuracy:.4f}  mean cost {oracle.mean_cost:.4g} MFLOPs")
    print("exit histogram (test):")
    for name, cost, count, right in zip(test.exit_names, test.costs, result.histogram, result.histogram_correct):
        print(f"  {name:>12s}  {cost:10.4g} MFLOPs  {count:6d} samples  {right:6d} right")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(result.summary(), solver=args.solver, score=_score_name(solver),
                                                   budget=args.budget), indent=2))
    return 0


def cmd_curve(args) -> int:
    from dynexit import metrics

    val, test = _pair(args)
    if args.points < 2:
        raise UsageError("--points must be at least 2")
    budgets = metrics.budget_grid(val, args.points)
    try:
        curve = metrics.budget_curve(val, test, args.solver, budgets, _criterion(args))
    except ValueError as err:
        raise UsageError(str(err)) from None
    print_curve(curve, test)
    try:
        metrics.write_curve(curve, args.csv, args.json)
    except OSError as err:
        raise UsageError(f"cannot write output: {err}") from None
    return 0


def print_curve(curve, test):
    from dynexit import metrics

    top = metrics.oracle_curve(test, curve.test_cost)
    print(f"{'budget':>10s} {'val cost':>10s} {'val acc':>8s} {'test cost':>10s} {'test acc':>8s} {'oracle':>8s} {'speedup':>8s}")
    for row, o in zip(curve.to_rows(), top):
        print(f"{row['budget']:10.4g} {row['val_cost']:10.4g} {row['val_accuracy']:8.4f} {row['test_cost']:10.4g} "
              f"{row['test_accuracy']:8.4f} {o:8.4f} {test.costs[-1] / row['test_cost']:7.2f}x")
    print("per-exit (anytime): " + ", ".join(f"{n} {a:.4f} @ {c:.4g}" for n, a, c in
                                             zip(test.exit_names, test.exit_accuracy(), test.costs)))


def cmd_calibrate(args) -> int:
    """Per-exit temperature fitted on val; ECE of every exit on test before and after."""
    from dynexit import criteria

    val, test = _pair(args)
    temps = criteria.fit_temperature(val)
    before = criteria.expected_calibration_error(test)
    after = criteria.expected_calibration_error(test, temps)
    print(f"{'exit':>12s} {'temperature':>12s} {'ECE before':>11s} {'ECE after':>10s}   (test, 15 bins)")
    for name, t, b, a in zip(test.exit_names, temps, before, after):
        print(f"{name:>12s} {t:12.3f} {b:11.4f} {a:10.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"temperature": temps.tolist(), "ece_before": before.tolist(),
                                               "ece_after": after.tolist()}, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Train the toy multi-exit network on digits, save its tables, print the budget curve."""
    from dynexit import metrics, solvers
    from dynexit.testing import digits_tables

    out = Path(args.out)
    print(f"training a small multi-exit MLP on scikit-learn digits (seed {args.seed}) ...", flush=True)
    val, test = digits_tables(args.seed)
    val.save(out / "digits_val.npz")
    test.save(out / "digits_test.npz")
    print(f"tables written to {out}/digits_{{val,test}}.npz  (try: dynexit solve {out}/digits_val.npz "
          f"{out}/digits_test.npz --budget {float(np.mean(val.costs[:2])):.4g})")
    curve = metrics.budget_curve(val, test, solvers.DEFAULT, metrics.budget_grid(val, 10))
    print(f"budget curve, solver {solvers.DEFAULT} fitted on val, evaluated on test (MFLOPs per image):")
    print_curve(curve, test)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dynexit import criteria, solvers

    parser = _Parser(prog="dynexit", description="Explore early-exit image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def table_pair(p):
        p.add_argument("val", help="validation ExitTable (.npz): thresholds are fitted here")
        p.add_argument("test", help="test ExitTable (.npz): results are reported here")
        p.add_argument("--solver", default=solvers.DEFAULT, choices=solvers.available())
        p.add_argument("--criterion", default=None, choices=criteria.available(),
                       help="exit criterion (default max_prob) for the solvers that take one (geometric, genetic, "
                            "lagrangian); crossval and learned choose their own score")

    p = sub.add_parser("solve", help="fit thresholds for a budget and evaluate them")
    table_pair(p)
    p.add_argument("--budget", type=budget_arg, required=True, help="average MFLOPs per image")
    p.add_argument("--json", type=output_file_arg, help="write the result as JSON here")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("curve", help="accuracy vs budget over a sweep of budgets")
    table_pair(p)
    p.add_argument("--points", type=int, default=20, help="budgets between the first and last exit's cost")
    p.add_argument("--csv", type=output_file(".csv"), help="write the curve as CSV here")
    p.add_argument("--json", type=output_file_arg, help="write the curve as JSON here")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("calibrate", help="per-exit temperature scaling on val, ECE on test")
    p.add_argument("val", help="validation ExitTable (.npz): temperatures are fitted here")
    p.add_argument("test", help="test ExitTable (.npz): ECE is reported here")
    p.add_argument("--json", type=output_file_arg, help="write temperatures and ECE as JSON here")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="train a toy multi-exit net on digits (seconds) and print its budget curve")
    p.add_argument("--out", default=".cache/demo", help="where the demo tables are written")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    try:  # the model commands (train, table, bench), when the models package is installed
        from dynexit.cli.models import add_subcommands
    except ImportError:
        pass
    else:
        add_subcommands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen command; every user error is one stderr line and exit 2."""
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
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
