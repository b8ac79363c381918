"""``dynexit train | table | bench``: the commands that train or run a model.

A model name is resolved by :func:`dynexit.zoo.resolve_model` (a zoo name runs its shipped weights,
an architecture name only with ``--untrained``); every argument is checked before a model or data
set loads. ``torchrun --nproc_per_node N -m dynexit train ...`` trains with DDP.
"""

from __future__ import annotations

import json
from pathlib import Path

from dynexit.cli.args import (UsageError, budget_arg, data_arg, directory_arg, existing_file_arg, floats_arg,
                              json_object_arg, output_file, output_file_arg, positive_float_arg, positive_int_arg,
                              positive_ints_arg, thresholds_arg)


def check_model_name(args) -> None:
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
    elif zoo.looks_like_path(text):
        path = Path(text).expanduser()
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        if not path.is_file():
            raise UsageError(f"{path}: {'a folder, not a checkpoint file' if path.exists() else 'no such checkpoint file'}")


def _data(args, *splits) -> tuple[str, str | None]:
    """``(dataset name, root)`` from ``--data NAME[:ROOT]`` and ``--data-root``, its files checked for
    ``splits`` (cheap, before any model loads). UsageError when both give a root."""
    from dynexit.data import check_fashion_mnist_source, get_dataset

    name, root = args.data
    if root is not None and args.data_root is not None:
        raise UsageError(f"--data {name}:{root} and --data-root {args.data_root}: give the root once")
    root = root if root is not None else args.data_root
    if name == "fashion-mnist":
        for split in splits:
            check_fashion_mnist_source(split, root)
    else:
        get_dataset(name, root)  # class names and input spec: a missing tree or torchvision root fails here
    return name, root


def _add_data(p, default_help: str) -> None:
    """``--data NAME[:ROOT]`` and ``--data-root DIR`` (the same root, for Fashion-MNIST's old spelling)."""
    p.add_argument("--data", type=data_arg, default=("fashion-mnist", None), metavar="NAME[:ROOT]",
                   help="dataset: fashion-mnist (default), digits, cifar10, cifar100, svhn (ROOT: the folder with "
                        "torchvision's files, never downloaded), torchvision:NAME[:ROOT] (any torchvision "
                        "classification set), imagefolder:PATH (a class-per-folder tree)" + default_help)
    p.add_argument("--data-root", type=directory_arg, default=None,
                   help="folder with the dataset's files (Fashion-MNIST: the IDX files, gzipped or not; default: "
                        "$DYNEXIT_DATA when set, the only place read then; else the shipped test split and the "
                        "Debian package)")


def cmd_train(args) -> int:
    """Train ``--model`` (DDP under torchrun); rank 0 prints the checkpoint and val accuracies as JSON.

    The parser's destinations are :class:`dynexit.training.loop.TrainConfig` fields, so
    :func:`~dynexit.training.loop.config_from_args` maps them in one place.
    """
    args.data, args.data_root = _data(args, "train")
    from dynexit.models import is_model
    from dynexit.training.loop import config_from_args, train

    if not is_model(args.model):
        raise UsageError(f"unknown model {args.model!r}; see `python -c 'import dynexit.models as m; print(m.list_models())'`")
    result = train(config_from_args(args))
    if result["rank"] == 0:
        print(json.dumps({"checkpoint": result["checkpoint"], "val_accuracy": result["val_accuracy"],
                          "exit_names": result["exit_names"], "seconds_per_epoch": result["seconds_per_epoch"]}))
    return 0


def cmd_table(args) -> int:
    """Run ``--model`` over ``--split`` and write its ExitTable (.npz); print which weights ran."""
    check_model_name(args)
    dataset, root = _data(args, args.split)
    from dynexit.tables import build_table
    from dynexit.zoo import describe_weights

    partial = Path(args.out).with_name(Path(args.out).name + ".partial.npz")
    table = build_table(args.model, split=args.split, dataset=dataset, batch_size=args.batch_size, device=args.device,
                        limit=args.limit, data_root=root, progress=not args.quiet, untrained=args.untrained,
                        num_workers=args.workers, logits_dtype=args.logits_dtype, partial=partial,
                        save_every=args.save_every)
    if table is None:  # a torchrun process other than rank 0: rank 0 writes the gathered table
        return 0
    path = table.save(args.out, logits_dtype=args.logits_dtype)
    acc = table.exit_accuracy()
    print(describe_weights(table.meta["weights"]))
    print(f"wrote {path}: {table.num_samples} samples, exits {list(table.exit_names)}, "
          f"costs {[round(c, 3) for c in table.costs.tolist()]} MFLOPs, accuracy {[round(a, 4) for a in acc.tolist()]}")
    return 0


def cmd_bench(args) -> int:
    """Time the full model against early exit at ``--budget`` (fitted on val) or ``--thresholds``."""
    from dynexit.bench import format_result, run_bench

    if (args.budget is None) == (args.thresholds is None):
        raise UsageError("give either --budget B (average MFLOPs per image) or --thresholds T1,T2,...")
    check_model_name(args)
    dataset, root = _data(args, "test")
    # run_bench checks all of it (the budget against the checkpoint's declared costs) before it loads a model
    request = dict(budget=args.budget, thresholds=args.thresholds, criterion=args.criterion, val_table=args.val_table,
                   limit=args.limit, batch_sizes=tuple(args.batch_sizes), batch1_limit=args.batch1_limit,
                   repeats=args.repeats, threads=args.threads, data_root=root, json_path=args.json,
                   dataset=dataset, optimize=args.optimize, keep_memory=args.keep_memory)
    result = run_bench(args.model, solver=args.solver, untrained=args.untrained, **request)
    print(format_result(result))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _add_train(sub) -> None:
    """``dynexit train``: every option a TrainConfig field (``dest``), None = the config default."""
    p = sub.add_parser("train", help="train a multi-exit model (DDP under torchrun)",
                       description="Train a multi-exit model; checkpoints (safetensors + JSON) every epoch. The "
                                   "sidecar records the dataset and its class names (training_data); `dynexit "
                                   "table` refuses data whose classes differ.")
    p.add_argument("--model", required=True, help="registered model name, e.g. dynperceiver_fmnist")
    p.add_argument("--model-kwargs", type=json_object_arg, default=None, help='JSON kwargs for the model, e.g. \'{"drop_rate": 0.1}\'')
    _add_data(p, "; trains on its train split, validates on its val split")
    p.add_argument("--out", dest="out_dir", metavar="OUT", default="runs/train",
                   help="output directory (checkpoint, resume state, log)")
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
    p.add_argument("--no-augment", dest="augment", action="store_false", help="disable random crop + flip")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", dest="num_workers", metavar="WORKERS", type=int, default=0, help="DataLoader workers")
    p.add_argument("--train-subset", type=positive_int_arg, default=None, help="use only the first N training images")
    p.add_argument("--val-subset", type=positive_int_arg, default=None, help="use only the first N validation images")
    p.add_argument("--max-steps", type=positive_int_arg, default=None, help="stop after N optimiser steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.safetensors (refused when it was "
                                                         "trained on another dataset)")
    p.add_argument("--force", action="store_true", help="start afresh in an OUT that holds an earlier run's checkpoint, "
                                                        "replacing it (without --force or --resume that is refused)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=cmd_train)


def model_args(p) -> None:
    """--model (a zoo name or a checkpoint) and --untrained (an architecture with random weights)."""
    p.add_argument("--model", required=True,
                   help="zoo model name (runs its shipped weights, e.g. dvt_fmnist), or a checkpoint "
                        "(.safetensors with its .json sidecar)")
    p.add_argument("--untrained", action="store_true",
                   help="run an architecture name from the registry with RANDOM weights (timing, smoke tests); "
                        "without it an architecture name is refused")



def _add_table(sub) -> None:
    """``dynexit table``: a model's ExitTable on a dataset's split, streamed (sharded under torchrun)."""
    p = sub.add_parser("table", help="run a model over a split and write its ExitTable",
                       description="Write the ExitTable (.npz) of a model on a dataset's val or test split; "
                                   "streams through a DataLoader, resumes an interrupted run, and under torchrun "
                                   "shards the split across processes and gathers one table.")
    model_args(p)
    p.add_argument("--split", choices=("val", "test"), required=True)
    p.add_argument("--out", type=output_file(".npz"), required=True, help="output .npz path (its folder must exist)")
    p.add_argument("--batch-size", type=positive_int_arg, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=positive_int_arg, default=None, help="only the first N images of the split")
    _add_data(p, "")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--logits-dtype", choices=("float16", "float32"), default="float16",
                   help="logits kept and saved as (default float16, as the zoo's tables)")
    p.add_argument("--save-every", type=positive_int_arg, default=50,
                   help="save partial results to OUT.partial.npz every N batches; a rerun with the same "
                        "arguments resumes from them (default 50)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_table)


def _add_bench(sub) -> None:
    """``dynexit bench``: a budget or thresholds, and what to time (batch sizes, repeats, threads)."""
    from dynexit import criteria, solvers

    p = sub.add_parser("bench", help="time the full model against real early exit (CPU)",
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
    _add_data(p, "")
    p.add_argument("--json", type=output_file_arg, default=None, help="write the results as JSON here (its folder must exist)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="time the model as loaded (default: an optimized inference copy - BatchNorm folded, conv+ReLU "
                        "fused, linear+GELU fused, channels-last - for both the full model and early exit; logits "
                        "within 1e-4, costs unchanged)")
    p.add_argument("--no-keep-memory", dest="keep_memory", action="store_false",
                   help="leave the C allocator as the process started (default with the optimized copy: glibc keeps "
                        "freed memory, so each batch reuses the last one's pages instead of page-faulting new ones)")
    p.set_defaults(func=cmd_bench)


def add_commands(sub) -> None:
    """Register ``train``, ``table`` and ``bench`` on an argparse subparsers object."""
    _add_train(sub)
    _add_table(sub)
    _add_bench(sub)
