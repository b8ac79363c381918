"""Exit criteria: how ready a sample is to leave at each exit, and per-exit calibration.

A criterion maps probabilities (N, K, C) to scores (N, K), higher = more ready to exit. The score
at exit k uses exits 1..k only, so the same function serves tables and real early exit (which
calls it on the exits computed so far and reads the last column).

- ``max_prob``: the maximum softmax probability (Huang et al., MSDNet, ICLR 2018).
- ``entropy``: negative entropy of the prediction (Teerapittayanon et al., BranchyNet, ICPR 2016).
- ``margin``: top-1 minus top-2 probability (Park et al., "Big/little deep neural network", 2015).
- ``patience``: how many consecutive exits, ending at k, agree on the prediction (Zhou et al.,
  "BERT Loses Patience", NeurIPS 2020), with the max-prob as a tie-breaker in [0, 1).
- ``random``: a seeded uniform score, the control every criterion should beat.
- the learned exit score (:class:`ExitScorer`): per-exit logistic regressions on features of exits
  1..k (:func:`exit_features`), fitted by :mod:`dynexit.solvers.learned`; a callable criterion that
  an exit rule saves as plain numbers.

Per-sample criteria (``random``): a criterion may take a keyword ``rows``, int (N,), the sample id
of each row of ``probs``: its row in the table, or its position in the original batch of real early
exit. Its score must be a function of (sample id, exit, probabilities), never of the row's
position in ``probs``, because :func:`dynexit.inference.early_exit` scores only the samples still
running and passes their original positions as ``rows``; that is what makes early exit and the
table path (:func:`dynexit.inference.exits_from_logits`, the solvers) pick the same exits. Without
``rows`` the sample ids are ``0..N-1``. :func:`apply` passes ``rows`` to criteria that take it.

Scale: :func:`scores` and :func:`scores_many` never hold a table's probabilities whole; they
score row chunks of :meth:`dynexit.table.ExitTable.iter_probabilities` (every named criterion is a
function of each sample's own row, so the chunked scores equal the whole-array ones exactly).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) is fitted
per exit on validation logits; ECE uses equal-width confidence bins.
"""

from __future__ import annotations

import inspect
import math
import reprlib
from typing import Callable

import numpy as np

from dynexit.arrays import row_chunks

Criterion = Callable[[np.ndarray], np.ndarray]


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probabilities must have shape (N, K, C), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or inf: check the model's logits")
    return probs


def max_prob(probs: np.ndarray) -> np.ndarray:
    """Max softmax probability (N, K) of probabilities (N, K, C) (MSDNet); ValueError for NaN / inf."""
    return _max_prob(_check(probs))


def entropy(probs: np.ndarray) -> np.ndarray:
    """Negative entropy in nats (N, K) of probabilities (N, K, C) (BranchyNet); ValueError for NaN / inf."""
    return _entropy(_check(probs))


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability (N, K) of probabilities (N, K, C) (Park et al. 2015); ValueError for NaN / inf."""
    return _margin(_check(probs))


def patience(probs: np.ndarray) -> np.ndarray:
    """Run length (N, K) of agreeing predictions ending at each exit plus the max-prob in [0, 1) as a
    tie-breaker, of probabilities (N, K, C) (Zhou et al., NeurIPS 2020); ValueError for NaN / inf."""
    return _patience(_check(probs))


# the criteria on probabilities known to be valid (a table's own softmax: finite by construction),
# so that scoring an ImageNet-size table does not check 250M values once per criterion


def _max_prob(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=2)


def _entropy(probs: np.ndarray) -> np.ndarray:
    out = np.empty(probs.shape[:2])
    for rows in row_chunks(len(probs), int(np.prod(probs.shape[1:]))):  # float64 one chunk at a time
        p = probs[rows].astype(np.float64)
        out[rows] = np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=2)  # = -H, higher is more certain
    return out


def _margin(probs: np.ndarray) -> np.ndarray:
    top2 = np.partition(probs, -2, axis=2)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def _patience(probs: np.ndarray) -> np.ndarray:
    pred = probs.argmax(axis=2)
    run = np.ones(pred.shape, dtype=np.float64)
    for k in range(1, pred.shape[1]):
        run[:, k] = np.where(pred[:, k] == pred[:, k - 1], run[:, k - 1] + 1, 1)
    # max-prob below 1 breaks ties between samples with the same run length
    return run + np.minimum(probs.max(axis=2), 1 - 1e-7)


_UNCHECKED = {max_prob: _max_prob, entropy: _entropy, margin: _margin, patience: _patience}


def _check_rows(rows, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.shape != (n,) or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be {n} integer sample ids (one per row of probs), got {rows.dtype} {rows.shape}")
    if n and rows.min() < 0:
        raise ValueError(f"rows are sample ids (table rows / batch positions) and cannot be negative, got {rows.min()}")
    return rows.astype(np.int64, copy=False)


def random_score(probs: np.ndarray, seed: int = 0, rows=None) -> np.ndarray:
    """Uniform scores in [0, 1), (N, K), keyed by sample: the score of sample id ``r`` at exit ``j`` is
    draw ``r`` of the stream ``numpy.random.default_rng([seed, j])``, whatever other rows are present
    (``rows``: the sample ids, default ``0..N-1``; see the module docstring)."""
    n, k = _check(probs).shape[:2]
    rows = np.arange(n) if rows is None else _check_rows(rows, n)
    size = int(rows.max()) + 1 if n else 0
    # one stream per exit, so the score of exit j does not depend on how many exits were computed;
    # the first `size` draws of a stream do not depend on `size`, so every sample id keeps its draw
    return np.stack([np.random.default_rng([seed, j]).random(size)[rows] for j in range(k)], axis=1).reshape(n, k)


# every named criterion scores each sample from its own row of probabilities: scores_many
# scores a table a row chunk at a time
CRITERIA: dict[str, Criterion] = {
    "max_prob": max_prob,
    "entropy": entropy,
    "margin": margin,
    "patience": patience,
    "random": random_score,
}


def available() -> list[str]:
    """The names of the criteria, for :func:`get`."""
    return list(CRITERIA)


def get(criterion: str | Criterion) -> Criterion:
    """A criterion by name (or a callable, passed through)."""
    if callable(criterion):
        return criterion
    try:
        return CRITERIA[criterion]
    except KeyError:
        raise ValueError(f"unknown exit criterion {criterion!r}: choose one of {', '.join(CRITERIA)}") from None


def takes_rows(criterion: str | Criterion) -> bool:
    """Whether a criterion takes the keyword ``rows`` (sample ids; see the module docstring)."""
    try:
        return "rows" in inspect.signature(get(criterion)).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def apply(criterion: str | Criterion, probs: np.ndarray, rows=None) -> np.ndarray:
    """Scores (N, K) of ``probs`` (N, K, C); ``rows`` (N,) the sample ids, passed on to criteria that
    take them (``random``) and ignored by the others."""
    fn = get(criterion)
    if rows is not None and takes_rows(fn):
        return np.asarray(fn(probs, rows=rows))
    return np.asarray(fn(probs))


def score_valid(criterion: Criterion, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Scores (n, K) of probabilities (n, K, C) known to be valid (a table's own softmax: finite by
    construction), skipping the named criteria's finiteness check; ``rows`` (n,) the sample ids."""
    return _UNCHECKED[criterion](probs) if criterion in _UNCHECKED else apply(criterion, probs, rows=rows)


def scores(table, criterion: str | Criterion = "max_prob", temperature=None) -> np.ndarray:
    """Criterion scores (N, K) float64 of an ExitTable: :meth:`dynexit.table.ExitTable.scores`."""
    return table.scores(criterion, temperature)


def scores_many(table, names, temperature=None, chunk_values: int | None = None) -> list[np.ndarray]:
    """Scores (N, K) of several named criteria of an ExitTable in one chunked pass:
    :meth:`dynexit.table.ExitTable.scores_many`."""
    return table.scores_many(names, temperature, chunk_values)

# ----------------------------------------------------------------------------- the learned exit score
# Fitted by :class:`dynexit.solvers.LearnedScoreSolver` (and the default solver's "learned" candidate);
# it lives here, with the other scores, so that an exit rule (dynexit.policy) never imports a solver.
# Features follow the "learning to exit" line of work (Kag, Saligrama and Chakraborty, "Learning to
# Exit"; the confidence-combination features of Wołczyk et al., "Zero Time Waste", NeurIPS 2021).

def exit_features(probs: np.ndarray, k: int) -> np.ndarray:
    """Features (N, F) of exit k computed from exits 0..k of ``probs`` (N, K, C)."""
    p = probs[:, k].astype(np.float64)
    top = np.partition(p, -2, axis=1)  # only the two largest are read: a partial sort
    conf = top[:, -1]
    feats = [
        conf,
        np.log(np.clip(conf, 1e-7, None)) - np.log(np.clip(1 - conf, 1e-7, None)),
        top[:, -1] - top[:, -2],
        np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=1),
    ]
    if k > 0:
        pred = probs[:, : k + 1].argmax(axis=2)
        prev_pred = pred[:, k - 1]
        run = np.ones(len(p))
        for j in range(1, k + 1):
            run = np.where(pred[:, j] == pred[:, j - 1], run + 1, 1)
        mean_p = probs[:, : k + 1].mean(axis=1)
        feats += [
            (pred[:, k] == prev_pred).astype(np.float64),
            run / (k + 1),
            probs[:, k - 1].max(axis=1),
            p[np.arange(len(p)), prev_pred],
            mean_p.max(axis=1),
            (mean_p.argmax(axis=1) == pred[:, k]).astype(np.float64),
        ]
    return np.stack(feats, axis=1)


class ExitScorer:
    """The learned exit score: per-exit logistic scores, callable on probabilities (N, K', C) ->
    scores (N, K') in [0, 1], a criterion like the named ones (exit k reads exits 1..k only).

    Each exit holds either a constant (its correctness never varied on the fitting table) or the
    standardisation and logistic weights of its regression as plain arrays, so a fitted scorer
    is cheap to call and can be written to JSON (:meth:`to_dict`) for deployment.
    """

    def __init__(self, models):
        """``models``: one entry per exit, a float (constant score) or the dict of arrays
        ``{"mean", "scale", "coef"}`` (F,) and float ``"intercept"`` of a standardised logistic
        regression (what :func:`dynexit.solvers.learned.fit_exit_model` returns)."""
        self.models = list(models)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs)
        out = np.empty(probs.shape[:2])
        for k in range(probs.shape[1]):
            model = self.models[k]
            if isinstance(model, float):
                out[:, k] = model + 1e-3 * probs[:, k].max(axis=1)  # constant exit: fall back to max-prob order
            else:
                z = (exit_features(probs, k) - model["mean"]) / model["scale"] @ model["coef"] + model["intercept"]
                out[:, k] = 1.0 / (1.0 + np.exp(-z))
        return out

    def to_dict(self) -> dict:
        """The JSON form :meth:`from_dict` reads: each exit a number or its plain lists."""
        return {"kind": "dynexit.learned_exit_score", "exits": [
            m if isinstance(m, float) else {k: np.asarray(v).tolist() for k, v in m.items()} for m in self.models]}

    @classmethod
    def from_dict(cls, data: dict) -> "ExitScorer":
        """The scorer written by :meth:`to_dict`; ValueError naming the exit and field that is wrong.

        Each exit is a finite number (a constant score) or ``{"mean", "scale", "coef"}`` lists of
        the exit's feature count (4 at the first exit, 10 after; finite, scale > 0) and a finite
        ``"intercept"``.
        """
        if not isinstance(data, dict) or data.get("kind") != "dynexit.learned_exit_score":
            raise ValueError("not a learned exit score (no kind 'dynexit.learned_exit_score')")
        exits = data.get("exits")
        if not isinstance(exits, list) or not exits:
            raise ValueError("a learned exit score needs a non-empty list 'exits', one entry per exit")
        return cls([_exit_model_from_json(m, k) for k, m in enumerate(exits)])


_LIMIT = 1e6


def _finite(value) -> bool:
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _exit_model_from_json(model, k: int):
    """One exit of :meth:`ExitScorer.from_dict`: a constant or the arrays of its linear model."""
    if _finite(model):
        return float(model)
    where = f"learned exit score, exit {k + 1}"
    if not isinstance(model, dict):
        raise ValueError(f"{where}: expected a finite number or an object with mean, scale, coef, intercept; "
                         f"got {reprlib.repr(model)}")
    missing = [key for key in ("mean", "scale", "coef", "intercept") if key not in model]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    n_features = 4 if k == 0 else 10  # see exit_features
    out = {}
    for key in ("mean", "scale", "coef"):
        values = model[key]
        if not (isinstance(values, list) and len(values) == n_features and all(_finite(v) for v in values)):
            raise ValueError(f"{where}: {key!r} must be a list of {n_features} finite numbers, "
                             f"got {reprlib.repr(values)}")
        out[key] = np.asarray(values, dtype=np.float64)
    if np.any(out["scale"] <= 0):
        raise ValueError(f"{where}: 'scale' must be positive, got {out['scale'].tolist()}")
    if not _finite(model["intercept"]):
        raise ValueError(f"{where}: 'intercept' must be a finite number, got {reprlib.repr(model['intercept'])}")
    # the features are bounded (probabilities, clipped logits, entropies), so a fitted model's numbers
    # are far inside these limits; beyond them the score would overflow to NaN on some inputs
    if (np.abs(out["mean"]).max() > _LIMIT or np.abs(out["coef"]).max() > _LIMIT or abs(model["intercept"]) > _LIMIT
            or out["scale"].min() < 1 / _LIMIT ** 2 or out["scale"].max() > _LIMIT ** 2):
        raise ValueError(f"{where}: numbers out of range (|mean|, |coef|, |intercept| <= {_LIMIT:g}, "
                         f"scale in [{1 / _LIMIT ** 2:g}, {_LIMIT ** 2:g}]): not a fitted exit score")
    out["intercept"] = float(model["intercept"])
    return out


# ----------------------------------------------------------------------------- calibration

def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(table, bounds=(0.05, 20.0), iters: int = 60) -> np.ndarray:
    """Per-exit temperature minimising validation NLL (golden-section search on log T), shape (K,)."""
    labels = table.labels
    lo0, hi0 = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    temps = np.empty(table.num_exits)
    for k in range(table.num_exits):
        logits = table.logits[:, k].astype(np.float64)  # one exit in float64 (N, C), never the whole table
        f = lambda log_t: _nll(logits, labels, float(np.exp(log_t)))  # noqa: E731
        lo, hi = lo0, hi0
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = f(a), f(b)
        for _ in range(iters):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - ratio * (hi - lo)
                fa = f(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + ratio * (hi - lo)
                fb = f(b)
        temps[k] = float(np.exp((lo + hi) / 2))
    return temps


def expected_calibration_error(table, temperature=None, n_bins: int = 15) -> np.ndarray:
    """ECE of every exit (K,): the bin-weighted |accuracy - confidence| over equal-width bins."""
    conf = np.empty((table.num_samples, table.num_exits), dtype=np.float32)
    correct = np.empty((table.num_samples, table.num_exits), dtype=bool)
    for rows, probs in table.iter_probabilities(temperature):
        conf[rows] = probs.max(axis=2)
        correct[rows] = probs.argmax(axis=2) == table.labels[rows, None]
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = np.zeros(table.num_exits)
    for k in range(table.num_exits):
        count = np.bincount(bins[:, k], minlength=n_bins)
        acc_sum = np.bincount(bins[:, k], weights=correct[:, k], minlength=n_bins)
        conf_sum = np.bincount(bins[:, k], weights=conf[:, k], minlength=n_bins)
        ece[k] = np.abs(acc_sum - conf_sum).sum() / len(conf)
    return ece
