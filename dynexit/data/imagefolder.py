"""Your own images: any class-per-folder tree (``imagefolder:PATH``), ImageNet's layout included.

Layouts (class names are the folder names, sorted, as ``torchvision.datasets.ImageFolder`` sorts them):

- ``PATH/train/CLASS/*.png`` with ``PATH/val`` and ``PATH/test``: each split is its folder;
- ``PATH/train`` and ``PATH/test``: val is held out of train;
- ``PATH/train`` and ``PATH/val`` (ImageNet's layout: its public "val" is what papers report on):
  ``PATH/val`` is the test split, val is held out of train;
- ``PATH/CLASS/*.png`` (no split folders): val and test are both held out of the images.

"Held out": :data:`HELD_OUT` (10 %) of the images, at least one, chosen by a permutation seeded
with :data:`SPLIT_SEED` (recorded in the spec's ``split_rule``), indices kept sorted. Images are
read lazily (one file per item, never all in memory); every image is converted to the mode of the
first one (``L``: 1 channel, else RGB) and resized (antialiased) to its size when it differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dynexit.data._common import DataNotFoundError, check_split

SPLIT_SEED = 20240607  # fixed: held-out indices must never change, or tables made from them go stale
HELD_OUT = 0.1
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def held_out(n: int, parts: int = 1) -> list[np.ndarray]:
    """``parts`` disjoint sorted index sets of ``max(1, round(HELD_OUT * n))`` images each, then the
    sorted rest: the seeded rule every held-out split here follows. ValueError when too few images."""
    size = max(1, int(round(HELD_OUT * n)))
    if n < size * parts + 1:
        raise ValueError(f"{n} images are too few to hold out {parts} split(s) of {size}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    cuts = [np.sort(perm[i * size:(i + 1) * size]) for i in range(parts)]
    return cuts + [np.sort(perm[parts * size:])]


def _classes(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``folder/CLASS`` (sorted by class, then path)."""
    out = []
    for label, name in enumerate(classes):
        place = folder / name
        if not place.is_dir():
            continue
        paths = [os.path.join(root, f) for root, _, files in os.walk(place, followlinks=True) for f in files
                 if f.lower().endswith(EXTENSIONS)]
        out.extend((p, label) for p in sorted(paths))
    return out


class ImageTree:
    """A class-per-folder tree resolved into class names, per-split file lists, and its input spec.

    ``root``: the tree (see the module docstring for the layouts). DataNotFoundError when it is not
    a folder or holds no images; ValueError for split folders whose classes differ from train's.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(f"imagefolder:{root}: {'not a folder' if self.root.exists() else 'no such folder'}; "
                                    "give a folder of class folders (PATH/CLASS/image.png), or with train/ val/ test/")
        split_root = self.root / "train"
        self.layout = "split folders" if split_root.is_dir() and _classes(split_root) else "one folder"
        base = split_root if self.layout == "split folders" else self.root
        self.classes = tuple(_classes(base))
        train = _files(base, list(self.classes))
        if not train:
            raise DataNotFoundError(f"imagefolder:{root}: no images ({', '.join(EXTENSIONS)}) in class folders "
                                    f"under {base}")
        self.splits, self.rule = self._split(train)
        self.in_chans, self.image_size = _probe(self.splits["train"][0][0])

    def _split(self, train: list) -> tuple[dict, str]:
        folder = {s: self.root / s for s in ("val", "test")} if self.layout == "split folders" else {}
        given = {s: _files(p, list(self.classes)) for s, p in folder.items() if p.is_dir()}
        for s in given:
            extra = set(_classes(folder[s])) - set(self.classes)
            if extra:
                raise ValueError(f"imagefolder:{self.root}: {s}/ has classes that train/ lacks: {sorted(extra)[:5]}")
        pick = lambda rows, files: [files[i] for i in rows]  # noqa: E731
        seed = f"{HELD_OUT:.0%} of the images, numpy default_rng({SPLIT_SEED}) permutation, sorted"
        if "val" in given and "test" in given:
            return {"train": train, **given}, "train/, val/ and test/ folders"
        if "val" in given or "test" in given:  # ImageNet: its val folder is the reported (test) split
            val, rest = held_out(len(train))
            test_name = "test" if "test" in given else "val"
            return ({"train": pick(rest, train), "val": pick(val, train), "test": given[test_name]},
                    f"test = {test_name}/ folder; val held out of train/ ({seed})")
        val, test, rest = held_out(len(train), 2)
        return ({"train": pick(rest, train), "val": pick(val, train), "test": pick(test, train)},
                f"val and test held out of all images ({seed}; val first)")

    def dataset(self, split: str):
        """A torch Dataset of ``(float32 (C, H, W) in [0, 1], int64 label)`` read lazily from the files."""
        return ImageFiles(self.splits[check_split(split)], self.in_chans, self.image_size)


def _probe(path: str) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the first image: 1 for grayscale modes, else 3 (RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        return (1 if img.mode in ("L", "1", "I", "I;16", "F") else 3), (img.height, img.width)


class ImageFiles:
    """A torch Dataset over ``(path, label)`` pairs: ``(float32 image (C, H, W) in [0, 1], int64 label)``.

    Each item opens its file (Pillow), converts it to L (``channels=1``) or RGB, and resizes it
    (antialiased, bilinear) to ``size`` (H, W) when it differs; nothing is cached.
    """

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: tuple[int, int]):
        self.samples, self.channels, self.size = samples, channels, tuple(size)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.labels_t = None  # torch int64 labels, made on first use (no torch import here)

    def _labels(self):
        import torch

        self.labels_t = torch.from_numpy(self.labels)
        return self.labels_t

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        if self.labels_t is None:
            self._labels()
        path, _ = self.samples[i]
        mode = "L" if self.channels == 1 else "RGB"
        with Image.open(path) as img:
            if img.mode != mode:
                img = img.convert(mode)
            if (img.height, img.width) != self.size:
                img = img.resize(self.size[::-1], Image.BILINEAR, reducing_gap=None)
            x = torch.from_numpy(np.array(img, dtype=np.uint8))  # a copy of the pixels, (H, W) or (H, W, 3)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return x.float().div_(255.0), self.labels_t[i]
