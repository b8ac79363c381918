"""The dataset registry: one name -> class names, input spec and a loader with the fixed splits.

>>> spec = get_dataset("fashion-mnist")
>>> spec.num_classes, spec.in_chans, spec.image_size
(10, 1, (28, 28))
>>> images, labels = spec.load("val")          # float32 (5000, 1, 28, 28) in [0, 1], int64 (5000,)
>>> ds = get_dataset("cifar10", "/data/cifar").torch_dataset("test")   # read lazily, item by item

Every place that picks a dataset (training, table building, plot labels, the app) asks here. Names:
``fashion-mnist`` (the embedded default), ``digits`` (scikit-learn, tiny), ``cifar10``,
``cifar100``, ``svhn`` (a root with torchvision's files), ``torchvision:NAME`` (any torchvision
classification dataset, e.g. ``torchvision:KMNIST``, with a root) and ``imagefolder:PATH`` (any
class-per-folder tree, :mod:`dynexit.data.imagefolder`). Nothing is ever downloaded here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dynexit.data import digits, fashion_mnist
from dynexit.data import torchvision as tv
from dynexit.data._augment import AugmentedDataset, AugmentedImages
from dynexit.data._common import check_split

# a reader: (split, root) -> (images uint8 in [0, 255] or float in [0, 1], (N, H, W) or (N, C, H, W),
#                             labels int64 (N,), the file or source read)
Reader = Callable[[str, "str | os.PathLike | None"], "tuple[np.ndarray, np.ndarray, str]"]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: what a model and a plot need to know, and how to read its splits.

    ``class_names`` and ``short_names`` (<= 8 characters, for plot labels) have one entry per class;
    ``image_size`` is (H, W) in pixels; ``mean`` / ``std`` are per-channel statistics of the training
    images in [0, 1] units (models normalise with them inside; ImageNet's for an RGB tree of your
    own, 0.5 for a gray one); ``source`` cites the dataset; ``split_rule`` says how train / val / test
    are formed (seeds included); ``root`` is where the files are (None: the dataset's default places).
    ``resizable``: images are resized to what the model takes (ImageFolder trees).
    """

    name: str
    class_names: tuple[str, ...]
    short_names: tuple[str, ...]
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    reader: Reader | None = field(repr=False, compare=False)
    # a torch Dataset of one split, (split, augment, root) -> Dataset, when the default (a tensor
    # copy of load()) is not good enough (Fashion-MNIST keeps uint8 images in memory while augmenting;
    # file-based datasets read item by item); resizable ones take a 4th argument, the (H, W) wanted
    torch_reader: Callable | None = field(default=None, repr=False, compare=False)
    split_rule: str = ""
    root: str | None = None
    resizable: bool = False

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
        File-based datasets are read whole here: :meth:`torch_dataset` streams them instead.
        """
        root = self.root if root is None else root
        if self.reader is None:
            (x, y), source = _stack(self.torch_dataset(split, root=root)), self.name
        else:
            x, y, source = self.reader(check_split(split), root)
        if x.dtype == np.uint8:  # float32 division by 255 is correctly rounded: the bits torch's div_ gives
            x = x.astype(np.float32) / np.float32(255.0)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        return (x, y, source) if return_source else (x, y)

    def torch_dataset(self, split: str, augment: bool = False, root: str | os.PathLike | None = None,
                      image_size: tuple[int, int] | None = None):
        """A torch Dataset of ``(float32 image (C, H, W) in [0, 1], int64 label)`` for ``split``.

        ``augment`` adds the light training transforms (random crop with 2-pixel padding, horizontal
        flip). Models normalise inside, so no normalisation happens here. ``image_size`` (H, W):
        what a resizable dataset's images are resized to (default :attr:`image_size`). Errors as :meth:`load`.
        """
        root = self.root if root is None else root
        if self.resizable:
            return self.torch_reader(check_split(split), augment, root, tuple(image_size or self.image_size))
        if self.torch_reader is not None:
            return self.torch_reader(check_split(split), augment, root)
        import torch

        x, y = self.load(split, root)
        images, labels = torch.from_numpy(x), torch.from_numpy(y)
        return AugmentedImages(images, labels) if augment else torch.utils.data.TensorDataset(images, labels)

    def check_model(self, model, purpose: str = "tables") -> None:
        """ValueError unless ``model`` (a MultiExitModel) takes this dataset's images and classes."""
        shape = (self.in_chans, *(tuple(model.input_size) if self.resizable else self.image_size))
        if (model.in_chans, *model.input_size) != shape:
            raise ValueError(f"model {model.arch_name} takes {model.in_chans}x{model.input_size[0]}x"
                             f"{model.input_size[1]} images; {self.name} {purpose} need a "
                             f"{'x'.join(map(str, shape))} model")
        if model.num_classes != self.num_classes:
            raise ValueError(f"model {model.arch_name} has {model.num_classes} classes; "
                             f"{self.name} has {self.num_classes}")


def _stack(ds) -> tuple[np.ndarray, np.ndarray]:
    """A torch Dataset's items as ``(float32 (N, C, H, W), int64 (N,))`` arrays (all in memory)."""
    import torch

    if len(ds) == 0:
        raise ValueError("the split is empty")
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(list(xs)).numpy(), torch.as_tensor(ys, dtype=torch.int64).numpy()


def _read_fashion_mnist(split, root):
    return fashion_mnist.load_fashion_mnist(split, root, return_source=True)


def _read_digits(split, root):
    if root is not None:
        raise ValueError("digits ships with scikit-learn: it takes no data root")
    return (*digits.load_digits_split(split), "sklearn.datasets.load_digits")


def _augmented(ds, augment: bool):
    return AugmentedDataset(ds) if augment else ds


def _torchvision_spec(name: str, cls_name: str, classes, chans: int, size, mean, std, source: str,
                      root=None) -> DatasetSpec:
    rule = (f"train and test: the dataset's files; val: {tv.VAL_SIZE} images (10% of a smaller file) held out of "
            f"train, numpy default_rng({tv.VAL_SEED}) permutation, sorted")
    return DatasetSpec(name, tuple(classes), tuple(c[:8] for c in classes), chans, tuple(size), tuple(mean),
                       tuple(std), source, None,
                       lambda split, augment, r: _augmented(tv.split_dataset(cls_name, r, split, name), augment),
                       rule, None if root is None else str(root))


_REGISTRY = {spec.name: spec for spec in (
    DatasetSpec("fashion-mnist", fashion_mnist.FASHION_MNIST_CLASSES, fashion_mnist.FASHION_MNIST_SHORT, 1, (28, 28),
                fashion_mnist.FASHION_MNIST_MEAN, fashion_mnist.FASHION_MNIST_STD,
                "Xiao, Rasul and Vollgraf, arXiv:1708.07747", _read_fashion_mnist,
                lambda split, augment, root: fashion_mnist.fashion_mnist_dataset(split, augment, root),
                f"train: 55,000 of the training file; val: the other 5,000 (PCG64({fashion_mnist.VAL_SEED}) "
                "permutation, sorted); test: the official 10,000"),
    DatasetSpec("digits", digits.DIGITS_CLASSES, digits.DIGITS_CLASSES, 1, (8, 8), digits.DIGITS_MEAN,
                digits.DIGITS_STD, "UCI optical digits via sklearn.datasets.load_digits", _read_digits, None,
                "60 / 20 / 20 stratified train / val / test, scikit-learn train_test_split(random_state=0)"),
    _torchvision_spec("cifar10", "CIFAR10", tv.CIFAR10_CLASSES, 3, (32, 32), (0.4914, 0.4822, 0.4465),
                      (0.2470, 0.2435, 0.2616), "Krizhevsky 2009 (CIFAR-10), torchvision.datasets.CIFAR10"),
    _torchvision_spec("cifar100", "CIFAR100", tv.CIFAR100_CLASSES, 3, (32, 32), (0.5071, 0.4865, 0.4409),
                      (0.2673, 0.2564, 0.2762), "Krizhevsky 2009 (CIFAR-100), torchvision.datasets.CIFAR100"),
    _torchvision_spec("svhn", "SVHN", tv.SVHN_CLASSES, 3, (32, 32), (0.4377, 0.4438, 0.4728),
                      (0.1980, 0.2010, 0.1970), "Netzer et al. 2011 (SVHN), torchvision.datasets.SVHN"),
)}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist"}  # spellings the CLI has accepted
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*


def available_datasets() -> tuple[str, ...]:
    """The registered dataset names, default (fashion-mnist) first (plus ``torchvision:NAME`` and
    ``imagefolder:PATH``, which name a dataset by its files)."""
    return tuple(_REGISTRY)


def _imagefolder_spec(path: str) -> DatasetSpec:
    from dynexit.data.imagefolder import ImageTree

    tree = ImageTree(path)
    gray = tree.in_chans == 1

    def reader(split, augment, root, size):
        ds = tree.dataset(split)
        ds.size = tuple(size)
        return _augmented(ds, augment)
    return DatasetSpec(f"imagefolder:{path}", tree.classes, tuple(c[:8] for c in tree.classes), tree.in_chans,
                       tree.image_size, (0.5,) if gray else _IMAGENET_MEAN, (0.5,) if gray else _IMAGENET_STD,
                       f"your images in {tree.root} (class-per-folder tree)", None, reader,
                       f"{tree.rule}; {tree.layout}", str(tree.root), True)


def get_dataset(name: str, root: str | os.PathLike | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, its files at ``root`` (None: the dataset's default places).

    ``name``: a registered name (or an accepted alias), ``torchvision:NAME`` (``root`` needed: class
    names and input spec are read from the training file) or ``imagefolder:PATH`` (the tree is
    scanned; ``root`` must be None). ValueError listing the names for an unknown one;
    :class:`DataNotFoundError` when files that must be read now are missing.
    """
    if not isinstance(name, str):
        raise ValueError(f"a dataset name is a str, got {type(name).__name__}")
    if name.startswith("imagefolder:"):
        if root is not None or not name[len("imagefolder:"):]:
            raise ValueError(f"{name!r}: an ImageFolder dataset is named by its folder, imagefolder:PATH (no other root)")
        return _imagefolder_spec(name[len("imagefolder:"):])
    if name.startswith("torchvision:"):
        cls_name = name[len("torchvision:"):]
        classes, chans, size = tv.describe_file(cls_name, root, name)
        return _torchvision_spec(name, cls_name, classes, chans, size, (0.5,) * chans, (0.5,) * chans,
                                 f"torchvision.datasets.{cls_name}", root)
    spec = _REGISTRY.get(_ALIASES.get(name, name))
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(available_datasets())}, "
                         "torchvision:NAME or imagefolder:PATH")
    return spec if root is None else dataclasses.replace(spec, root=str(root))


def train_val_datasets(name: str, root: str | os.PathLike | None = None, augment: bool = False,
                       image_size: tuple[int, int] | None = None) -> tuple:
    """``(train, val)`` torch Datasets of ``(float32 (C, H, W) in [0, 1], label)`` for training.

    ``name`` / ``root``: as :func:`get_dataset`. ``augment`` applies to train only. ``image_size``
    (H, W): what a resizable dataset (an ImageFolder tree) is resized to, the model's input. ValueError
    for an unknown name; :class:`DataNotFoundError` for a root without the files.
    """
    spec = get_dataset(name, root)
    return spec.torch_dataset("train", augment, image_size=image_size), spec.torch_dataset("val", image_size=image_size)


def parse_data(text: str) -> tuple[str, str | None]:
    """``"NAME[:ROOT]"`` -> ``(dataset name, root or None)``: what ``--data`` and the notebooks read.

    ``NAME`` is a registered dataset (fashion-mnist, digits, cifar10, cifar100, svhn; ``fmnist`` is
    an alias), optionally followed by ``:ROOT``, the folder holding its files;
    ``torchvision:NAME[:ROOT]`` names any torchvision classification dataset; ``imagefolder:PATH`` is a
    class-per-folder tree (its path is the whole rest, colons included). A given ROOT or PATH must be
    an existing folder (the files in it are checked when they are read). ValueError saying what is
    wrong otherwise.
    """
    def folder(path: str) -> str:
        p = os.path.expanduser(path)
        if not os.path.isdir(p):
            raise ValueError(f"{p}: {'not a folder' if os.path.exists(p) else 'no such folder'}")
        return p

    text = str(text).strip()
    if text.startswith("imagefolder:"):
        folder(text[len("imagefolder:"):] or ".")
        return text, None
    if text.startswith("torchvision:"):
        cls_name, _, root = text[len("torchvision:"):].partition(":")
        if not cls_name:
            raise ValueError(f"{text!r}: write torchvision:NAME[:ROOT], e.g. torchvision:KMNIST:/data")
        return f"torchvision:{cls_name}", (folder(root) if root else None)
    name, _, root = text.partition(":")
    name = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist"}.get(name, name)
    if name not in available_datasets():
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(available_datasets())}, "
                         "torchvision:NAME[:ROOT] or imagefolder:PATH")
    return name, (folder(root) if root else None)
