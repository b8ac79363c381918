"""Building the zoo: train an entry with its recipe, export float16 weights, build both tables, bench.

The building side of the zoo (``dynexit zoo reproduce NAME``): it imports training, tables and the
bench, so the catalogue (:mod:`dynexit.zoo.catalog`, what the app opens) never imports this module.

>>> from dynexit.zoo.reproduce import reproduce
>>> reproduce("dvt_fmnist", device="cuda")   # weights, NAME.val.npz, NAME.test.npz, NAME.bench.json
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import re
import time
from pathlib import Path

from dynexit.zoo.catalog import (SPLITS, ZooEntry, bench_path, branch_study_path, get_entry, read_json,
                                 resolve_model, table_path, weights_path)


def match_final_budget(val_table, tolerance: float = 0.001, solver: str | None = None) -> float:
    """Smallest budget (MFLOPs per image) at which the solver, fitted on val, keeps the final exit's val
    accuracy (minus ``tolerance``, a fraction); the last exit's cost when no grid budget does.

    Searched on the val table only (never test): the 40-point grid of :func:`dynexit.metrics.budget_grid`.
    ``solver``: a :func:`dynexit.solvers.make` name (default :data:`dynexit.solvers.DEFAULT`).
    """
    from dynexit import metrics, solvers

    target = float(val_table.exit_accuracy()[-1]) - tolerance
    for budget in metrics.budget_grid(val_table, 40):
        s = solvers.make(solver or solvers.DEFAULT, float(budget)).fit(val_table)
        if s.expected_accuracy_ >= target:
            return float(budget)
    return float(val_table.costs[-1])


def export_weights(checkpoint: Path, dest: Path, recipe: dict, extra: dict | None = None) -> Path:
    """Copy a trained checkpoint into the zoo with float16 storage (tables are built from this copy).

    The training history (per-epoch losses, val accuracies and seconds) travels with it, summed up
    in the sidecar's ``train`` (epochs, train_seconds, trained_recipe), and so does the dataset record
    ``training_data`` (dataset, class names, split rule) when the checkpoint has one. Returns the written weights
    path; ValueError for a damaged checkpoint (:func:`dynexit.io.checkpoint.load_checkpoint`).
    """
    from dynexit.io.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(checkpoint)
    meta = model.checkpoint_meta
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    history = meta.get("history") or []
    # the history holds one record per epoch, then (branch-study pipeline) one per later phase
    summary = {"epochs": sum(1 for h in history if "epoch" in h),
               "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
               "trained_recipe": meta.get("recipe")}
    data = {"training_data": meta["training_data"]} if meta.get("training_data") else {}
    return save_checkpoint(model, dest, val_accuracy=meta.get("val_accuracy"), recipe=recipe,
                           extra={"weights_storage": "float16", "history": history, "train": summary, **data,
                                  **(extra or {})}, state_dict=half)


def _device_label(device: str) -> str:
    import platform

    import torch

    from dynexit.training.loop import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"{dev.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _train_end_to_end(entry: ZooEntry, work: Path, device: str, progress: bool,
                      out: Path | None = None) -> tuple[Path, dict]:
    """Every exit trained jointly with the entry's recipe (:func:`dynexit.training.loop.train`)."""
    from dynexit.training.loop import TrainConfig, train

    cfg = TrainConfig(**{**entry.recipe, "out_dir": str(work), "device": device, "progress": progress,
                         "resume": (work / "resume.safetensors").exists()})
    result = train(cfg)
    # a resumed run that had already finished trains nothing and returns no new checkpoint
    ckpt = Path(result["checkpoint"]) if result.get("checkpoint") else work / "checkpoint.safetensors"
    return ckpt, {"device": _device_label(device)}


def _study_loaders(entry: ZooEntry):
    """(train loader, shuffled with the recipe's seed; val loader) of the branch-study pipeline."""
    import torch

    from dynexit.training.loop import TrainConfig, build_datasets

    train_ds, val_ds = build_datasets(TrainConfig(**entry.recipe))
    gen = torch.Generator().manual_seed(entry.recipe.get("seed", 0))
    loader = torch.utils.data.DataLoader(train_ds, batch_size=entry.recipe.get("batch_size", 128), shuffle=True,
                                         generator=gen, drop_last=True)
    return loader, torch.utils.data.DataLoader(val_ds, batch_size=256)


def _branch_study(backbone, loader, val_loader, cfg: dict, study_file: Path, device: str, progress: bool) -> dict:
    """The study's result, read back from ``study_file`` when an interrupted run wrote it (the study is
    the slow part), else run on the frozen backbone and written there."""
    from dynexit.training.branch_study import branch_study, select_branches

    if study_file.exists():
        try:
            study = read_json(study_file)
            if not isinstance(study, dict) or not isinstance(study.get("exits"), builtins.list) \
                    or "seconds" not in study:
                raise ValueError("not a branch study (no list of exits)")
        except (ValueError, OSError) as err:
            raise ValueError(f"{study_file}: damaged branch study of an interrupted run ({err}); delete it to run "
                             "the study again") from None
        return study
    t0 = time.time()
    rows = branch_study(backbone, loader, val_loader, blocks=cfg["blocks"], types=cfg["types"],
                        epochs=cfg["study_epochs"], lr=cfg["lr"], device=device, progress=progress,
                        max_steps=cfg.get("max_steps"))
    picked = select_branches(rows, max_branches=cfg["max_branches"])
    study = {"rows": picked["rows"], "exits": picked["exits"], "settings": cfg, "seconds": time.time() - t0}
    study_file.write_text(json.dumps(study, indent=1))
    return study


def _train_with_branch_study(entry: ZooEntry, work: Path, device: str, progress: bool,
                             out: Path | None = None) -> tuple[Path, dict]:
    """Multi-Exit ViT (Bakhtiarnia et al., 2021): backbone, branch study on val, practical branches."""
    from dynexit.io.checkpoint import load_checkpoint, save_checkpoint
    from dynexit.training.exits import train_exits
    from dynexit.training.loop import pick_device

    cfg = entry.study
    backbone_ckpt, info = _train_end_to_end(entry, work / "backbone", device, progress)
    backbone = load_checkpoint(backbone_ckpt)
    dev = str(pick_device(device))
    loader, val_loader = _study_loaders(entry)
    study = _branch_study(backbone, loader, val_loader, cfg, work / "branch_study.json", dev, progress)
    exits = study["exits"]
    if len(exits) < cfg["min_branches"]:
        raise ValueError(f"the branch study kept {len(exits)} practical branches ({exits}); the zoo model needs at "
                         f"least {cfg['min_branches']}: train the backbone longer")
    model = backbone.with_exits(exits)
    t0 = time.time()
    hist = train_exits(model, loader, strategy="classifier-wise", epochs=cfg["final_epochs"], lr=cfg["lr"],
                       device=dev, progress=progress, val_loader=val_loader, max_steps=cfg.get("max_steps"))
    history = (backbone.checkpoint_meta.get("history") or []) + [
        {"phase": "branch study", "seconds": study["seconds"]},
        {"phase": "selected branches, classifier-wise", "seconds": time.time() - t0, "val_accuracy": hist["val_accuracy"]}]
    ckpt = save_checkpoint(model.cpu(), work / "checkpoint.safetensors", val_accuracy=hist["val_accuracy"],
                           recipe={**entry.recipe, "study": cfg},
                           extra={"history": history, **{k: v for k, v in backbone.checkpoint_meta.items()
                                                         if k == "training_data"}})
    study_path = _dest(entry.name, out)["branch_study"]
    study_path.parent.mkdir(parents=True, exist_ok=True)
    study_path.write_text(json.dumps(study, indent=1))
    return ckpt, info


# ZooEntry.pipeline -> how the entry is trained: (entry, work dir, device, progress, out folder or None for the
# zoo's) -> (checkpoint, trained_on)
PIPELINES = {"end-to-end": _train_end_to_end, "branch-study": _train_with_branch_study}


def _finished_checkpoint(entry: ZooEntry, work: Path, out: Path | None = None) -> tuple[Path, dict]:
    """``--skip-train``: the checkpoint a finished run left in ``work`` (and its branch study, if any)."""
    ckpt = work / "checkpoint.safetensors"
    if not ckpt.exists():
        raise ValueError(f"{ckpt}: no finished training to export; run without --skip-train")
    if (work / "branch_study.json").exists():
        study_path = _dest(entry.name, out)["branch_study"]
        study_path.parent.mkdir(parents=True, exist_ok=True)
        study_path.write_text((work / "branch_study.json").read_text())
    return ckpt, {}


def _dest(name: str, out: Path | None) -> dict[str, Path]:
    """Where entry ``name``'s files go: the zoo folder's paths (``out`` None), else the same names in ``out``."""
    if out is None:
        return {"weights": weights_path(name), "bench": bench_path(name), "branch_study": branch_study_path(name),
                **{split: table_path(name, split) for split in SPLITS}}
    return {"weights": out / f"{name}.safetensors", "bench": out / f"{name}.bench.json",
            "branch_study": out / f"{name}.branch_study.json", **{split: out / f"{name}.{split}.npz" for split in SPLITS}}


def _size_kwarg(arch: str, kwargs: dict) -> str | None:
    """The name the family of ``arch`` gives its input size (``input_size``, or ``img_size`` for the ViTs)."""
    import inspect

    from dynexit.models import create_model

    params = inspect.signature(type(create_model(arch, **kwargs)).__init__).parameters
    return next((k for k in ("input_size", "img_size") if k in params), None)


def entry_on_dataset(entry: ZooEntry, data: str, data_root=None) -> ZooEntry:
    """``entry`` with its recipe moved to dataset ``data`` (a :func:`dynexit.data.get_dataset` name,
    files at ``data_root``): the same architecture and training settings, with the dataset's classes,
    channels and (unless the dataset resizes to the model, as an ImageFolder tree does) image size.

    ValueError naming the entry and the dataset when the architecture cannot take those images (e.g.
    a ViT whose patches do not tile them); the model is built once here to find out.
    """
    from dynexit.data import get_dataset
    from dynexit.models import create_model

    spec = get_dataset(data, data_root)
    arch = entry.recipe.get("model", entry.arch)
    kwargs = {**entry.recipe.get("model_kwargs", {}), "num_classes": spec.num_classes, "in_chans": spec.in_chans}
    try:
        size = None if spec.resizable else _size_kwarg(arch, kwargs)
        if size is not None:
            h, w = spec.image_size
            kwargs[size] = h if h == w else [h, w]
        spec.check_model(create_model(arch, **kwargs), "training")
    except (ValueError, RuntimeError, TypeError, AssertionError) as err:
        raise ValueError(f"the recipe of zoo model {entry.name} ({arch}) does not fit {spec.name} "
                         f"({spec.in_chans}x{spec.image_size[0]}x{spec.image_size[1]} images, {spec.num_classes} "
                         f"classes): {' '.join(str(err).split())}") from None
    recipe = {**entry.recipe, "model_kwargs": kwargs, "data": spec.name, "data_root": spec.root}
    return dataclasses.replace(entry, recipe=recipe)


def reproduce(name: str, device: str = "auto", work_dir: str | os.PathLike = "runs/zoo", skip_train: bool = False,
              progress: bool = True, bench: bool = True, *, data: str | None = None, data_root=None,
              out_dir: str | os.PathLike | None = None) -> dict:
    """Rebuild the weights, both tables and the bench result of zoo entry ``name`` from scratch.

    Training resumes from ``work_dir/NAME`` when it was interrupted; ``skip_train`` reuses the
    finished checkpoint there (e.g. trained on a GPU machine) and only exports, tables and benches.
    The exported float16 weights are loaded once; that model builds both tables (logits stored as
    float16) and is timed by :func:`dynexit.bench.run_bench` at :func:`match_final_budget` (CPU).
    ``data`` (with ``data_root``): the same recipe on another dataset (:func:`entry_on_dataset`),
    trained in ``work_dir/NAME@DATASET`` and written to ``out_dir`` (required then, so the shipped
    zoo is never replaced by another dataset's model) as ``NAME.safetensors`` / ``.json`` /
    ``.val.npz`` / ``.test.npz`` / ``.bench.json``: a folder the app opens with ``DYNEXIT_ZOO``.
    Returns ``{"weights", "val_accuracy" (K,), "test_accuracy" (K,), "costs" (K,) MFLOPs, "bench"}``.
    ValueError for an unknown name, a missing checkpoint with ``skip_train``, a failed study, or a
    dataset the recipe's architecture cannot take.
    """
    entry = get_entry(name)
    out = None if out_dir is None else Path(out_dir).expanduser()
    work = Path(work_dir) / name
    if data is not None:
        entry = entry_on_dataset(entry, data, data_root)
        if out is None and entry.recipe["data"] != "fashion-mnist":
            raise ValueError(f"zoo reproduce {name} on {entry.recipe['data']}: give an output folder (--out DIR); "
                             "the zoo folder holds the Fashion-MNIST models")
        if entry.recipe["data"] != "fashion-mnist":
            work = Path(work_dir) / f"{name}@{re.sub(r'[^A-Za-z0-9_.-]+', '-', entry.recipe['data']).strip('-')[-60:]}"
    if skip_train:
        ckpt, train_info = _finished_checkpoint(entry, work, out)
    else:
        ckpt, train_info = PIPELINES[entry.pipeline](entry, work, device, progress, out)
    return _export(entry, ckpt, train_info, _dest(name, out), progress, bench)


def _export(entry: ZooEntry, ckpt: Path, train_info: dict, dest: dict, progress: bool, bench: bool) -> dict:
    """Float16 weights, both tables (on the recipe's dataset) and the bench result at ``dest``'s paths."""
    from dynexit.bench import run_bench
    from dynexit.tables import build_table

    dest["weights"].parent.mkdir(parents=True, exist_ok=True)
    weights = export_weights(ckpt, dest["weights"], entry.recipe, {"trained_on": train_info} if train_info else None)
    model = resolve_model(weights)  # the float16 copy: what the tables record and the bench times
    data = {"dataset": entry.recipe["data"], "data_root": entry.recipe.get("data_root")} if "data" in entry.recipe else {}
    tables = {}
    for split in SPLITS:
        tables[split] = build_table(model, split, progress=progress, **data)
        tables[split].save(dest[split], logits_dtype="float16")
    out = {"weights": str(weights), "val_accuracy": tables["val"].exit_accuracy().tolist(),
           "test_accuracy": tables["test"].exit_accuracy().tolist(), "costs": tables["test"].costs.tolist()}
    if bench and tables["val"].num_exits > 1:
        out["bench"] = run_bench(model, budget=match_final_budget(tables["val"]), val_table=tables["val"],
                                 json_path=str(dest["bench"]), model_name=str(weights), **data)
    return out
