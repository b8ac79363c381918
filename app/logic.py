"""The app's computing, without Streamlit: plain functions over ExitTables (unit-tested directly).

One budget = one :class:`BudgetView`: thresholds fitted on the validation table, exits and
accuracy on the test table, each test image's confidence where it left, the overthinking images.
Everything here is numpy over cached tables; no model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynexit import metrics, solvers
from dynexit.cache import TableCache
from dynexit.policy import ExitResult, ExitRule

CURVE_POINTS = 12  # budgets per accuracy-vs-budget curve (each is one solver fit)
DIP_POINTS = 100   # budgets checked for "a smaller budget was more accurate on test" (fast solvers)
GALLERY_SIZE = 8   # images per gallery row
# image rankings of test tables (two orders per table), kept here and keyed by table content: the
# app's sessions share table objects across threads, and nothing writes into a table
_RANKS = TableCache(16)


@dataclass
class BudgetView:
    """What one budget gives on the test table (thresholds fitted on val)."""

    budget: float
    solver: str
    criterion: str
    thresholds: np.ndarray   # (K,) = rule.thresholds
    rule: ExitRule           # the fitted exit policy: thresholds + the score they apply to (rule.criterion)
    result: ExitResult       # test: exits, correct, histogram
    scores: np.ndarray       # (N, K) the solver's exit score of every test image at every exit
    confidence: np.ndarray   # (N,) max-probability at the exit each image took
    overthinking: np.ndarray  # rows right at an earlier exit, wrong where they left
    final_accuracy: float    # test accuracy of the last exit alone
    val_cost: float
    val_accuracy: float
    unit: str = "MFLOPs"     # the tables' cost unit

    @property
    def accuracy(self) -> float:
        return self.result.accuracy

    @property
    def mean_cost(self) -> float:
        return self.result.mean_cost

    @property
    def full_cost(self) -> float:
        return float(self.result.costs[-1])

    @property
    def speedup(self) -> float:
        return self.result.speedup

    @property
    def score_name(self) -> str:
        """What the thresholds apply to, in words: the fitted learned score or a criterion's name (a
        single-exit model has no score: every image leaves at its one exit)."""
        criterion = self.rule.criterion
        if len(self.thresholds) == 1:
            return "no exit score (a single exit)"
        return f"exit score ({criterion})" if isinstance(criterion, str) else "learned exit score"

    @property
    def spending_note(self) -> str | None:
        """Words when the fitted rule leaves budget unspent on val (see ``ExitResult.spending_note``)."""
        return self.result.spending_note(self.unit)

    @property
    def change_vs_final(self) -> float:
        """Accuracy minus the last exit's accuracy (negative: early exit costs accuracy)."""
        return self.accuracy - self.final_accuracy


def budget_view(val, test, solver: str, criterion: str, budget: float) -> BudgetView:
    """Fit ``solver`` at ``budget`` (per image, in the tables' cost unit) on the val ExitTable, evaluate its rule on test.

    A single-exit model needs no solver (its rule sends everyone to the one exit). ValueError when
    val and test have different numbers of exits, or from the solver (unknown name, bad budget).
    """
    if val.num_exits != test.num_exits:
        raise ValueError(f"val table has {val.num_exits} exits, test table {test.num_exits}")
    if test.num_exits == 1:
        rule = ExitRule(np.array([-np.inf]), criterion, costs=test.costs)  # everyone leaves at the only exit
        scores = np.zeros((test.num_samples, 1))
        result = rule.evaluate(test, scores)
        val_cost, val_acc = float(val.costs[0]), float(val.exit_accuracy()[0])
    else:
        fitted = solvers.make(solver, float(budget), criterion).fit(val)
        rule, result, scores = fitted.rule_, fitted.evaluate(test), fitted.scores(test)
        val_cost, val_acc = float(fitted.expected_cost_), float(fitted.expected_accuracy_)
    return BudgetView(float(budget), solver, criterion, np.asarray(rule.thresholds, dtype=np.float64), rule, result,
                      np.asarray(scores), metrics.confidence_at_exit(test, result),
                      metrics.easy_hard(test, result)["overthinking"], float(test.exit_accuracy()[-1]),
                      val_cost, val_acc, test.cost_unit)


def slider_steps(costs, n: int = 100) -> tuple[float, float, float]:
    """(min, max, step) of a budget slider over the model's cost range, about ``n`` steps.

    The step is 1, 2 or 5 times a power of ten so values read well. Both ends are rounded up onto
    the step grid: the low end must not fall below the cheapest exit (no policy spends less), a high
    end just above the full cost means "every image goes to the last exit".
    """
    lo, hi = float(costs[0]), float(costs[-1])
    if hi <= lo:
        return lo, lo, 1.0
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = float(min(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9)))
    lo_r = float(np.ceil(lo / step - 1e-9) * step)
    hi_r = float(np.ceil(hi / step - 1e-9) * step)
    return round(lo_r, 10), round(hi_r, 10), round(step, 10)


def default_budget(costs) -> float:
    """A budget half way between the cheapest exit and the full model, on the slider grid."""
    lo, hi, step = slider_steps(costs)
    return round(lo + round((hi - lo) / 2 / step) * step, 10)


# ----------------------------------------------------------------------------- galleries

def exit_gallery(view: BudgetView, k: int, n: int = GALLERY_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Rows leaving at exit k: (the ``n`` most confident, most first; the ``n`` least confident, least first).

    The two never share an image: with fewer than 2n images the second list gets what is left.
    """
    rows = np.flatnonzero(view.result.exits == k)
    order = rows[np.argsort(-view.confidence[rows], kind="stable")]
    most = order[:n]
    rest = order[len(most):]
    least = rest[::-1][:n]
    return most, least


def overthinking_gallery(view: BudgetView, test, n: int = 2 * GALLERY_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Overthinking rows, most confident (in the wrong answer) first, and each one's first right exit."""
    rows = view.overthinking
    rows = rows[np.argsort(-view.confidence[rows], kind="stable")][:n]
    return rows, test.correct[rows].argmax(axis=1)


def rank_images(test, how: str) -> np.ndarray:
    """Test rows ordered from the hardest or the easiest image.

    hardest: fewest exits right, then the lowest probability of the true class at the last exit;
    easiest: the highest probability of the true class at the first exit, then most exits right.
    """
    if how not in ("hardest", "easiest"):
        raise ValueError(f"rank by 'hardest' or 'easiest', got {how!r}")

    def compute():
        probs = test.probabilities()
        rows = np.arange(test.num_samples)
        n_right = test.correct.sum(axis=1)
        if how == "hardest":
            return np.lexsort((probs[rows, -1, test.labels], n_right))
        return np.lexsort((-n_right, -probs[rows, 0, test.labels]))
    return _RANKS.get(test, ("app_rank", how), compute)


# ----------------------------------------------------------------------------- curves, comparisons

def solver_curve(val, test, solver: str, criterion: str, n: int = CURVE_POINTS) -> dict:
    """Test cost and accuracy of ``solver`` at ``n`` budgets (a single point for a single-exit model)."""
    if test.num_exits == 1:
        return {"budgets": [float(val.costs[0])], "cost": [float(test.costs[0])],
                "accuracy": [float(test.exit_accuracy()[0])]}
    curve = metrics.budget_curve(val, test, solver, metrics.budget_grid(val, n), criterion)
    return {"budgets": curve.budgets, "cost": curve.test_cost, "accuracy": curve.test_accuracy}


def accuracy_dip_note(view: BudgetView, curve: dict, tolerance: float = 5e-4) -> str | None:
    """Words for a test accuracy below what this solver reaches at a smaller budget, else None.

    The thresholds are fitted on the validation images, so a larger budget never lowers *validation*
    accuracy for the default solver; on the test images it can, by a little: images an earlier exit
    gets right can go on and leave wrong (overthinking, Kaya et al., ICML 2019) and validation noise.
    ``curve`` is :func:`solver_curve` of the same solver and criterion; ``tolerance`` in accuracy.
    """
    budgets, acc = np.asarray(curve["budgets"], dtype=np.float64), np.asarray(curve["accuracy"], dtype=np.float64)
    smaller = budgets < view.budget - 1e-9
    if not smaller.any():
        return None
    best = int(np.argmax(np.where(smaller, acc, -np.inf)))
    if acc[best] <= view.accuracy + tolerance:
        return None
    return (f"At a smaller budget ({budgets[best]:.1f} MFLOPs) this solver is more accurate on the test images "
            f"({acc[best]:.2%} vs {view.accuracy:.2%}). The thresholds are fitted on the validation images, where "
            "accuracy does not fall as the budget rises; on unseen images extra compute can make some answers "
            "worse (images an earlier exit gets right that leave wrong later: overthinking).")


def oracle_points(test, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(budgets (n,) MFLOPs over the test table's cost range, the oracle's test accuracy (n,) at each)."""
    grid = np.linspace(test.costs[0], test.costs[-1], n)
    return grid, metrics.oracle_curve(test, grid)


def accuracy_at_budgets(curve: dict, budgets) -> np.ndarray:
    """The curve's test accuracy at each budget (nan outside its cost range); single points exact."""
    cost, acc = np.asarray(curve["cost"]), np.asarray(curve["accuracy"])
    budgets = np.asarray(budgets, dtype=np.float64)
    if len(cost) == 1:  # a static model: it runs at its one cost or not at all
        return np.where(budgets >= cost[0] - 1e-9, acc[0], np.nan)
    out = metrics.accuracy_at_cost(cost, acc, budgets)
    return np.where(budgets > cost.max(), np.maximum.accumulate(acc[np.argsort(cost)])[-1], out)


def budget_for_accuracy(curve: dict, target: float) -> float:
    """Smallest test cost at which the curve reaches ``target`` accuracy (interpolated); nan if never."""
    cost, acc = np.asarray(curve["cost"], dtype=np.float64), np.asarray(curve["accuracy"], dtype=np.float64)
    order = np.argsort(cost, kind="stable")
    cost, best = cost[order], np.maximum.accumulate(acc[order])
    above = np.flatnonzero(best >= target - 1e-12)
    if not len(above):
        return float("nan")
    i = int(above[0])
    if i == 0 or best[i] == best[i - 1]:
        return float(cost[i])
    frac = (target - best[i - 1]) / (best[i] - best[i - 1])
    return float(cost[i - 1] + frac * (cost[i] - cost[i - 1]))


def bench_row(name: str, bench: dict | None) -> dict:
    """One table row from a ``dynexit bench`` result (None: the model has no measurement)."""
    if not bench:
        return {"model": name, "budget (MFLOPs)": None, "theoretical speedup": None,
                "measured speedup, batch 256": None, "measured speedup, batch 1": None,
                "accuracy full": None, "accuracy early exit": None}
    timings = bench.get("timings", {})

    def measured(key):
        t = timings.get(key)
        return None if t is None else round(float(t["measured_speedup"]), 3)
    return {"model": name, "budget (MFLOPs)": bench.get("budget_mflops"),
            "theoretical speedup": round(float(bench["theoretical_speedup"]), 3),
            "measured speedup, batch 256": measured("batch256"), "measured speedup, batch 1": measured("batch1"),
            "accuracy full": bench.get("accuracy_full"), "accuracy early exit": bench.get("accuracy_early_exit")}


# ----------------------------------------------------------------------------- deadlines (anytime setting)

NO_ANSWER = {"wrong": "counts as wrong", "prior": "a prior guess: the most frequent class of the validation images"}


def deadline_defaults(kind: str, costs) -> dict[str, tuple[float, float, float]]:
    """{parameter: (min, max, default)} of a deadline distribution over a model's cost range.

    ``costs``: (K,) cumulative costs per exit in the deadline's unit (MFLOPs or ms). The ranges run
    from 0 to 1.5 times the full cost, so deadlines before the first exit and after the last can be
    chosen; defaults sit in the middle of the exits. ValueError for an unknown ``kind``.
    """
    lo, hi = float(costs[0]), float(costs[-1])
    top, mid = 1.5 * hi, (lo + hi) / 2
    table = {"fixed": {"at": (0.0, top, mid)},
             "uniform": {"low": (0.0, top, 0.5 * lo), "high": (0.0, top, hi)},
             "normal": {"mean": (0.0, top, mid), "std": (0.01 * hi, hi, max((hi - lo) / 4, 0.02 * hi))},
             "exponential": {"mean": (0.01 * hi, top, mid)}}
    if kind not in table:
        raise ValueError(f"unknown deadline distribution {kind!r}")
    return table[kind]


def deadline_results(test, exits, deadline, costs, no_answer: str, prior_labels) -> dict:
    """The three policies under ``deadline`` (a :class:`dynexit.anytime.Deadline`) on the test table.

    ``exits``: (N,) the budgeted rule's planned exits; ``costs``: (K,) per-exit costs in the deadline's
    unit; ``no_answer``: "wrong" or "prior" (``prior_labels``: the validation labels). Returns
    ``{"anytime" | "budgeted" | "oracle": DeadlineResult}``, exact (no sampling); milliseconds for 10,000 images.
    """
    from dynexit import anytime

    return anytime.compare(test, exits, deadline, costs=costs, no_answer=no_answer, prior_labels=prior_labels)


def fixed_deadline_curves(test, exits, costs, n: int = 61) -> dict:
    """Expected accuracy of the three policies at ``n`` fixed deadlines from 0 to 1.2x the full cost.

    ``exits``: (N,) the budgeted rule's planned exits; ``costs``: (K,) per-exit costs in the deadline's
    unit. Returns ``{"deadlines": (n,), "anytime": (n,), "budgeted": (n,), "oracle": (n,)}`` (no exit
    finished: wrong). A fixed deadline only decides the last finished exit k, so each policy has K
    values (what :mod:`dynexit.anytime` gives for ``Deadline.make("fixed", at=costs[k])``), drawn as steps.
    """
    correct, exits = test.correct, np.asarray(exits)
    K, rows = test.num_exits, np.arange(test.num_samples)
    per_k = {"anytime": test.exit_accuracy(),
             "budgeted": np.array([correct[rows, np.minimum(exits, k)].mean() for k in range(K)]),
             "oracle": np.logical_or.accumulate(correct, axis=1).mean(axis=0)}
    grid = np.linspace(0.0, 1.2 * float(costs[-1]), n)
    last = np.searchsorted(np.asarray(costs, dtype=np.float64), grid, side="right") - 1
    out = {"deadlines": grid}
    for name, values in per_k.items():
        out[name] = np.where(last >= 0, np.asarray(values, dtype=np.float64)[np.maximum(last, 0)], 0.0)
    return out


def zoom_range(*accuracies, pad: float = 0.25) -> list[float]:
    """[low, high] in % for a plot's accuracy axis that frames the given accuracies (fractions in [0, 1]),
    ``pad`` points above and below; used to zoom the compare page onto one model's curve."""
    values = 100.0 * np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in accuracies])
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("no finite accuracy to frame")
    return [float(values.min() - pad), float(values.max() + pad)]
