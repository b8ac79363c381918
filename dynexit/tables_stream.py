"""Every exit's logits over a torch Dataset, streamed: batches, workers, resume, shards under torchrun.

What :func:`dynexit.tables.build_table` runs. The split is cut into fixed batches of ``batch_size``
consecutive items (the last may be shorter); the batches are the unit of everything:

- **streaming**: a DataLoader reads only the batches still to do (``num_workers`` processes, pinned
  memory when the model is on a GPU); only the logits are kept, as float32 or float16 (N, K, C);
- **resume**: every ``save_every`` batches the rows done so far go to ``partial`` (an ``.npz`` with a
  key of everything that decides them: weights, data, split, batch size, dtype, shard); a rerun with
  the same key starts after them, a different key starts afresh;
- **shards**: under ``torchrun`` (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on CUDA) process r of W runs
  batches r, r + W, r + 2W, ... and rank 0 gathers them back in order. Each batch holds the same
  images as in one process, so the gathered logits equal the single-process ones bit for bit (same
  device type); no image is padded in or counted twice.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def distributed_context(device: str) -> tuple[int, int]:
    """``(rank, world)``: (0, 1) alone; under torchrun the process group is joined (gloo on CPU, NCCL
    when ``device`` is CUDA) unless it already is."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard_rows(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[range]:
    """The batches (ranges of item positions) process ``rank`` of ``world`` runs: batches rank, rank + world, ..."""
    return [range(s, min(s + batch_size, n)) for s in range(rank * batch_size, n, world * batch_size)]


def _partial_file(partial, rank: int, world: int) -> Path | None:
    if partial is None:
        return None
    path = Path(partial)
    return path if world == 1 else path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")


def _load_partial(path: Path | None, key: str):
    """``(logits, labels)`` saved under ``key`` at ``path``, or None (no file, another key, unreadable)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"][()]) != key:
                print(f"{path}: made with other arguments; starting afresh", file=sys.stderr)
                return None
            logits, labels = f["logits"], f["labels"]
        print(f"{path}: resuming after {len(labels)} images", file=sys.stderr)
        return logits, labels
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        print(f"{path}: unreadable partial results ({err}); starting afresh", file=sys.stderr)
        return None


def _save_partial(path: Path, key: str, logits: np.ndarray, labels: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, key=np.array(key), logits=logits, labels=labels)
    os.replace(tmp, path)


def _batches(model, dataset, rows: list[int], batch_size: int, device: torch.device, num_workers: int, dtype):
    """Yield ``(logits (B, K, C) numpy in dtype, labels (B,) numpy)`` of the items ``rows``, in order."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    for x, y in loader:
        outs = model(x.to(device, non_blocking=True))
        yield torch.stack(outs, dim=1).float().to(dtype).cpu().numpy(), np.asarray(y, dtype=np.int64)


def _gather(logits: np.ndarray, labels: np.ndarray, n: int, batch_size: int, rank: int, world: int):
    """Rank 0: every rank's rows put back in dataset order ``(logits (n, K, C), labels (n,))``; others: None."""
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object((logits, labels), parts, dst=0)
    if rank != 0:
        return None
    out = np.empty((n, *logits.shape[1:]), dtype=logits.dtype)
    out_labels = np.empty(n, dtype=np.int64)
    for r, (part_logits, part_labels) in enumerate(parts):
        start = 0
        for batch in shard_rows(n, batch_size, r, world):
            out[batch.start:batch.stop] = part_logits[start:start + len(batch)]
            out_labels[batch.start:batch.stop] = part_labels[start:start + len(batch)]
            start += len(batch)
    return out, out_labels


@torch.no_grad()
def stream_logits(model, dataset, *, batch_size: int = 256, device="cpu", num_workers: int = 0,
                  logits_dtype: str = "float32", progress: bool = False, partial=None, save_every: int = 50,
                  key: dict | None = None):
    """Every exit's logits of ``model`` (eval mode) over ``dataset``, streamed (see the module docstring).

    ``dataset``: items ``(float image (C, H, W), int label)``. ``logits_dtype``: float32 or float16
    (what is kept, half the memory). ``partial``: the ``.npz`` for partial results (None: no resume),
    written every ``save_every`` batches and removed at the end; ``key``: JSON facts that must match
    for a rerun to resume (the shard is added). Returns ``(logits (N, K, C), labels int64 (N,))``;
    under torchrun only rank 0 gets them, the other ranks None. ValueError for a bad dtype or
    ``save_every``, an empty dataset.
    """
    if logits_dtype not in _DTYPES:
        raise ValueError(f"logits_dtype must be float32 or float16, got {logits_dtype!r}")
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise ValueError(f"save_every must be a positive number of batches, got {save_every!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty: no logits to compute")
    rank, world = distributed_context(str(device))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world > 1:  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object gather uses the current device
    model.eval().to(device)
    mine = shard_rows(n, batch_size, rank, world)
    rows = [i for batch in mine for i in batch]
    path = _partial_file(partial, rank, world)
    full_key = json.dumps(dict(key or {}, n=n, batch_size=batch_size, logits_dtype=logits_dtype, rank=rank,
                               world=world), sort_keys=True, default=str)
    saved = _load_partial(path, full_key)
    logits_done = [saved[0]] if saved is not None else []
    labels_done = [saved[1]] if saved is not None else []
    done = len(labels_done[0]) if saved is not None else 0
    logits, labels = _run(model, dataset, rows, done, (logits_done, labels_done), path, full_key,
                          dict(batch_size=batch_size, device=device, num_workers=num_workers,
                               dtype=_DTYPES[logits_dtype], progress=progress and rank == 0, save_every=save_every))
    if world > 1:
        gathered = _gather(logits, labels, n, batch_size, rank, world)
    else:
        gathered = (logits, labels)
    if path is not None and path.exists():
        path.unlink()
    return gathered


def _run(model, dataset, rows: list[int], done: int, acc: tuple[list, list], path, key: str, opts: dict):
    """Run the batches of ``rows`` after the first ``done`` items, appending to ``acc``; save partials."""
    from tqdm.auto import tqdm

    logits_acc, labels_acc = acc
    bar = tqdm(total=len(rows), initial=done, unit="img", unit_scale=True, desc="logits", dynamic_ncols=True,
               disable=not opts["progress"], file=sys.stderr)
    since_save = 0
    for out, y in _batches(model, dataset, rows[done:], opts["batch_size"], opts["device"], opts["num_workers"],
                           opts["dtype"]):
        logits_acc.append(out)
        labels_acc.append(y)
        bar.update(len(y))
        since_save += 1
        if path is not None and since_save >= opts["save_every"]:
            logits_acc[:], labels_acc[:] = [np.concatenate(logits_acc)], [np.concatenate(labels_acc)]
            _save_partial(path, key, logits_acc[0], labels_acc[0])
            since_save = 0
    bar.close()
    if not logits_acc:  # this shard had no batch (more processes than batches)
        return np.empty((0, 0, 0), dtype=np.float32), np.empty(0, dtype=np.int64)
    return np.concatenate(logits_acc), np.concatenate(labels_acc)
