"""``dynexit solve | curve | calibrate | demo | import-table``: the commands on ExitTables (no model runs).

``import-table`` turns logits saved by any framework (``.npy`` / ``.npz``, laid out (N, K, C)) into
an ExitTable (:meth:`dynexit.table.ExitTable.from_arrays`).

Thresholds and temperatures are fitted on the val table and reported on the test table; a val table
that is the test split is refused (:func:`dynexit.bench.check_fit_table`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dynexit.cli.args import UsageError, budget_arg, costs_arg, existing_file_arg, output_file, output_file_arg


def _load_table(path):
    """The ExitTable at ``path``; a damaged file is the user's problem (UsageError), not a crash."""
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


def _fmt(values, digits=4) -> str:
    return "[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]"


def _criterion(args) -> str:
    """The criterion for ``args.solver``; a --criterion given to a solver that chooses its own score is an error."""
    from dynexit import solvers

    if args.criterion is not None and not solvers.takes_criterion(args.solver):
        raise UsageError(f"--criterion {args.criterion}: the {args.solver} solver chooses its own exit score on val; "
                         "drop --criterion, or pick a solver that takes one (geometric, genetic, lagrangian)")
    return args.criterion or "max_prob"


def cmd_solve(args) -> int:
    """Fit the solver on val for ``--budget`` (MFLOPs per image); print and (``--json``) write the test result."""
    from dynexit import metrics, solvers

    val, test = _pair(args)
    try:
        solver = solvers.make(args.solver, args.budget, _criterion(args)).fit(val)
        result, score = solver.evaluate(test), solver.rule_.score_name  # refuses a test table of another model
    except ValueError as err:
        raise UsageError(str(err)) from None
    unit = test.meta.get("costs_unit", "MFLOPs")
    oracle = metrics.oracle(test)
    print(f"model        {test.meta.get('model', '?')}  ({test.num_samples} test samples, {test.num_exits} exits)")
    print(f"solver       {args.solver}  score {score}  budget {args.budget:.4g} {unit}")
    print(f"thresholds   {_fmt(solver.thresholds_)}")
    print(f"val          accuracy {solver.expected_accuracy_:.4f}  mean cost {solver.expected_cost_:.4g} {unit}"
          + (f"  ({result.spending_note()})" if result.spending_note() else ""))
    print(f"test         accuracy {result.accuracy:.4f}  mean cost {result.mean_cost:.4g} {unit}  "
          f"speedup {result.speedup:.2f}x  (final exit {test.exit_accuracy()[-1]:.4f} at {test.costs[-1]:.4g})")
    print(f"oracle       accuracy {oracle.accuracy:.4f}  mean cost {oracle.mean_cost:.4g} {unit}")
    print("exit histogram (test):")
    for name, cost, count, right in zip(test.exit_names, test.costs, result.histogram, result.histogram_correct):
        print(f"  {name:>12s}  {cost:10.4g} {unit}  {count:6d} samples  {right:6d} right")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(result.summary(), solver=args.solver, score=score,
                                                   budget=args.budget), indent=2, allow_nan=False))
    if args.rule:
        print(f"exit rule    {solver.rule_.save(args.rule)}")
    return 0


def cmd_curve(args) -> int:
    """Accuracy against budget over ``--points`` budgets, solver fitted on val at each; CSV / JSON on request."""
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


def print_curve(curve, test) -> None:
    """One line per budget (val and test cost and accuracy, the oracle, the speedup), then every exit alone."""
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


def _read_array(path: str, key: str) -> np.ndarray:
    """The array in a ``.npy`` file, or in a ``.npz`` holding one array (or one named ``key``); never
    unpickles. UsageError naming the file for anything else."""
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if not path.endswith(".npz") else None)
    except ValueError as err:  # numpy says "Object arrays cannot be loaded when allow_pickle=False"
        what = "it holds Python objects (pickled), which dynexit never loads" if "pickle" in str(err) or "Python objects" in str(err) else str(err)
        raise UsageError(f"{path}: cannot read {key} ({what}); save a plain numeric array with np.save") from None
    except (OSError, EOFError) as err:
        raise UsageError(f"{path}: not a .npy / .npz array file ({' '.join(str(err).split())[:200]})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        name = key if key in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise UsageError(f"{path}: a .npz with arrays {names}: keep one array, or name it {key!r}")
        try:
            return loaded[name]
        except ValueError as err:
            raise UsageError(f"{path}: cannot read array {name!r} ({err})") from None


def cmd_import_table(args) -> int:
    """Write an ExitTable from LOGITS (N, K, C) and LABELS (N,) array files and the per-exit ``--costs``."""
    from dynexit.table import ExitTable

    logits, labels = _read_array(args.logits, "logits"), _read_array(args.labels, "labels")
    if logits.ndim != 3:
        raise UsageError(f"{args.logits}: logits must be laid out (N, K, C) = (samples, exits, classes), "
                         f"got shape {logits.shape}")
    if len(args.costs) != logits.shape[1]:
        raise UsageError(f"--costs: {len(args.costs)} values for {logits.shape[1]} exits (the logits' axis 1); "
                         "give one cumulative cost per exit")
    meta = {"source": f"dynexit import-table {Path(args.logits).name} {Path(args.labels).name}"}
    if args.split:
        meta["split"] = args.split
    try:
        table = ExitTable.from_arrays(logits, labels, args.costs, args.exit_names, args.unit, args.dataset, meta=meta)
    except ValueError as err:
        raise UsageError(f"{args.logits}, {args.labels}: {err}") from None
    path = table.save(args.out, logits_dtype=args.logits_dtype)
    print(f"wrote {path}: {table.num_samples} samples, {table.num_exits} exits {list(table.exit_names)}, "
          f"{table.num_classes} classes, costs {table.costs.tolist()} {table.cost_unit}, "
          f"accuracy {[round(a, 4) for a in table.exit_accuracy().tolist()]}")
    if args.dataset:  # recorded as given; say now what a viewer would find out later
        from dynexit.zoo.folder import dataset_problem

        problem = dataset_problem(table)
        if problem:
            print(f"warning: {problem}: viewers will show scores but not the images", file=sys.stderr)
    return 0


def _add_import_table(sub) -> None:
    """``dynexit import-table LOGITS LABELS --costs ... --out T.npz``."""
    from dynexit.cli.args import comma_items
    from dynexit.table_checks import COST_UNITS

    p = sub.add_parser("import-table", help="make an ExitTable from logits (N, K, C) and labels (N,) saved as .npy/.npz",
                       description="Turn the logits of any multi-exit model (saved with numpy: (N, K, C) = samples, "
                                   "exits shallow to deep, classes) and their labels into an ExitTable.")
    p.add_argument("logits", type=existing_file_arg, help=".npy (or one-array / 'logits' .npz) of shape (N, K, C)")
    p.add_argument("labels", type=existing_file_arg, help=".npy (or one-array / 'labels' .npz) of N integer labels")
    p.add_argument("--costs", type=costs_arg, required=True,
                   help="cumulative cost per image of each exit, comma-separated, non-decreasing, e.g. 1.2,3.4,8")
    p.add_argument("--unit", choices=COST_UNITS, default="MFLOPs", help="unit of --costs (default MFLOPs)")
    p.add_argument("--exit-names", type=lambda t: comma_items(t, "exit names"), default=None,
                   help="comma-separated exit names (default exit1..exitK)")
    p.add_argument("--dataset", default=None, help="the dataset's name (e.g. cifar10), recorded for viewers")
    p.add_argument("--split", choices=("val", "test"), default=None, help="which split the rows are (recorded)")
    p.add_argument("--logits-dtype", choices=("float32", "float16"), default="float32", help="storage of the logits")
    p.add_argument("--out", type=output_file(".npz"), required=True, help="the ExitTable .npz to write")
    p.set_defaults(func=cmd_import_table)


def add_commands(sub) -> None:
    """Register ``solve``, ``curve``, ``calibrate``, ``demo`` and ``import-table`` on an argparse subparsers object."""
    from dynexit import criteria, solvers

    def table_pair(p):
        p.add_argument("val", help="validation ExitTable (.npz): thresholds are fitted here")
        p.add_argument("test", help="test ExitTable (.npz): results are reported here")
        p.add_argument("--solver", default=solvers.DEFAULT, choices=solvers.available())
        p.add_argument("--criterion", default=None, choices=criteria.available(),
                       help="exit criterion (default max_prob) for the solvers that take one (geometric, genetic, "
                            "lagrangian); crossval and learned choose their own score")

    p = sub.add_parser("solve", help="fit thresholds for a budget and evaluate them")
    table_pair(p)
    p.add_argument("--budget", type=budget_arg, required=True, help="average cost per image (in the tables' unit)")
    p.add_argument("--json", type=output_file_arg, help="write the result as JSON here")
    p.add_argument("--rule", type=output_file(".json"), default=None,
                   help="save the fitted exit rule here (thresholds + the score they apply to, and the model and exit "
                        "costs it was fitted on): dynexit.policy.ExitRule.load(PATH).apply(...) deploys it")
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
    _add_import_table(sub)
