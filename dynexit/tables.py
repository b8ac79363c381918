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

    ``dataset``: a name of :func:`dynexit.data.available_datasets` read in memory (Fashion-MNIST,
    digits; file-based datasets stream through :func:`build_table` instead). ``data_root``: where its files
    are (for Fashion-MNIST see :func:`dynexit.data.load_fashion_mnist`: an explicit root, else a set
    ``$DYNEXIT_DATA``, is the only place read). ``return_source=True`` adds a third item: the images
    file read (relative to the working directory when below it). ValueError for an unknown dataset
    or split, a bad ``limit``; :class:`dynexit.data.DataNotFoundError` when the files are missing.
    """
    spec = get_dataset(dataset, data_root)
    data_root = spec.root
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


def _weights_key(model) -> dict:
    """What identifies the weights that run, for resuming: the file and its SHA-256, else a hash of the parameters."""
    import hashlib

    from dynexit import zoo

    source = zoo.weights_source(model)
    if isinstance(source, dict):
        return {"weights": source.get("sha256"), "model": model.arch_name}
    h = hashlib.sha256()
    for value in model.state_dict().values():
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"weights": h.hexdigest(), "model": model.arch_name}


def split_dataset(spec, split: str, model, limit: int | None):
    """``(torch Dataset of the split, the data source read)``: an in-memory dataset (Fashion-MNIST,
    digits) is read once into a TensorDataset; a file-based one streams item by item, resized to
    ``model``'s input when it is resizable (an ImageFolder tree; else ``model`` may be None).
    ``limit`` keeps the first images."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use val or test (or train)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    if spec.reader is not None:
        images, labels, source = load_split_images(split, spec.name, spec.root, limit, return_source=True)
        return torch.utils.data.TensorDataset(images, labels), source
    ds = spec.torch_dataset(split, image_size=tuple(model.input_size) if spec.resizable else None)
    if limit is not None and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))
    return ds, spec.root or spec.name


def build_table(model, split: str = "test", dataset: str = "fashion-mnist", batch_size: int = 256,
                device: str = "cpu", limit: int | None = None, data_root=None, progress: bool = False, *,
                untrained: bool = False, num_workers: int = 0, logits_dtype: str = "float32", partial=None,
                save_every: int = 50) -> ExitTable | None:
    """Run ``model`` over a split: every exit's logits (N, K, C) in an ExitTable, streamed.

    ``model``: a MultiExitModel, or a name resolved by :func:`dynexit.zoo.resolve_model` (a zoo
    name runs its shipped weights; a checkpoint path that file; a bare architecture name only
    with ``untrained=True``). ``dataset`` / ``data_root``: as :func:`dynexit.data.get_dataset`
    (``cifar10`` with a root, ``imagefolder:PATH``, ...). The batches go through a DataLoader with
    ``num_workers`` (:func:`dynexit.tables_stream.stream_logits`): ``logits_dtype`` float16 halves
    the memory kept; ``partial`` (a ``.npz`` path) saves the rows done every ``save_every`` batches
    and resumes from them on a rerun with the same arguments. Under torchrun the split is sharded by
    batches and gathered: rank 0 returns the table (equal to the one-process table), the others None.

    The data is found before any model is loaded; ValueError for a bad split, batch size, limit or
    ``data_root`` (which must hold the split's files). ``meta["weights"]`` records which weights ran.
    """
    from dynexit import zoo
    from dynexit.tables_stream import stream_logits

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    spec = get_dataset(dataset, data_root)
    found = None if spec.resizable else split_dataset(spec, split, None, limit)  # the data before the model
    if isinstance(model, (str, Path)):
        model = zoo.resolve_model(model, untrained=untrained)
    spec.check_model(model)
    check_trained_on(model, spec)
    ds, data_source = found or split_dataset(spec, split, model, limit)
    key = dict(_weights_key(model), dataset=spec.name, root=spec.root, split=split, limit=limit)
    result = stream_logits(model, ds, batch_size=int(batch_size), device=device, num_workers=num_workers,
                           logits_dtype=logits_dtype, progress=progress, partial=partial, save_every=save_every,
                           key=key)
    if result is None:
        return None
    logits, labels = result
    return ExitTable(logits, labels, model.exit_costs(), model.exit_names, np.arange(len(labels), dtype=np.int64),
                     _table_meta(model, spec, split, data_source, len(labels)))


def trained_on(model) -> dict | None:
    """The ``training_data`` record of the checkpoint ``model`` was loaded from (dataset, class names,
    split rule; :func:`dynexit.io.sidecar.training_data_record`), or None when it has none.

    Checkpoints written before the record existed fall back to their recipe's ``data`` when that is a
    registered dataset name (its class names come from the registry); the shipped zoo has neither.
    """
    from dynexit.data import available_datasets

    meta = getattr(model, "checkpoint_meta", None) or {}
    if isinstance(meta.get("training_data"), dict):
        return meta["training_data"]
    data = (meta.get("recipe") or {}).get("data")
    if isinstance(data, str) and data in available_datasets():
        spec = get_dataset(data)
        return {"dataset": spec.name, "class_names": list(spec.class_names), "split_rule": spec.split_rule}
    return None


def check_trained_on(model, spec) -> None:
    """ValueError (one line: both class lists, and what to do) when ``model``'s checkpoint was trained on
    classes other than those of ``spec`` (a :class:`dynexit.data.DatasetSpec`), in another order
    included: its logits would be scored against labels that mean other classes (an ImageFolder tree
    numbers its sorted folder names, so another tree silently scores wrong). Nothing for a model
    without a record (:func:`trained_on`)."""
    from dynexit.io.sidecar import class_names_mismatch

    trained = trained_on(model)
    problem = None if trained is None else class_names_mismatch(trained, spec.name, spec.class_names)
    if problem:
        from dynexit.zoo import weights_source

        source = weights_source(model)
        where = f"{source['path']}: " if isinstance(source, dict) and source.get("path") else ""
        raise ValueError(f"{where}{problem}; use the dataset it was trained on (--data {trained['dataset']}) "
                         "or a model trained on this one")


def _table_meta(model, spec, split: str, data_source: str, n: int) -> dict:
    """The meta of a built table: model, weights, dataset (its registry name), split and its rule, costs."""
    from dynexit import zoo

    source = zoo.weights_source(model)
    meta = {
        "model": model.arch_name,
        "model_kwargs": dict(model.arch_kwargs),
        "weights": source if source is not None else "in memory (not loaded from a file by dynexit)",
        "dataset": spec.name,
        "split": split,
        "data_source": data_source,  # the images file actually read (--data-root, DYNEXIT_DATA, shipped, ...)
        "input_size": [model.in_chans, *model.input_size],
        "costs": "cumulative MFLOPs per image on the early-exit path; torch FlopCounterMode, multiply-adds (total/2)",
        "num_samples": int(n),
    }
    if spec.name not in ("fashion-mnist",):  # the shipped tables' meta stays as it was
        meta.update(data_root=spec.root, split_rule=spec.split_rule, class_names=list(spec.class_names))
    if isinstance(source, dict):  # the keys the shipped tables carry
        meta["checkpoint"] = Path(source["path"]).name
        meta["checkpoint_sha256"] = source["sha256"]
    ckpt = getattr(model, "checkpoint_meta", None)
    if ckpt:
        meta["checkpoint_git_commit"] = ckpt.get("git_commit")
    return meta
