"""Chunked numpy helpers shared by the table, the criteria and inference.

A table's logits can be ImageNet-size (50,000 x 5 x 1,000 float32 = 1 GB): everything that derives
per-sample values from them walks row chunks of ~2M values instead of making full-size copies.
"""

from __future__ import annotations

import numpy as np

# values per row chunk (16 MB as float64): small enough for the temporaries of a softmax, large
# enough that numpy's per-call overhead does not show
CHUNK_VALUES = 1 << 21


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax of ``logits`` along ``axis`` (any shape, same dtype), shifted by the max for stability."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def row_chunks(n: int, row_size: int, chunk_values: int | None = None):
    """Slices of ``range(n)`` holding about ``chunk_values`` (default :data:`CHUNK_VALUES`) values of
    ``row_size`` each (>= 1 row)."""
    step = max(1, (chunk_values or CHUNK_VALUES) // max(1, row_size))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def softmax_f32(logits: np.ndarray) -> np.ndarray:
    """float32 softmax (same shape) over the last axis of ``logits``, computed in float64: the values
    :meth:`dynexit.table.ExitTable.probabilities` and :func:`dynexit.inference.exit_probabilities`
    have always given; call it on one chunk at a time."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x.astype(np.float32)
