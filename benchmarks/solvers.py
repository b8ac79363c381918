"""Solver benchmark: every solver against geometric (MSDNet) and the oracle, on real tables.

For each val/test table pair and 20 budgets spread between the first and last exit's cost, fit every
solver on val and evaluate on test; print test accuracy, test cost and fit time, then per solver the
wins / ties / losses against geometric at matched test cost (a tie is within 0.1 point; curves
linearly interpolated on a common cost grid) and the share of the geometric-to-oracle gap closed.
Also times the fit on a 5,000 x 4 x 10 table and the slider path (fit at a budget + evaluate +
histogram) on a 10,000 x 4 x 10 table, median over 20 budgets after the first (cached) fit.

Tables: ``--val/--test`` pairs given on the command line, or by default the toy multi-exit MLP of
``dynexit.testing`` on scikit-learn digits (3 seeds) and on Fashion-MNIST (2 sizes; needs the
training split, e.g. ``apt-get install dataset-fashion-mnist``), cached in ``.cache/bench_tables``.

    python benchmarks/solvers.py [--pair VAL TEST ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from dynexit import metrics, solvers
from dynexit.table import ExitTable
from dynexit.testing import digits_tables, fashion_mnist_tables

CACHE = Path(".cache/bench_tables")


def cached(name, make):
    val_path, test_path = CACHE / f"{name}_val.npz", CACHE / f"{name}_test.npz"
    if not (val_path.exists() and test_path.exists()):
        val, test = make()
        val.save(val_path)
        test.save(test_path)
    return ExitTable.load(val_path), ExitTable.load(test_path)


def default_tables():
    pairs = {f"digits_seed{s}": cached(f"digits_seed{s}", lambda s=s: digits_tables(s)) for s in (0, 1, 2)}
    try:
        pairs["fmnist_mlp_small"] = cached("fmnist_mlp_small", lambda: fashion_mnist_tables(0))
        pairs["fmnist_mlp_wide"] = cached("fmnist_mlp_wide",
                                          lambda: fashion_mnist_tables(1, widths=(8, 32, 128, 512), epochs=4))
    except FileNotFoundError as err:
        print(f"(skipping Fashion-MNIST tables: {err})")
    return pairs


def slider_path_ms(table, solver_name, n_budgets=20):
    """Median ms of fit + evaluate + histogram on one table, after a first fit fills the caches."""
    budgets = metrics.budget_grid(table, n_budgets)
    solvers.make(solver_name, float(budgets[1])).fit(table)
    times = []
    for b in budgets:
        start = time.perf_counter()
        result = solvers.make(solver_name, float(b)).fit(table).evaluate(table)
        _ = result.histogram, result.histogram_correct, result.accuracy, result.mean_cost
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", nargs=2, action="append", metavar=("VAL", "TEST"))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pairs = ({Path(v).stem: (ExitTable.load(v), ExitTable.load(t)) for v, t in args.pair}
             if args.pair else default_tables())
    report = {}
    for name, (val, test) in pairs.items():
        print(f"\n== {name}: val {val.num_samples} x {val.num_exits}, test {test.num_samples}; "
              f"per-exit test accuracy {np.round(test.exit_accuracy(), 4).tolist()}; "
              f"oracle {metrics.oracle(test).accuracy:.4f}")
        budgets = metrics.budget_grid(val, 20)
        curves = {s: metrics.budget_curve(val, test, s, budgets) for s in solvers.available()}
        print(f"{'budget':>10s} " + " ".join(f"{s:>22s}" for s in curves))
        for i, b in enumerate(budgets):
            print(f"{b:10.4g} " + " ".join(f"{c.test_accuracy[i]:9.4f} @{c.test_cost[i]:10.4g}" for c in curves.values()))
        report[name] = {}
        for s, c in curves.items():
            cmp = metrics.compare_at_matched_cost(c, curves["geometric"], test)
            cmp.pop("grid")
            cmp["median_fit_ms"] = statistics.median(c.fit_seconds) * 1e3
            cmp["max_fit_ms"] = max(c.fit_seconds) * 1e3
            report[name][s] = cmp
            print(f"  {s:10s} vs geometric at matched test cost: W/T/L {cmp['wins']}/{cmp['ties']}/{cmp['losses']}"
                  f"  mean {cmp['mean_gain'] * 100:+.2f} pt  worst {cmp['worst'] * 100:+.2f} pt"
                  f"  gap to oracle closed {cmp['gap_closed'] * 100:.1f}%  fit median {cmp['median_fit_ms']:.1f} ms,"
                  f" max {cmp['max_fit_ms']:.0f} ms")
    big = [(n, t) for n, t in pairs.items() if t[1].num_samples >= 10000]
    if big:
        name, (val, test) = big[0]
        start = time.perf_counter()
        solvers.make(solvers.DEFAULT, float(np.mean(val.costs[:2]))).fit(
            ExitTable(val.logits, val.labels, val.costs))  # a fresh table: no cached work
        cold = time.perf_counter() - start
        ms = slider_path_ms(test, solvers.DEFAULT)
        report["timing"] = {"table": name, "cold_fit_s_val": cold, "slider_path_median_ms_test": ms}
        print(f"\n{solvers.DEFAULT}: cold fit on {name} val ({val.num_samples} x {val.num_exits} x "
              f"{val.num_classes}) {cold:.3f} s; slider path (fit + evaluate + histogram) on "
              f"{test.num_samples} x {test.num_exits} x {test.num_classes}: median {ms:.2f} ms over 20 budgets")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
