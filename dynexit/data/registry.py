"""The dataset registry: one name -> class names, input spec and a loader with the fixed splits.

>>> spec = get_dataset("fashion-mnist")
>>> spec.num_classes, spec.in_chans, spec.image_size
(10, 1, (28, 28))
>>> images, labels = spec.load("val")          # float32 (5000, 1, 28, 28) in [0, 1], int64 (5000,)

Every place that picks a dataset (training, table building, plot labels, the app) asks here.
Registered now: ``fashion-mnist`` (the embedded default) and ``digits`` (scikit-learn, tiny).
torchvision datasets (CIFAR) are trainable by name through :func:`train_val_datasets` but not
registered yet; a later issue registers them and ImageFolder trees (your own data) here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dynexit.data import digits, fashion_mnist
from dynexit.data._augment import AugmentedImages
from dynexit.data._common import check_split
from dynexit.data.torchvision import TORCHVISION_DATASETS, cifar_train_val

# a reader: (split, root) -> (images uint8 in [0, 255] or float in [0, 1], (N, H, W) or (N, C, H, W),
#                             labels int64 (N,), the file or source read)
Reader = Callable[[str, "str | os.PathLike | None"], "tuple[np.ndarray, np.ndarray, str]"]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: what a model and a plot need to know, and how to read its splits.

    ``class_names`` and ``short_names`` (<= 8 characters, for plot labels) have one entry per class;
    ``image_size`` is (H, W) in pixels; ``mean`` / ``std`` are per-channel statistics of the training
    images in [0, 1] units (models normalise with them inside); ``source`` cites the dataset.
    """

    name: str
    class_names: tuple[str, ...]
    short_names: tuple[str, ...]
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    reader: Reader = field(repr=False, compare=False)
    # a torch Dataset of one split, (split, augment, root) -> Dataset, when the default (a tensor
    # copy of load()) is not good enough (Fashion-MNIST keeps uint8 images in memory while augmenting)
    torch_reader: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """How many classes (labels are 0 .. num_classes - 1)."""
        return len(self.class_names)

    def load(self, split: str, root: str | os.PathLike | None = None, *, return_source: bool = False):
        """``(images float32 (N, C, H, W) in [0, 1], labels int64 (N,))`` of split train / val / test.

        The splits are fixed (the same images on every machine: shipped tables depend on it).
        ``root``: where the files are (see the dataset's module; None: its default places).
        ``return_source=True`` adds a third item: the file or source actually read (str).
        ValueError for an unknown split; :class:`DataNotFoundError` when the files are missing.
        """
        x, y, source = self.reader(check_split(split), root)
        if x.dtype == np.uint8:  # float32 division by 255 is correctly rounded: the bits torch's div_ gives
            x = x.astype(np.float32) / np.float32(255.0)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        return (x, y, source) if return_source else (x, y)

    def torch_dataset(self, split: str, augment: bool = False, root: str | os.PathLike | None = None):
        """A torch Dataset of ``(float32 image (C, H, W) in [0, 1], int64 label)`` for ``split``.

        ``augment`` adds the light training transforms (random crop with 2-pixel padding, horizontal
        flip). Models normalise inside, so no normalisation happens here. Errors as :meth:`load`.
        """
        if self.torch_reader is not None:
            return self.torch_reader(split, augment, root)
        import torch

        x, y = self.load(split, root)
        images, labels = torch.from_numpy(x), torch.from_numpy(y)
        return AugmentedImages(images, labels) if augment else torch.utils.data.TensorDataset(images, labels)

    def check_model(self, model, purpose: str = "tables") -> None:
        """ValueError unless ``model`` (a MultiExitModel) takes this dataset's images and classes."""
        shape = (self.in_chans, *self.image_size)
        if (model.in_chans, *model.input_size) != shape:
            raise ValueError(f"model {model.arch_name} takes {model.in_chans}x{model.input_size[0]}x"
                             f"{model.input_size[1]} images; {self.name} {purpose} need a "
                             f"{'x'.join(map(str, shape))} model")
        if model.num_classes != self.num_classes:
            raise ValueError(f"model {model.arch_name} has {model.num_classes} classes; "
                             f"{self.name} has {self.num_classes}")


def _read_fashion_mnist(split, root):
    return fashion_mnist.load_fashion_mnist(split, root, return_source=True)


def _read_digits(split, root):
    if root is not None:
        raise ValueError("digits ships with scikit-learn: it takes no data root")
    return (*digits.load_digits_split(split), "sklearn.datasets.load_digits")


_REGISTRY = {spec.name: spec for spec in (
    DatasetSpec("fashion-mnist", fashion_mnist.FASHION_MNIST_CLASSES, fashion_mnist.FASHION_MNIST_SHORT, 1, (28, 28),
                fashion_mnist.FASHION_MNIST_MEAN, fashion_mnist.FASHION_MNIST_STD,
                "Xiao, Rasul and Vollgraf, arXiv:1708.07747", _read_fashion_mnist,
                lambda split, augment, root: fashion_mnist.fashion_mnist_dataset(split, augment, root)),
    DatasetSpec("digits", digits.DIGITS_CLASSES, digits.DIGITS_CLASSES, 1, (8, 8), digits.DIGITS_MEAN,
                digits.DIGITS_STD, "UCI optical digits via sklearn.datasets.load_digits", _read_digits),
)}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist"}  # spellings the CLI has accepted


def available_datasets() -> tuple[str, ...]:
    """The registered dataset names, default (fashion-mnist) first."""
    return tuple(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name`` (or an accepted alias); ValueError listing the names."""
    spec = _REGISTRY.get(_ALIASES.get(name, name))
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(available_datasets())}")
    return spec


def train_val_datasets(name: str, root: str | os.PathLike | None = None, augment: bool = False) -> tuple:
    """``(train, val)`` torch Datasets of ``(float32 (C, H, W) in [0, 1], label)`` for training.

    ``name``: a registered dataset or a torchvision one (cifar10, cifar100: ``root`` needed).
    ``augment`` applies to train only. ValueError for an unknown name or a bad root.
    """
    if name in TORCHVISION_DATASETS:
        return cifar_train_val(name, root)
    if _ALIASES.get(name, name) not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}: choose one of "
                         f"{', '.join(available_datasets() + TORCHVISION_DATASETS)}")
    spec = get_dataset(name)
    return spec.torch_dataset("train", augment, root), spec.torch_dataset("val", False, root)
