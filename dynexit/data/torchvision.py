"""Datasets read through torchvision, never downloaded: CIFAR-10/100, SVHN and any classification set by name.

Sources: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (CIFAR); Netzer
et al., "Reading Digits in Natural Images with Unsupervised Feature Learning", NIPS workshop 2011
(SVHN); ``torchvision.datasets`` (the readers). ``download=False`` always: a missing file is a
:class:`DataNotFoundError` naming the root to use and the torchvision call that fetches it online.

Split rule: train and test are the dataset's own files; val is :data:`VAL_SIZE` images (or 10 % of a
smaller training file) held out of the training file by a permutation seeded with :data:`VAL_SEED`,
kept sorted (train is the sorted rest).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from dynexit.data._common import DataNotFoundError, check_split

VAL_SIZE, VAL_SEED = 5000, 12345  # the val images held out of the training file

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())
SVHN_CLASSES = tuple(str(d) for d in range(10))  # torchvision maps the digit 0 to label 0
# the torchvision class and what its root must hold, per registered name
KNOWN = {"cifar10": ("CIFAR10", "cifar-10-batches-py/"), "cifar100": ("CIFAR100", "cifar-100-python/"),
         "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat")}
TORCHVISION_DATASETS = tuple(KNOWN)  # trainable by name


def val_split(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """``(val, train)`` sorted positions in a training file of ``n_train`` images (the seeded rule)."""
    size = min(VAL_SIZE, max(1, n_train // 10))
    perm = np.random.default_rng(VAL_SEED).permutation(n_train)
    return np.sort(perm[:size]), np.sort(perm[size:])


def _to_tensor():
    import torch
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def open_file(cls_name: str, root, train: bool, label: str):
    """The torchvision dataset ``cls_name`` (e.g. ``CIFAR10``, ``MNIST``) of its train or test file
    at ``root``, items ``(float32 (C, H, W) in [0, 1], int)``; nothing is downloaded.

    DataNotFoundError naming ``root`` when it is missing or lacks the files; ValueError for a name
    torchvision does not have or a dataset without a train / test split argument.
    """
    from torchvision import datasets

    cls = getattr(datasets, cls_name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"torchvision has no dataset {cls_name!r} (names are case-sensitive, e.g. MNIST, KMNIST, "
                         "CIFAR10, STL10, SVHN)")
    fetch = f"`torchvision.datasets.{cls_name}({str(root or 'ROOT')!r}, download=True)` on a machine with network"
    if root is None:
        raise DataNotFoundError(f"{label} needs a data root: --data {label}:ROOT, ROOT a folder holding torchvision's "
                                f"{cls_name} files (get them with {fetch})")
    place = Path(root).expanduser()
    if not place.is_dir():
        raise DataNotFoundError(f"{label}: data root {place}: no such folder; get the files with {fetch}")
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        kw = {"train": train}
    elif "split" in params:
        kw = {"split": "train" if train else "test"}
    else:
        raise ValueError(f"torchvision {cls_name} has no train / test split argument; export it as an ImageFolder tree")
    try:
        return cls(str(place), transform=_to_tensor(), download=False, **kw)
    except (RuntimeError, FileNotFoundError, OSError) as err:  # torchvision: "Dataset not found or corrupted"
        what = KNOWN.get(label, (None, f"torchvision's {cls_name} files"))[1]
        raise DataNotFoundError(f"{label}: data root {place} does not hold {what} ({' '.join(str(err).split())[:160]}); "
                                f"get them with {fetch}") from None


def split_dataset(cls_name: str, root, split: str, label: str):
    """A torch Dataset of one split (train / val / test) of a torchvision dataset by the seeded rule."""
    import torch

    full = open_file(cls_name, root, check_split(split) != "test", label)
    if split == "test":
        return full
    val, train = val_split(len(full))
    return torch.utils.data.Subset(full, (val if split == "val" else train).tolist())


def describe_file(cls_name: str, root, label: str) -> tuple[tuple[str, ...], int, tuple[int, int]]:
    """``(class names, channels, (H, W))`` of a torchvision dataset, read from its training file."""
    ds = open_file(cls_name, root, True, label)
    x, _ = ds[0]
    classes = getattr(ds, "classes", None)
    if not classes:
        targets = getattr(ds, "targets", None)
        targets = getattr(ds, "labels", None) if targets is None else targets
        if targets is None:
            raise ValueError(f"torchvision {cls_name} says neither its classes nor its labels")
        classes = [str(c) for c in range(int(np.max(np.asarray(targets))) + 1)]
    return tuple(str(c) for c in classes), int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))
