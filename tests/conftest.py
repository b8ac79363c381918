import numpy as np
import pytest
import torch

from dynexit.table import ExitTable
from dynexit.testing import digits_tables


@pytest.fixture(scope="session")
def digits():
    """(val, test) tables of a real multi-exit net trained on scikit-learn digits."""
    return digits_tables(seed=0)


@pytest.fixture(scope="session")
def digits_seed1():
    return digits_tables(seed=1)


def random_table(n=200, k=4, c=5, seed=0, sharpness=3.0) -> ExitTable:
    """A synthetic table whose later exits are more often right (for property tests)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, k, c))
    logits[np.arange(n), :, labels] += sharpness * np.linspace(0.3, 1.0, k)[None, :] * rng.random((n, 1))
    # the costs are the model's, not the sample's: every seed (val, test) shares them
    costs = np.cumsum(np.random.default_rng(1000 + k).uniform(0.5, 2.0, k))
    return ExitTable(logits, labels, costs)


# Tiny models on 2 busy cores run far faster single-threaded (no intra-op thread contention).
torch.set_num_threads(1)
