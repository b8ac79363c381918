"""Speed benchmark: the full model against real early exit at thresholds fitted on val.

``dynexit bench --model M --budget B`` (or :func:`run_bench`) builds / loads the validation table,
fits the solver for the budget (or takes thresholds as given), then on the test images times

- the full model (every exit computed; its prediction is the last exit's), and
- :func:`dynexit.inference.early_exit` at the fitted thresholds,

at batch 256 and batch 1 in one run, and reports ``theoretical_speedup`` (cost of the last exit /
mean cost of the exits taken) and ``measured_speedup`` (throughput ratio), with the accuracy of both,
and per stage the share of the full model's wall time against its share of the FLOPs.

Both runs time the same inference copy of the model (:func:`dynexit.models.optimize_for_inference`:
BatchNorm folded, channels-last, exact rewrites; logits within 1e-4) unless ``optimize=False``
(``--no-optimize``); the timing itself is :mod:`dynexit.bench_timing`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from dynexit.bench_timing import benchmark, predict  # noqa: F401  (the timing half; importable from here)

# torch is imported inside the functions that run models: checking a request (a bad budget, a
# missing data folder) must answer in a second, not after the seconds torch takes to import.


def fit_thresholds(val_table, budget: float, solver: str | None = None, criterion: str = "max_prob"):
    """Fit a solver on the val table for ``budget`` (MFLOPs per image).

    Returns ``(thresholds (K,) float64, the criterion early_exit applies them to, the fitted solver)``,
    read from the solver's exit rule (:class:`dynexit.policy.ExitRule`, ``rule_``);
    ``solver`` is a :func:`dynexit.solvers.make` name (default :data:`dynexit.solvers.DEFAULT`).
    ValueError for an unknown solver or criterion.
    """
    from dynexit import solvers

    fitted = solvers.make(solver or solvers.DEFAULT, budget=budget, criterion=criterion).fit(val_table)
    rule = fitted.rule_  # thresholds + the score they apply to (the learned solver's is its fitted score)
    return np.asarray(rule.thresholds, dtype=np.float64), rule.criterion, fitted


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_budget(budget, costs) -> float:
    """``budget`` (MFLOPs per image) when it is at least ``costs[0]``; ValueError naming the range otherwise.

    Below the first exit no policy can spend so little. At or above the last exit's cost every image
    may run the whole network: accepted, as ``dynexit solve`` and the solvers accept it (the solver
    fitted on val decides; it may still stop early where that is as accurate on val).
    """
    lo, hi = float(costs[0]), float(costs[-1])
    if budget < lo * (1 - 1e-9):
        raise ValueError(f"budget {budget:.4g} MFLOPs is below the cheapest exit ({lo:.4g} MFLOPs): no policy "
                         f"can spend less; choose a budget of at least {lo:.4g} (the full model costs {hi:.4g})")
    return float(budget)


FIT_ON_TEST = "thresholds must be fitted on a validation split that is not the test split"


def check_fit_table(val_table, test_table=None, val_name="the val table", test_name="the test table") -> None:
    """ValueError when thresholds would be fitted on test: ``val_table``'s meta says split "test", or it is
    the same table as ``test_table`` (same content fingerprint)."""
    split = val_table.meta.get("split") if isinstance(val_table.meta, dict) else None
    if split == "test":
        raise ValueError(f"{val_name} is a table of the test split (its meta says split 'test'); {FIT_ON_TEST} "
                         "(e.g. the model's NAME.val.npz, or `dynexit table --split val`)")
    if test_table is not None and val_table.fingerprint == test_table.fingerprint:
        raise ValueError(f"{val_name} and {test_name} are the same table; {FIT_ON_TEST}")


def _check_data(dataset: str, data_root, val_needed: bool) -> None:
    """The test split (and val, when it must be built) can be read; ValueError naming what is missing."""
    from dynexit.data import check_fashion_mnist_source, get_dataset

    if dataset != "fashion-mnist":
        get_dataset(dataset, data_root)  # an unknown name or missing files fail here, before any model loads
        return
    check_fashion_mnist_source("test", data_root)  # --data-root, else a set DYNEXIT_DATA: checked strictly
    if data_root is not None and val_needed:
        check_fashion_mnist_source("val", data_root)  # (without a root, a shipped val table may serve)


def check_request(model, budget=None, thresholds=None, criterion: str = "max_prob", val_table=None,
                  limit=None, batch_sizes=(256, 1), batch1_limit: int = 300, repeats: int = 3, threads=None,
                  data_root=None, json_path=None, dataset: str = "fashion-mnist"):
    """Every check of :func:`run_bench` that needs no model; returns ``(costs or None, val table or None)``.

    ``costs``: the cumulative per-exit MFLOPs, from the val table or the checkpoint's sidecar when
    they can be read without building the model. ValueError for the first problem found.
    """
    from dynexit import criteria, zoo
    if thresholds is None:
        if budget is None:
            raise ValueError("give a budget (average MFLOPs per image) or explicit thresholds")
        if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) or not math.isfinite(budget) \
                or budget <= 0:
            raise ValueError(f"budget must be a positive, finite number of MFLOPs per image, got {budget!r}")
    else:
        if budget is not None:
            raise ValueError("give a budget or thresholds, not both")
        th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if th.size == 0 or np.isnan(th).any():
            raise ValueError(f"thresholds must be numbers (inf and -inf allowed), got {list(thresholds)}")
        if isinstance(criterion, str) and criterion not in criteria.available():
            raise ValueError(f"unknown criterion {criterion!r}: choose one of {', '.join(criteria.available())}")
    _positive_int("limit", limit, allow_none=True)
    _positive_int("batch1_limit", batch1_limit)
    _positive_int("repeats", repeats)
    _positive_int("threads", threads, allow_none=True)
    if not batch_sizes:
        raise ValueError("batch_sizes must hold at least one batch size")
    for b in batch_sizes:
        _positive_int("every batch size", b)
    if json_path is not None:
        check_output_path(json_path)
    _check_data(dataset, data_root, val_needed=thresholds is None and val_table is None)
    val_name = "the val table"
    if isinstance(val_table, (str, os.PathLike)):
        from dynexit.table import ExitTable

        val_name = str(val_table)
        val_table = ExitTable.load(val_table)
    if thresholds is not None:
        val_table = None  # not used with given thresholds
    if val_table is not None:
        check_fit_table(val_table, val_name=val_name)
    declared = zoo.declared_costs(model) if isinstance(model, (str, os.PathLike)) else None
    if val_table is not None and declared is not None and (
            len(declared) != val_table.num_exits or not np.allclose(declared, val_table.costs, rtol=1e-4)):
        raise ValueError(f"the val table is not a table of this model: its exits cost {np.round(val_table.costs, 3).tolist()} "
                         f"MFLOPs, the model's {np.round(declared, 3).tolist()}")
    costs = val_table.costs if val_table is not None else declared
    if costs is not None:
        check_model_costs(costs, budget, thresholds)
    return costs, val_table


def check_model_costs(costs, budget=None, thresholds=None) -> None:
    """The budget in the model's cost range, or one threshold per exit (the last may be omitted)."""
    k = len(costs)
    if thresholds is not None:
        n = np.asarray(thresholds, dtype=np.float64).reshape(-1).size
        if n not in (k, k - 1):
            raise ValueError(f"thresholds must have one value per exit ({k}; the last may be omitted), got {n}")
    elif budget is not None:
        check_budget(budget, costs)


def check_output_path(path, suffix: str = ".json") -> Path:
    """``path`` as a Path when a file can be written there: not empty, its folder exists, no folder itself.

    ``suffix``: the kind of file expected, for the suggested name in the error (``result.json``).
    """
    if not os.fspath(path).strip():
        raise ValueError(f"the output path is empty; give a file name (e.g. result{suffix})")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give a file name (e.g. {p / ('result' + suffix)})")
    if not p.parent.is_dir():
        raise ValueError(f"cannot write {p}: the folder {p.parent} does not exist; create it first")
    return p


def _shipped_val_table(source):
    """The zoo's val table of exactly these weights (its recorded SHA-256 matches), else None."""
    from dynexit import zoo

    if not isinstance(source, dict) or not source.get("zoo") or not zoo.table_path(source["zoo"], "val").is_file():
        return None
    table = zoo.load_table(source["zoo"], "val")
    return table if table.meta.get("checkpoint_sha256") == source["sha256"] else None


def _fit_on_val(model, source, val_table, data_root, budget, solver, criterion,
                dataset: str = "fashion-mnist") -> tuple:
    """Thresholds fitted on val for ``budget``: ``(thresholds (K,), criterion, what to record)``.

    The val table: ``val_table``, else the zoo's shipped one of these exact weights (no ``data_root``),
    else built here from the model.
    """
    from dynexit import zoo
    from dynexit.tables import build_table

    notes: dict = {}
    if val_table is None and data_root is None and dataset == "fashion-mnist":
        val_table = _shipped_val_table(source)
        if val_table is not None:
            notes["val_table"] = str(zoo.table_path(source["zoo"], "val"))
    if val_table is None:
        val_table = build_table(model, "val", dataset=dataset, data_root=data_root)
    if val_table.num_exits != model.num_exits:
        raise ValueError(f"val table has {val_table.num_exits} exits, the model {model.num_exits}")
    thresholds, criterion, fitted = fit_thresholds(val_table, budget, solver, criterion)
    notes.update(budget_mflops=float(budget), solver=solver or type(fitted).__name__,
                 val_expected_cost=float(getattr(fitted, "expected_cost_", np.nan)),
                 val_expected_accuracy=float(getattr(fitted, "expected_accuracy_", np.nan)))
    return thresholds, criterion, notes


def run_bench(model, budget: float | None = None, solver: str | None = None, thresholds=None,
              criterion: str = "max_prob", val_table=None, limit: int | None = None, batch_sizes=(256, 1),
              batch1_limit: int = 300, repeats: int = 3, threads: int | None = None, data_root=None,
              json_path: str | None = None, *, untrained: bool = False, model_name: str | None = None,
              optimize: bool = True, dataset: str = "fashion-mnist", keep_memory: bool = True) -> dict:
    """The whole benchmark: check the request, resolve the model, fit thresholds on val (unless given), time on test.

    The val table: ``val_table`` (an ExitTable or its path), else a zoo model's shipped val table
    when it was built from the same weights file (SHA-256 recorded in its meta), else built here.

    ``model``: a MultiExitModel (run as it is: a pipeline that loaded it passes it, so the file is
    read once) or a name for :func:`dynexit.zoo.resolve_model` (a zoo name runs its shipped weights;
    an architecture name only with ``untrained=True``). Every argument is checked
    (:func:`check_request`) before a named model is loaded; the budget (MFLOPs per image) is checked
    against the costs in the val table or the checkpoint's sidecar when they exist. The result's
    ``"model"`` is ``model_name``, else the name given, else the architecture; ``"weights"`` says
    which weights ran. ``optimize``: time :func:`dynexit.models.optimize_for_inference`'s copy (for
    the full model and early exit alike; the costs stay the model's), and with it ``keep_memory``:
    the allocator keeps freed pages (:func:`dynexit.bench_timing.keep_freed_memory`). ``dataset``: a name of
    :func:`dynexit.data.get_dataset` (val and test come from it). ValueError for any bad argument or file.
    """
    from dynexit import zoo

    costs, val_table = check_request(model, budget, thresholds, criterion, val_table, limit, batch_sizes,
                                     batch1_limit, repeats, threads, data_root, json_path, dataset)
    from dynexit.tables import load_split_images  # torch: only once the request is sound

    named = isinstance(model, (str, os.PathLike))
    name = model_name or (str(model) if named else getattr(model, "arch_name", "model"))
    model = zoo.resolve_model(model, untrained=untrained) if named else model.eval()
    from dynexit.data import get_dataset
    from dynexit.tables import check_trained_on

    check_trained_on(model, get_dataset(dataset, data_root))  # also with --val-table / --thresholds: the right classes
    source = zoo.weights_source(model)
    if costs is None:  # an untrained architecture or a model object: now its costs are known
        check_model_costs(model.exit_costs(), budget, thresholds)
    info: dict = {"model": name, "weights": source if source is not None else "in memory (not loaded from a file by dynexit)"}
    if thresholds is None:
        thresholds, criterion, notes = _fit_on_val(model, source, val_table, data_root, budget, solver, criterion,
                                                   dataset)
        info.update(notes)
    else:
        info.update(budget_mflops=None, solver="given thresholds")
    info["criterion"] = criterion if isinstance(criterion, str) else type(criterion).__name__
    images, labels, info["test_data"] = load_split_images("test", dataset, data_root=data_root, limit=limit,
                                                          return_source=True)
    result = {**info, **benchmark(model, images, labels, thresholds, criterion, batch_sizes, batch1_limit,
                                  repeats, threads, optimize=optimize, keep_memory=keep_memory)}
    if json_path:
        Path(json_path).expanduser().write_text(json.dumps(result, indent=2))
    return result


def format_result(r: dict) -> str:
    """The lines ``dynexit bench`` prints for a :func:`run_bench` result (or a shipped NAME.bench.json)."""
    from dynexit.zoo import describe_weights

    if r.get("budget_mflops") is None:  # run with --thresholds: no budget, no solver
        given = ", ".join(f"{t:.4g}" if isinstance(t, (int, float)) else str(t) for t in r.get("thresholds") or [])
        head = f"model {r['model']}  thresholds given [{given}]  criterion {r.get('criterion')}"
    else:
        head = f"model {r['model']}  solver {r.get('solver')}  budget {r['budget_mflops']:.4g} MFLOPs"
    lines = [head,
             *([describe_weights(r["weights"])] if "weights" in r else []),  # results written before it was recorded
             *([f"thresholds fitted on {r['val_table']} (the shipped val table of these weights)"]
               if r.get("val_table") else []),
             *([f"test images: {r['test_data']}"] if r.get("test_data") else []),
             f"exits taken: {r['exit_histogram']}  mean cost {r['mean_cost_mflops']:.2f} / {r['full_cost_mflops']:.2f} MFLOPs",
             f"accuracy: full {r['accuracy_full']:.4f}  early exit {r['accuracy_early_exit']:.4f}",
             f"theoretical_speedup {r['theoretical_speedup']:.3f}",
             *_inference_lines(r)]
    for k, t in r["timings"].items():
        lines.append(f"{k}: full {t['full_images_per_s']:.1f} img/s, early exit {t['early_exit_images_per_s']:.1f} img/s, "
                     f"measured_speedup {t['measured_speedup']:.3f} ({t['ratio_to_theoretical']:.2f} x theoretical)"
                     + (f"; best whole pass {t['best_pass']['measured_speedup']:.3f} "
                        f"({t['best_pass']['ratio_to_theoretical']:.2f} x)" if "best_pass" in t else ""))
    return "\n".join(lines + _stage_lines(r))


def _inference_lines(r: dict) -> list[str]:
    """What was timed: the optimized inference copy (and how close its logits are) or the model as loaded."""
    how = r.get("inference")
    if how is None:  # results written before the bench recorded it
        return []
    if not how.get("optimized"):
        why = f" (the optimized copy was refused: {how['refused']})" if how.get("refused") else " (--no-optimize)"
        return [f"timed: the model as loaded, for the full model and early exit{why}"]
    done = how["rewrites"]
    cl = "off" if not done["channels_last"] else (f"on, {done['nchw_stages']} small-map stages NCHW"
                                                  if done.get("nchw_stages") else "on")
    return [f"timed: an optimized inference copy, for the full model AND early exit (BatchNorm folded into "
            f"{done['batchnorm_folded']} convs, {done.get('relu_fused', 0)} conv+ReLU fused, "
            f"{done.get('linear_gelu_fused', 0)} linear+GELU fused, "
            f"{done['residual_dwconv_folded']} residual depthwise convs folded, {done['adaptive_pools']} pools "
            f"rewritten, channels-last {cl}); "
            f"max |logit difference| {how['max_abs_logit_difference']:.1e} on {how['checked_on']} test images; "
            "costs are the model's", *_memory_lines(how.get("memory"))]


def _memory_lines(memory) -> list[str]:
    """What :func:`dynexit.bench_timing.keep_freed_memory` set (nothing for results written before it)."""
    if not memory:
        return []
    if memory.get("allocator") != "glibc":
        return [f"allocator: as the process started ({memory.get('why')})"]
    return [f"allocator: glibc keeps freed memory (mmap threshold {memory['mmap_threshold'] >> 20} MiB, no trimming): "
            "each batch reuses the last one's pages instead of faulting in new ones"]


def _stage_lines(r: dict) -> list[str]:
    """Per stage of the full model at the first batch size: wall-time share against FLOPs share."""
    st = r.get("stages")
    if not st:
        return []
    lines = [f"per stage, full model at batch {st['batch_size']} ({st['model']}): wall time share vs FLOPs share"]
    for k, row in enumerate(st["rows"]):
        ran = f", early exit ran {row['early_exit_ran']:.1%} of the images" if "early_exit_ran" in row else ""
        lines.append(f"  stage {k + 1} -> {row['exit']}: {row['wall_share']:.1%} of the time, {row['flops_share']:.1%} "
                     f"of the FLOPs ({row['mflops']:.2f} MFLOPs, {row['seconds']:.2f} s){ran}")
    return lines
