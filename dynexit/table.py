"""ExitTable: the logits of every exit of a multi-exit model on one data split.

Everything a budget slider touches is numpy over this table: a model runs once per (model, split)
to build it; fitting thresholds and assigning exits afterwards never runs the model again.
Arrays are stored read-only, so derived quantities (probabilities, criterion scores) are memoised
per table object.

Scale (issue 14): an ImageNet-size table (50,000 x 5 x 1,000) holds 1 GB of float32 logits, so
nothing here makes a full-size float64 copy: validation, probabilities and criterion scores work
on row chunks of ~2M values (:meth:`ExitTable.iter_probabilities`), a float16 or float64 file
is converted to float32 chunk by chunk while it is read, and a file saved with ``compress=False``
and float32 logits is memory-mapped (benchmarks/scale.py measures all of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from pathlib import Path

import numpy as np

from dynexit import criteria
from dynexit.arrays import row_chunks, softmax_f32
from dynexit.table_checks import (COST_UNITS, as_numpy, check_class_names, check_cost_unit, check_costs,
                                  check_exit_names, check_index, check_labels, check_logits, check_meta)
from dynexit.table_npz import FIX, TableFileError, describe, max_abs, read_npz

FORMAT_VERSION = 1


class ExitTable:
    """Logits of K exits for N samples, their labels, and the cumulative cost of each exit.

    Parameters
    ----------
    logits : array (N, K, C)
    labels : int array (N,), values in [0, C)
    costs : array (K,), cumulative cost per image to produce exit k on the early-exit path (in
        ``cost_unit``); positive and non-decreasing.
    exit_names : K strings, default ``exit1 .. exitK``
    index : int array (N,), positions of the samples in their dataset split, default ``arange(N)``
    meta : JSON-serialisable dict (model, dataset, split, input size, how costs were counted)
    cost_unit : one of :data:`~dynexit.table_checks.COST_UNITS`: ``"MFLOPs"`` (counted multiply-adds)
        or ``"ms"`` (measured); default ``meta["costs_unit"]``, else MFLOPs. Kept in
        ``meta["costs_unit"]``, so it is saved in the ``.npz`` (files without it load as MFLOPs).

    ValueError naming the problem for anything else (see :mod:`dynexit.table_checks`).
    :meth:`from_arrays` builds a table from any framework's arrays.
    """

    def __init__(self, logits, labels, costs, exit_names=None, index=None, meta=None, cost_unit=None):
        logits = check_logits(logits)
        n, k, c = logits.shape
        labels = check_labels(labels, n, c)
        costs = check_costs(costs, k)
        index = check_index(index, n)
        # read-only views: the table never changes, and a caller's own array keeps its flags (it is
        # shared, not copied, so an ImageNet-size table is not held twice; from_arrays copies)
        logits, labels, costs, index = (arr.view() if arr.flags.writeable else arr
                                        for arr in (logits, labels, costs, index))
        for arr in (logits, labels, costs, index):
            arr.setflags(write=False)
        self.logits, self.labels, self.costs, self.index = logits, labels, costs, index
        self.exit_names = check_exit_names(exit_names, k)
        self.meta = check_meta(meta)
        check_class_names(self.meta, c)
        self.meta["costs_unit"] = check_cost_unit(cost_unit, self.meta)
        # what the table computes about itself (probabilities, predictions, scores, fingerprint);
        # only its own methods write here. Solvers and the app keep their state themselves.
        self._memo: dict = {}

    @classmethod
    def from_arrays(cls, logits, labels, costs, exit_names=None, cost_unit: str = "MFLOPs", dataset: str | None = None,
                    indices=None, meta: dict | None = None) -> "ExitTable":
        """A table from plain arrays, whatever framework produced them (numpy, torch CPU tensors, lists).

        Parameters
        ----------
        logits : (N, K, C) array of every exit's raw scores (pre-softmax logits), or a list of K
            arrays (N, C), one per exit, shallow to deep (stacked along axis 1); torch tensors on any
            device are detached and copied to the CPU (bfloat16 / float16 widened to float32)
        labels : (N,) integer class labels in [0, C)
        costs : (K,) cumulative cost per image of reaching exit k (exit 1's includes everything
            computed before it), positive and non-decreasing, in ``cost_unit``
        exit_names : K names, default ``exit1 .. exitK``
        cost_unit : ``"MFLOPs"`` (multiply-adds counted once) or ``"ms"`` (measured milliseconds)
        dataset : the dataset's registry name (``"cifar10"``, ``"imagefolder:/data/pets"``, see
            :func:`dynexit.data.get_dataset`), recorded in ``meta["dataset"]`` so that viewers can show
            the images; None when unknown
        indices : (N,) positions of the rows in their dataset split, default ``arange(N)``
        meta : more JSON-serialisable facts to record (model, split, ...)

        ValueError saying what is wrong for a bad shape or dtype, NaN / inf logits, labels out of
        range, costs that are not positive and non-decreasing, a wrong number of exit names or an
        unknown unit (the checks of the constructor, DESIGN.md section 2).

        >>> table = ExitTable.from_arrays(np.random.randn(100, 3, 10), np.arange(100) % 10, [1.0, 2.5, 4.0])
        """
        logits, labels, costs, indices = (as_numpy(a, n) for a, n in ((logits, "logits"), (labels, "labels"),
                                                                      (costs, "costs"), (indices, "indices")))
        if isinstance(logits, (list, tuple)):
            if not logits:
                raise ValueError("logits: an empty list of exits; give an (N, K, C) array or K arrays (N, C)")
            parts = [np.asarray(as_numpy(part, "logits")) for part in logits]
            if any(part.ndim != 2 for part in parts) or len({part.shape for part in parts}) != 1:
                raise ValueError(f"logits as a list must hold K arrays of one shape (N, C), got shapes "
                                 f"{[part.shape for part in parts]}")
            logits = np.stack(parts, axis=1)
        meta = check_meta(meta)
        if dataset is not None:
            if not isinstance(dataset, str) or not dataset.strip():
                raise ValueError(f"dataset must be a dataset name (str), got {dataset!r}")
            if meta.get("dataset", dataset) != dataset:
                raise ValueError(f"dataset={dataset!r} contradicts meta['dataset']={meta['dataset']!r}; give one")
            meta["dataset"] = dataset
        meta.setdefault("source", "ExitTable.from_arrays")
        table = cls(logits, labels, costs, exit_names, indices, meta, cost_unit=cost_unit)
        # the caller keeps its arrays: a table sharing their memory would change when they do
        for name, given in (("logits", logits), ("labels", labels), ("costs", costs), ("index", indices)):
            held = getattr(table, name)
            if isinstance(given, np.ndarray) and np.may_share_memory(held, given):
                held = held.copy()
                held.setflags(write=False)
                setattr(table, name, held)
        return table

    # ------------------------------------------------------------------ sizes
    @property
    def cost_unit(self) -> str:
        """The unit of :attr:`costs`: ``"MFLOPs"`` or ``"ms"`` (``meta["costs_unit"]``)."""
        return self.meta["costs_unit"]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[0]

    @property
    def num_exits(self) -> int:
        return self.logits.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        name = self.meta.get("model", "?")
        return (f"ExitTable(model={name!r}, split={self.meta.get('split', '?')!r}, N={self.num_samples}, "
                f"K={self.num_exits}, C={self.num_classes}, costs={np.round(self.costs, 3).tolist()})")

    # ------------------------------------------------------------------ derived views
    def _cached(self, key, compute):
        """``compute()``, computed once per table under ``key`` (the table's arrays are read-only)."""
        if key not in self._memo:
            value = compute()
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            self._memo[key] = value
        return self._memo[key]

    def memoised(self, key) -> bool:
        """Whether the table holds a computed value under ``key`` (e.g. ``("probs", None)``: the whole
        probabilities, ``("scores", name, None)``: a criterion's scores)."""
        return key in self._memo

    @property
    def fingerprint(self) -> str:
        """A content hash, stable across processes (caches key on it)."""
        def compute():
            # SHA-256 (hardware-accelerated: 0.8 s per GB here, blake2b took 2 s), 128 bits kept
            h = hashlib.sha256()
            for arr in (self.logits, self.labels, self.costs):
                # the array's own buffer: tobytes() would copy 1 GB of an ImageNet-size table
                h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
            return h.hexdigest()[:32]
        return self._cached("fingerprint", compute)

    def _temperature_key(self, temperature):
        """(memo key, per-exit temperatures (K,) or None); ValueError for a bad temperature."""
        if temperature is None:
            return ("probs", None), None
        t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (self.num_exits,))
        if np.any(t <= 0) or not np.all(np.isfinite(t)):
            raise ValueError(f"temperatures must be positive and finite, got {t.tolist()}")
        return ("probs", tuple(t.tolist())), t

    def _probabilities_of(self, rows, t) -> np.ndarray:
        """float32 softmax probabilities of ``self.logits[rows]`` (float64 inside, as always)."""
        logits = self.logits[rows]
        return softmax_f32(logits if t is None else logits / t[None, :, None])

    def probabilities_of(self, rows, temperature=None) -> np.ndarray:
        """``probabilities(temperature)[rows]`` (n, K, C) float32 for a slice or integer positions
        ``rows``, computed for those rows only unless the whole array is memoised. ValueError for a
        bad temperature."""
        key, t = self._temperature_key(temperature)
        whole = self._memo.get(key)
        return whole[rows] if whole is not None else self._probabilities_of(rows, t)

    def probabilities(self, temperature=None) -> np.ndarray:
        """Softmax probabilities (N, K, C) float32, memoised; ``temperature`` is a scalar or one value
        per exit (positive, finite; ValueError otherwise).

        Holds N * K * C float32 values (1 GB for 50,000 x 5 x 1,000): code that only needs a
        per-sample summary should use :meth:`iter_probabilities`.
        """
        key, t = self._temperature_key(temperature)

        def compute():
            out = np.empty(self.logits.shape, dtype=np.float32)
            for rows in row_chunks(self.num_samples, self.num_exits * self.num_classes):
                out[rows] = self._probabilities_of(rows, t)
            return out
        return self._cached(key, compute)

    def iter_probabilities(self, temperature=None, chunk_values: int | None = None):
        """Yield ``(rows, probs)``: a slice of the samples and their probabilities (n, K, C) float32,
        equal to ``probabilities(temperature)[rows]``, without holding all of them at once (the
        memoised array is sliced when it exists). ValueError for a bad temperature."""
        self._temperature_key(temperature)  # a bad temperature fails here, before any chunk
        for rows in row_chunks(self.num_samples, self.num_exits * self.num_classes, chunk_values):
            yield rows, self.probabilities_of(rows, temperature)

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class at every exit (N, K)."""
        def compute():
            # by row chunks: numpy's argmax over the last axis copies the whole array first
            out = np.empty((self.num_samples, self.num_exits), dtype=np.intp)
            for rows in row_chunks(self.num_samples, self.num_exits * self.num_classes):
                out[rows] = self.logits[rows].argmax(axis=2)
            return out
        return self._cached("pred", compute)

    @property
    def correct(self) -> np.ndarray:
        """Correctness matrix (N, K): is exit k's prediction right."""
        return self._cached("correct", lambda: self.predictions == self.labels[:, None])

    def scores(self, criterion="max_prob", temperature=None) -> np.ndarray:
        """Criterion scores (N, K) float64 (:mod:`dynexit.criteria`), cached here for named criteria.

        Named criteria are computed a row chunk at a time (:meth:`scores_many`); a callable gets the
        whole probabilities (N, K, C), as it may not be a per-sample function, and is not cached.
        ValueError for an unknown criterion name or a bad temperature.
        """
        if isinstance(criterion, str):
            return self.scores_many([criterion], temperature)[0]
        return np.asarray(criteria.get(criterion)(self.probabilities(temperature)), dtype=np.float64)

    def scores_many(self, names, temperature=None, chunk_values: int | None = None) -> list[np.ndarray]:
        """Scores (N, K) float64 of several named criteria, in one chunked pass, cached per name.

        Equal to ``[scores(name, temperature) for name in names]``, but the probabilities of each row
        chunk are computed once for all the criteria not cached yet, and never held whole (an
        ImageNet-size table's would take 1 GB). ValueError for an unknown name or a bad temperature.
        """
        fns = {name: criteria.get(name) for name in names}
        t_key = None if temperature is None else tuple(np.broadcast_to(temperature, (self.num_exits,)).tolist())
        key = lambda name: ("scores", name, t_key)  # noqa: E731
        todo = [name for name in dict.fromkeys(names) if not self.memoised(key(name))]
        out = {name: np.empty((self.num_samples, self.num_exits)) for name in todo}
        if todo:
            for rows, probs in self.iter_probabilities(temperature, chunk_values):
                ids = np.arange(rows.start, rows.stop)
                for name in todo:
                    out[name][rows] = criteria.score_valid(fns[name], probs, ids)
        return [self._cached(key(name), lambda name=name: out[name]) for name in names]

    def exit_accuracy(self) -> np.ndarray:
        """Accuracy of every exit on its own (the "anytime" view), shape (K,)."""
        return self.correct.mean(axis=0)

    def subset(self, rows) -> "ExitTable":
        """A new table of the selected samples (boolean mask or integer positions)."""
        rows = np.asarray(rows)
        return ExitTable(self.logits[rows], self.labels[rows], self.costs, self.exit_names,
                         self.index[rows], self.meta)

    def select_exits(self, exits) -> "ExitTable":
        """A new table with only some exits (in increasing order), costs kept cumulative."""
        exits = sorted(int(e) for e in exits)
        return ExitTable(self.logits[:, exits], self.labels, self.costs[exits],
                         [self.exit_names[e] for e in exits], self.index, self.meta)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, logits_dtype: str = "float32", compress: bool = True) -> Path:
        """Write a ``.npz`` (no pickled objects); returns the path written.

        ``logits_dtype="float16"`` halves the file (the shipped zoo tables use it); logits are
        read back as float32 either way. ``compress=False`` stores the arrays uncompressed: a
        bigger file that loads several times faster (no inflating; what an ImageNet-size table wants).
        """
        if logits_dtype not in ("float32", "float16"):
            raise ValueError(f"logits_dtype must be 'float32' or 'float16', got {logits_dtype!r}")
        if logits_dtype == "float16" and max_abs(self.logits) > np.finfo(np.float16).max:
            raise ValueError("logits exceed the float16 range (65504); save them as float32")
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, format="dynexit.ExitTable", format_version=FORMAT_VERSION)
        if logits_dtype == "float16":
            meta["logits_storage"] = "float16"  # tells readers the logits are rounded to float16
        tmp = path.with_name(path.name + ".tmp.npz")
        write = np.savez_compressed if compress else np.savez
        write(tmp, logits=self.logits.astype(logits_dtype, copy=False), labels=self.labels, costs=self.costs,
                            exit_names=np.array(self.exit_names, dtype=np.str_), index=self.index,
                            meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)  # never leave a half-written table behind
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExitTable":
        """Read a table written by :meth:`save`.

        Never unpickles anything. ValueError ``"{file}: {problem}; {what to do}"`` for a missing
        file, a folder, an empty or damaged file, a ``.npy`` or other file renamed ``.npz``, missing
        arrays, wrong dtypes (object, string or complex arrays; labels and index must be integers,
        logits and costs real floats) and any value the constructor refuses (shapes, NaN / inf,
        costs, label range).

        Logits stored uncompressed as float32 (``save(compress=False)``) are memory-mapped
        read-only, after their CRC-32 is checked; any other logits are read into memory as float32.
        """
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: no such file; check the path")
        if not path.is_file():
            raise ValueError(f"{path}: is {'a folder' if path.is_dir() else 'not a regular file'}, not an "
                             f"ExitTable .npz; {FIX}")
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
        except OSError as err:  # permissions, a vanished file, an I/O error: not a traceback in a viewer
            raise ValueError(f"{path}: cannot read the file ({err.strerror or err}); check its permissions") from None
        if not magic:
            raise ValueError(f"{path}: empty file, not an ExitTable .npz; {FIX}")
        if magic == b"\x93NUMPY":
            raise ValueError(f"{path}: a single numpy array (.npy) renamed .npz, not an ExitTable; {FIX}")
        if not magic.startswith(b"PK"):
            raise ValueError(f"{path}: not an ExitTable .npz (not a zip archive); {FIX}")
        try:
            arrays = read_npz(path)
        except TableFileError as err:
            raise ValueError(f"{path}: {err}; {FIX}") from None
        except Exception as err:  # noqa: BLE001 - zipfile / zlib / numpy on untrusted bytes: any failure is damage
            raise ValueError(f"{path}: damaged ExitTable .npz ({describe(err)}); {FIX}") from err
        try:
            meta = json.loads(str(arrays["meta"][()]))
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: corrupt meta field ({describe(err)}); {FIX}") from err
        if not isinstance(meta, dict) or meta.pop("format", None) != "dynexit.ExitTable":
            raise ValueError(f"{path}: not a dynexit ExitTable (meta has no dynexit format tag); {FIX}")
        version = meta.pop("format_version", None)
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(f"{path}: ExitTable format version {reprlib.repr(version)}, this dynexit reads "
                             f"{FORMAT_VERSION}; {FIX}")
        try:
            return cls(arrays["logits"], arrays["labels"], arrays["costs"], arrays["exit_names"],
                       arrays["index"], meta)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; {FIX}") from err
