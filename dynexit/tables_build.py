"""Build an ExitTable by running a multi-exit model once over a data split.

>>> table = build_table("runs/dp/checkpoint.safetensors", split="val")
>>> table.save("data/tables/dynperceiver_fmnist_val.npz")

The table holds every exit's logits, the labels, ``index`` (positions in the split) and the model's
cumulative per-exit costs (MFLOPs, FlopCounterMode on the staged path); ``meta`` records the model,
its checkpoint (path and SHA-256), the dataset, split, input size and how costs were counted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from dynexit.table import ExitTable

DATASETS = ("fashion-mnist",)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_split_images(split: str, dataset: str = "fashion-mnist", data_root=None, limit: int | None = None):
    """``(images float (N, 1, 28, 28) in [0, 1], labels int64 (N,))`` of a split."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: tables are built on {', '.join(DATASETS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}: use val or test (or train)")
    from dynexit.data import load_fashion_mnist
    x, y = load_fashion_mnist(split, data_root)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        x, y = x[:limit], y[:limit]
    return torch.from_numpy(x).unsqueeze(1).float().div_(255.0), torch.from_numpy(y)


@torch.no_grad()
def model_logits(model, images: torch.Tensor, batch_size: int = 256, device="cpu", progress: bool = False) -> np.ndarray:
    """Every exit's logits (N, K, C) of ``model`` (eval mode) on ``images``."""
    from tqdm.auto import tqdm

    model.eval().to(device)
    out = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc="logits", disable=not progress):
        outs = model(images[s:s + batch_size].to(device))
        out.append(torch.stack(outs, dim=1).float().cpu().numpy())
    return np.concatenate(out, axis=0)


def build_table(model, split: str = "test", dataset: str = "fashion-mnist", batch_size: int = 256,
                device: str = "cpu", limit: int | None = None, data_root=None, progress: bool = False) -> ExitTable:
    """Run ``model`` (a MultiExitModel, a registry name or a checkpoint path) over a split."""
    from dynexit.checkpoint import resolve_model

    source = None
    if isinstance(model, (str, Path)):
        source = str(model)
        model = resolve_model(source)
    if (model.in_chans, *model.input_size) != (1, 28, 28) and dataset == "fashion-mnist":
        raise ValueError(f"model {model.arch_name} takes {model.in_chans}x{model.input_size[0]}x{model.input_size[1]} "
                         "images; fashion-mnist tables need a 1x28x28 model (e.g. dynperceiver_fmnist)")
    if model.num_classes != 10:
        raise ValueError(f"model {model.arch_name} has {model.num_classes} classes; fashion-mnist has 10")
    images, labels = load_split_images(split, dataset, data_root, limit)
    logits = model_logits(model, images, batch_size, device, progress)
    meta = {
        "model": model.arch_name,
        "model_kwargs": dict(model.arch_kwargs),
        "dataset": dataset,
        "split": split,
        "input_size": [model.in_chans, *model.input_size],
        "costs": "cumulative MFLOPs per image on the early-exit path; torch FlopCounterMode, multiply-adds (total/2)",
        "num_samples": int(len(labels)),
    }
    ckpt = getattr(model, "checkpoint_meta", None)
    if source is not None and Path(source).exists():
        p = Path(source).with_suffix(".safetensors")
        meta["checkpoint"] = p.name
        meta["checkpoint_sha256"] = _sha256(p)
    if ckpt:
        meta["checkpoint_git_commit"] = ckpt.get("git_commit")
    elif source is not None:
        meta["weights"] = "untrained (random init)"
    return ExitTable(logits, labels.numpy(), model.exit_costs(), model.exit_names,
                     np.arange(len(labels), dtype=np.int64), meta)
