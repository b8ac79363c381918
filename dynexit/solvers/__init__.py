"""Threshold solvers: fit per-exit thresholds on a validation ExitTable for a compute budget.

All follow scikit-learn's conventions: ``Solver(budget=B, ...)`` stores parameters, ``fit(val_table)``
sets ``thresholds_``, ``expected_cost_``, ``expected_accuracy_`` and returns self,
``evaluate(table)`` returns an :class:`ExitResult` (exits, accuracy, mean_cost, histogram).
"""

from dynexit.solvers._base import BaseSolver, ExitResult, assign_exits, check_budget, evaluate_thresholds
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
    return list(SOLVERS)


def get(name: str):
    """The solver class registered under ``name``."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}") from None


def make(name: str, budget: float, criterion: str = "max_prob", **kwargs) -> BaseSolver:
    """A solver for a budget; ``criterion`` is ignored by solvers that learn their own score."""
    cls = get(name)
    if "criterion" in cls._get_param_names():
        kwargs["criterion"] = criterion
    return cls(budget=budget, **kwargs)


__all__ = ["BaseSolver", "CrossValidatedSolver", "ExitResult", "GeneticSolver", "GeometricSolver", "LagrangianSolver",
           "LearnedScoreSolver", "ThresholdSearch", "DEFAULT", "assign_exits", "available",
           "check_budget", "evaluate_thresholds", "geometric_thresholds", "get", "make"]
