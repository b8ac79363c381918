"""Threshold solvers: fit per-exit thresholds on a validation ExitTable for a compute budget.

All follow scikit-learn's conventions: ``Solver(budget=B, ...)`` stores parameters, ``fit(val_table)``
sets ``rule_`` (the deployable :class:`dynexit.policy.ExitRule`), ``thresholds_``, ``expected_cost_``,
``expected_accuracy_`` and returns self; ``evaluate(table)`` returns an :class:`ExitResult` (exits,
accuracy, mean_cost, histogram). ``ExitResult``, ``assign_exits`` and ``evaluate_thresholds`` live in
:mod:`dynexit.policy` and are re-exported here.
"""

from dynexit.policy import ExitResult, assign_exits, evaluate_thresholds
from dynexit.solvers._base import BaseSolver, check_budget, clear_cache, init_params
from dynexit.solvers.crossval import CrossValidatedSolver
from dynexit.solvers.genetic import GeneticSolver
from dynexit.solvers.geometric import GeometricSolver, geometric_thresholds
from dynexit.solvers.lagrangian import LagrangianSolver, ThresholdSearch
from dynexit.solvers.learned import LearnedScoreSolver

SOLVERS = {
    "crossval": CrossValidatedSolver,
    "learned": LearnedScoreSolver,
    "lagrangian": LagrangianSolver,
    "geometric": GeometricSolver,
    "genetic": GeneticSolver,
}
# The default of the app, the notebooks and the CLI: the only solver never below MSDNet's rule by more
# than 0.1 point at matched test cost on the shipped zoo (benchmarks/solvers.py, docs/solver_benchmark.md).
DEFAULT = "crossval"


def available() -> list[str]:
    """The registered solver names, the default first."""
    return list(SOLVERS)


def get(name: str):
    """The solver class registered under ``name``."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}") from None


def takes_criterion(name: str) -> bool:
    """Whether the solver ``name`` thresholds a criterion it is given (``criterion=`` parameter);
    False for solvers that choose or learn their own exit score. ValueError for an unknown name."""
    return "criterion" in init_params(get(name))


def make(name: str, budget: float, criterion: str = "max_prob", **kwargs) -> BaseSolver:
    """An unfitted solver for ``budget`` (MFLOPs per image); ``criterion`` is ignored by solvers that
    learn their own score (:func:`takes_criterion`). ValueError for an unknown name."""
    if takes_criterion(name):
        kwargs["criterion"] = criterion
    return get(name)(budget=budget, **kwargs)


__all__ = ["BaseSolver", "CrossValidatedSolver", "ExitResult", "GeneticSolver", "GeometricSolver", "LagrangianSolver",
           "LearnedScoreSolver", "ThresholdSearch", "DEFAULT", "assign_exits", "available",
           "check_budget", "clear_cache", "evaluate_thresholds", "geometric_thresholds", "get", "make",
           "takes_criterion"]
