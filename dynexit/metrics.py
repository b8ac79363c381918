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

from dynexit import criteria as _criteria
from dynexit import solvers as _solvers
from dynexit.policy import ExitResult


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
    return _criteria.scores(table, "max_prob")[np.arange(table.num_samples), result.exits].astype(np.float32)


# ----------------------------------------------------------------------------- curves

@dataclass
class BudgetCurve:
    """A solver fitted on val at each budget (MFLOPs per image) and read on test: one list entry per budget."""

    solver: str
    criterion: str
    budgets: list
    val_cost: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    test_cost: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    fit_seconds: list = field(default_factory=list)

    def to_rows(self) -> list[dict]:
        """One dict per budget (budget, val/test cost and accuracy, fit seconds)."""
        keys = ["budgets", "val_cost", "val_accuracy", "test_cost", "test_accuracy", "fit_seconds"]
        return [dict(zip(["budget"] + keys[1:], vals)) for vals in zip(*(getattr(self, k) for k in keys))]

    def to_dict(self) -> dict:
        """All fields as plain lists."""
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


def accuracy_at_cost(costs, accuracies, grid, hold_last: bool = False) -> np.ndarray:
    """A curve's accuracy on a grid of costs, linearly interpolated between its points.

    The curve is first made monotone (a policy reaching accuracy a at cost c can be run at any
    larger budget, so each point takes the best accuracy at or below its cost); linear interpolation
    between two policies is what mixing them at random achieves. Below the curve's cheapest point
    the value is nan; above its costliest point it is nan, or with ``hold_last`` the curve's best
    accuracy (the policy that spends less can run at any larger budget: a solver that stops
    spending is judged there by what it delivers, not left out).
    """
    costs, accuracies = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    order = np.argsort(costs, kind="stable")
    costs, best = costs[order], np.maximum.accumulate(accuracies[order])
    grid = np.asarray(grid, dtype=np.float64)
    out = np.interp(grid, costs, best)
    above = grid > costs[-1] + 1e-12
    return np.where((grid < costs[0] - 1e-12) | (above & (not hold_last)), np.nan, out)


TIE = 1e-3  # 0.1 point: a difference this small between two accuracies is a tie


def _test_points(curve) -> tuple[np.ndarray, np.ndarray]:
    """(test costs, test accuracies) of a :class:`BudgetCurve` or of a mapping with those two keys."""
    if isinstance(curve, dict):
        cost, acc = curve.get("test_cost"), curve.get("test_accuracy")
    else:
        cost, acc = getattr(curve, "test_cost", None), getattr(curve, "test_accuracy", None)
    if cost is None or acc is None:
        raise ValueError("a curve needs test_cost and test_accuracy (a BudgetCurve or a dict with those keys), "
                         f"got {type(curve).__name__}")
    cost, acc = np.asarray(cost, dtype=np.float64).reshape(-1), np.asarray(acc, dtype=np.float64).reshape(-1)
    if cost.size == 0 or cost.shape != acc.shape or not (np.isfinite(cost).all() and np.isfinite(acc).all()):
        raise ValueError(f"a curve needs as many finite test costs as test accuracies (at least one), got "
                         f"{cost.size} costs and {acc.size} accuracies")
    return cost, acc


def compare_at_matched_cost(curve, reference, test_table=None, n_grid: int = 100, tie: float = TIE) -> dict:
    """Compare two test curves at matched test cost: wins / ties / losses, mean and worst gain, gap closed.

    The one curve comparison of dynexit (the benchmark, the results page and the acceptance tests use
    it). Both curves (:class:`BudgetCurve`, or dicts with ``test_cost`` / ``test_accuracy``) are read
    with :func:`accuracy_at_cost` on ``n_grid`` costs evenly spread from the cheapest cost both reach
    to the costliest either reaches; a curve that stops short of that (a solver that leaves budget
    unspent) keeps its best accuracy there (``hold_last``), so it is judged over the whole budget
    range. At each cost ``diff = curve - reference`` (accuracy as a fraction) is a win above ``tie``, a
    loss below ``-tie``, else a tie (default 0.001 = 0.1 point).

    With ``test_table`` (the table both curves were measured on), ``gap_closed`` is the share of the
    reference-to-oracle gap the curve closes, ``mean(diff) / mean(oracle - reference)`` over the grid,
    where the oracle is the budget-limited one (:func:`oracle_curve`: the best accuracy any exit
    assignment reaches at that mean cost, knowing the labels); 1.0 = as good as the oracle, negative =
    worse than the reference; nan when the reference already is at the oracle, None without a table.

    Returns a dict: ``wins``, ``ties``, ``losses`` (counts of grid costs, summing to ``n_grid``),
    ``mean_gain``, ``worst`` (accuracy fractions), ``worst_cost``, ``loss_costs`` ([lowest, highest]
    grid cost with a loss, or None), ``gap_closed``, ``cost_range`` ([lo, hi]) and ``grid``, ``diff``
    (lists of ``n_grid`` floats). Costs are in the tables' unit (MFLOPs per image for the zoo).

    Raises ValueError when ``n_grid < 2`` or a curve has no points.
    """
    if n_grid < 2:
        raise ValueError(f"n_grid must be at least 2, got {n_grid}")
    (ca, aa), (cb, ab) = _test_points(curve), _test_points(reference)
    lo, hi = max(ca.min(), cb.min()), max(ca.max(), cb.max())
    grid = np.linspace(lo, hi, n_grid)
    ref = accuracy_at_cost(cb, ab, grid, hold_last=True)
    diff = accuracy_at_cost(ca, aa, grid, hold_last=True) - ref
    lost = diff < -tie
    gap_closed = None
    if test_table is not None:
        gap = float(np.mean(oracle_curve(test_table, grid) - ref))
        gap_closed = float(np.mean(diff)) / gap if gap > 1e-12 else float("nan")
    worst = int(np.argmin(diff))
    return {
        "wins": int(np.sum(diff > tie)), "ties": int(np.sum(np.abs(diff) <= tie)), "losses": int(np.sum(lost)),
        "mean_gain": float(np.mean(diff)), "worst": float(diff[worst]), "worst_cost": float(grid[worst]),
        "loss_costs": [float(grid[lost].min()), float(grid[lost].max())] if lost.any() else None,
        "gap_closed": gap_closed, "cost_range": [float(lo), float(hi)], "grid": grid.tolist(), "diff": diff.tolist(),
    }


@dataclass
class SolverComparison:
    """One solver against the reference on a val / test pair (see :func:`compare_solvers`).

    Gains are accuracy fractions (0.01 = 1 point), costs in the tables' unit, times in seconds.
    ``fit_first_s`` is the fit at the first budget on a fresh copy of val (it pays for the caches the
    later fits reuse); ``fit_median_s`` the median of the others.
    """
    solver: str
    reference: str
    wins: int
    ties: int
    losses: int
    mean_gain: float
    worst: float
    worst_cost: float
    loss_costs: list | None
    gap_closed: float | None
    cost_range: list
    fit_first_s: float
    fit_median_s: float
    fit_total_s: float
    curve: BudgetCurve = field(repr=False)

    def to_dict(self, with_curve: bool = False) -> dict:
        out = asdict(self)
        if not with_curve:
            out.pop("curve")
        return out


def compare_solvers(val, test, solvers=None, reference: str = "geometric", n_budgets: int = 40,
                    n_grid: int = 100, tie: float = TIE, criterion: str = "max_prob") -> dict[str, SolverComparison]:
    """Fit each solver on ``val`` at ``n_budgets`` budgets and compare it on ``test`` with ``reference``.

    The measuring protocol of dynexit's solver benchmark and results page: budgets
    :func:`budget_grid` (first to last exit's cost, on val), thresholds fitted on val, each test curve
    compared with the reference's by :func:`compare_at_matched_cost` (``n_grid`` matched test costs,
    a tie within ``tie``, gap closed against the budget-limited oracle).

    ``solvers``: names (default :func:`dynexit.solvers.available`). Each solver is fitted on its own
    copy of val so its first fit is timed cold, whatever ran before. Returns ``{name: SolverComparison}``
    in the order given, with the reference added (first) when missing; the reference against itself is
    all ties. Raises ValueError for an unknown solver or criterion, a table with one exit (nothing to
    choose), val and test with different exit costs, or ``n_budgets < 2``.
    """
    from dynexit.table import ExitTable

    names = list(_solvers.available() if solvers is None else solvers)
    for name in [reference, *names]:
        _solvers.get(name)  # an unknown name fails here, before any fit
    if reference not in names:
        names.insert(0, reference)
    if n_budgets < 2:
        raise ValueError(f"n_budgets must be at least 2, got {n_budgets}")
    if val.num_exits < 2:
        raise ValueError(f"the tables have {val.num_exits} exit: no threshold to choose, nothing to compare")
    if val.num_exits != test.num_exits or not np.allclose(val.costs, test.costs):
        raise ValueError(f"val and test tables differ in exits or costs ({val.costs.tolist()} vs "
                         f"{test.costs.tolist()}): give the val and test tables of one model")
    budgets = budget_grid(val, n_budgets)
    curves = {}
    for name in names:
        # a fresh table (no criterion scores cached by another solver's fits) and no solver cache:
        # every solver's first fit is timed cold
        fresh = ExitTable(val.logits, val.labels, val.costs, val.exit_names)
        _solvers.clear_cache()
        curves[name] = budget_curve(fresh, test, name, budgets, criterion)
    out = {}
    for name, curve in curves.items():
        cmp = compare_at_matched_cost(curve, curves[reference], test, n_grid=n_grid, tie=tie)
        secs = curve.fit_seconds
        out[name] = SolverComparison(
            name, reference, cmp["wins"], cmp["ties"], cmp["losses"], cmp["mean_gain"], cmp["worst"],
            cmp["worst_cost"], cmp["loss_costs"], cmp["gap_closed"], cmp["cost_range"], secs[0],
            float(np.median(secs[1:])), float(np.sum(secs)), curve)
    return out


def write_curve(curve: BudgetCurve, csv_path=None, json_path=None):
    """Write a budget curve as CSV (one row per budget) and/or JSON, to the paths given."""
    if csv_path:
        rows = curve.to_rows()
        with open(csv_path, "w") as f:
            f.write(",".join(rows[0].keys()) + "\n")
            for row in rows:
                f.write(",".join(f"{v:.6g}" for v in row.values()) + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(curve.to_dict(), indent=2))
