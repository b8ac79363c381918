"""The resume state of a training run: model, EMA, optimiser, step and RNG, in safetensors + JSON.

Never pickle: the tensors go to ``resume.safetensors`` and everything else (step, epoch, history,
config, the optimiser's param groups) to the ``resume.json`` beside it; both are replaced
atomically, so an interrupted write leaves the previous state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def save_resume(path: Path, model, ema, optimizer, step: int, epoch: int, history: list, config: dict,
                training_data: dict | None = None) -> None:
    """Write the resume state at ``path`` (``.safetensors``; the JSON beside it).

    ``model`` the trained module, ``ema`` timm's ModelEmaV3 or None, ``step`` optimiser steps done,
    ``epoch`` epochs done, ``history`` the per-epoch records, ``config`` the run's settings (JSON),
    ``training_data`` the dataset record (:func:`dynexit.io.sidecar.training_data_record`).
    """
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.module.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"opt.{idx}.{key}"] = t.detach().cpu().contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "epoch": epoch, "history": history, "config": config,
            "param_groups": opt["param_groups"], "ema_updates": getattr(ema, "num_updates", None) if ema else None,
            "training_data": training_data}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    path.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=1, default=float))
    os.replace(tmp, path)
    os.replace(path.with_suffix(".json.tmp"), path.with_suffix(".json"))


def _read_meta(path: Path) -> dict:
    """The JSON part of the resume state at ``path``; ValueError when it is missing or corrupt."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path.with_suffix('.json')}: missing or corrupt resume state ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path.with_suffix('.json')}: corrupt resume state (not a JSON object)")
    return meta


def check_resume_data(path: Path, training_data: dict) -> None:
    """ValueError when the resume state at ``path`` was trained on another dataset than ``training_data``
    (the run being resumed; :func:`dynexit.io.sidecar.training_data_record`): other class names (or
    order), or another dataset name unless both are ImageFolder trees (a tree may move). A state
    written before the record existed is compared by its config's ``data``."""
    from dynexit.io.sidecar import class_names_mismatch

    meta = _read_meta(path)
    saved = meta.get("training_data")
    if not isinstance(saved, dict):
        saved = {"dataset": str((meta.get("config") or {}).get("data", "fashion-mnist"))}
    now = training_data["dataset"]
    problem = class_names_mismatch(saved, now, training_data["class_names"]) if saved.get("class_names") else None
    trees = saved["dataset"].startswith("imagefolder:") and now.startswith("imagefolder:")
    if problem is None and saved["dataset"] != now and not trees:
        problem = f"the resume state was trained on {saved['dataset']}, this run trains on {now}"
    if problem:
        raise ValueError(f"{path}: {problem}; resume with --data {saved['dataset']}, or start a new run in another "
                         "--out (or --force without --resume to start afresh there)")


def load_resume(path: Path, model, ema, optimizer) -> dict:
    """Load the state at ``path`` into ``model``, ``ema`` and ``optimizer`` (and torch's RNG);
    returns the JSON part (``step``, ``epoch``, ``history``, ...). ValueError when the JSON is
    missing or corrupt, or the weights file is not valid safetensors."""
    from dynexit.io.checkpoint import read_weights

    tensors = read_weights(path)
    meta = _read_meta(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if ema_sd:
            ema.module.load_state_dict(ema_sd)
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if ema is not None and meta.get("ema_updates") is not None and hasattr(ema, "num_updates"):
        ema.num_updates = meta["ema_updates"]
    return meta
