"""Datasets: one registry (name -> class names, input spec, loader with the fixed splits).

=====================  =====================================================================
``registry``           :func:`get_dataset`, :func:`parse_data` (``NAME[:ROOT]``), :func:`available_datasets`, :class:`DatasetSpec`,
                       :func:`train_val_datasets` (what training reads)
``fashion_mnist``      the embedded default: IDX files, where they are looked for, the fixed split
``digits``             scikit-learn's 8x8 digits (tiny)
``torchvision``        CIFAR-10/100, SVHN and any torchvision classification set (never downloaded)
``imagefolder``        your own class-per-folder tree, ImageNet's layout included, read lazily
``images``             any uploaded image file -> a model input (``prepare_image``), or why not
=====================  =====================================================================

The names below are re-exported so that ``from dynexit.data import load_fashion_mnist`` keeps working.
"""

from dynexit.data._augment import AugmentedDataset, AugmentedImages
from dynexit.data._common import SPLITS, DataNotFoundError
from dynexit.data.digits import load_digits_split
from dynexit.data.fashion_mnist import (
    DEBIAN_DIR, ENV_VAR, FASHION_MNIST_CLASSES, REPO_DATA_DIR, VAL_SEED, VAL_SIZE, check_fashion_mnist_root,
    check_fashion_mnist_source, fashion_mnist_dataset, fashion_mnist_sources, load_fashion_mnist, read_idx,
    split_indices, val_indices,
)
from dynexit.data.registry import DatasetSpec, available_datasets, get_dataset, parse_data, train_val_datasets
from dynexit.data.imagefolder import ImageTree

__all__ = [
    "AugmentedDataset", "AugmentedImages", "DEBIAN_DIR", "DataNotFoundError", "DatasetSpec", "ENV_VAR", "FASHION_MNIST_CLASSES",
    "REPO_DATA_DIR", "SPLITS", "VAL_SEED", "VAL_SIZE", "available_datasets", "check_fashion_mnist_root",
    "check_fashion_mnist_source", "fashion_mnist_dataset", "fashion_mnist_sources", "get_dataset",
    "load_digits_split", "load_fashion_mnist", "parse_data", "read_idx", "split_indices", "ImageTree",
    "train_val_datasets", "val_indices",
]
