"""Solver benchmark: every threshold solver against MSDNet's geometric rule and the oracle, on the zoo's tables.

Protocol (:func:`dynexit.metrics.compare_solvers`, the comparison the results page uses too): for each
val / test table pair, fit every solver on val at 40 budgets spread from the first to the last exit's
cost; read each solver's test curve and geometric's at 100 matched test costs (both linearly
interpolated over the costs both reach); count wins / ties / losses (a tie is within 0.1 point), the
mean and worst gain, the costs where it loses, and the share of the geometric-to-oracle gap it closes
(the oracle limited to the same mean cost); time each fit (the first, cold, and the median of the rest).

Tables: by default the shipped multi-exit pairs of ``data/zoo`` (the static CNN has one exit: nothing
to choose); ``--pair VAL TEST`` (repeatable) benchmarks your own tables instead. Writes
``docs/solver_benchmark.md`` for the zoo run (``--md PATH`` elsewhere or for your tables) and
``--json PATH`` with every number. The genetic solver takes about a second per budget on the zoo's
5,000 validation images: ``--solvers`` picks a subset.

    python benchmarks/solvers.py [--solvers geometric,crossval] [--pair VAL TEST ...] [--md PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dynexit import metrics, solvers, zoo
from dynexit.cli.args import comma_items
from dynexit.table import ExitTable

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "solver_benchmark.md"
N_BUDGETS, N_GRID, REFERENCE = 40, 100, "geometric"
# Part 5 of issue 14: the paper and the released code solve DVT's thresholds differently.
GENETIC_NOTE = ("The DVT paper (Wang et al., NeurIPS 2021) solves its thresholds with a genetic algorithm; "
                "DVT's released code uses MSDNet's geometric procedure.")


def zoo_pairs() -> dict[str, tuple[ExitTable, ExitTable]]:
    """The shipped val / test pairs with more than one exit, by zoo name."""
    pairs = {}
    for name in zoo.list():
        if not all(zoo.table_path(name, split).exists() for split in zoo.SPLITS):
            continue
        val, test = zoo.load_table(name, "val"), zoo.load_table(name, "test")
        if val.num_exits > 1:
            pairs[name] = (val, test)
    if not pairs:
        sys.exit(f"no multi-exit val/test tables in {zoo.zoo_dir()}: run `dynexit zoo reproduce NAME`, "
                 "or give your own with --pair VAL TEST")
    return pairs


def slider_path_ms(table: ExitTable, solver_name: str, n_budgets: int = 20) -> float:
    """Median ms of fit + evaluate + histogram on one table (the app's slider), after a first fit fills the caches."""
    budgets = metrics.budget_grid(table, n_budgets)
    solvers.make(solver_name, float(budgets[1])).fit(table)
    times = []
    for b in budgets:
        start = time.perf_counter()
        result = solvers.make(solver_name, float(b)).fit(table).evaluate(table)
        _ = result.histogram, result.histogram_correct, result.accuracy, result.mean_cost
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


HEADROOM_SOLVERS = ("lagrangian", "learned")


def headroom(val: ExitTable, test: ExitTable, reference_curve) -> dict[str, dict]:
    """How much any threshold rule could gain here: solvers fitted on the *test* table itself.

    A diagnostic that peeks at test on purpose (never a result): the in-sample optimum of per-exit
    thresholds (``lagrangian``) and of a learned exit score (``learned``), each compared at matched test
    cost with the reference fitted on val. A val-fitted rule cannot be expected to gain more than this
    ceiling; when the ceiling is a few test images, no honest rule can show a gain beyond noise.
    """
    budgets = metrics.budget_grid(val, N_BUDGETS)
    out = {}
    for name in HEADROOM_SOLVERS:
        curve = metrics.budget_curve(test, test, name, budgets)
        cmp = metrics.compare_at_matched_cost(curve, reference_curve, test, n_grid=N_GRID)
        out[name] = {"mean_gain": cmp["mean_gain"], "worst": cmp["worst"], "gap_closed": cmp["gap_closed"],
                     "images": cmp["mean_gain"] * test.num_samples}
    return out


def _solver_note(name: str) -> str:
    first = (solvers.get(name).__doc__ or "").strip().splitlines()[0].rstrip(".").replace("``", "`")
    note = f"`{name}`{' (default)' if name == solvers.DEFAULT else ''}: {first}."
    return note + (" " + GENETIC_NOTE if name == "genetic" else "")


def _gap(x) -> str:
    # two decimals and the sign kept: a share of the gap rounding to 0.0 may still be negative
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.2f}"


def _rows(comparison: dict) -> list[list[str]]:
    rows = []
    for name, c in comparison.items():
        loss = "-" if not c["loss_costs"] else f"{c['loss_costs'][0]:.2f}-{c['loss_costs'][1]:.2f}"
        label = f"{name} (default)" if name == solvers.DEFAULT else (f"{name} (reference)" if name == REFERENCE else name)
        rows.append([label, f"{c['wins']} / {c['ties']} / {c['losses']}", f"{100 * c['mean_gain']:+.2f}",
                     f"{100 * c['worst']:+.2f}", loss, _gap(c["gap_closed"]), f"{1e3 * c['fit_first_s']:.0f}",
                     f"{1e3 * c['fit_median_s']:.1f}"])
    return rows


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


HEADER = ["solver", "wins / ties / losses (of 100 costs)", "mean gain (pt)", "worst (pt)", "losses at MFLOPs",
          "gap closed (%)", "first fit (ms)", "median fit (ms)"]


def _summary(models: dict, names: list[str]) -> list[str]:
    """The summary section: every solver over all models."""
    L = ["", "## Summary over the models", "",
          "Wins / ties / losses summed over the models; mean gain and gap closed averaged over them; worst over them.",
          ""]
    rows = []
    for s in names:
        cs = [m["comparison"][s] for m in models.values()]
        gaps = [c["gap_closed"] for c in cs if c["gap_closed"] is not None and np.isfinite(c["gap_closed"])]
        label = f"{s} (default)" if s == solvers.DEFAULT else (f"{s} (reference)" if s == REFERENCE else s)
        rows.append([label, f"{sum(c['wins'] for c in cs)} / {sum(c['ties'] for c in cs)} / "
                            f"{sum(c['losses'] for c in cs)}", f"{100 * np.mean([c['mean_gain'] for c in cs]):+.2f}",
                     f"{100 * min(c['worst'] for c in cs):+.2f}", _gap(np.mean(gaps)) if gaps else "n/a",
                     f"{1e3 * np.median([c['fit_median_s'] for c in cs]):.1f}",
                     f"{sum(c['fit_total_s'] for c in cs):.1f}"])
    L += _table(["solver", f"wins / ties / losses (of {N_GRID * len(models)})", "mean gain (pt)", "worst (pt)",
                 "gap closed (%)", "median fit (ms)", f"all {N_BUDGETS * len(models)} fits (s)"], rows)
    clean = [s for s in names if s != REFERENCE and all(m["comparison"][s]["losses"] == 0 for m in models.values())]
    best = max((s for s in names if s != REFERENCE), default=None,
               key=lambda s: np.mean([m["comparison"][s]["mean_gain"] for m in models.values()]))
    L += ["", "No loss beyond 0.1 point on any model: " + (", ".join(f"`{s}`" for s in clean) or "no solver")
          + (f"; largest mean gain: `{best}`." if best else ".")]
    return L


def _headroom_section(models: dict) -> list[str]:
    """The headroom diagnostic (fitted on test) when the run measured it."""
    if not all("headroom" in m for m in models.values()):
        return []
    L = ["", "## Headroom: what a rule fitted on test itself would gain", "",
          "A diagnostic that peeks at the test table on purpose: `lagrangian` (per-exit thresholds) and "
          "`learned` (a learned exit score) fitted on **test** at the same budgets, compared with `geometric` "
          "fitted on val, as above. This is a ceiling on what any rule fitted on val can be expected to gain; "
          "\"images\" is the mean gain in test images.", ""]
    rows = [[name] + [f"{100 * m['headroom'][s]['mean_gain']:+.2f} pt ({m['headroom'][s]['images']:+.0f} images), "
                      f"gap {_gap(m['headroom'][s]['gap_closed'])}%" for s in HEADROOM_SOLVERS]
            for name, m in models.items()]
    L += _table(["model"] + [f"`{s}` fitted on test" for s in HEADROOM_SOLVERS], rows)
    return L


def render(report: dict, command: str) -> str:
    models = report["models"]
    names = report["solvers"]
    L = ["# Solver benchmark", "",
         f"Made by `{command}` on {report['date']} ({report['machine']}) in {report['seconds'] / 60:.1f} minutes. "
         "Every number is measured on the test table; thresholds are fitted on the val table.", "",
         "## How it was measured", "",
         f"`dynexit.metrics.compare_solvers` (the comparison the results page `docs/results.md` uses too): each "
         f"solver is fitted on val at {N_BUDGETS} budgets spread evenly from the first to the last exit's cost, and "
         f"its test curve (accuracy vs mean MFLOPs per image) is compared with the `{REFERENCE}` solver's (MSDNet's "
         f"rule) at {N_GRID} test costs spread over the range both curves reach, each curve linearly interpolated "
         "(after taking, at each cost, the best accuracy at or below it). At each cost the solver wins when it is "
         "more than 0.1 point more accurate, loses when it is more than 0.1 point less accurate, and ties otherwise.",
         "",
         "- **mean gain / worst**: mean and smallest accuracy difference (solver minus geometric) over the 100 "
         "costs, in points; **losses at MFLOPs**: the lowest and highest cost where it loses;",
         "- **gap closed**: mean gain divided by the mean gap between geometric and the oracle at the same costs "
         "(the oracle sends each image to its first correct exit, buying the cheapest images first until the mean "
         "cost is spent: no threshold policy can do better); 100% = as good as the oracle, negative = worse than "
         "geometric;",
         "- **first fit**: the fit at the first budget on a fresh copy of val (it computes the scores and caches the "
         "later fits reuse); **median fit**: the median over the other 39 budgets. Single-threaded Python on a "
         "shared CPU: compare the times with each other, not with another machine.", "",
         "Solvers:", ""]
    L += [f"- {_solver_note(n)}" for n in names]
    L += _summary(models, names)
    for name, m in models.items():
        L += ["", f"## {name}", "",
              f"val {m['val_samples']:,} images, test {m['test_samples']:,}; {m['exits']} exits at "
              f"{', '.join(f'{c:.2f}' for c in m['costs'])} MFLOPs; per-exit test accuracy "
              f"{', '.join(f'{100 * a:.2f}' for a in m['test_exit_accuracy'])}%; oracle (every image at its first "
              f"correct exit) {100 * m['oracle_accuracy']:.2f}%. Matched test costs "
              f"{m['comparison'][REFERENCE]['cost_range'][0]:.2f}-{m['comparison'][REFERENCE]['cost_range'][1]:.2f} "
              "MFLOPs.", ""]
        L += _table(HEADER, _rows(m["comparison"]))
    L += _headroom_section(models)
    t = report.get("timing")
    if t:
        L += ["", "## The app's slider path", "",
              f"`{t['solver']}` on `{t['table']}`'s test table ({t['shape']}): fit at a budget + evaluate + exit "
              f"histogram, median {t['slider_path_median_ms']:.2f} ms over 20 budgets after a first fit."]
    return "\n".join(L) + "\n"


def run_model(name: str, val: ExitTable, test: ExitTable, names: list[str]) -> dict:
    """Every solver on one model's val / test pair, with the headroom diagnostic; printed as it goes."""
    print(f"\n== {name}: val {val.num_samples} x {val.num_exits}, test {test.num_samples}; per-exit test accuracy "
          f"{np.round(test.exit_accuracy(), 4).tolist()}; oracle {metrics.oracle(test).accuracy:.4f}", flush=True)
    try:
        comparison = metrics.compare_solvers(val, test, names, reference=REFERENCE, n_budgets=N_BUDGETS,
                                             n_grid=N_GRID)
    except ValueError as err:
        sys.exit(f"{name}: {err}")
    entry = {
        "val_samples": val.num_samples, "test_samples": test.num_samples, "exits": test.num_exits,
        "costs": test.costs.tolist(), "test_exit_accuracy": test.exit_accuracy().tolist(),
        "oracle_accuracy": metrics.oracle(test).accuracy,
        "comparison": {s: c.to_dict() for s, c in comparison.items()},
        "curves": {s: c.curve.to_dict() for s, c in comparison.items()}}
    if REFERENCE in comparison:
        entry["headroom"] = room = headroom(val, test, comparison[REFERENCE].curve)
        print("  headroom (fitted on test): " + ", ".join(
            f"{s} {100 * r['mean_gain']:+.2f} pt" for s, r in room.items()), flush=True)
    for r in _rows(entry["comparison"]):
        print(f"  {r[0]:22s} W/T/L {r[1]:>15s}  mean {r[2]:>6s} pt  worst {r[3]:>6s} pt  losses at {r[4]:>11s}"
              f"  gap closed {r[5]:>5s}%  fit first {r[6]:>5s} ms, median {r[7]:>6s} ms", flush=True)
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", nargs=2, action="append", metavar=("VAL", "TEST"),
                        help="a val and a test ExitTable (.npz) of one model; repeat for more models")
    parser.add_argument("--solvers", type=lambda text: comma_items(text, "solver names"),
                        help=f"comma-separated solvers (default: all, {', '.join(solvers.available())})")
    parser.add_argument("--md", help=f"write the markdown page here (default for the zoo run: {DOC.relative_to(ROOT)})")
    parser.add_argument("--json", help="write every number as JSON here")
    args = parser.parse_args(argv)
    names = args.solvers or solvers.available()
    unknown = [s for s in names if s not in solvers.available()]
    if unknown:
        parser.error(f"--solvers: unknown {', '.join(map(repr, unknown))}; "
                     f"choose from {', '.join(solvers.available())}")
    names = [REFERENCE] + [s for s in names if s != REFERENCE]
    if args.pair:
        try:
            pairs = {Path(v).name.removesuffix(".npz"): (ExitTable.load(v), ExitTable.load(t)) for v, t in args.pair}
        except (OSError, ValueError) as err:
            parser.error(f"--pair: {err}")
    else:
        pairs = zoo_pairs()
    md = args.md or (None if args.pair else DOC)

    start = time.perf_counter()
    report = {"date": _dt.date.today().isoformat(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "solvers": names, "default": solvers.DEFAULT, "n_budgets": N_BUDGETS, "n_grid": N_GRID,
              "tie": metrics.TIE, "reference": REFERENCE, "models": {}}
    for name, (val, test) in pairs.items():
        report["models"][name] = run_model(name, val, test, names)
    default_pairs = [(n, t) for n, (_, t) in pairs.items() if t.num_samples >= 10000]
    if default_pairs and solvers.DEFAULT in names:
        name, test = default_pairs[0]
        ms = slider_path_ms(test, solvers.DEFAULT)
        report["timing"] = {"solver": solvers.DEFAULT, "table": name, "slider_path_median_ms": ms,
                            "shape": f"{test.num_samples} x {test.num_exits} x {test.num_classes}"}
        print(f"\n{solvers.DEFAULT}: slider path (fit + evaluate + histogram) on {name} test: median {ms:.2f} ms")
    report["seconds"] = time.perf_counter() - start
    print(f"\nfull run: {report['seconds']:.0f} s")
    if md:
        command = "python benchmarks/solvers.py" + (f" --solvers {args.solvers}" if args.solvers else "")
        if args.pair:
            command += "".join(f" --pair {v} {t}" for v, t in args.pair)
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(render(report, command))
        print(f"wrote {md}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
