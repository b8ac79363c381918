"""A learned exit score, thresholded by the exact search (the default solver is ``crossval``).

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
the whole validation table score every other table (test, live early exit). The fitted score is a
:class:`dynexit.criteria.ExitScorer` (plain numbers, saved with the exit rule); this module fits it.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dynexit.criteria import ExitScorer, exit_features
from dynexit.solvers._base import CACHE, BaseSolver, all_at_last, check_budget
from dynexit.solvers.lagrangian import ThresholdSearch


def fit_exit_model(x: np.ndarray, y: np.ndarray, c: float) -> float | dict:
    """One exit of an :class:`~dynexit.criteria.ExitScorer`: a standardised, L2-regularised logistic
    regression of correctness ``y`` (N,) bool on features ``x`` (N, F), as plain arrays
    ``{"mean", "scale", "coef"}`` (F,) and ``"intercept"``; a constant when ``y`` never varies."""
    if y.min() == y.max():  # all right or all wrong: nothing to learn
        return float(y[0])
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x, y)
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

    cross_fits_score = True

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
            scorer = ExitScorer([fit_exit_model(f[train], correct[train, k], self.C)
                                 for k, f in enumerate(features)])
            oof[held] = scorer(table.probabilities_of(held))
        full = ExitScorer([fit_exit_model(f, correct[:, k], self.C) for k, f in enumerate(features)])
        return full, oof

    def fit(self, table):
        """Cross-fit the learned score on ``table`` and search its thresholds for the budget; returns self.

        ValueError for a budget below the cheapest exit, ``n_folds < 2``, too few samples per fold
        or ``C <= 0``.
        """
        budget = check_budget(self.budget, table.costs)
        if int(self.n_folds) < 2 or table.num_samples < 2 * int(self.n_folds):
            raise ValueError(f"n_folds must be >= 2 and the table needs >= 2 samples per fold; "
                             f"got n_folds={self.n_folds}, N={table.num_samples}")
        if not float(self.C) > 0:
            raise ValueError(f"C must be positive, got {self.C}")
        scorer, oof = CACHE.get(table, self._key(), lambda: self._fit_scorer(table))
        self.scorer_ = scorer
        if budget >= table.costs[-1]:
            return self._store(table, all_at_last(table.num_exits), oof)
        gap = int(self.min_gap) or max(1, table.num_samples // 200)
        search = CACHE.get(table, self._key() + ("search", gap),
                           lambda: ThresholdSearch(oof, table.correct, table.costs, min_gap=gap))
        return self._store(table, search.solve(budget), oof)

    def scores(self, table, out_of_fold: bool = False) -> np.ndarray:
        """The fitted learned score (N, K) of ``table``, cached by table content; ``out_of_fold=True``:
        the cross-fitted scores of the fitting table the thresholds were searched on (see
        :meth:`BaseSolver.scores`). ValueError before fit."""
        if not hasattr(self, "scorer_"):
            raise ValueError("LearnedScoreSolver has no scores before fit(val_table)")
        if out_of_fold:
            return super().scores(table, out_of_fold=True)
        return CACHE.get(table, ("learned_scores", self.fit_fingerprint_) + self._key(),
                         lambda: self.rule_.scores(table))
