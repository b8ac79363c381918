"""A learned exit score, thresholded by the exact search: our default solver.

The idea follows the "learning to exit" line of work (e.g. Kag, Saligrama and Chakraborty,
"Learning to Exit", and the confidence-combination features of Wołczyk et al., "Zero Time Waste",
NeurIPS 2021): a sample's readiness to exit at exit k is better predicted from everything seen so far
than from exit k's max-probability alone. For every exit we fit a logistic regression that predicts
"exit k's prediction is right" from features of exits 1..k only (real early exit cannot look ahead):

- exit k's max-probability, its logit, top-1 minus top-2 margin, negative entropy;
- from exit 2 on: agreement with the previous exit, the run length of agreeing exits (patience),
  the previous exit's max-probability, exit k's probability of the previous exit's class, and the
  max-probability and agreement of the running mean of the probabilities of exits 1..k.

Guard against fitting the validation noise: the validation scores the thresholds are searched on are
cross-fitted (each fold scored by models trained on the other folds), the regressions are
L2-regularised, and threshold cuts are spaced ``min_gap`` samples apart. The models refitted on
the whole validation table score every other table (test, live early exit).
"""

from __future__ import annotations

import math
import reprlib

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dynexit.solvers._base import BaseSolver, all_at_last, check_budget
from dynexit.solvers.lagrangian import ThresholdSearch


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
    """Per-exit logistic scores; callable on probabilities (N, K', C) -> scores (N, K').

    Each exit holds either a constant (its correctness never varied on the fitting table) or the
    standardisation and logistic weights of its regression as plain arrays, so a fitted scorer
    is cheap to call and can be written to JSON (:meth:`to_dict`) for deployment.
    """

    def __init__(self, models):
        self.models = [m if isinstance(m, float) else _linear_params(m) for m in models]

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
        scorer = cls([])
        scorer.models = [_exit_model_from_json(m, k) for k, m in enumerate(exits)]
        return scorer


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


def _fit_exit_model(x, y, c):
    if y.min() == y.max():  # all right or all wrong: nothing to learn
        return float(y[0])
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x, y)


def _linear_params(pipeline) -> dict:
    """The arrays of a fitted StandardScaler + binary LogisticRegression pipeline."""
    scaler, reg = pipeline[0], pipeline[-1]
    return {"mean": scaler.mean_.copy(), "scale": scaler.scale_.copy(), "coef": reg.coef_[0].copy(),
            "intercept": float(reg.intercept_[0])}


class LearnedScoreSolver(BaseSolver):
    """Thresholds on a cross-fitted, learned exit score (see the module docstring).

    Parameters
    ----------
    budget : average MFLOPs per image on the fitting table.
    C : inverse L2 strength of the per-exit logistic regressions.
    n_folds : folds of the cross-fitting on the validation table.
    min_gap : threshold cuts at least this many samples apart (0 = 0.5% of the table, at least 1).
    random_state : seeds the fold split.
    """

    def __init__(self, budget=None, C=1.0, n_folds=5, min_gap=0, random_state=0):
        self.budget = budget
        self.C = C
        self.n_folds = n_folds
        self.min_gap = min_gap
        self.random_state = random_state

    @property
    def criterion(self):
        """Early exit uses this: the fitted scorer (exits 1..k only), a criteria-style callable."""
        return self.scorer_ if hasattr(self, "scorer_") else "learned"

    def _key(self):
        return ("learned", float(self.C), int(self.n_folds), self.random_state)

    def _fit_scorer(self, table):
        """(scorer fitted on all of the table, cross-fitted scores of the table)."""
        correct, k_total = table.correct, table.num_exits
        # features chunk by chunk: the whole (N, K, C) probabilities are never held (1 GB at ImageNet size)
        parts = [[exit_features(p, k) for k in range(k_total)] for _, p in table.iter_probabilities()]
        features = [np.concatenate([part[k] for part in parts]) for k in range(k_total)]
        oof = np.empty((table.num_samples, k_total))
        folds = KFold(n_splits=int(self.n_folds), shuffle=True, random_state=self.random_state)
        for train, held in folds.split(features[0]):
            scorer = ExitScorer([_fit_exit_model(f[train], correct[train, k], self.C)
                                 for k, f in enumerate(features)])
            oof[held] = scorer(table.probabilities_of(held))
        full = ExitScorer([_fit_exit_model(f, correct[:, k], self.C) for k, f in enumerate(features)])
        return full, oof

    def fit(self, table):
        budget = check_budget(self.budget, table.costs)
        if int(self.n_folds) < 2 or table.num_samples < 2 * int(self.n_folds):
            raise ValueError(f"n_folds must be >= 2 and the table needs >= 2 samples per fold; "
                             f"got n_folds={self.n_folds}, N={table.num_samples}")
        if not float(self.C) > 0:
            raise ValueError(f"C must be positive, got {self.C}")
        scorer, oof = table.memo(self._key(), lambda: self._fit_scorer(table))
        self.scorer_ = scorer
        self.fit_fingerprint_ = table.fingerprint
        self.fit_scores_ = oof
        if budget >= table.costs[-1]:
            return self._store(table, all_at_last(table.num_exits), oof)
        gap = int(self.min_gap) or max(1, table.num_samples // 200)
        search = table.memo(self._key() + ("search", gap),
                            lambda: ThresholdSearch(oof, table.correct, table.costs, min_gap=gap))
        return self._store(table, search.solve(budget), oof)

    def scores(self, table) -> np.ndarray:
        if not hasattr(self, "scorer_"):
            raise ValueError("LearnedScoreSolver has no scores before fit(val_table)")
        if table.fingerprint == self.fit_fingerprint_:
            return self.fit_scores_  # the cross-fitted scores the thresholds were searched on
        return table.memo(("learned_scores", self.fit_fingerprint_) + self._key(),
                          lambda: np.concatenate([self.scorer_(p) for _, p in table.iter_probabilities()]))

