"""Build an ExitTable by running a multi-exit model once over a data split.

>>> table = build_table("dvt_fmnist", split="val")        # a zoo name: its shipped weights
>>> table = build_table("runs/dp/checkpoint.safetensors", split="val")
>>> table.save("data/tables/dynperceiver_fmnist_val.npz")

The table holds every exit's logits, the labels, ``index`` (positions in the split) and the model's
cumulative per-exit costs (MFLOPs, FlopCounterMode on the staged path); ``meta`` records the model,
the weights that ran (``meta["weights"]``: path and SHA-256, or ``"untrained"``), the dataset, split, input size and how costs were counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynexit.data import SPLITS, get_dataset
from dynexit.table import ExitTable


def load_split_images(split: str, dataset: str = "fashion-mnist", data_root=None, limit: int | None = None, *,
                      return_source: bool = False):
    """``(images float32 (N, C, H, W) in [0, 1], labels int64 (N,))`` of a split (the first ``limit``).

    ``dataset``: a name of :func:`dynexit.data.available_datasets`. ``data_root``: where its files
    are (for Fashion-MNIST see :func:`dynexit.data.load_fashion_mnist`: an explicit root, else a set
    ``$DYNEXIT_DATA``, is the only place read). ``return_source=True`` adds a third item: the images
    file read (relative to the working directory when below it). ValueError for an unknown dataset
    or split, a bad ``limit``; :class:`dynexit.data.DataNotFoundError` when the files are missing.
    """
    spec = get_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use val or test (or train)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    from dynexit.zoo import display_path

    x, y, source = spec.load(split, data_root, return_source=True)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    if return_source:
        return images, labels, display_path(Path(source)) if Path(source).is_file() else source
    return images, labels


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
                device: str = "cpu", limit: int | None = None, data_root=None, progress: bool = False, *,
                untrained: bool = False) -> ExitTable:
    """Run ``model`` over a split: every exit's logits (N, K, C) in an ExitTable.

    ``model``: a MultiExitModel, or a name resolved by :func:`dynexit.zoo.resolve_model` (a zoo
    name runs its shipped weights; a checkpoint path that file; a bare architecture name only
    with ``untrained=True``). The data is found before any model is loaded; ValueError for a bad
    split, batch size, limit or ``data_root`` (which must hold the split's files).
    ``meta["weights"]`` records which weights ran.
    """
    from dynexit import zoo

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    images, labels, data_source = load_split_images(split, dataset, data_root, limit, return_source=True)
    if isinstance(model, (str, Path)):
        model = zoo.resolve_model(model, untrained=untrained)
    get_dataset(dataset).check_model(model)
    logits = model_logits(model, images, batch_size, device, progress)
    source = zoo.weights_source(model)
    meta = {
        "model": model.arch_name,
        "model_kwargs": dict(model.arch_kwargs),
        "weights": source if source is not None else "in memory (not loaded from a file by dynexit)",
        "dataset": dataset,
        "split": split,
        "data_source": data_source,  # the images file actually read (--data-root, DYNEXIT_DATA, shipped, ...)
        "input_size": [model.in_chans, *model.input_size],
        "costs": "cumulative MFLOPs per image on the early-exit path; torch FlopCounterMode, multiply-adds (total/2)",
        "num_samples": int(len(labels)),
    }
    if isinstance(source, dict):  # the keys the shipped tables carry
        meta["checkpoint"] = Path(source["path"]).name
        meta["checkpoint_sha256"] = source["sha256"]
    ckpt = getattr(model, "checkpoint_meta", None)
    if ckpt:
        meta["checkpoint_git_commit"] = ckpt.get("git_commit")
    return ExitTable(logits, labels.numpy(), model.exit_costs(), model.exit_names,
                     np.arange(len(labels), dtype=np.int64), meta)
