"""Exit latency profiles: each exit's cumulative latency measured on the user's hardware.

FLOPs are a proxy; engineers decide in milliseconds, and measured speedups differ from FLOPs
speedups (small ops, memory traffic, the exit heads themselves). A profile times
``model.forward_upto(x, k)`` (the staged path up to and including exit k: what an image leaving at
exit k costs, its earlier exit heads included) for every exit, at batch 1 and at a chosen batch size,
with :class:`torch.utils.benchmark.Timer` (warm-up, CUDA synchronisation, thread count, median and
interquartile range over blocked runs; PyTorch's own benchmarking utility).

The profile is a JSON file stored beside the model's weights (``NAME.profile.json``): device,
versions, thread count, and per batch size the per-exit median and IQR in milliseconds per image.
:func:`exit_costs_ms` gives the (K,) costs a solver or :mod:`dynexit.anytime` can use instead of MFLOPs,
and :func:`with_costs` a copy of an ExitTable whose costs are those milliseconds (so every solver, curve
and evaluation works in ms unchanged). Reading a profile needs no torch (only :func:`measure` does), so
the viewer side (the app) reads profiles cheaply.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path

import numpy as np

FORMAT, FORMAT_VERSION = "dynexit.profile", 1


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def measure(model, batch_sizes=(1, 64), *, device: str = "cpu", threads: int | None = None,
            min_run_time: float = 0.2, seed: int = 0) -> dict:
    """Per-exit cumulative latency of ``model`` (a MultiExitModel) in ms per image.

    For each batch size B, random images (B, in_chans, H, W) in [0, 1] are run through
    ``model.forward_upto(x, k)`` for k = 0..K-1 under ``torch.inference_mode`` on an eval-mode view
    of the model (a shared model's mode is not changed). ``threads``: CPU threads for the timing
    (default: torch's current setting). Returns the profile dict (see :func:`save`). Raises
    ValueError for an empty or non-positive batch size list or a non-positive ``min_run_time``.
    """
    import torch
    from torch.utils.benchmark import Timer

    from dynexit.models._base import eval_view

    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be positive seconds, got {min_run_time}")
    dev = torch.device(device)
    threads = torch.get_num_threads() if threads is None else int(threads)
    view = eval_view(model).to(dev)
    gen = torch.Generator().manual_seed(seed)
    per_batch = {}
    for b in sizes:
        x = torch.rand((b, model.in_chans, *model.input_size), generator=gen).to(dev)
        medians, iqrs = [], []
        for k in range(model.num_exits):
            timer = Timer("run(x, k)", globals={"run": _runner(view), "x": x, "k": k}, num_threads=threads)
            m = timer.blocked_autorange(min_run_time=min_run_time)  # warms up, synchronises CUDA
            medians.append(1e3 * m.median / b)
            iqrs.append(1e3 * m.iqr / b)
        per_batch[str(b)] = {"median_ms": medians, "iqr_ms": iqrs}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "exit_names": list(model.exit_names),
            "arch": getattr(model, "arch_name", None), "device": dev.type, "device_name": _device_name(dev),
            "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "batches": per_batch}


def _runner(view):
    import torch

    def run(x, k):
        with torch.inference_mode():
            view.forward_upto(x, k)
    return run


def profile_path(weights: str | os.PathLike) -> Path:
    """Where the profile of a weights file lives: ``NAME.safetensors`` -> ``NAME.profile.json``."""
    path = Path(weights)
    return path.with_name(path.name.removesuffix(".safetensors") + ".profile.json")


def save(profile: dict, path: str | os.PathLike) -> Path:
    """Write ``profile`` (from :func:`measure`) as JSON after validating it; returns the path."""
    validate(profile, str(path))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    tmp.replace(path)  # never a half-written profile
    return path


def load(path: str | os.PathLike) -> dict:
    """Read and validate a profile; raises ValueError naming the file and the problem."""
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such profile; measure one with `dynexit profile --model NAME`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable profile ({type(err).__name__}); measure it again with "
                         "`dynexit profile`") from None
    validate(profile, str(path))
    return profile


def validate(profile, where: str = "profile") -> None:
    """Raise ValueError unless ``profile`` is a dynexit profile with finite, non-decreasing latencies."""
    def bad(problem):
        return ValueError(f"{where}: {problem}; measure it again with `dynexit profile`")
    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        raise bad(f"not a {FORMAT} file")
    if profile.get("format_version") != FORMAT_VERSION:
        raise bad(f"format version {profile.get('format_version')!r}, this dynexit reads {FORMAT_VERSION}")
    names, batches = profile.get("exit_names"), profile.get("batches")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("exit_names must be a non-empty list of names")
    if not isinstance(batches, dict) or not batches:
        raise bad("no batch sizes measured")
    for b, entry in batches.items():
        if not (isinstance(b, str) and b.isdigit() and int(b) > 0) or not isinstance(entry, dict):
            raise bad(f"batch size {b!r} is not a positive integer")
        for key, least, words in (("median_ms", 0.0, "positive"), ("iqr_ms", None, "non-negative")):
            vals = entry.get(key)  # a latency is never 0 (it would make an exit free); a spread may be
            if not isinstance(vals, list) or len(vals) != len(names) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > least if least is not None else v >= 0) for v in vals):
                raise bad(f"batch {b}: {key} must be {len(names)} finite {words} numbers")


def exit_costs_ms(profile: dict, batch_size: int | None = None) -> np.ndarray:
    """(K,) cumulative ms per image at ``batch_size`` (default: the largest measured).

    An exit cannot finish before the one before it: a dip of up to 10% (timing noise) is smoothed
    away (each cost raised to the largest before it); a larger one means the measurement is not to be
    trusted and raises ValueError, as does a batch size the profile did not measure.
    """
    batches = profile["batches"]
    key = str(max(int(b) for b in batches) if batch_size is None else int(batch_size))
    if key not in batches:
        raise ValueError(f"the profile measured batch sizes {', '.join(sorted(batches, key=int))}, not {key}")
    measured = np.asarray(batches[key]["median_ms"], dtype=np.float64)
    smoothed = np.maximum.accumulate(measured)
    if np.any(measured < 0.9 * smoothed):
        raise ValueError(f"at batch {key} the measured latencies fall with depth ({np.round(measured, 3).tolist()} ms): "
                         "the machine was too busy to measure; measure again on a quiet machine with a larger "
                         "--min-time")
    return smoothed


def with_costs(table, profile: dict, batch_size: int | None = None):
    """A new ExitTable: ``table``'s logits, labels and names with the profile's ms per image as costs.

    ``table``: an ExitTable (N, K exits); ``profile``: a validated profile (:func:`load`) of the same
    model; ``batch_size``: which measured batch size (default the largest). The result's ``costs`` are
    (K,) cumulative milliseconds per image (:func:`exit_costs_ms`), ``meta["costs_unit"] = "ms"`` and
    ``meta["profile"]`` says where they were measured. The table itself is not changed (nothing writes
    into an ExitTable). Raises ValueError when the profile's exits differ from the table's (count or
    names) or the batch size was not measured.
    """
    from dynexit.table import ExitTable

    names = list(profile["exit_names"])
    if len(names) != table.num_exits:
        raise ValueError(f"the profile has {len(names)} exits ({', '.join(names)}), the table {table.num_exits} "
                         f"({', '.join(table.exit_names)}): is it the profile of another model?")
    if names != list(table.exit_names):
        raise ValueError(f"the profile's exits ({', '.join(names)}) are not the table's "
                         f"({', '.join(table.exit_names)}): is it the profile of another model?")
    ms = exit_costs_ms(profile, batch_size)
    if not np.all(ms > 0):
        raise ValueError(f"the profile's latencies must be positive to serve as costs, got {ms.tolist()}")
    key = str(max(int(b) for b in profile["batches"]) if batch_size is None else int(batch_size))
    meta = dict(table.meta, costs_unit="ms", profile=machine(profile) + f", batch {key}")
    return ExitTable(table.logits, table.labels, ms, list(table.exit_names), table.index, meta)


def machine(profile: dict) -> str:
    """Where a profile was measured, in words: ``"cpu: x86_64 (2 cores), 1 thread, torch 2.5.1"``."""
    threads = profile.get("threads")
    where = f"{profile.get('device', '?')}: {profile.get('device_name', '?')}"
    if profile.get("device") == "cpu" and threads:
        where += f", {threads} thread{'s' if threads != 1 else ''}"
    return where + f", torch {profile.get('torch', '?')}"


def speedups(profile: dict, batch_size: int | None = None) -> np.ndarray:
    """(K,) measured speedup of each exit over the last one: last exit's ms / exit k's ms (>= 1)."""
    ms = exit_costs_ms(profile, batch_size)
    return ms[-1] / ms
