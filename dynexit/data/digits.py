"""scikit-learn's 8x8 handwritten digits as a tiny dataset (tests, notebooks, quick experiments).

Source: the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin and Kaynak, 1998),
as shipped by ``sklearn.datasets.load_digits`` (no download).
"""

from __future__ import annotations

import numpy as np

from dynexit.data._common import check_split

DIGITS_CLASSES = tuple(str(d) for d in range(10))
# per-channel statistics of the seed-0 train split
DIGITS_MEAN, DIGITS_STD = (0.3048,), (0.3756,)


def load_digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: ``(images float32 (N, 8, 8) in [0, 1], labels int64 (N,))``.

    1,797 images split 60 / 20 / 20 into train / val / test with a seeded stratified shuffle
    (``seed`` fixes it; 0 everywhere in dynexit). ValueError for an unknown split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_split(split)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    chosen = {"train": train, "val": val, "test": test}[split]
    return x[chosen], y[chosen]
