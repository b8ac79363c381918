"""Speed benchmark: does real early exit deliver the FLOP speedup on this CPU?

Two modes:

    # thresholds from a solver fitted on the val table (same as `dynexit bench`)
    python benchmarks/speed.py --model runs/dp/checkpoint.safetensors --budget 25

    # thresholds that send a given fraction of the test images out at exit 1 and the rest to the
    # last exit (works on an untrained model: the acceptance check of the speed claim)
    python benchmarks/speed.py --model dynperceiver_fmnist --exit1-fraction 0.5

Both runs time :func:`dynexit.models.optimize_for_inference`'s copy of the model (``--no-optimize``:
the model as loaded). Prints the result and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def exit1_thresholds(model, images, fraction: float, criterion="max_prob") -> np.ndarray:
    """Thresholds sending ``fraction`` of ``images`` out at exit 1 and everyone else to the last exit."""
    from dynexit import criteria
    from dynexit.inference import exit_probabilities

    with torch.no_grad():
        first = torch.cat([model.forward_stage(0, model.init_state(images[s:s + 512]))[1]
                           for s in range(0, len(images), 512)])
    scores = criteria.get(criterion)(exit_probabilities(first)[:, None, :])[:, 0]
    t = np.full(model.num_exits, np.inf)
    t[0] = np.quantile(scores, 1.0 - fraction, method="lower")
    t[-1] = -np.inf
    return t


def main(argv=None) -> int:
    from dynexit.bench import benchmark, format_result, run_bench
    from dynexit.zoo import describe_weights, resolve_model
    from dynexit.tables import load_split_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dynperceiver_fmnist")
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--solver", default=None)
    p.add_argument("--exit1-fraction", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument("--batch1-limit", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-sizes", type=lambda v: tuple(int(b) for b in v.split(",")), default=(256, 1))
    p.add_argument("--json", default=None)
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="time the model as loaded (default: optimize_for_inference's copy, for both runs)")
    args = p.parse_args(argv)
    if (args.budget is None) == (args.exit1_fraction is None):
        p.error("give exactly one of --budget and --exit1-fraction")
    if args.budget is not None:
        r = run_bench(args.model, budget=args.budget, solver=args.solver, limit=args.limit, batch_sizes=args.batch_sizes,
                      batch1_limit=args.batch1_limit, repeats=args.repeats, threads=args.threads, json_path=args.json,
                      optimize=args.optimize)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        model = resolve_model(args.model)
        print(describe_weights(model.weights_source))
        images, labels = load_split_images("test", limit=args.limit)
        t = exit1_thresholds(model, images, args.exit1_fraction)
        r = {"model": args.model, "weights": model.weights_source,
             "solver": f"exit1 fraction {args.exit1_fraction}", "budget_mflops": None,
             **benchmark(model, images, labels, t, batch_sizes=args.batch_sizes, batch1_limit=args.batch1_limit, repeats=args.repeats,
                        optimize=args.optimize)}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=2)
    print(format_result(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
