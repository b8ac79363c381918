"""Datasets read through torchvision: CIFAR-10/100 and ImageFolder trees.

Not in the dataset registry yet (a later issue registers them with their class names); today
training reaches CIFAR through :func:`cifar_train_val`. Sources: Krizhevsky, "Learning Multiple
Layers of Features from Tiny Images", 2009 (CIFAR); ``torchvision.datasets.ImageFolder``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TORCHVISION_DATASETS = ("cifar10", "cifar100")  # trainable by name (build_datasets)
VAL_SIZE, VAL_SEED = 5000, 12345  # the val images held out of the CIFAR training file


def torchvision_dataset(name: str, root: str, train: bool, image_size: int | None = None, download: bool = False):
    """CIFAR-10/100 or an ImageFolder tree through torchvision: items ``(float32 (C, H, W) in [0, 1], int)``.

    ``name`` is ``cifar10``, ``cifar100`` or ``imagefolder`` (``root`` is then the class-per-folder
    directory). ``image_size`` resizes to a square of that many pixels (antialiased).
    ``download=True`` needs network access. FileNotFoundError for a missing ImageFolder root,
    ValueError for an unknown name; torchvision's RuntimeError when CIFAR files are missing.
    """
    from torchvision import datasets
    from torchvision.transforms import v2
    import torch

    steps = [v2.ToImage()]
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    transform = v2.Compose(steps)
    if name == "cifar10":
        return datasets.CIFAR10(root, train=train, transform=transform, download=download)
    if name == "cifar100":
        return datasets.CIFAR100(root, train=train, transform=transform, download=download)
    if name == "imagefolder":
        if not Path(root).is_dir():
            raise FileNotFoundError(f"ImageFolder root {root} is not a directory of class folders")
        return datasets.ImageFolder(root, transform=transform)
    raise ValueError(f"unknown dataset {name!r}: choose fashion-mnist, cifar10, cifar100 or imagefolder")


def cifar_train_val(name: str, root) -> tuple:
    """``(train, val)`` torch Datasets of CIFAR's training file: val a fixed seeded 5,000 images.

    ``root``: the directory holding torchvision's download. ValueError when it is not given, is not
    a directory or does not hold the files.
    """
    import torch

    if not root:
        raise ValueError(f"--data {name} needs --data-root (a directory with the torchvision download)")
    if not Path(root).expanduser().is_dir():
        raise ValueError(f"data root {root}: no such directory (it should hold the torchvision {name} download)")
    try:
        full = torchvision_dataset(name, str(Path(root).expanduser()), train=True)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(f"data root {root} does not hold the torchvision {name} files ({err})") from None
    perm = np.random.default_rng(VAL_SEED).permutation(len(full))
    return (torch.utils.data.Subset(full, perm[VAL_SIZE:].tolist()),
            torch.utils.data.Subset(full, perm[:VAL_SIZE].tolist()))
