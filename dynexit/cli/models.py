"""The model subcommands of the ``dynexit`` CLI: ``train``, ``table`` and ``bench``.

``dynexit.cli`` calls :func:`add_subcommands`; ``python -m dynexit.cli.models ...`` runs them alone
(``torchrun --nproc_per_node N -m dynexit.cli.models train ...`` for DDP). Bad arguments or files
print one line on stderr and exit with status 2 (:func:`dynexit.cli.run`); every argument is checked
before a model or data set loads. A model name is resolved by :func:`dynexit.zoo.resolve_model`: a
zoo name runs its shipped weights, an architecture name only with ``--untrained``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from dynexit.cli import (UsageError, _Parser, budget_arg, directory_arg, existing_file_arg, floats_arg,
                         output_file, output_file_arg, positive_float_arg, positive_int_arg, positive_ints_arg,
                         run, thresholds_arg)


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r} ({err.msg})") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}... (nested too deeply)") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}")
    return value


def _check_model_name(args) -> None:
    """A zoo name, an existing checkpoint, or (with --untrained) an architecture; cheap, before any load."""
    from dynexit import zoo

    text = args.model
    if args.untrained:
        return  # resolve_model says at once when it is not a registered architecture
    if text in zoo.ENTRIES:
        path = zoo.weights_path(text)
        if not path.is_file():
            raise UsageError(f"{path}: missing weights of zoo model {text!r}; rebuild them with "
                             f"`dynexit zoo reproduce {text}` (or restore data/zoo from git)")
    elif zoo._looks_like_path(text):
        path = Path(text).expanduser()
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        if not path.is_file():
            raise UsageError(f"{path}: {'a folder, not a checkpoint file' if path.exists() else 'no such checkpoint file'}")


def _check_data_root(root, *splits) -> None:
    """The Fashion-MNIST files of ``splits`` are where the user said (--data-root, else a set DYNEXIT_DATA)."""
    from dynexit.data import check_fashion_mnist_source

    for split in splits:
        check_fashion_mnist_source(split, root)


# ----------------------------------------------------------------------------- handlers

def cmd_train(args) -> int:
    if args.data in ("fashion-mnist", "fmnist", "fashion_mnist"):
        _check_data_root(args.data_root, "train")
    from dynexit.models import is_model
    from dynexit.training.loop import config_from_args, train

    if not is_model(args.model):
        raise ValueError(f"unknown model {args.model!r}; see `python -c 'import dynexit.models as m; print(m.list_models())'`")
    args.out_dir = args.out
    args.augment = not args.no_augment
    args.progress = not args.no_progress
    args.num_workers = args.workers
    if args.model_kwargs is None:
        args.model_kwargs = {}
    cfg = config_from_args(args)
    result = train(cfg)
    if result["rank"] == 0:
        acc = result["val_accuracy"]
        print(json.dumps({"checkpoint": result["checkpoint"], "val_accuracy": acc,
                          "exit_names": result["exit_names"], "seconds_per_epoch": result["seconds_per_epoch"]}))
    return 0


def cmd_table(args) -> int:
    _check_model_name(args)
    _check_data_root(args.data_root, args.split)
    from dynexit.tables import build_table
    from dynexit.zoo import describe_weights

    table = build_table(args.model, split=args.split, batch_size=args.batch_size, device=args.device,
                        limit=args.limit, data_root=args.data_root, progress=not args.quiet, untrained=args.untrained)
    path = table.save(args.out)
    acc = table.exit_accuracy()
    print(describe_weights(table.meta["weights"]))
    print(f"wrote {path}: {table.num_samples} samples, exits {list(table.exit_names)}, "
          f"costs {[round(c, 3) for c in table.costs.tolist()]} MFLOPs, accuracy {[round(a, 4) for a in acc.tolist()]}")
    return 0


def cmd_bench(args) -> int:
    from dynexit.bench import format_result, run_bench

    if (args.budget is None) == (args.thresholds is None):
        raise UsageError("give either --budget B (average MFLOPs per image) or --thresholds T1,T2,...")
    _check_model_name(args)
    # run_bench checks all of it (the budget against the checkpoint's declared costs) before it loads a model
    request = dict(budget=args.budget, thresholds=args.thresholds, criterion=args.criterion, val_table=args.val_table,
                   limit=args.limit, batch_sizes=tuple(args.batch_sizes), batch1_limit=args.batch1_limit,
                   repeats=args.repeats, threads=args.threads, data_root=args.data_root, json_path=args.json)
    result = run_bench(args.model, solver=args.solver, untrained=args.untrained, **request)
    print(format_result(result))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_zoo(args) -> int:
    from dynexit import zoo

    if args.action == "list":
        for name in zoo.list():
            e = zoo.ENTRIES[name]
            state = "shipped" if zoo.available(name) else "missing (reproduce it)"
            print(f"{name:24s} {state:22s} {e.summary}")
        return 0
    if not args.name:
        raise UsageError(f"`dynexit zoo {args.action}` needs a model name: one of {', '.join(zoo.list())}")
    if args.action == "info":
        print(json.dumps(zoo.info(args.name), indent=2))
        return 0
    out = zoo.reproduce(args.name, device=args.device, work_dir=args.work_dir, skip_train=args.skip_train,
                        progress=not args.no_progress, bench=not args.no_bench)
    print(f"wrote {out['weights']} and its val/test tables")
    print(f"test accuracy per exit: {', '.join(f'{a:.4f}' for a in out['test_accuracy'])}")
    if "bench" in out:
        from dynexit.bench import format_result
        print(format_result(out["bench"]))
    return 0


def cmd_report(args) -> int:
    from dynexit.report import build_report

    results = build_report(args.out, figures=not args.no_figures)
    print(f"wrote {args.out} ({len(results)} zoo models)" + ("" if args.no_figures else " and its figures"))
    return 0


# ----------------------------------------------------------------------------- parsers

def add_subcommands(subparsers) -> None:
    """Register ``train``, ``table``, ``bench``, ``zoo`` and ``report`` on an argparse subparsers object."""
    from dynexit import criteria, solvers

    p = subparsers.add_parser("train", help="train a multi-exit model (DDP under torchrun)",
                              description="Train a multi-exit model; checkpoints (safetensors + JSON) every epoch.")
    p.add_argument("--model", required=True, help="registered model name, e.g. dynperceiver_fmnist")
    p.add_argument("--model-kwargs", type=_json_dict, default=None, help='JSON kwargs for the model, e.g. \'{"drop_rate": 0.1}\'')
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default), cifar10 or cifar100")
    p.add_argument("--data-root", type=directory_arg, default=None, help="folder with the dataset files")
    p.add_argument("--out", default="runs/train", help="output directory (checkpoint, resume state, log)")
    p.add_argument("--epochs", type=positive_float_arg, default=None,
                   help="training length in epochs, > 0 (a fraction trains part of an epoch)")
    p.add_argument("--batch-size", type=positive_int_arg, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--loss-weights", type=floats_arg, default=None, help="one weight per exit, comma-separated")
    p.add_argument("--distill-alpha", type=float, default=None, help="self-distillation weight (0 disables)")
    p.add_argument("--distill-temperature", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the weights (0 disables)")
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--no-augment", action="store_true", help="disable random crop + flip")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--train-subset", type=positive_int_arg, default=None, help="use only the first N training images")
    p.add_argument("--val-subset", type=positive_int_arg, default=None, help="use only the first N validation images")
    p.add_argument("--max-steps", type=positive_int_arg, default=None, help="stop after N optimiser steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.safetensors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    def model_args(p):
        p.add_argument("--model", required=True,
                       help="zoo model name (runs its shipped weights, e.g. dvt_fmnist), or a checkpoint "
                            "(.safetensors with its .json sidecar)")
        p.add_argument("--untrained", action="store_true",
                       help="run an architecture name from the registry with RANDOM weights (timing, smoke tests); "
                            "without it an architecture name is refused")

    p = subparsers.add_parser("table", help="run a model over a split and write its ExitTable",
                              description="Write the ExitTable (.npz) of a model on the fashion-mnist val or test split.")
    model_args(p)
    p.add_argument("--split", choices=("val", "test"), required=True)
    p.add_argument("--out", type=output_file(".npz"), required=True, help="output .npz path (its folder must exist)")
    p.add_argument("--batch-size", type=positive_int_arg, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="only the first N images of the split")
    p.add_argument("--data-root", type=directory_arg, default=None,
                   help="folder holding the Fashion-MNIST IDX files, gzipped or not (default: $DYNEXIT_DATA when "
                        "set, the only place read then; else the shipped test split and the Debian package)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_table)

    p = subparsers.add_parser("bench", help="time the full model against real early exit (CPU)",
                              description="Fit thresholds on val for a budget, then time full vs early-exit "
                                          "inference on the test images at batch 256 and 1.")
    model_args(p)
    p.add_argument("--budget", type=budget_arg, default=None,
                   help="average MFLOPs per image, at least the first exit's cost (at or above the last exit's "
                        "cost every image may run the whole network)")
    p.add_argument("--solver", default=None, choices=solvers.available(),
                   help=f"threshold solver (default: {solvers.DEFAULT})")
    p.add_argument("--criterion", default="max_prob", choices=criteria.available(),
                   help="exit criterion for solvers that take one")
    p.add_argument("--thresholds", type=thresholds_arg, default=None,
                   help="explicit thresholds instead of a solver, comma-separated, one per exit (the last may be "
                        "omitted); the words inf (nobody leaves there) and -inf (everyone does) are allowed. "
                        "Write negative values with '=': --thresholds=-1,-2 (argparse reads -1,... as an option)")
    p.add_argument("--val-table", type=existing_file_arg, default=None,
                   help="precomputed val ExitTable (.npz) of the same model (default: a zoo model's shipped one when its "
                        "weights hash matches, else built)")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="only the first N test images")
    p.add_argument("--batch-sizes", type=positive_ints_arg, default=[256, 1], help="default 256,1")
    p.add_argument("--batch1-limit", type=positive_int_arg, default=300, help="images timed at batch 1")
    p.add_argument("--repeats", type=positive_int_arg, default=3)
    p.add_argument("--threads", type=positive_int_arg, default=None, help="torch CPU threads")
    p.add_argument("--data-root", type=directory_arg, default=None,
                   help="folder holding the Fashion-MNIST IDX files, gzipped or not (default: $DYNEXIT_DATA when "
                        "set, the only place read then; else the shipped test split and the Debian package)")
    p.add_argument("--json", type=output_file_arg, default=None, help="write the results as JSON here (its folder must exist)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("zoo", help="the pretrained Fashion-MNIST zoo: list, info, reproduce",
                              description="List the zoo, show one model, or rebuild its weights, tables and "
                                          "bench result from scratch with the recipe it was trained with.")
    p.add_argument("action", choices=("list", "info", "reproduce"))
    p.add_argument("name", nargs="?", default=None, help="zoo model name (see `dynexit zoo list`)")
    p.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda")
    p.add_argument("--work-dir", default="runs/zoo", help="where training runs and resumes (default runs/zoo)")
    p.add_argument("--skip-train", action="store_true", help="export the finished checkpoint in the work dir")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU speed benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_zoo)

    p = subparsers.add_parser("report", help="write docs/results.md and its figures from the shipped zoo",
                              description="Compute the results page (curves, per-exit tables, exit histograms, "
                                          "criteria, the papers' claims, CPU speedups) from data/zoo.")
    p.add_argument("--out", default="docs/results.md", help="the Markdown page (figures go to figures/ next to it)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures (they need Chromium)")
    p.set_defaults(func=cmd_report)


def main(argv=None) -> int:
    parser = _Parser(prog="dynexit")
    add_subcommands(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
