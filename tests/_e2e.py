"""End-to-end helpers on real data other than the Fashion-MNIST zoo (issue 16, item 5): no tests here.

- :func:`build_digits_entry`: a small multi-exit CNN trained on scikit-learn's 8x8 digits with the
  real command line (``dynexit train``, then ``dynexit table`` for val and test, in process), laid
  out as a zoo folder entry ``NAME.safetensors`` + ``NAME.json`` + ``NAME.val.npz`` + ``NAME.test.npz``
  (``DYNEXIT_ZOO=FOLDER`` opens it in the app);
- :func:`build_imagefolder_tree`: a class-per-folder tree of PNGs of REAL Fashion-MNIST images
  (the shipped test split), ``train/``, ``val/`` and ``test/``, for the ``imagefolder:PATH`` path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

# A quarter-width ResNet-10 on 8x8 inputs (stride-1 stem, no max-pool: maps of 8, 4, 2, 1 pixels),
# exits after stages 1, 2, 3 and the head. ~1 s per epoch on one busy core; > 0.9 test accuracy in 4.
DIGITS_MODEL = "multiexit_cnn"
DIGITS_KWARGS = {"backbone": "resnet10_quarter", "in_chans": 1, "input_size": 8, "num_classes": 10,
                 "exit_after": [1, 2, 3]}
DIGITS_TRAIN = ["--epochs", "4", "--batch-size", "32", "--lr", "3e-3", "--warmup-epochs", "0.5",
                "--no-augment",  # flips and shifts turn digits into other digits
                "--ema-decay", "0", "--seed", "0"]


def run_cli(argv: list[str]) -> None:
    """``dynexit ARGV`` in this process; AssertionError with the arguments when it exits non-zero."""
    from dynexit.cli import main

    code = main([str(a) for a in argv])
    assert code == 0, f"dynexit {' '.join(map(str, argv))} exited {code}"


def build_digits_entry(folder, name: str = "digits_cnn", epochs: int | None = None) -> Path:
    """Train :data:`DIGITS_MODEL` on digits and write the zoo-folder entry ``name`` into ``folder``.

    Runs ``dynexit train --data digits`` (in a temporary run folder), copies its checkpoint to
    ``folder/NAME.safetensors`` + ``NAME.json`` (the same bytes, so the sidecar's SHA-256 holds),
    then ``dynexit table --data digits --split val|test --model folder/NAME.safetensors``. Returns
    ``folder`` (a Path, created when missing). ``epochs`` overrides the 4 of :data:`DIGITS_TRAIN`.
    About 10 s on one core of a busy 2-core machine.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_args = list(DIGITS_TRAIN)
    if epochs is not None:
        train_args[1] = str(epochs)
    with tempfile.TemporaryDirectory(prefix="dynexit_e2e_") as run:
        run_cli(["train", "--model", DIGITS_MODEL, "--model-kwargs", json.dumps(DIGITS_KWARGS), "--data", "digits",
                 *train_args, "--no-progress", "--out", run])
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(Path(run) / f"checkpoint{suffix}", folder / f"{name}{suffix}")
    weights = folder / f"{name}.safetensors"
    for split in ("val", "test"):
        run_cli(["table", "--model", weights, "--data", "digits", "--split", split, "--batch-size", "512",
                 "--quiet", "--out", folder / f"{name}.{split}.npz"])
    return folder


def build_imagefolder_tree(folder, classes: int = 3, per_split=None) -> Path:
    """Write PNGs of real Fashion-MNIST test images as ``folder/{train,val,test}/CLASS/NNNNN.png``.

    ``classes``: how many classes, the first ones of Fashion-MNIST (1..10); folders are named by the
    class name (``/`` -> ``-``), so the tree numbers them in SORTED order ("Pullover" < "T-shirt-top"
    < "Trouser"), not in Fashion-MNIST's. ``per_split``: images per class in each split (an int for
    all three, or ``{"train": 40, "val": 8, "test": 8}``, the default); the images are the first
    ones of each class in the shipped test split, train first, no image in two splits. Returns
    ``folder``. ValueError for a bad count.
    """
    import numpy as np
    from PIL import Image

    from dynexit.data import get_dataset

    spec = get_dataset("fashion-mnist")
    counts = per_split if isinstance(per_split, dict) else \
        {s: per_split for s in ("train", "val", "test")} if per_split else {"train": 40, "val": 8, "test": 8}
    if not 1 <= classes <= spec.num_classes or any(int(n) < 1 for n in counts.values()):
        raise ValueError(f"classes must be in 1..{spec.num_classes} and counts positive, got {classes}, {counts}")
    x, y = spec.load("test")  # float32 (N, 1, 28, 28) in [0, 1]
    pixels = np.rint(x[:, 0] * 255).astype(np.uint8)
    folder = Path(folder)
    for label in range(classes):
        rows = np.flatnonzero(y == label)
        start = 0
        for split, n in counts.items():
            place = folder / split / spec.class_names[label].replace("/", "-")
            place.mkdir(parents=True, exist_ok=True)
            for i in rows[start:start + int(n)]:
                Image.fromarray(pixels[i]).save(place / f"{i:05d}.png")
            start += int(n)
    return folder


def tree_labels(folder, split: str) -> tuple[list[str], list[int]]:
    """``(class names, labels)`` of ``folder/split`` as a class-per-folder tree numbers them: classes are
    the sorted folder names, images in class order then by path (what ``imagefolder:`` reads)."""
    base = Path(folder) / split
    names = sorted(p.name for p in base.iterdir() if p.is_dir())
    labels = [k for k, c in enumerate(names) for _ in sorted((base / c).glob("*.png"))]
    return names, labels
