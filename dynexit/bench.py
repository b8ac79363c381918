"""Speed benchmark: the full model against real early exit at thresholds fitted on val.

``dynexit bench --model M --budget B`` (or :func:`run_bench`) builds / loads the validation table,
fits the solver for the budget (or takes thresholds as given), then on the test images times

- the full model (every exit computed; its prediction is the last exit's), and
- :func:`dynexit.inference.early_exit` at the fitted thresholds,

at batch 256 and batch 1 in one run, and reports ``theoretical_speedup`` (cost of the last exit /
mean cost of the exits taken) and ``measured_speedup`` (throughput ratio), with the accuracy of both.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dynexit.inference import early_exit


def fit_thresholds(val_table, budget: float, solver: str | None = None, criterion: str = "max_prob"):
    """Fit a solver on the val table; returns ``(thresholds (K,), criterion for early_exit, solver)``."""
    from dynexit import solvers

    fitted = solvers.make(solver or solvers.DEFAULT, budget=budget, criterion=criterion).fit(val_table)
    crit = getattr(fitted, "criterion", criterion)  # the learned solver's fitted exit score
    return np.asarray(fitted.thresholds_, dtype=np.float64), crit, fitted


def _timed(fn, batches, repeats: int) -> float:
    """Best-of-``repeats`` wall seconds for running ``fn`` over all batches."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def benchmark(model, images: torch.Tensor, labels: torch.Tensor, thresholds, criterion="max_prob",
              batch_sizes=(256, 1), batch1_limit: int = 300, repeats: int = 3, threads: int | None = None) -> dict:
    """Time the full model and early exit on ``images``; thresholds given directly."""
    if threads:
        torch.set_num_threads(int(threads))
    model.eval()
    costs = model.exit_costs()
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # predictions (on all the images, batch 256) for the accuracies and the mean cost
    exits_all, preds_ee, preds_full = [], [], []
    for s in range(0, len(images), 256):
        xb = images[s:s + 256]
        lg, ex = early_exit(model, xb, thresholds, criterion)
        exits_all.append(ex.numpy())
        preds_ee.append(lg.argmax(1).numpy())
        preds_full.append(model(xb)[-1].argmax(1).numpy())
    exits = np.concatenate(exits_all)
    y = labels.numpy()
    acc_ee = float((np.concatenate(preds_ee) == y).mean())
    acc_full = float((np.concatenate(preds_full) == y).mean())
    mean_cost = float(costs[exits].mean())
    result = {
        "num_images": int(len(images)),
        "exit_names": list(model.exit_names),
        "costs_mflops": costs.tolist(),
        "thresholds": [None if not np.isfinite(t) else float(t) for t in thresholds],
        "exit_histogram": np.bincount(exits, minlength=model.num_exits).tolist(),
        "exit_fractions": (np.bincount(exits, minlength=model.num_exits) / len(exits)).tolist(),
        "mean_cost_mflops": mean_cost,
        "full_cost_mflops": float(costs[-1]),
        "theoretical_speedup": float(costs[-1] / mean_cost),
        "accuracy_full": acc_full,
        "accuracy_early_exit": acc_ee,
        "timings": {},
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()} ({platform.system()})",
    }
    for bs in batch_sizes:
        n = len(images) if bs > 1 else min(len(images), batch1_limit)
        batches = [images[s:s + bs] for s in range(0, n, bs)]
        full = lambda b: model(b)  # noqa: E731
        ee = lambda b: early_exit(model, b, thresholds, criterion)  # noqa: E731
        full(batches[0]), ee(batches[0])  # warm-up
        t_full = _timed(full, batches, repeats)
        t_ee = _timed(ee, batches, repeats)
        result["timings"][f"batch{bs}"] = {
            "images": n,
            "full_images_per_s": n / t_full,
            "early_exit_images_per_s": n / t_ee,
            "measured_speedup": t_full / t_ee,
            "ratio_to_theoretical": (t_full / t_ee) / result["theoretical_speedup"],
        }
    main_bs = f"batch{batch_sizes[0]}"
    result["measured_speedup"] = result["timings"][main_bs]["measured_speedup"]
    return result


def run_bench(model, budget: float | None = None, solver: str | None = None, thresholds=None,
              criterion: str = "max_prob", val_table=None, limit: int | None = None, batch_sizes=(256, 1),
              batch1_limit: int = 300, repeats: int = 3, threads: int | None = None, data_root=None,
              json_path: str | None = None) -> dict:
    """The whole benchmark: resolve the model, fit thresholds on val (unless given), time on test."""
    from dynexit.checkpoint import resolve_model
    from dynexit.table import ExitTable
    from dynexit.tables_build import build_table, load_split_images

    name = model if isinstance(model, str) else getattr(model, "arch_name", "model")
    model = resolve_model(model) if isinstance(model, (str, Path)) else model.eval()
    info: dict = {"model": name}
    if thresholds is None:
        if budget is None:
            raise ValueError("give a budget (average MFLOPs per image) or explicit thresholds")
        if val_table is None:
            val_table = build_table(model, "val", data_root=data_root)
        elif isinstance(val_table, (str, Path)):
            val_table = ExitTable.load(val_table)
        if val_table.num_exits != model.num_exits:
            raise ValueError(f"val table has {val_table.num_exits} exits, the model {model.num_exits}")
        thresholds, criterion, fitted = fit_thresholds(val_table, budget, solver, criterion)
        info.update(budget_mflops=float(budget), solver=solver or type(fitted).__name__,
                    val_expected_cost=float(getattr(fitted, "expected_cost_", np.nan)),
                    val_expected_accuracy=float(getattr(fitted, "expected_accuracy_", np.nan)))
    else:
        info.update(budget_mflops=None, solver="given thresholds")
    info["criterion"] = criterion if isinstance(criterion, str) else type(criterion).__name__
    images, labels = load_split_images("test", data_root=data_root, limit=limit)
    result = {**info, **benchmark(model, images, labels, thresholds, criterion, batch_sizes, batch1_limit,
                                  repeats, threads)}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def format_result(r: dict) -> str:
    lines = [f"model {r['model']}  solver {r.get('solver')}  budget {r.get('budget_mflops')} MFLOPs",
             f"exits taken: {r['exit_histogram']}  mean cost {r['mean_cost_mflops']:.2f} / {r['full_cost_mflops']:.2f} MFLOPs",
             f"accuracy: full {r['accuracy_full']:.4f}  early exit {r['accuracy_early_exit']:.4f}",
             f"theoretical_speedup {r['theoretical_speedup']:.3f}"]
    for k, t in r["timings"].items():
        lines.append(f"{k}: full {t['full_images_per_s']:.1f} img/s, early exit {t['early_exit_images_per_s']:.1f} img/s, "
                     f"measured_speedup {t['measured_speedup']:.3f} ({t['ratio_to_theoretical']:.2f} x theoretical)")
    return "\n".join(lines)
