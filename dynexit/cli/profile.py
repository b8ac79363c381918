"""``dynexit profile``: each exit's cumulative latency on this machine, stored beside the model.

``dynexit profile --model NAME`` resolves NAME with :func:`dynexit.zoo.resolve_model` (a zoo name runs
its shipped weights, a checkpoint path its file, an architecture only with ``--untrained``), times every
exit with :func:`dynexit.profile.measure` at batch 1 and ``--batch-size``, writes ``NAME.profile.json``
beside the weights (or ``--out``), and prints one row per exit: ms per image, MFLOPs, and the measured
speedup of leaving there against the FLOPs speedup, both over the last exit.
"""

from __future__ import annotations

from pathlib import Path

from dynexit.cli.args import UsageError, output_file_arg, positive_float_arg, positive_int_arg


def _device(text: str) -> str:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda``; UsageError for a missing GPU."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu (or auto)")
    return text


def _out_path(model, args) -> Path:
    """``--out``, else ``NAME.profile.json`` beside the weights that ran; an untrained model needs --out."""
    from dynexit import profile

    if args.out:
        return Path(args.out)
    source = getattr(model, "weights_source", None)
    if not isinstance(source, dict) or not source.get("path"):
        raise UsageError("an untrained model has no weights file to store its profile beside: give --out FILE.json")
    return profile.profile_path(source["path"])


def format_profile(prof: dict, mflops) -> str:
    """The per-exit table: ms per image at each batch size, MFLOPs, measured and FLOPs speedups vs the last exit."""
    from dynexit import profile

    names, sizes = prof["exit_names"], sorted(prof["batches"], key=int)
    lines = [f"measured on {profile.machine(prof)}"]
    head = f"{'exit':18s}" + "".join(f"{'ms/img @' + b:>12s}" for b in sizes) + f"{'MFLOPs':>10s}"
    head += "".join(f"{'speedup @' + b:>13s}" for b in sizes) + f"{'FLOPs speedup':>15s}"
    lines.append(head)
    ms = {b: prof["batches"][b]["median_ms"] for b in sizes}  # as measured: the reader sees any noise
    for k, name in enumerate(names):
        row = f"{name[:18]:18s}" + "".join(f"{ms[b][k]:12.3f}" for b in sizes) + f"{mflops[k]:10.2f}"
        row += "".join(f"{ms[b][-1] / ms[b][k]:12.2f}x" for b in sizes) + f"{mflops[-1] / mflops[k]:14.2f}x"
        lines.append(row)
    lines.append("speedup: the last exit's time (or MFLOPs) over this exit's; measured / FLOPs below 1 means the "
                 "exit saves less time than its FLOPs promise")
    for b in sizes:
        try:
            profile.exit_costs_ms(prof, int(b))
        except ValueError as err:
            lines.append(f"warning: {err}")
    return "\n".join(lines)


def cmd_profile(args) -> int:
    """Measure ``--model``'s per-exit latency, write the profile JSON, print the per-exit table."""
    from dynexit.cli.models import check_model_name

    check_model_name(args)
    if args.untrained and not args.out:
        raise UsageError("an untrained model has no weights file to store its profile beside: give --out FILE.json")
    device = _device(args.device)
    from dynexit import profile
    from dynexit.zoo import resolve_model

    model = resolve_model(args.model, untrained=args.untrained)
    out = _out_path(model, args)
    sizes = sorted({1, args.batch_size})
    prof = profile.measure(model, sizes, device=device, threads=args.threads, min_run_time=args.min_time)
    mflops = [float(c) for c in model.exit_costs()]
    prof["mflops"] = mflops
    prof["model"] = args.model if not Path(args.model).suffix else Path(args.model).stem
    path = profile.save(prof, out)
    print(format_profile(prof, mflops))
    print(f"wrote {path}")
    return 0


def add_commands(sub) -> None:
    """Register ``profile`` on an argparse subparsers object."""
    from dynexit.cli.models import model_args

    p = sub.add_parser("profile", help="measure each exit's latency (ms per image) on this machine",
                       description="Time every exit of a model (the staged path up to and including it) at batch 1 "
                                   "and --batch-size, with warm-up and CUDA synchronisation, and write "
                                   "NAME.profile.json beside its weights: budgets in milliseconds for the solvers, "
                                   "the app and the anytime view.")
    model_args(p)
    p.add_argument("--batch-size", type=positive_int_arg, default=64, help="the batch size timed besides 1 (default 64)")
    p.add_argument("--threads", type=positive_int_arg, default=None, help="torch CPU threads (default: torch's setting)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default: the GPU when there is one), cpu, cuda")
    p.add_argument("--min-time", type=positive_float_arg, default=0.5,
                   help="seconds of timing per exit and batch size (default 0.5; more is steadier)")
    p.add_argument("--out", type=output_file_arg, default=None,
                   help="the profile JSON (default: NAME.profile.json beside the weights; for a zoo model in the zoo folder)")
    p.set_defaults(func=cmd_profile)
