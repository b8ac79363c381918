"""Ratio of measured to FLOPs speedup of real early exit, repeated: issue 17's acceptance check.

    python benchmarks/bench_ratio.py                       # both CNN zoo models, 3 runs each
    python benchmarks/bench_ratio.py --runs 3 --no-keep-memory --json out.json

Each run is one ``dynexit bench`` (:func:`dynexit.bench.run_bench`) in a fresh process, at batch 256,
1 thread, at the budget matching the final exit's val accuracy
(:func:`dynexit.zoo.reproduce.match_final_budget`, the budget the zoo's NAME.bench.json is made at);
the full model and early exit are timed side by side in that process. Prints every run's ratio,
the median per model, the per-stage wall-time vs FLOPs shares of the median run, and the load
average before and after (the machine may be shared: a high load means noisy timings).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MODELS = ("dynperceiver_fmnist", "multiexit_cnn_fmnist")


def final_budget(name: str) -> float:
    """The budget (MFLOPs per image) of the zoo's bench: the final exit's val accuracy kept."""
    from dynexit import zoo
    from dynexit.zoo.reproduce import match_final_budget

    return match_final_budget(zoo.load_table(name, "val"))


def one_run(name: str, budget: float, args) -> dict:
    """One bench in a fresh process (process-wide settings such as the allocator's do not carry over)."""
    code = ("import json, sys; from dynexit.bench import run_bench; "
            f"r = run_bench({name!r}, budget={budget!r}, batch_sizes=({args.batch_size},), repeats={args.repeats}, "
            f"threads={args.threads}, limit={args.limit!r}, optimize={not args.no_optimize}, "
            f"keep_memory={not args.no_keep_memory}); print('RESULT ' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main(argv=None) -> int:
    """Run the benchmark; print and optionally write the summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--no-optimize", action="store_true")
    p.add_argument("--no-keep-memory", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    summary = {"load_before": os.getloadavg(), "models": {}}
    for name in args.models.split(","):
        budget = final_budget(name)
        key, runs = f"batch{args.batch_size}", []
        for i in range(args.runs):
            runs.append(one_run(name, budget, args))
            print(f"  run {i + 1}: ratio {runs[-1]['timings'][key]['ratio_to_theoretical']:.3f} (best whole pass "
                  f"{runs[-1]['timings'][key]['best_pass']['ratio_to_theoretical']:.3f}), load {os.getloadavg()}",
                  flush=True)
        ratios = [r["timings"][key]["ratio_to_theoretical"] for r in runs]
        passes = [r["timings"][key]["best_pass"]["ratio_to_theoretical"] for r in runs]
        median = sorted(runs, key=lambda r: r["timings"][key]["ratio_to_theoretical"])[len(runs) // 2]
        summary["models"][name] = {"budget_mflops": budget, "ratios": ratios, "median_ratio": statistics.median(ratios),
                                   "best_pass_ratios": passes,
                                   "theoretical_speedup": runs[0]["theoretical_speedup"],
                                   "measured_speedups": [r["timings"][key]["measured_speedup"] for r in runs],
                                   "median_run_stages": median["stages"]["rows"], "inference": median["inference"]}
        print(f"{name}: budget {budget:.4g} MFLOPs, theoretical {runs[0]['theoretical_speedup']:.3f}, ratio per run "
              f"{[round(v, 3) for v in ratios]}, median {statistics.median(ratios):.3f} (best whole pass: "
              f"{[round(v, 3) for v in passes]}, median {statistics.median(passes):.3f})", flush=True)
        for k, row in enumerate(median["stages"]["rows"]):
            print(f"  stage {k + 1} {row['exit']}: {row['wall_share']:.1%} of the time, {row['flops_share']:.1%} of the FLOPs")
    summary["load_after"] = os.getloadavg()
    print(f"load average before {summary['load_before']}, after {summary['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
