"""Where each sample leaves and whether it is right there: the result of applying exit thresholds.

The budgeted-batch rule of Huang et al. (MSDNet, ICLR 2018, Sec. 4): a sample leaves at the first exit k
whose score >= T_k; the last exit takes everyone left. :class:`ExitResult` is what
:meth:`dynexit.policy.ExitRule.evaluate` and every solver's ``evaluate`` return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def assign_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index (N,) int of every sample: the first k with ``scores[:, k] >= thresholds[k]``.

    ``scores`` (N, K), ``thresholds`` (K,); the last exit accepts everyone whatever its threshold.
    ValueError when the shapes disagree.
    """
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if scores.ndim != 2 or thresholds.shape != (scores.shape[1],):
        raise ValueError(f"scores (N, K) and thresholds (K,) disagree: {scores.shape} vs {thresholds.shape}")
    passes = scores >= thresholds
    passes[:, -1] = True  # the last exit accepts everyone, whatever its threshold says
    return passes.argmax(axis=1)


@dataclass
class ExitResult:
    """Where each sample left and what it cost (costs in MFLOPs per image)."""

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

    def spending_note(self, unit: str = "MFLOPs") -> str | None:
        """A sentence for users when the rule underspends (see :attr:`underspends`), else None; costs
        in ``unit`` (the table's), with enough digits to tell the two numbers apart."""
        if not self.underspends:
            return None
        digits = 3
        while digits < 8 and f"{self.fit_cost:.{digits}g}" == f"{self.budget:.{digits}g}":
            digits += 1
        return (f"spends {self.fit_cost:.{digits}g} of the {self.budget:.{digits}g} {unit} allowed: spending more did "
                "not help on the validation images")

    @property
    def histogram_wrong(self) -> np.ndarray:
        return self.histogram - self.histogram_correct

    def summary(self) -> dict:
        """The result as plain JSON values (accuracy in [0, 1], costs in MFLOPs per image)."""
        return {
            "accuracy": self.accuracy,
            "mean_cost": self.mean_cost,
            "speedup": self.speedup,
            "thresholds": [json_threshold(t) for t in self.thresholds],  # "inf" / "-inf": JSON has no infinity
            "histogram": self.histogram.tolist(),
            "histogram_correct": self.histogram_correct.tolist(),
            "budget": self.budget,
            "unspent_on_fit": self.unspent,
        }


def json_threshold(t: float):
    """A threshold as JSON holds it: the number, or ``"inf"`` / ``"-inf"`` (nobody / everyone leaves there)."""
    t = float(t)
    return t if np.isfinite(t) else ("inf" if t > 0 else "-inf")


def evaluate_thresholds(table, scores: np.ndarray, thresholds: np.ndarray) -> ExitResult:
    """Where every sample of ``table`` leaves under ``thresholds`` (K,) on ``scores`` (N, K), and
    whether it is right there; costs (K,) in MFLOPs from the table. ValueError for shapes that disagree."""
    exits = assign_exits(scores, thresholds)
    correct = table.correct[np.arange(table.num_samples), exits]
    return ExitResult(exits, correct, np.asarray(thresholds, dtype=np.float64), table.costs)
