"""What every threshold solver shares: the exit rule, the evaluation result, budget checks.

Exit rule: a sample leaves at the first exit k whose score >= T_k; the last threshold is -inf, so
every sample leaves somewhere. Budgets are average MFLOPs per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from dynexit import criteria


def assign_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index (N,) of every sample: the first k with ``scores[:, k] >= thresholds[k]``."""
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if scores.ndim != 2 or thresholds.shape != (scores.shape[1],):
        raise ValueError(f"scores (N, K) and thresholds (K,) disagree: {scores.shape} vs {thresholds.shape}")
    passes = scores >= thresholds
    passes[:, -1] = True  # the last exit accepts everyone, whatever its threshold says
    return passes.argmax(axis=1)


def all_at_last(num_exits: int) -> np.ndarray:
    thresholds = np.full(num_exits, np.inf)
    thresholds[-1] = -np.inf
    return thresholds


@dataclass
class ExitResult:
    """Where each sample left and what it cost."""

    exits: np.ndarray        # (N,) exit index of each sample
    correct: np.ndarray      # (N,) bool, right at the exit it took
    thresholds: np.ndarray   # (K,)
    costs: np.ndarray        # (K,) cumulative MFLOPs per exit
    budget: float | None = None    # the budget the rule was fitted for (MFLOPs per image), if any
    fit_cost: float | None = None  # what the rule spent on its fitting (validation) table
    histogram: np.ndarray = field(init=False)          # (K,) samples leaving at each exit
    histogram_correct: np.ndarray = field(init=False)  # (K,) of which right

    def __post_init__(self):
        k = len(self.costs)
        self.histogram = np.bincount(self.exits, minlength=k)
        self.histogram_correct = np.bincount(self.exits, weights=self.correct, minlength=k).astype(np.int64)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.costs[self.exits].mean())

    @property
    def speedup(self) -> float:
        """Full cost (last exit) over the mean cost spent."""
        return float(self.costs[-1] / self.mean_cost)

    @property
    def unspent(self) -> float:
        """MFLOPs per image the rule left unspent on its fitting table, of what it could spend (the budget,
        at most the full model's cost); 0 without a budget."""
        if self.budget is None or self.fit_cost is None:
            return 0.0
        # a budget above the full model's cost cannot be spent: what is left beyond it is not "unspent"
        return max(0.0, min(float(self.budget), float(self.costs[-1])) - float(self.fit_cost))

    @property
    def underspends(self) -> bool:
        """True when the rule spends clearly less than its budget on the fitting table: more than 1% of
        the model's cost range (exits 1..K) is left, because spending it did not help there."""
        span = float(self.costs[-1] - self.costs[0])
        return span > 0 and self.unspent > 0.01 * span

    def spending_note(self) -> str | None:
        """A sentence for users when the rule underspends (see :attr:`underspends`), else None."""
        if not self.underspends:
            return None
        return (f"spends {self.fit_cost:.1f} of the {self.budget:.1f} MFLOPs allowed: spending more did not help "
                "on the validation images")

    @property
    def histogram_wrong(self) -> np.ndarray:
        return self.histogram - self.histogram_correct

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "mean_cost": self.mean_cost,
            "speedup": self.speedup,
            "thresholds": [float(t) for t in self.thresholds],
            "histogram": self.histogram.tolist(),
            "histogram_correct": self.histogram_correct.tolist(),
            "budget": self.budget,
            "unspent_on_fit": self.unspent,
        }


def evaluate_thresholds(table, scores: np.ndarray, thresholds: np.ndarray) -> ExitResult:
    exits = assign_exits(scores, thresholds)
    correct = table.correct[np.arange(table.num_samples), exits]
    return ExitResult(exits, correct, np.asarray(thresholds, dtype=np.float64), table.costs)


def check_budget(budget, costs: np.ndarray) -> float:
    """A budget in MFLOPs that this model can spend; ValueError naming the valid range otherwise."""
    if budget is None:
        raise ValueError("budget is required: an average cost in MFLOPs per image")
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number of MFLOPs per image, got {budget!r}") from None
    if not np.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    if budget < costs[0] * (1 - 1e-9):
        # no upper bound: a budget above the full model's cost is accepted (the rule may spend less)
        raise ValueError(f"budget {budget:.4g} MFLOPs is below the cheapest exit ({costs[0]:.4g} MFLOPs): "
                         f"no policy can spend less; choose a budget of at least {costs[0]:.4g} (the full model "
                         f"costs {costs[-1]:.4g})")
    # a budget a rounding error below the cheapest exit means "everyone at exit 1", which costs costs[0]
    return max(budget, float(costs[0]))


# relative slack of the budget check after fit: a mean of N equal costs can round a few ulp above them
BUDGET_RTOL = 1e-9


class BaseSolver(BaseEstimator):
    """scikit-learn style: ``__init__`` stores, ``fit(val_table)`` learns ``thresholds_``, returns self."""

    def scores(self, table) -> np.ndarray:
        """Exit scores (N, K) this solver thresholds; the fitted criterion of the solver."""
        return criteria.scores(table, self.criterion)

    def _check_fitted(self):
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(val_table) first")

    def _store(self, table, thresholds: np.ndarray, scores: np.ndarray | None = None):
        """Set the learned attributes from the chosen thresholds on the fitting table."""
        scores = self.scores(table) if scores is None else scores
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.shape != (table.num_exits,) or np.isnan(thresholds).any():
            raise ValueError(f"{type(self).__name__} produced invalid thresholds {thresholds.tolist()} for "
                             f"{table.num_exits} exits; this is a bug in the solver, please report it")
        result = evaluate_thresholds(table, scores, thresholds)
        # the contract of every budgeted solver: it meets the budget on the table it was fitted on,
        # or it raises; checked here once so that no solver can break it silently
        budget = getattr(self, "budget", None)
        if budget is not None and result.mean_cost > max(float(budget), table.costs[0]) * (1 + BUDGET_RTOL):
            raise ValueError(f"{type(self).__name__} could not meet the budget of {float(budget):.6g} MFLOPs on "
                             f"the fitting table (its thresholds cost {result.mean_cost:.6g} MFLOPs per image "
                             f"on its {table.num_samples} samples); choose a larger budget or a larger "
                             "validation table")
        self.thresholds_ = thresholds
        self.costs_ = table.costs.copy()
        self.expected_cost_ = result.mean_cost
        self.expected_accuracy_ = result.accuracy
        self.n_exits_ = table.num_exits
        # what was asked for and what of it the rule leaves unspent on val (reported by evaluate())
        self.budget_ = None if budget is None else check_budget(budget, table.costs)
        result.budget, result.fit_cost = self.budget_, result.mean_cost
        self.budget_shortfall_ = result.unspent
        return self

    def evaluate(self, table) -> ExitResult:
        """Apply the fitted thresholds to a table (usually the test split)."""
        self._check_fitted()
        if table.num_exits != self.n_exits_:
            raise ValueError(f"solver fitted for {self.n_exits_} exits, table has {table.num_exits}")
        result = evaluate_thresholds(table, self.scores(table), self.thresholds_)
        result.budget, result.fit_cost = self.budget_, self.expected_cost_
        return result
