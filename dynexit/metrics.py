"""Budget curves, the anytime view, practical exits, the oracle bound and the easy / hard sets.

The oracle (each sample leaves at its first correct exit) is the ceiling of every threshold policy:
Kaya et al., "Shallow-Deep Networks: Understanding and Mitigating Network Overthinking", ICML 2019,
also the source of "overthinking" (right at an earlier exit, wrong where it left).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dynexit import solvers as _solvers
from dynexit.solvers._base import ExitResult


# ----------------------------------------------------------------------------- anytime view

def anytime(table) -> dict:
    """Per-exit accuracy and cost: what each exit gives when every sample stops there."""
    return {"exit_names": list(table.exit_names), "accuracy": table.exit_accuracy().tolist(),
            "costs": table.costs.tolist()}


def practical_exits(accuracy, costs=None) -> np.ndarray:
    """Mask: an exit is practical when it is more accurate than every cheaper exit.

    Without ``costs`` the exits are taken in order (each costs more than the ones before); with
    ``costs`` they may come in any order (e.g. the rows of a branch study) and are compared by cost:
    exit i is practical when ``accuracy[i] > accuracy[j]`` for every j with ``costs[j] < costs[i]``.
    """
    acc = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    if costs is None:
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(acc)[:-1]])
        return acc > best_before
    cost = np.asarray(costs, dtype=np.float64).reshape(-1)
    if acc.shape != cost.shape:
        raise ValueError(f"practical_exits needs one cost per accuracy, got {acc.size} accuracies and {cost.size} costs")
    if np.isnan(acc).any() or np.isnan(cost).any():
        raise ValueError("practical_exits: accuracies and costs must not contain NaN")
    return np.array([a > acc[cost < c].max(initial=-np.inf) for a, c in zip(acc, cost)], dtype=bool)


# ----------------------------------------------------------------------------- oracle

def oracle(table) -> ExitResult:
    """Each sample leaves at its first correct exit (the last exit when none is right)."""
    correct = table.correct
    any_right = correct.any(axis=1)
    exits = np.where(any_right, correct.argmax(axis=1), table.num_exits - 1)
    thresholds = np.full(table.num_exits, np.nan)
    return ExitResult(exits, any_right, thresholds, table.costs)


def oracle_curve(table, budgets) -> np.ndarray:
    """Best accuracy any exit assignment reaches at each mean budget, knowing the labels.

    Samples never right cost least at exit 1; each other sample becomes right for the extra cost of
    its first correct exit over exit 1, so buying the cheapest ones first is optimal.
    """
    correct = table.correct
    n = table.num_samples
    any_right = correct.any(axis=1)
    extra = np.sort(table.costs[correct[any_right].argmax(axis=1)] - table.costs[0])
    spent = np.concatenate([[0.0], np.cumsum(extra)])  # total extra cost to make m samples right
    budgets = np.asarray(budgets, dtype=np.float64)
    m = np.searchsorted(spent, (budgets - table.costs[0]) * n + 1e-9, side="right") - 1
    m = np.clip(m, 0, len(extra))
    return m / n


# ----------------------------------------------------------------------------- sets

def easy_hard(table, result: ExitResult) -> dict:
    """Sample positions: easy (leave at the first exit), hard (reach the last), overthinking."""
    exits = result.exits
    rows = np.arange(table.num_samples)
    right_before = np.zeros(table.num_samples, dtype=bool)
    correct = table.correct
    for k in range(1, table.num_exits):
        right_before |= (exits >= k) & correct[:, k - 1]
    overthinking = right_before & ~correct[rows, exits]
    return {"easy": np.flatnonzero(exits == 0), "hard": np.flatnonzero(exits == table.num_exits - 1),
            "overthinking": np.flatnonzero(overthinking)}


def confidence_at_exit(table, result: ExitResult) -> np.ndarray:
    """Max-probability of each sample at the exit it took (for most / least confident ordering)."""
    return table.probabilities().max(axis=2)[np.arange(table.num_samples), result.exits]


# ----------------------------------------------------------------------------- curves

@dataclass
class BudgetCurve:
    solver: str
    criterion: str
    budgets: list
    val_cost: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    test_cost: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    fit_seconds: list = field(default_factory=list)

    def to_rows(self) -> list[dict]:
        keys = ["budgets", "val_cost", "val_accuracy", "test_cost", "test_accuracy", "fit_seconds"]
        return [dict(zip(["budget"] + keys[1:], vals)) for vals in zip(*(getattr(self, k) for k in keys))]

    def to_dict(self) -> dict:
        return asdict(self)


def budget_grid(table, n: int = 20) -> np.ndarray:
    """``n`` budgets spread between the first and the last exit's cost (both ends included)."""
    return np.linspace(table.costs[0], table.costs[-1], n)


def budget_curve(val, test, solver: str = _solvers.DEFAULT, budgets=None, criterion: str = "max_prob",
                 **solver_kwargs) -> BudgetCurve:
    """Fit ``solver`` on val at each budget and evaluate on test."""
    budgets = budget_grid(val) if budgets is None else np.asarray(budgets, dtype=np.float64)
    curve = BudgetCurve(solver, criterion, budgets.tolist())
    for budget in budgets:
        start = time.perf_counter()
        fitted = _solvers.make(solver, float(budget), criterion, **solver_kwargs).fit(val)
        curve.fit_seconds.append(time.perf_counter() - start)
        result = fitted.evaluate(test)
        curve.val_cost.append(fitted.expected_cost_)
        curve.val_accuracy.append(fitted.expected_accuracy_)
        curve.test_cost.append(result.mean_cost)
        curve.test_accuracy.append(result.accuracy)
    return curve


def accuracy_at_cost(costs, accuracies, grid) -> np.ndarray:
    """A curve's accuracy on a grid of costs, linearly interpolated between its points.

    The curve is first made monotone (a policy reaching accuracy a at cost c can be run at any
    larger budget, so each point takes the best accuracy at or below its cost); linear interpolation
    between two policies is what mixing them at random achieves. Outside the curve's cost range the
    value is nan.
    """
    costs, accuracies = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    order = np.argsort(costs, kind="stable")
    costs, best = costs[order], np.maximum.accumulate(accuracies[order])
    grid = np.asarray(grid, dtype=np.float64)
    out = np.interp(grid, costs, best)
    return np.where((grid < costs[0] - 1e-12) | (grid > costs[-1] + 1e-12), np.nan, out)


def compare_at_matched_cost(curve, reference, test_table, n_grid: int = 50) -> dict:
    """Wins / ties / losses of ``curve`` vs ``reference`` at matched test cost, and gap closed.

    Both test curves are read on a common grid of costs (where both are defined); a tie is within
    0.1 point. ``gap_closed`` is the mean share of the reference-to-oracle gap the curve closes.
    """
    lo = max(min(curve.test_cost), min(reference.test_cost))
    hi = min(max(curve.test_cost), max(reference.test_cost))
    grid = np.linspace(lo, hi, n_grid)
    a = accuracy_at_cost(curve.test_cost, curve.test_accuracy, grid)
    b = accuracy_at_cost(reference.test_cost, reference.test_accuracy, grid)
    top = oracle_curve(test_table, grid)
    diff = a - b
    gap = top - b
    closed = np.where(gap > 1e-12, diff / np.where(gap > 1e-12, gap, 1), 0.0)
    return {
        "wins": int(np.sum(diff > 1e-3)), "ties": int(np.sum(np.abs(diff) <= 1e-3)),
        "losses": int(np.sum(diff < -1e-3)), "mean_gain": float(np.mean(diff)),
        "worst": float(np.min(diff)), "gap_closed": float(np.mean(closed)),
        "grid": grid.tolist(),
    }


def write_curve(curve: BudgetCurve, csv_path=None, json_path=None):
    if csv_path:
        rows = curve.to_rows()
        with open(csv_path, "w") as f:
            f.write(",".join(rows[0].keys()) + "\n")
            for row in rows:
                f.write(",".join(f"{v:.6g}" for v in row.values()) + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(curve.to_dict(), indent=2))
