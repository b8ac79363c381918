"""Fashion-MNIST, the embedded default dataset: IDX files, the fixed train / val / test split.

Source: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747 (MIT licence). The 10,000-image test split ships in
``data/fashion-mnist``; the training split is looked up in the places listed by
:func:`fashion_mnist_sources`.

Splits: ``train`` is 55,000 of the 60,000 training images, ``val`` the other 5,000 (a fixed
held-out set, the same indices on every machine: thresholds are fitted there), ``test`` the
official 10,000-image test split (results are reported there).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from dynexit.data._augment import AugmentedImages
from dynexit.data._common import DataNotFoundError, check_split

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# plot labels (<= 8 characters)
FASHION_MNIST_SHORT = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
# per-channel statistics of the 60,000 training images (the models normalise with them inside)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
VAL_SIZE = 5000
VAL_SEED = 20231001  # fixed: the val indices must never change, or shipped tables go stale

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "DYNEXIT_DATA"
# the IDX files of each part, each read gzipped (NAME.gz) or uncompressed (NAME), as distributed
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as a numpy array; ValueError if it is not one."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({data.size} bytes of {int(np.prod(dims))})")
    return data.reshape(tuple(dims)).copy()


def val_indices(n_train: int = 60000) -> np.ndarray:
    """The fixed 5,000 training indices held out for calibration (sorted)."""
    rng = np.random.Generator(np.random.PCG64(VAL_SEED))
    return np.sort(rng.permutation(n_train)[:VAL_SIZE])


def _env_root() -> Path | None:
    """``$DYNEXIT_DATA`` as a Path, or None when it is unset or empty."""
    value = os.environ.get(ENV_VAR, "")
    return Path(value).expanduser() if value.strip() else None


def fashion_mnist_sources(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for the IDX files, in order.

    An explicit ``root`` is the only place searched: data the user pointed at is never silently
    replaced by another copy. Without it, a set (non-empty) ``$DYNEXIT_DATA`` is honoured as strictly:
    it and its ``fashion-mnist`` subfolder are the only places searched. With neither, the
    repository's ``data/fashion-mnist`` (test split only) and the Debian package are searched.
    """
    if root is not None:
        return [Path(root).expanduser()]
    env = _env_root()
    if env is not None:
        return [env, env / "fashion-mnist"]
    return [REPO_DATA_DIR, DEBIAN_DIR]


def _part(split: str) -> str:
    """The IDX file pair a split is read from: val is held out of the training file."""
    return "test" if check_split(split) == "test" else "train"


def _idx_file(place: Path, name: str) -> Path | None:
    """``place/NAME.gz`` or ``place/NAME`` (uncompressed), whichever is a file (gzipped first)."""
    for candidate in (place / f"{name}.gz", place / name):
        if candidate.is_file():
            return candidate
    return None


def _files_in(place: Path, part: str) -> tuple[Path, Path] | None:
    found = [_idx_file(place, n) for n in _FILES[part]]
    return (found[0], found[1]) if all(found) else None


def _file_names(part: str) -> str:
    return " and ".join(f"{n}[.gz]" for n in _FILES[part])


def check_fashion_mnist_root(root: str | os.PathLike, split: str, what: str = "data root") -> Path:
    """``root`` as a Path when it holds the IDX files of ``split`` (gzipped or not); DataNotFoundError
    naming them otherwise. ``what`` names the place in the message (``DYNEXIT_DATA=...``).

    Cheap (no file is read): the CLI calls it before loading any model.
    """
    part = _part(split)
    place = Path(root).expanduser()
    if not place.is_dir():
        raise DataNotFoundError(f"{what} {place}: {'not a directory' if place.exists() else 'no such directory'}; "
                                f"it should hold the Fashion-MNIST files {_file_names(part)}")
    missing = [f"{n}[.gz]" for n in _FILES[part] if _idx_file(place, n) is None]
    if missing:
        raise DataNotFoundError(f"{what} {place} does not hold the Fashion-MNIST {split} split: "
                                f"missing {' and '.join(missing)}")
    return place


def check_fashion_mnist_source(split: str, root: str | os.PathLike | None = None) -> None:
    """Cheap check (no file read) of the place :func:`load_fashion_mnist` reads ``split`` from when the
    user named one: ``root``, else a set ``$DYNEXIT_DATA`` (it or its ``fashion-mnist`` subfolder).
    DataNotFoundError naming it when the folder or a file is missing; with neither, nothing to check."""
    if root is not None:
        check_fashion_mnist_root(root, split)
        return
    env = _env_root()
    if env is None:
        return
    part = _part(split)
    named = f"{ENV_VAR}={os.environ[ENV_VAR]}"
    if not env.is_dir():
        raise DataNotFoundError(f"{named}: {'not a directory' if env.exists() else 'no such directory'}; point it at "
                                f"a folder holding the Fashion-MNIST files ({_file_names(part)}) or unset {ENV_VAR}")
    if _files_in(env, part) is None and _files_in(env / "fashion-mnist", part) is None:
        raise DataNotFoundError(f"{named}: neither that folder nor its fashion-mnist subfolder holds the Fashion-MNIST "
                                f"{split} split ({_file_names(part)}); put the files there or unset {ENV_VAR}")


def _find_raw(part: str, root, split: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images, labels, source)``: ``source`` the images file read (or the torchvision download)."""
    if root is not None:
        place = check_fashion_mnist_root(root, split or part)
        images, labels = _files_in(place, part)
        return (*_read_pair(images, labels), str(images))
    if _env_root() is not None:  # a set DYNEXIT_DATA is the only place read (fashion_mnist_sources), as a root is
        check_fashion_mnist_source(split or part)
    tried = []
    for place in fashion_mnist_sources(None):
        found = _files_in(place, part)
        if found is not None:
            return (*_read_pair(*found), str(found[0]))
        tried.append(str(place))
    downloaded = _try_torchvision(part, None)
    if downloaded is not None:
        return (*downloaded, f"torchvision download ({Path.home() / '.cache' / 'dynexit'})")
    tried.append("torchvision download (offline or failed)")
    raise DataNotFoundError(
        f"Fashion-MNIST {part} split not found. Tried: {'; '.join(tried)}. "
        f"Get it with `apt-get install dataset-fashion-mnist`, or put {_file_names(part)} "
        f"in a directory and pass it as root= (--data-root) or set {ENV_VAR}."
    )


def _read_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels).astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images}: expected (N, 28, 28) images matching the {len(y)} labels of {labels.name}, "
                         f"got {x.shape}")
    return x, y


def _try_torchvision(part: str, root) -> tuple[np.ndarray, np.ndarray] | None:
    """Last resort for online users without an explicit root: torchvision's downloader into ~/.cache/dynexit."""
    try:
        from torchvision.datasets import FashionMNIST
        target = Path.home() / ".cache" / "dynexit"
        ds = FashionMNIST(str(target), train=(part == "train"), download=True)
        return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)
    except Exception:  # offline, no torchvision, blocked: the caller lists it as tried
        return None


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None, *, return_source: bool = False):
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for split train / val / test.

    ``root``: a directory holding the IDX files, gzipped or not (``train-*`` for train and val,
    ``t10k-*`` for test); when given, it is the only place read, and :class:`DataNotFoundError` (a
    ValueError) names the missing files. ``root=None``: a set ``$DYNEXIT_DATA`` is read as strictly
    (DataNotFoundError naming it); otherwise the places of :func:`fashion_mnist_sources` are searched.
    ``return_source=True`` adds a third item: the images file actually read (str), for the record.
    """
    part = _part(split)
    x, y, source = _find_raw(part, root, split)
    if part == "train":
        held_out = np.zeros(len(y), dtype=bool)
        held_out[val_indices(len(y))] = True
        keep = held_out if split == "val" else ~held_out
        x, y = x[keep], y[keep]
    return (x, y, source) if return_source else (x, y)


def split_indices(split: str, n_train: int = 60000) -> np.ndarray:
    """Positions of a split's samples in its source file (train/val index the 60k training file)."""
    if split == "test":
        return np.arange(10000)
    held_out = np.zeros(n_train, dtype=bool)
    held_out[val_indices(n_train)] = True
    return np.flatnonzero(held_out if split == "val" else ~held_out)


def fashion_mnist_dataset(split: str, augment: bool = False, root=None):
    """A torch Dataset of ``(float image (1, 28, 28) in [0, 1], label)``.

    ``augment`` adds the light training transforms (random crop with 2-pixel padding, horizontal
    flip). Models normalise inside, so no normalisation happens here.
    """
    import torch
    from torch.utils.data import TensorDataset

    images, labels = load_fashion_mnist(split, root)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    if not augment:
        return TensorDataset(x.float().div_(255.0), y)
    return AugmentedImages(x, y)


