"""``dynexit zoo list | info | reproduce`` and ``dynexit report``: the shipped zoo and its results page."""

from __future__ import annotations

import json

import argparse
from pathlib import Path

from dynexit.cli.args import UsageError, data_arg


def _out_folder(text: str) -> str:
    """A folder to write into: an existing folder, or a new one whose parent exists."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: not a folder")
    if not path.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent}: no such folder")
    return str(path)


def cmd_zoo(args) -> int:
    """List the zoo, show one entry as JSON, or rebuild an entry's files (:func:`dynexit.zoo.reproduce.reproduce`)."""
    from dynexit import zoo

    if args.action != "reproduce" and (args.data or args.out):
        raise UsageError(f"--data and --out belong to `dynexit zoo reproduce`, not `dynexit zoo {args.action}`")
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
    zoo.get_entry(args.name)  # an unknown name fails here, before anything loads
    from dynexit.zoo.reproduce import reproduce

    data, root = args.data or (None, None)
    out = reproduce(args.name, device=args.device, work_dir=args.work_dir, skip_train=args.skip_train,
                    progress=not args.no_progress, bench=not args.no_bench, data=data, data_root=root,
                    out_dir=args.out)
    print(f"wrote {out['weights']} and its val/test tables")
    print(f"test accuracy per exit: {', '.join(f'{a:.4f}' for a in out['test_accuracy'])}")
    if "bench" in out:
        from dynexit.bench import format_result

        print(format_result(out["bench"]))
    return 0


def cmd_report(args) -> int:
    """Write docs/results.md (and its figures) from the shipped zoo (:func:`dynexit.report.build_report`)."""
    from dynexit.report import build_report

    results = build_report(args.out, figures=not args.no_figures)
    print(f"wrote {args.out} ({len(results)} zoo models)" + ("" if args.no_figures else " and its figures"))
    return 0


def add_commands(sub) -> None:
    """Register ``zoo`` and ``report`` on an argparse subparsers object."""
    p = sub.add_parser("zoo", help="the pretrained Fashion-MNIST zoo: list, info, reproduce",
                       description="List the zoo, show one model, or rebuild its weights, tables and "
                                   "bench result from scratch with the recipe it was trained with.")
    p.add_argument("action", choices=("list", "info", "reproduce"))
    p.add_argument("name", nargs="?", default=None, help="zoo model name (see `dynexit zoo list`)")
    p.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda")
    p.add_argument("--work-dir", default="runs/zoo", help="where training runs and resumes (default runs/zoo)")
    p.add_argument("--skip-train", action="store_true", help="export the finished checkpoint in the work dir")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU speed benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data", type=data_arg, default=None, metavar="NAME[:ROOT]",
                   help="reproduce: the same recipe on another dataset (digits, cifar10:ROOT, imagefolder:PATH, ...; "
                        "the model takes its classes, channels and image size); needs --out")
    p.add_argument("--out", type=_out_folder, default=None, metavar="DIR",
                   help="reproduce: write NAME.safetensors/.json/.val.npz/.test.npz/.bench.json here (created when "
                        "missing; default the zoo folder, $DYNEXIT_ZOO or data/zoo); DYNEXIT_ZOO=DIR make app opens it")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("report", help="write docs/results.md and its figures from the shipped zoo",
                       description="Compute the results page (curves, per-exit tables, exit histograms, "
                                   "criteria, the papers' claims, CPU speedups) from data/zoo.")
    p.add_argument("--out", default="docs/results.md", help="the Markdown page (figures go to figures/ next to it)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures (they need Chromium)")
    p.set_defaults(func=cmd_report)
