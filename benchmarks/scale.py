"""Scale benchmark (issue 14, part 6): the default solver on an ImageNet-size table pair.

Two synthetic val/test pairs (:func:`dynexit.testing.synthetic_logits`: every image has a
difficulty, deeper exits are surer of the true class, so accuracy rises along the exits):

- ``imagenet``: 50,000 val + 50,000 test images x 5 exits x 1,000 classes;
- ``small``:    10,000 val + 10,000 test images x 4 exits x 10 classes.

They are written once as ordinary ExitTable ``.npz`` files under ``.cache/scale/`` (the ImageNet
pair takes ~1 GB of disk per table and a minute to generate). Each case is then measured in a
fresh subprocess, so its peak resident memory (``ru_maxrss`` of that process) is its own:

- load: ``ExitTable.load`` of val and test;
- first fit: ``solvers.make(solvers.DEFAULT, budget).fit(val)`` on the fresh tables;
- first evaluate: ``evaluate(test)`` right after it (scores the test table);
- per budget: median ms of fit(val) + evaluate(test) at 20 later budgets (the slider path);
- peak memory of the whole run.

The ImageNet case is checked against the targets of the issue (load <= 5 s, first fit <= 10 s,
<= 50 ms per budget, peak <= 3 GB) and the table says met / not met for each.

    python benchmarks/scale.py [--cases imagenet small] [--format raw|raw16|zip] [--solver NAME] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(".cache/scale")
CASES = {"imagenet": (50_000, 5, 1_000), "small": (10_000, 4, 10)}
TARGETS = {"load_s": 5.0, "first_fit_s": 10.0, "per_budget_ms": 50.0, "peak_gb": 3.0}
TARGET_CASE = "imagenet"
CHUNK = 2_000  # rows generated at a time: bounds the generator's float64 temporaries
# how the pair is written: "raw" (the default), float32 logits stored uncompressed, which
# ExitTable.load memory-maps (1 GB per table on disk); "raw16", float16 uncompressed, read and
# converted to float32; "zip", float16 compressed as the shipped zoo tables (inflating 0.5 GB of
# logits takes ~5 s per table on this machine)
FORMATS = {"raw": {"logits_dtype": "float32", "compress": False},
           "raw16": {"logits_dtype": "float16", "compress": False},
           "zip": {"logits_dtype": "float16", "compress": True}}


def paths(case: str, fmt: str) -> tuple[Path, Path]:
    suffix = "" if fmt == "zip" else f".{fmt}"
    return CACHE / f"{case}.val{suffix}.npz", CACHE / f"{case}.test{suffix}.npz"


def generate(case: str, fmt: str) -> None:
    """Write the case's val and test tables in ``fmt`` (skipped when they exist; converted from
    another format's files when those exist: all hold the float16-rounded values of one draw)."""
    from dynexit.table import ExitTable
    from dynexit.testing import synthetic_logits

    n, k, c = CASES[case]
    costs = np.cumsum(np.linspace(1.0, 2.0, k))  # cumulative MFLOPs, later blocks cost more
    for i_split, (split, path) in enumerate(zip(("val", "test"), paths(case, fmt))):
        if path.exists():
            continue
        others = [paths(case, other)[i_split] for other in FORMATS if other != fmt]
        if any(p.exists() for p in others):
            ExitTable.load(next(p for p in others if p.exists())).save(path, **FORMATS[fmt])
            print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
            continue
        rng = np.random.default_rng([7, split == "test"])
        labels = rng.integers(0, c, n)
        logits = np.empty((n, k, c), dtype=np.float32)
        for i, start in enumerate(range(0, n, CHUNK)):
            rows = slice(start, start + CHUNK)
            # rounded to float16, so that every format holds the same values
            logits[rows] = synthetic_logits(labels[rows], k, c, seed=1000 * (split == "test") + i).astype(np.float16)
        meta = {"model": f"synthetic_{case}", "dataset": "synthetic", "split": split}
        ExitTable(logits, labels, costs, meta=meta).save(path, **FORMATS[fmt])
        del logits
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)


def measure(case: str, fmt: str, solver_name: str | None) -> dict:
    """One case, in this (fresh) process; returns the figures."""
    from dynexit import metrics, solvers
    from dynexit.table import ExitTable

    name = solver_name or solvers.DEFAULT
    val_path, test_path = paths(case, fmt)
    cpu = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    val, test = ExitTable.load(val_path), ExitTable.load(test_path)
    load_s = time.perf_counter() - start
    cpu["load"] = time.process_time() - cpu_start

    budgets = metrics.budget_grid(val, 22)[1:-1]  # 20 budgets strictly inside the cost range
    start, cpu_start = time.perf_counter(), time.process_time()
    solver = solvers.make(name, float(budgets[len(budgets) // 2])).fit(val)
    first_fit_s = time.perf_counter() - start
    cpu["first fit"] = time.process_time() - cpu_start
    start, cpu_start = time.perf_counter(), time.process_time()
    result = solver.evaluate(test)
    first_eval_s = time.perf_counter() - start
    cpu["first evaluate"] = time.process_time() - cpu_start

    times = []
    for b in budgets:
        start = time.perf_counter()
        fitted = solvers.make(name, float(b)).fit(val)
        r = fitted.evaluate(test)
        times.append(time.perf_counter() - start)
        assert r.mean_cost > 0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"case": case, "format": fmt, "shape": list(CASES[case]), "solver": name, "load_s": load_s,
            "first_fit_s": first_fit_s, "first_evaluate_s": first_eval_s,
            "per_budget_ms": 1e3 * statistics.median(times), "peak_gb": peak_kb * 1024 / 1e9,
            "test_accuracy": result.accuracy, "test_cost": result.mean_cost,
            "val_exit_accuracy": [round(float(a), 4) for a in val.exit_accuracy()],
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()}}


def run_child(args: list[str]) -> str:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def table(rows: list[dict]) -> str:
    cols = [("load_s", "load (s)", "{:.2f}"), ("first_fit_s", "first fit (s)", "{:.2f}"),
            ("first_evaluate_s", "first evaluate (s)", "{:.2f}"), ("per_budget_ms", "ms / budget", "{:.1f}"),
            ("peak_gb", "peak (GB)", "{:.2f}")]
    header = ["case (N x K x C, val + test)"] + [title for _, title, _ in cols]
    lines = [header]
    for row in rows:
        n, k, c = row["shape"]
        lines.append([f"{row['case']} ({n:,} x {k} x {c:,})"] + [fmt.format(row[key]) for key, _, fmt in cols])
    target = ["target (imagenet)"] + [f"<= {TARGETS[key]:g}" if key in TARGETS else "" for key, _, _ in cols]
    lines.append(target)
    for row in rows:
        if row["case"] == TARGET_CASE:
            lines.append(["met?"] + [("met" if row[key] <= TARGETS[key] else "NOT MET") if key in TARGETS else ""
                                     for key, _, _ in cols])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["imagenet", "small"])
    parser.add_argument("--format", choices=list(FORMATS), default="raw",
                        help="how the tables are stored (default raw: uncompressed float32, memory-mapped)")
    parser.add_argument("--solver", default=None, help="solver name (default: solvers.DEFAULT)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", choices=["generate", "measure"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.cases[0], args.format)
        return
    if args.child == "measure":
        print(json.dumps(measure(args.cases[0], args.format, args.solver)))
        return
    rows = []
    for case in args.cases:
        common = ["--cases", case, "--format", args.format]
        print(run_child(["--child", "generate", *common]), end="", flush=True)
        extra = ["--solver", args.solver] if args.solver else []
        rows.append(json.loads(run_child(["--child", "measure", *common, *extra]).splitlines()[-1]))
    print(f"solver: {rows[0]['solver']}; files: {args.format} {FORMATS[args.format]}")
    print(table(rows))
    for row in rows:
        print(f"{row['case']}: test accuracy {row['test_accuracy']:.4f} at {row['test_cost']:.3f} MFLOPs; "
              f"val accuracy per exit {row['val_exit_accuracy']}; CPU seconds of this process {row['cpu_s']} "
              "(wall above; the machine is shared)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
