"""The timing half of ``dynexit bench``: the full model stage by stage, and real early exit.

:func:`benchmark` times, on the same images and batches,

- the full model, run as ``forward`` runs it (``init_state`` then every ``forward_stage``) with a
  clock around each stage, so the per-stage report (wall-time share against FLOPs share, at the
  first batch size) comes from the very run that gives the full model's time, and
- :func:`dynexit.inference.early_exit` at the given thresholds,

batch by batch in turn (:func:`_interleaved`). The times reported are the sum over batches of each
batch's best of the repeats (the machine may be shared: a burst of another process's load then
spoils one batch's run, not a whole pass); the best whole pass is recorded too (``best_pass``).

By default both run an inference copy of the model (:func:`dynexit.models.optimize_for_inference`:
BatchNorm folded into the convs, channels-last, exact pool / residual rewrites; logits within 1e-4),
the same copy for both, so the comparison stays fair; costs (MFLOPs) are always the model's own.
With it, the process's allocator keeps freed memory (:func:`keep_freed_memory`): a batch's feature
maps then reuse the pages of the previous batch's instead of faulting in fresh, zeroed pages, a cost
FLOPs do not count that falls mostly on the first stages (the largest maps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import time

import numpy as np


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> dict:
    """Make this process's C allocator keep and reuse freed memory; what was set, as a JSON-able dict.

    glibc's ``malloc`` serves blocks over its mmap threshold (128 KiB, growing to at most 32 MiB)
    with fresh ``mmap`` pages and hands freed heap tops back to the kernel (trim threshold), so
    every batch's feature maps (6.4 MB for a (256, 32, 14, 14) float32 map) start with a minor page
    fault per 4 KiB page: ~10,000 faults per batch in the Dynamic Perceiver's first stage, measured
    with ``getrusage``. Raising both thresholds (``mallopt(M_MMAP_THRESHOLD)``, ``M_TRIM_THRESHOLD``;
    the same effect as the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment
    variables, or as the caching allocators jemalloc / tcmalloc that PyTorch's CPU performance guide
    recommends) keeps the pages: computed values are unchanged. Process-wide and never undone; the
    memory the process holds stays at its peak. ``mmap_threshold``: bytes (glibc refuses values
    over 32 MiB on some builds: then 32 MiB). Returns ``{"allocator": "glibc", "mmap_threshold": n,
    "trim_threshold": n}``, or ``{"allocator": "unchanged", "why": ...}`` off glibc (macOS,
    Windows, musl) or when ``mallopt`` refuses.
    """
    name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
    if not name or platform.libc_ver()[0] != "glibc":
        return {"allocator": "unchanged", "why": "not glibc"}
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError) as err:
        return {"allocator": "unchanged", "why": f"no mallopt ({err})"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap = next((v for v in (mmap_threshold, 32 << 20) if mallopt(_M_MMAP_THRESHOLD, v) == 1), None)
    trim = 2 ** 31 - 1
    if mmap is None or mallopt(_M_TRIM_THRESHOLD, trim) != 1:
        return {"allocator": "unchanged", "why": "mallopt refused the thresholds"}
    return {"allocator": "glibc", "mmap_threshold": int(mmap), "trim_threshold": trim}


def time_full_by_stage(model, batches, repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` wall seconds of the full model over ``batches`` (list of (start, images)),
    and the seconds each stage took in that best run ((K,) float64; stage 0 includes ``init_state``:
    the checks, the normalisation and any memory-format change, which early exit pays there too).

    The loop is :meth:`MultiExitModel.forward`'s (``forward_upto``), with a clock read between stages.
    """
    k_total = model.num_exits
    best, best_stages = float("inf"), np.zeros(k_total)
    for _ in range(repeats):
        stages = np.zeros(k_total)
        t_start = time.perf_counter()
        for _, xb in batches:
            t0 = time.perf_counter()
            state = model.init_state(xb)
            for k in range(k_total):
                state, _ = model.forward_stage(k, state)
                t1 = time.perf_counter()
                stages[k] += t1 - t0
                t0 = t1
        total = time.perf_counter() - t_start
        if total < best:
            best, best_stages = total, stages
    return best, best_stages


def _full_batch(model, xb) -> np.ndarray:
    """Wall seconds of each stage of the full model on one batch ((K,); stage 0 includes ``init_state``)."""
    stages = np.zeros(model.num_exits)
    t0 = time.perf_counter()
    state = model.init_state(xb)
    for k in range(model.num_exits):
        state, _ = model.forward_stage(k, state)
        t1 = time.perf_counter()
        stages[k], t0 = t1 - t0, t1
    return stages


def _interleaved(model, ee, batches, repeats: int) -> dict:
    """The full model and early exit timed batch by batch in turn, ``repeats`` times over ``batches``.

    Each batch runs the full model then early exit (early exit first on odd repeats), so a burst of
    load on a shared machine hits both alike. Returns ``full`` / ``early_exit`` / ``stages`` ((K,)
    per-stage seconds of the full model): the sum over batches of each batch's best of ``repeats``
    (the stages of the full model's best run of that batch), and ``best_pass_full`` /
    ``best_pass_early_exit``: the best of ``repeats`` whole passes (every batch of one repeat).
    """
    n, k_total = len(batches), model.num_exits
    full, stages, t_ee = np.full((repeats, n), np.inf), np.zeros((repeats, n, k_total)), np.full((repeats, n), np.inf)
    for r in range(repeats):
        for i, b in enumerate(batches):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                if which == 0:
                    stages[r, i] = _full_batch(model, b[1])
                    full[r, i] = stages[r, i].sum()
                else:
                    t0 = time.perf_counter()
                    ee(b)
                    t_ee[r, i] = time.perf_counter() - t0
    best = full.argmin(axis=0)
    return {"full": float(full.min(axis=0).sum()), "early_exit": float(t_ee.min(axis=0).sum()),
            "stages": stages[best, np.arange(n)].sum(axis=0),
            "best_pass_full": float(full.sum(axis=1).min()), "best_pass_early_exit": float(t_ee.sum(axis=1).min())}


def stage_report(stage_seconds, costs, exit_names, ran_fraction=None) -> list[dict]:
    """One dict per stage: ``exit``, ``seconds`` (wall, the whole timed set), ``wall_share`` and
    ``flops_share`` (each of the full model's total), ``mflops`` (per image, this stage alone).

    ``stage_seconds`` (K,) from :func:`time_full_by_stage`; ``costs`` (K,) cumulative MFLOPs per
    image; ``ran_fraction`` (K,) the share of images early exit ran through each stage (optional,
    recorded as ``early_exit_ran``).
    """
    sec = np.asarray(stage_seconds, dtype=np.float64)
    per = np.diff(np.concatenate([[0.0], np.asarray(costs, dtype=np.float64)]))
    rows = []
    for k, name in enumerate(exit_names):
        row = {"exit": str(name), "seconds": float(sec[k]), "wall_share": float(sec[k] / sec.sum()),
               "flops_share": float(per[k] / per.sum()), "mflops": float(per[k])}
        if ran_fraction is not None:
            row["early_exit_ran"] = float(ran_fraction[k])
        rows.append(row)
    return rows


def predict(model, images, thresholds, criterion="max_prob", batch_size: int = 256):
    """Early exit and the full model over ``images`` (N, C, H, W) in batches of ``batch_size``.

    Returns ``(exits (N,) int64 0-based, early-exit predictions (N,), full-model predictions (N,))``.
    Image i is sample i of the split (``sample_ids``), so per-sample criteria (``random``) take the
    same exits as the table path (:func:`dynexit.inference.exits_from_logits` on all N rows) whatever
    the batch size.
    """
    import torch

    from dynexit.inference import early_exit

    exits, pred_ee, pred_full = [], [], []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            xb = images[s:s + batch_size]
            lg, ex = early_exit(model, xb, thresholds, criterion, sample_ids=np.arange(s, s + len(xb)))
            exits.append(ex.numpy())
            pred_ee.append(lg.argmax(1).numpy())
            pred_full.append(model(xb)[-1].argmax(1).numpy())
    return np.concatenate(exits), np.concatenate(pred_ee), np.concatenate(pred_full)


def inference_copy(model, images, optimize: bool = True, check_images: int = 256, keep_memory: bool = True):
    """``(the model to time, what was done)``: :func:`dynexit.models.optimize_for_inference`'s copy
    and ``{"rewrites", "max_abs_logit_difference" (on the first ``check_images`` of ``images``),
    "checked_on", "memory"}``; the model itself and ``{"optimized": False}`` when ``optimize`` is
    False or the copy is refused (its logits drift by more than 1e-4; ``"refused"`` says why).
    ``keep_memory`` (with ``optimize``): also :func:`keep_freed_memory` (``"memory"`` says what it set).
    """
    import torch

    from dynexit.models.optimize import max_exit_difference, optimize_for_inference

    if not optimize:
        return model, {"optimized": False}
    try:
        fast = optimize_for_inference(model)
    except RuntimeError as err:
        return model, {"optimized": False, "refused": str(err)}
    x = images[:check_images]
    with torch.no_grad():
        diff = max_exit_difference(model, fast, x)
    memory = keep_freed_memory() if keep_memory else {"allocator": "unchanged", "why": "not asked"}
    return fast, {"optimized": True, "rewrites": fast.inference_rewrites, "max_abs_logit_difference": diff,
                  "checked_on": int(len(x)), "memory": memory}


def benchmark(model, images, labels, thresholds, criterion="max_prob", batch_sizes=(256, 1), batch1_limit: int = 300,
              repeats: int = 3, threads: int | None = None, optimize: bool = True, keep_memory: bool = True) -> dict:
    """Time the full model and early exit on ``images`` (float (N, C, H, W), labels (N,)); thresholds (K,)
    given directly (the last may be omitted).

    Best of ``repeats`` wall-clock runs at each batch size (batch 1 on the first ``batch1_limit``
    images). ``optimize``: time :func:`inference_copy` (for the full model AND early exit) instead
    of ``model``; accuracies and exits are those of the timed model; ``keep_memory`` (with ``optimize``):
    :func:`keep_freed_memory` first. Returns a JSON-able dict: exit
    histogram, mean / full cost (MFLOPs per image, always ``model``'s), ``theoretical_speedup`` (cost
    ratio), ``measured_speedup`` (throughput ratio at the first batch size), both accuracies,
    per-batch-size ``timings`` (images per second), ``stages`` (:func:`stage_report` at the first
    batch size) and ``inference`` (what ran: :func:`inference_copy`).
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    model.eval()
    with torch.no_grad():
        timed, how = inference_copy(model, images, optimize, keep_memory=keep_memory)
        return _benchmark(model, timed, how, images, labels, thresholds, criterion, batch_sizes, batch1_limit, repeats)


def _summary(model, timed, images, labels, thresholds, criterion) -> dict:
    """Exits, costs and accuracies of the timed model at the thresholds (the part with no clock)."""
    import torch

    costs = model.exit_costs()
    exits, pred_ee, pred_full = predict(timed, images, thresholds, criterion)
    y = labels.numpy()
    mean_cost = float(costs[exits].mean())
    hist = np.bincount(exits, minlength=model.num_exits)
    return {
        "num_images": int(len(images)),
        "exit_names": list(model.exit_names),
        "costs_mflops": costs.tolist(),
        # JSON has no infinity: "inf" (nobody leaves there) and "-inf" (everyone does), as in an ExitRule
        "thresholds": [float(t) if np.isfinite(t) else ("inf" if t > 0 else "-inf") for t in thresholds],
        "exit_histogram": hist.tolist(),
        "exit_fractions": (hist / len(exits)).tolist(),
        "mean_cost_mflops": mean_cost,
        "full_cost_mflops": float(costs[-1]),
        "theoretical_speedup": float(costs[-1] / mean_cost),
        "accuracy_full": float((pred_full == y).mean()),
        "accuracy_early_exit": float((pred_ee == y).mean()),
        "timings": {},
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()} ({platform.system()})",
    }


def _timing_row(n: int, times: dict, theoretical: float, ran) -> dict:
    """One batch size's timings (images per second, speedups) from :func:`_interleaved`'s seconds."""
    t_full, t_ee = times["full"], times["early_exit"]
    speedup = times["best_pass_full"] / times["best_pass_early_exit"]
    return {
        "images": n,
        "estimator": "sum over batches of each batch's best of the repeats",
        "full_images_per_s": n / t_full,
        "early_exit_images_per_s": n / t_ee,
        "measured_speedup": t_full / t_ee,
        "ratio_to_theoretical": (t_full / t_ee) / theoretical,
        # the early-exit time the stage clock predicts (each stage's full-batch time per image times
        # the share of images that run it): the rest is exit decisions and smaller batches
        "stage_clock_speedup": float(t_full / (times["stages"] * ran).sum()),
        # the estimator before: the best whole pass over all batches (more exposed to bursts of load)
        "best_pass": {"full_images_per_s": n / times["best_pass_full"],
                      "early_exit_images_per_s": n / times["best_pass_early_exit"],
                      "measured_speedup": speedup, "ratio_to_theoretical": speedup / theoretical},
    }


def _benchmark(model, timed, how, images, labels, thresholds, criterion, batch_sizes, batch1_limit, repeats) -> dict:
    from dynexit.inference import early_exit

    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == model.num_exits - 1:  # the last may be omitted: everyone left leaves there
        thresholds = np.append(thresholds, -np.inf)
    result = _summary(model, timed, images, labels, thresholds, criterion)
    result["inference"] = how
    ran = 1.0 - np.concatenate([[0.0], np.cumsum(result["exit_fractions"])[:-1]])  # share reaching each stage
    for i, bs in enumerate(batch_sizes):
        n = len(images) if bs > 1 else min(len(images), batch1_limit)
        # (start row, images): early exit is timed on the same per-sample decisions as the accuracy above
        batches = [(s, images[s:s + bs]) for s in range(0, n, bs)]
        ee = lambda b: early_exit(timed, b[1], thresholds, criterion, sample_ids=np.arange(b[0], b[0] + len(b[1])))  # noqa: E731
        timed(batches[0][1]), ee(batches[0])  # warm-up
        times = _interleaved(timed, ee, batches, repeats)
        result["timings"][f"batch{bs}"] = _timing_row(n, times, result["theoretical_speedup"], ran)
        stages = times["stages"]
        if i == 0:
            result["stages"] = {"batch_size": int(bs), "model": "optimized copy" if how["optimized"] else "as loaded",
                                "rows": stage_report(stages, result["costs_mflops"], model.exit_names, ran)}
    result["measured_speedup"] = result["timings"][f"batch{batch_sizes[0]}"]["measured_speedup"]
    return result
