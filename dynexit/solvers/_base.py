"""What every threshold solver shares: budget checks, the fit cache, the estimator base class.

The rule a solver fits is a :class:`dynexit.policy.ExitRule` (a sample leaves at the first exit k
whose score >= T_k; the last exit takes everyone left). Budgets are average MFLOPs per image.

Caches: budget-independent work (sort orders, threshold searches, learned scores, the default
solver's grid) is kept here, in one bounded, thread-safe LRU keyed by the table's fingerprint and
the solver's parameters (the app's sessions share tables across threads); a solver never writes
into the table it is given (scikit-learn's convention).
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from dynexit.cache import TableCache
from dynexit.policy import ExitResult, ExitRule, evaluate_thresholds


def all_at_last(num_exits: int) -> np.ndarray:
    """Thresholds (K,) sending everyone to the last exit: +inf, then -inf at the last."""
    thresholds = np.full(num_exits, np.inf)
    thresholds[-1] = -np.inf
    return thresholds


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


# every solver's budget-independent work: 32 (table, parameters) pairs, a few MB each at Fashion-MNIST size
CACHE = TableCache(32)


def clear_cache() -> None:
    """Forget every solver's cached work (e.g. to time a cold first fit)."""
    CACHE.clear()


def init_params(cls) -> list[str]:
    """The parameter names of an estimator class, read from its ``__init__`` signature (what
    scikit-learn's ``get_params`` reports, without its private helper)."""
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# relative slack of the budget check after fit: a mean of N equal costs can round a few ulp above them
BUDGET_RTOL = 1e-9


class BaseSolver(BaseEstimator):
    """scikit-learn style: ``__init__`` stores, ``fit(val_table)`` learns ``thresholds_``, returns self."""

    clear_cache = staticmethod(clear_cache)
    # True for solvers whose exit score is learned on the fitting table by cross-fitting: their
    # thresholds were searched on out-of-fold scores, which only exist for that table
    cross_fits_score = False

    def scores(self, table, out_of_fold: bool = False) -> np.ndarray:
        """Exit scores (N, K) float64 this solver thresholds: its fitted rule's scores of ``table``
        (before fit: its criterion's).

        ``out_of_fold=True`` asks for the scores the thresholds were searched on, which exist for the
        fitting table only (ValueError on another table): for a cross-fitted learned score each sample
        is scored by models that never saw it; for a criterion they are the criterion's scores.
        """
        if out_of_fold:
            if not self.fitted_on(table):
                raise ValueError(f"{type(self).__name__}: out-of-fold scores exist for the fitting table only; "
                                 "call scores(table) for any other table")
            return self.fit_scores_
        return self.rule_.scores(table) if hasattr(self, "rule_") else table.scores(self.criterion)

    def fitted_on(self, table) -> bool:
        """Whether ``table`` holds the content this solver was fitted on (same fingerprint)."""
        self._check_fitted()
        return table.fingerprint == self.fit_fingerprint_

    def _check_fitted(self):
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(val_table) first")

    def _store(self, table, thresholds: np.ndarray, scores: np.ndarray | None = None):
        """Set the learned attributes (and ``rule_``) from the chosen thresholds (K,) and the scores
        (N, K) they were chosen on (default: the criterion's), on the fitting table."""
        scores = table.scores(self.criterion) if scores is None else scores
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
        self.fit_fingerprint_ = table.fingerprint
        self.fit_scores_ = scores
        # where the rule comes from travels with it: ExitRule.apply checks the model's identity, and
        # evaluate refuses a table of another model (other exit costs)
        source = {"model": table.meta["model"]} if isinstance(table.meta.get("model"), str) else {}
        self.rule_ = ExitRule(thresholds, self.criterion, {
            "solver": type(self).__name__, "budget": self.budget_, "expected_cost_on_fit_table": self.expected_cost_,
            "expected_accuracy_on_fit_table": self.expected_accuracy_, **source,
            "costs_unit": table.meta.get("costs_unit", "MFLOPs"), "num_classes": table.num_classes}, table.costs)
        return self

    def evaluate(self, table) -> ExitResult:
        """Apply the fitted rule (``rule_``) to a table (usually the test split): an ExitResult.

        On the fitting table itself, a solver that cross-fits its score evaluates the out-of-fold
        scores its thresholds were searched on (``scores(table, out_of_fold=True)``), so that
        ``evaluate(val)`` reproduces ``expected_cost_``; on any other table it equals
        ``rule_.evaluate(table)``. ValueError for a table with another number of exits.
        """
        self._check_fitted()
        if table.num_exits != self.n_exits_:
            raise ValueError(f"solver fitted for {self.n_exits_} exits, table has {table.num_exits}")
        return self.rule_.evaluate(table, self.scores(table, self.cross_fits_score and self.fitted_on(table)))
