"""Validation of what an ExitTable is built from: every check raises a ValueError saying what is wrong.

Used by :class:`dynexit.table.ExitTable` (constructor, :meth:`~dynexit.table.ExitTable.from_arrays`
and :meth:`~dynexit.table.ExitTable.load`). The contract (DESIGN.md section 2): logits (N, K, C)
finite reals, labels (N,) integers in [0, C), costs (K,) positive, finite and non-decreasing, K exit
names, an index of N non-negative dataset positions, JSON-serialisable meta, and a cost unit.
"""

from __future__ import annotations

import json

import numpy as np

from dynexit.arrays import row_chunks

# the units a table's cumulative costs may be in: counted MFLOPs (multiply-adds, the default, what
# every table written before the unit was recorded holds), or milliseconds measured on a machine
COST_UNITS = ("MFLOPs", "ms")


def _check_finite(logits: np.ndarray) -> None:
    """ValueError naming the first NaN / inf of float32 logits (N, K, C), checked chunk by chunk."""
    n, k, c = logits.shape
    bad_count, first = 0, None
    for rows in row_chunks(n, k * c):
        chunk = logits[rows]
        if np.isfinite(chunk).all():
            continue
        bad = ~np.isfinite(chunk)
        bad_count += int(bad.sum())
        if first is None:
            first = np.argwhere(bad)[0] + (rows.start, 0, 0)
    if bad_count:
        raise ValueError(f"logits contain {bad_count} NaN or inf values (in float32) "
                         f"(first at sample {first[0]}, exit {first[1]}); the model diverged or the input was bad")


def _is_real(arr: np.ndarray) -> bool:
    """Integer or floating dtype (not bool, complex, string or object)."""
    return arr.dtype.kind in "iuf"


def _integers(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` unchanged if integer, or float values that are whole numbers; ValueError otherwise."""
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0):
        return arr
    raise ValueError(f"{name} must be integers, got dtype {arr.dtype}"
                     + (" with non-integer values" if arr.dtype.kind == "f" else ""))


def check_logits(logits) -> np.ndarray:
    """Logits (N, K, C) as read-only-ready float32; ValueError for a bad shape, dtype, NaN or inf."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (N, K, C), got {logits.shape}")
    n, k, c = logits.shape
    if n == 0 or k == 0 or c < 2:
        raise ValueError(f"logits shape {logits.shape}: need N >= 1 samples, K >= 1 exits, C >= 2 classes")
    if not _is_real(logits):
        raise ValueError(f"logits must be real numbers, got dtype {logits.dtype}")
    with np.errstate(over="ignore"):  # a float64 beyond the float32 range becomes inf and is reported below
        logits = logits.astype(np.float32, copy=False)
    _check_finite(logits)
    return logits


def check_labels(labels, n: int, c: int) -> np.ndarray:
    """Labels (N,) int64 in [0, C); ValueError otherwise."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match logits, got {labels.shape}")
    labels = _integers(labels, "labels")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}) for {c} classes, got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def check_costs(costs, k: int) -> np.ndarray:
    """Cumulative costs (K,) float64, positive, finite and non-decreasing; ValueError otherwise."""
    costs = np.asarray(costs)
    if costs.shape != (k,):
        raise ValueError(f"costs must have shape ({k},), one per exit, got {costs.shape}")
    if not _is_real(costs):
        raise ValueError(f"costs must be real numbers (cumulative cost per exit), got dtype {costs.dtype}")
    costs = costs.astype(np.float64)
    if not np.all(np.isfinite(costs)) or np.any(costs <= 0):
        raise ValueError(f"costs must be positive and finite, got {costs.tolist()}")
    if np.any(np.diff(costs) < 0):
        raise ValueError(f"costs must be cumulative (non-decreasing along the exits), got {costs.tolist()}")
    return costs


def check_exit_names(exit_names, k: int) -> tuple:
    """K exit names as a tuple of str (default ``exit1 .. exitK``); ValueError otherwise."""
    if exit_names is None:
        exit_names = [f"exit{i + 1}" for i in range(k)]
    names = np.asarray(exit_names)
    if names.ndim != 1 or names.dtype.kind not in "UO" or not all(isinstance(s, str) for s in names.tolist()):
        raise ValueError(f"exit_names must be a list of {k} strings, got an array of dtype {names.dtype} "
                         f"and shape {names.shape}")
    if len(names) != k:
        raise ValueError(f"exit_names must have {k} entries, got {len(names)}")
    if any(not s.strip() for s in names.tolist()):
        raise ValueError(f"exit_names must not be empty, got {names.tolist()}")
    repeated = sorted({s for s in names.tolist() if names.tolist().count(s) > 1})
    if repeated:  # rules, profiles and plots find exits by name
        raise ValueError(f"exit_names must be distinct, got {', '.join(map(repr, repeated))} more than once")
    return tuple(names.tolist())


def check_index(index, n: int) -> np.ndarray:
    """Dataset positions (N,) int64, non-negative (default ``arange(N)``); ValueError otherwise."""
    index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index)
    if index.shape != (n,):
        raise ValueError(f"index must have shape ({n},), got {index.shape}")
    index = _integers(index, "index")
    if index.min() < 0 or index.max() > np.iinfo(np.int64).max:
        raise ValueError(f"index holds positions in a dataset split: non-negative integers, got range "
                         f"[{index.min()}, {index.max()}]")
    return index.astype(np.int64)


def check_meta(meta) -> dict:
    """A JSON-serialisable copy of ``meta`` ({} for None); ValueError otherwise."""
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    meta = {} if meta is None else dict(meta)
    try:
        json.dumps(meta)
    except (TypeError, ValueError, RecursionError) as err:
        raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    return meta


def check_cost_unit(cost_unit, meta: dict) -> str:
    """The table's cost unit: ``cost_unit``, else ``meta["costs_unit"]``, else ``"MFLOPs"`` (files written
    before the unit was recorded). ValueError for a unit outside :data:`COST_UNITS`, or one that
    contradicts ``meta["costs_unit"]``."""
    recorded = meta.get("costs_unit")
    unit = cost_unit if cost_unit is not None else (recorded if recorded is not None else "MFLOPs")
    if not isinstance(unit, str) or unit not in COST_UNITS:
        raise ValueError(f"cost unit must be one of {', '.join(COST_UNITS)}, got {unit!r}")
    if recorded is not None and recorded != unit:
        raise ValueError(f"cost_unit {unit!r} contradicts meta['costs_unit'] {recorded!r}")
    return unit


def as_numpy(arr, name: str):
    """``arr`` as numpy, whatever framework made it: a torch tensor (any device, one that requires
    grad, bfloat16 or float16) is detached, moved to the CPU and, if a float, widened to float32;
    anything else goes through ``np.asarray``. Lists of arrays are left to the caller."""
    if hasattr(arr, "detach") and hasattr(arr, "cpu") and hasattr(arr, "is_floating_point"):  # torch, duck-typed
        t = arr.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        try:
            return t.numpy()
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"{name}: cannot read this tensor ({err}); pass a numpy array") from None
    return arr


def check_class_names(meta: dict, c: int) -> None:
    """ValueError unless ``meta["class_names"]``, when recorded, holds C non-empty strings (viewers label
    predictions with them: a wrong list would name every class wrongly)."""
    names = meta.get("class_names")
    if names is None:
        return
    if not isinstance(names, list) or len(names) != c or not all(isinstance(n, str) and n.strip() for n in names):
        shown = f"{len(names)} entries" if isinstance(names, list) else type(names).__name__
        raise ValueError(f"meta['class_names'] must be {c} non-empty strings, one per class, got {shown}")

