"""MSDNet's geometric rule on a cross-validated choice of exit score: the default solver.

Why: on the shipped 5,000-image validation tables the exits differ by tenths of a point, and any
solver that sets each threshold freely (``lagrangian``, ``genetic``, ``learned``) fits the noise of
the validation set and loses to MSDNet's one-parameter rule on test (issue 14). This solver keeps
the rule (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification",
ICLR 2018: exit shares in a geometric progression, the ratio searched for the budget) and only
chooses *which score ranks the samples* at each exit, by cross-validation on the validation table:

- candidates: the max-probability (MSDNet, the anchor), the top-1 minus top-2 margin (Park et al.,
  2015), patience (Zhou et al., "BERT Loses Patience", NeurIPS 2020) and the learned exit score of
  :mod:`dynexit.solvers.learned` (cross-fitted logistic regression on features of exits 1..k, the
  "learning to exit" line of Kag et al. and Wołczyk et al., "Zero Time Waste", NeurIPS 2021);
- model selection by K-fold cross-validation (Stone, "Cross-validatory choice and assessment of
  statistical predictions", JRSS-B 1974): for each budget on a grid, each candidate's ratio is
  searched on K-1 folds and the thresholds are applied to the held-out fold, so every validation
  image is scored by a rule that never saw it;
- default to the anchor unless a candidate wins out of fold by a paired margin: its gain in correct
  images must exceed ``z`` standard errors, ``gain >= z * sqrt(discordant)``, the normal form of
  McNemar's test (McNemar 1947; Dietterich, "Approximate statistical tests for comparing supervised
  classification learning algorithms", Neural Computation 1998);
- monotone in the budget: the rule at budget B is, among the budget-grid points g <= B, the one with
  the best validation accuracy (ties go to the costlier point). A policy that reaches accuracy a at
  cost c can run at any larger budget, so accuracy on the validation table never falls as the
  budget rises; the price is that a fit spends up to one grid step (``1 / (n_budgets - 1)`` of the
  cost range) less than the budget, and less still where spending more lowers validation accuracy
  (``budget_shortfall_`` reports it).

At each grid budget the rule spends what it is given (the geometric ratio is the largest whose cost
fits); the running best above is what can leave budget unspent: where no costlier grid point is more
accurate on val, the fit keeps the cheaper rule, and ``budget_shortfall_`` / ``ExitResult.spending_note``
say so (e.g. ``multiexit_cnn_fmnist``, whose deeper exits are no more accurate on val).

Budget-independent work (scores, the fold split, every candidate's thresholds on a grid of ratios,
the selection at every grid budget) is done once per table and kept in the solvers' shared cache
(:data:`dynexit.solvers._base.CACHE`), keyed by the table's fingerprint and the solver's parameters;
the table is never written to. A later fit at any budget is a lookup.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from dynexit import arrays, criteria
from dynexit.criteria import ExitScorer, exit_features
from dynexit.solvers._base import CACHE, BaseSolver, check_budget
from dynexit.solvers.geometric import LOG_Q_GRID as _LOG_Q, geometric_grid
from dynexit.solvers.learned import fit_exit_model

ANCHOR = "max_prob"
LEARNED = "learned"
DEFAULT_CANDIDATES = ("margin", "patience")


def _exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit (Q, N) of every sample under every threshold row (Q, K): its first k with score >= T_k."""
    by_exit = np.ascontiguousarray(scores.T)                          # (K, N)
    exits = np.zeros((len(thresholds), len(scores)), dtype=np.intp)
    left = np.ones(exits.shape, dtype=bool)
    # a sample's exit is the number of exits it passed without leaving: K-1 passes over (Q, N)
    # arrays, where an argmax over a (Q, N, K) array took 5x longer at 50,000 samples
    for j in range(scores.shape[1] - 1):
        left &= by_exit[j] < thresholds[:, j, None]
        exits += left
    return exits


# ----------------------------------------------------------------------------- learned score

def cross_fitted_learned(table, n_folds: int, random_state, C: float = 1.0):
    """(scorer fitted on the whole table, cross-fitted scores (N, K)) of the learned exit score.

    Features and scores are per sample, so both are computed a row chunk of the probabilities at
    a time (an ImageNet-size table's whole probabilities would take 1 GB, their float64 features 2 GB).
    """
    correct, k_exits = table.correct, table.num_exits
    parts = [[exit_features(probs, k) for k in range(k_exits)] for _, probs in table.iter_probabilities()]
    features = [np.concatenate([part[k] for part in parts]) for k in range(k_exits)]
    oof = np.empty((table.num_samples, k_exits))
    for train, held in KFold(n_folds, shuffle=True, random_state=random_state).split(features[0]):
        scorer = ExitScorer([fit_exit_model(f[train], correct[train, k], C) for k, f in enumerate(features)])
        oof[held] = _score_by_chunks(table, scorer, held)
    full = ExitScorer([fit_exit_model(f, correct[:, k], C) for k, f in enumerate(features)])
    return full, oof


def _score_by_chunks(table, scorer: ExitScorer, rows: np.ndarray) -> np.ndarray:
    """``scorer(table.probabilities()[rows])``, a chunk of rows at a time."""
    n_chunks = max(1, len(arrays.row_chunks(len(rows), table.num_exits * table.num_classes)))
    return np.concatenate([scorer(table.probabilities_of(part)) for part in np.array_split(rows, n_chunks)])


# ----------------------------------------------------------------------------- the budget-independent fit

@dataclass
class _Fitted:
    """Everything a fit at any budget needs, for one (table, parameters)."""

    grid: np.ndarray          # (G,) grid budgets
    choice: list              # (G,) score name used at each grid budget (after the running best)
    thresholds: np.ndarray    # (G, K) thresholds on the whole table
    cost: np.ndarray          # (G,) validation cost
    accuracy: np.ndarray      # (G,) validation accuracy
    raw_choice: list          # (G,) the cross-validated choice before the running best
    oof_gain: np.ndarray      # (G,) out-of-fold gain of the choice over the anchor, correct images
    scores: dict              # name -> (N, K) scores of the fitting table
    scorer: ExitScorer | None


def _largest_within(costs: np.ndarray, budget: float) -> int:
    """Index of the last ratio whose cost fits the budget (ratio 0 always fits: everyone at exit 1)."""
    fits = np.flatnonzero(costs <= budget * (1 + 1e-12))
    return int(fits[-1]) if len(fits) else 0


def _prepare(table, candidates, n_folds, z, n_budgets, random_state) -> _Fitted:
    n, costs, correct = table.num_samples, table.costs, table.correct
    names = [ANCHOR] + [c for c in candidates if c != ANCHOR]
    scorer, scores = None, {}
    named = [name for name in names if name != LEARNED]
    # one chunked pass over the probabilities for all named scores (never the whole (N, K, C) array)
    scores.update(zip(named, criteria.scores_many(table, named)))
    if LEARNED in names:
        scorer, scores[LEARNED] = cross_fitted_learned(table, n_folds, random_state)
    scores = {name: scores[name] for name in names}
    grid = np.linspace(costs[0], costs[-1], n_budgets)
    rows = np.arange(n)
    folds = list(KFold(n_folds, shuffle=True, random_state=random_state).split(np.zeros(n))) if len(names) > 1 else []
    # out-of-fold correctness (G, N) of every candidate at every grid budget
    oof = {}
    for name in names if folds else []:
        s = scores[name]
        right = np.empty((n_budgets, n), dtype=bool)
        for train, held in folds:
            th, train_exits = geometric_grid(s[train], _LOG_Q)
            train_cost = costs[train_exits].mean(axis=1)
            pick = [_largest_within(train_cost, b) for b in grid]
            held_exits = _exits(s[held], th[pick])
            right[:, held] = correct[held[None, :], held_exits]
        oof[name] = right
    # per grid budget: the anchor unless a candidate wins out of fold by z paired standard errors
    raw_choice, gain_of_choice = [], np.zeros(n_budgets)
    for g in range(n_budgets):
        best, best_gain = ANCHOR, 0.0
        for name in names[1:]:
            d = oof[name][g].astype(np.int64) - oof[ANCHOR][g]
            gain, discordant = float(d.sum()), float(np.abs(d).sum())
            if gain > 0 and gain >= z * np.sqrt(discordant) and gain > best_gain:
                best, best_gain = name, gain
        raw_choice.append(best)
        gain_of_choice[g] = best_gain
    # the chosen rule on the whole table at every grid budget
    full = {}
    for name in set(raw_choice):
        th, exits = geometric_grid(scores[name], _LOG_Q)
        full[name] = (th, costs[exits].mean(axis=1), correct[rows[None, :], exits].mean(axis=1))
    thresholds = np.empty((n_budgets, table.num_exits))
    cost, acc = np.empty(n_budgets), np.empty(n_budgets)
    for g, (b, name) in enumerate(zip(grid, raw_choice)):
        th, c, a = full[name]
        i = _largest_within(c, b)
        thresholds[g], cost[g], acc[g] = th[i], c[i], a[i]
    # running best over the grid: validation accuracy never falls as the budget rises
    choice = list(raw_choice)
    for g in range(1, n_budgets):
        if acc[g - 1] > acc[g]:
            thresholds[g], cost[g], acc[g], choice[g] = thresholds[g - 1], cost[g - 1], acc[g - 1], choice[g - 1]
    return _Fitted(grid, choice, thresholds, cost, acc, raw_choice, gain_of_choice, scores, scorer)


# ----------------------------------------------------------------------------- the estimator

class CrossValidatedSolver(BaseSolver):
    """MSDNet's geometric rule on the exit score chosen per budget by cross-validation on val.

    Parameters
    ----------
    budget : average MFLOPs per image on the fitting table.
    candidates : exit scores tried against the max-probability anchor: criterion names of
        :mod:`dynexit.criteria` and/or ``"learned"``.
    n_folds : folds of the cross-validation (and of the learned score's cross-fitting).
    z : a candidate replaces the anchor at a budget only if its out-of-fold gain in correct images
        is at least ``z * sqrt(discordant images)``; ``inf`` = always the anchor (plain MSDNet on
        the budget grid).
    n_budgets : points of the budget grid between the first and the last exit's cost.
    random_state : seeds the fold split.

    Attributes (after fit): ``thresholds_``, ``expected_cost_``, ``expected_accuracy_`` (on the
    fitting table), ``score_`` (the chosen score's name), ``budget_shortfall_`` (MFLOPs per image
    of the budget left unspent on the fitting table), ``oof_gain_`` (out-of-fold gain over the
    anchor of the cross-validated choice, correct images).
    """

    def __init__(self, budget=None, candidates=DEFAULT_CANDIDATES, n_folds=5, z=2.0, n_budgets=129,
                 random_state=0):
        self.budget = budget
        self.candidates = candidates
        self.n_folds = n_folds
        self.z = z
        self.n_budgets = n_budgets
        self.random_state = random_state

    cross_fits_score = True

    @property
    def criterion(self):
        """What early exit scores with: a criterion name, or the fitted learned scorer."""
        if not hasattr(self, "score_"):
            return ANCHOR
        return self.scorer_ if self.score_ == LEARNED else self.score_

    def _validate(self, table):
        candidates = (self.candidates,) if isinstance(self.candidates, str) else tuple(self.candidates)
        for name in candidates:
            if name != LEARNED and name not in criteria.available():
                raise ValueError(f"unknown candidate score {name!r}: choose from "
                                 f"{', '.join(criteria.available() + [LEARNED])}")
        for name in ("n_folds", "n_budgets"):
            value = getattr(self, name)
            try:
                value = operator.index(value)  # an int, not a float silently truncated
            except TypeError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
            if value < 2:
                raise ValueError(f"{name} must be >= 2, got {value}")
        try:
            z = float(self.z)
        except (TypeError, ValueError):
            raise ValueError(f"z must be a number >= 0 (inf = always max_prob), got {self.z!r}") from None
        if not z >= 0:
            raise ValueError(f"z must be >= 0 (inf = always max_prob), got {self.z}")
        if table.num_samples < 2 * int(self.n_folds):
            return ()  # too few samples to validate any candidate: MSDNet's rule on max-probability
        return candidates

    def fit(self, table):
        """Choose the score and the geometric ratio for the budget on ``table`` (val); returns self.
        ValueError for a budget below the cheapest exit or bad parameters."""
        budget = check_budget(self.budget, table.costs)
        candidates = self._validate(table)
        key = ("crossval", candidates, int(self.n_folds), float(self.z), int(self.n_budgets), self.random_state)
        fitted = CACHE.get(table, key, lambda: _prepare(table, candidates, int(self.n_folds), float(self.z),
                                                        int(self.n_budgets), self.random_state))
        g = _largest_within(fitted.grid, budget)
        self.score_ = fitted.choice[g]
        self.scorer_ = fitted.scorer
        self.oof_gain_ = float(fitted.oof_gain[g])
        return self._store(table, fitted.thresholds[g], fitted.scores[self.score_])

    def scores(self, table, out_of_fold: bool = False) -> np.ndarray:
        """The chosen score (N, K) of ``table``: a criterion's, or the learned score refitted on the whole
        fitting table; ``out_of_fold=True``: the scores of the fitting table the thresholds were set on
        (cross-fitted for the learned score; see :meth:`BaseSolver.scores`)."""
        self._check_fitted()
        return super().scores(table, out_of_fold)
