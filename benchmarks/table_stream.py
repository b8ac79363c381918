"""``dynexit table`` streaming from image files, next to the model's plain forward on the same batches (issue 16).

Writes ``--images`` real Fashion-MNIST test images as PNG files in a class-per-folder tree (a temporary
folder), then, in one process and with the same torch thread count:

- *plain*: the model's forward (every exit, ``torch.no_grad``) on the same batches, already decoded in memory;
- *stream W*: :func:`dynexit.tables.build_table` on ``imagefolder:TREE`` with ``W`` DataLoader workers
  (decoding, resizing and batching included, as a user's ImageFolder tree is read).

Each is timed ``--repeats`` times (the best is kept, runs interleaved) and the ratio stream / plain is
printed per worker count. The issue's target: within 10% (ratio >= 0.90). On 2 cores a worker only
helps when the model runs on one thread (``--threads 1``, the default): the other core decodes.

    .venv/bin/python benchmarks/table_stream.py                       # 10,000 images, workers 0 and 1
    .venv/bin/python benchmarks/table_stream.py --images 2000 --workers 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_tree(root: Path, n: int) -> Path:
    """``root/train`` (one image per class) and ``root/test`` (the first ``n`` test images) as PNG files."""
    from PIL import Image

    from dynexit.data import get_dataset

    spec = get_dataset("fashion-mnist")
    x, y = spec.load("test")
    pixels = (x[:, 0] * 255).round().astype(np.uint8)
    for split, rows in (("train", [int(np.flatnonzero(y == c)[0]) for c in range(spec.num_classes)]),
                        ("test", range(min(n, len(y))))):
        for i in rows:
            folder = root / split / f"{int(y[i]):02d}_{spec.class_names[y[i]].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png")
    return root


def plain_forward(model, batches) -> float:
    """Seconds for the model's forward over ``batches`` (a list of float tensors)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            torch.stack(model(x), dim=1).float().numpy()
    return time.perf_counter() - start


def streamed(model, tree: Path, batch_size: int, workers: int) -> tuple[float, int]:
    """Seconds and images of ``build_table`` over the tree's test split with ``workers`` DataLoader workers."""
    from dynexit.tables import build_table

    start = time.perf_counter()
    table = build_table(model, split="test", dataset=f"imagefolder:{tree}", batch_size=batch_size, num_workers=workers)
    return time.perf_counter() - start, table.num_samples


def measure(model_name: str, images: int, batch_size: int, workers: list[int], threads: int, repeats: int) -> dict:
    """The benchmark (see the module docstring); images per second of each way and the ratios."""
    import torch

    from dynexit import zoo
    from dynexit.data import get_dataset

    torch.set_num_threads(threads)
    model = zoo.resolve_model(model_name)
    with tempfile.TemporaryDirectory(prefix="dynexit_stream_") as tmp:
        tree = write_tree(Path(tmp), images)
        ds = get_dataset(f"imagefolder:{tree}").torch_dataset("test", image_size=tuple(model.input_size))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        batches = [x for x, _ in loader]  # the same images, decoded and batched the same way, held in memory
        n = sum(len(x) for x in batches)
        best = {"plain": float("inf"), **{f"stream {w}": float("inf") for w in workers}}
        for _ in range(repeats):
            best["plain"] = min(best["plain"], plain_forward(model, batches))
            for w in workers:
                seconds, rows = streamed(model, tree, batch_size, w)
                assert rows == n, (rows, n)
                best[f"stream {w}"] = min(best[f"stream {w}"], seconds)
    rate = {k: n / v for k, v in best.items()}
    return {"model": model_name, "images": n, "batch_size": batch_size, "threads": threads, "repeats": repeats,
            "images_per_s": {k: round(v, 1) for k, v in rate.items()},
            "ratio_to_plain": {k: round(v / rate["plain"], 3) for k, v in rate.items() if k != "plain"}}


def main(argv=None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="multiexit_cnn_fmnist", help="zoo model or checkpoint (default multiexit_cnn_fmnist)")
    ap.add_argument("--images", type=int, default=10_000, help="test images written as PNG files (default 10,000)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader worker counts to time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every run (default 1)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    r = measure(args.model, args.images, args.batch_size, args.workers, args.threads, args.repeats)
    print(f"{r['images']:,} PNG images, {args.model}, batch {args.batch_size}, {args.threads} torch thread(s), "
          f"{os.cpu_count()} CPUs, load {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'':22}{'images/s':>10}{'vs plain':>10}")
    for k, v in r["images_per_s"].items():
        ratio = r["ratio_to_plain"].get(k)
        verdict = "" if ratio is None else ("  ok (>= 0.90)" if ratio >= 0.90 else "  BELOW 0.90")
        print(f"{k:22}{v:10.0f}{'' if ratio is None else f'{ratio:10.2f}'}{verdict}")
    print(json.dumps(r | {"load_before": load}))


if __name__ == "__main__":
    sys.exit(main())
