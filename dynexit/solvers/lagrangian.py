"""Exact per-exit threshold search: coordinate ascent on accuracy - lambda * cost.

Our solver (no single paper; the Lagrangian relaxation of the budget constraint is the textbook
method, cf. Everett, "Generalized Lagrange multiplier method", Operations Research 1963).

With every other threshold fixed, the best T_k is found exactly in O(N): walk the samples in
descending score at exit k; cutting after the m-th sample makes the first m (of those still present
at exit k) leave at k, the others go on to the later exits under their current thresholds. The
objective is a prefix sum of the per-sample gains of leaving, so every cut is scored at once.

Budget-independent work is done once per score matrix and cached: the descending order of every
exit's scores, and a path of solutions over a grid of lambda (warm-started from each other). A fit
for a budget then takes the most accurate path point within the budget and spends what is left by
constrained coordinate ascent (largest accuracy with cost <= budget), which only moves to feasible
points and so never exceeds the budget on the fitting table.

It maximises accuracy on the fitting (validation) table: where the deeper exits are no more accurate
there, it spends less than the budget, which is the optimum on val (``ExitResult.spending_note()``
says so), and it fits the validation noise (issue 14 measures it against geometric on the zoo).
"""

from __future__ import annotations

import numpy as np

from dynexit.policy import assign_exits
from dynexit.solvers._base import CACHE, BaseSolver, all_at_last, check_budget

_MAX_SWEEPS = 6


class ThresholdSearch:
    """Budget-independent state of the exact search for one (scores, correct, costs) triple.

    ``min_gap`` coarsens the candidate cuts to one per ``min_gap`` samples, a guard against fitting
    the noise of a small validation set.
    """

    def __init__(self, scores: np.ndarray, correct: np.ndarray, costs: np.ndarray, min_gap: int = 1,
                 n_lambdas: int = 48):
        self.scores = np.asarray(scores, dtype=np.float64)
        self.correct = np.asarray(correct, dtype=np.float64)
        self.costs = np.asarray(costs, dtype=np.float64)
        n, k = self.scores.shape
        self.n, self.k = n, k
        self.order = np.argsort(-self.scores, axis=0, kind="stable")
        self.sorted_scores = np.take_along_axis(self.scores, self.order, axis=0)
        # a cut after position m (m samples leave) is valid where the next score is strictly lower
        valid = np.ones((n + 1, k), dtype=bool)
        valid[1:n] = self.sorted_scores[:-1] > self.sorted_scores[1:]
        if min_gap > 1:
            coarse = np.zeros(n + 1, dtype=bool)
            coarse[::min_gap] = True
            coarse[n] = True
            valid &= coarse[:, None]
        self.valid_cuts = valid
        self.path = self._lambda_path(n_lambdas)

    # ------------------------------------------------------------------ primitives
    def _threshold_for_cut(self, j: int, m: int) -> float:
        return np.inf if m == 0 else float(self.sorted_scores[m - 1, j])

    def _cut_candidates(self, j, thresholds):
        """Per valid cut at exit j: the change in #correct and in total cost against staying."""
        reach = np.ones(self.n, dtype=bool)
        for i in range(j):
            reach &= self.scores[:, i] < thresholds[i]
        later = assign_exits(self.scores[:, j + 1:], thresholds[j + 1:]) + j + 1
        rows = np.arange(self.n)
        d_correct = (self.correct[:, j] - self.correct[rows, later]) * reach
        d_cost = (self.costs[j] - self.costs[later]) * reach
        order = self.order[:, j]
        cum_correct = np.concatenate([[0.0], np.cumsum(d_correct[order])])
        cum_cost = np.concatenate([[0.0], np.cumsum(d_cost[order])])
        cuts = np.flatnonzero(self.valid_cuts[:, j])
        return cuts, cum_correct, cum_cost

    def totals(self, thresholds) -> tuple[float, float]:
        """(number of correct samples, total MFLOPs) under ``thresholds`` (K,)."""
        exits = assign_exits(self.scores, thresholds)
        rows = np.arange(self.n)
        return float(self.correct[rows, exits].sum()), float(self.costs[exits].sum())

    # ------------------------------------------------------------------ Lagrangian ascent
    def ascend(self, lam: float, thresholds: np.ndarray) -> np.ndarray:
        """Coordinate ascent on #correct - lam * total cost from a starting point."""
        thresholds = thresholds.copy()
        for _ in range(_MAX_SWEEPS):
            changed = False
            for j in range(self.k - 1):
                cuts, cum_correct, cum_cost = self._cut_candidates(j, thresholds)
                dc, dcost = cum_correct[cuts], cum_cost[cuts]
                # stay-as-is is one of the cuts, so the objective never decreases
                gain = dc - lam * dcost
                best = cuts[int(np.argmax(gain))]
                new = self._threshold_for_cut(j, best)
                if new != thresholds[j]:
                    thresholds[j], changed = new, True
            if not changed:
                break
        return thresholds

    def _lambda_path(self, n_lambdas: int):
        span = max(self.costs[-1] - self.costs[0], 1e-12)
        lambdas = np.concatenate([[0.0], np.geomspace(1e-4, 1e2, n_lambdas) / span])
        path, thresholds = [], all_at_last(self.k)
        for lam in lambdas:
            thresholds = self.ascend(lam, thresholds)
            n_correct, total_cost = self.totals(thresholds)
            path.append((total_cost / self.n, n_correct / self.n, thresholds.copy()))
        # everyone at exit 1 is always a point: it makes every budget >= costs[0] feasible
        first = np.full(self.k, -np.inf)
        n_correct, total_cost = self.totals(first)
        path.append((total_cost / self.n, n_correct / self.n, first))
        return path

    # ------------------------------------------------------------------ budgeted fit
    def solve(self, budget: float) -> np.ndarray:
        """Thresholds (K,) of the most accurate point within ``budget`` (MFLOPs per image)."""
        feasible = [p for p in self.path if p[0] <= budget + 1e-12]
        _, _, thresholds = max(feasible, key=lambda p: (p[1], p[0]))
        return self.spend(budget, thresholds.copy())

    def spend(self, budget: float, thresholds: np.ndarray) -> np.ndarray:
        """Constrained coordinate ascent: most correct with total cost <= budget * N."""
        limit = budget * self.n + 1e-9 * max(1.0, budget * self.n)
        n_correct, total_cost = self.totals(thresholds)
        for _ in range(_MAX_SWEEPS):
            improved = False
            for j in range(self.k - 1):
                cuts, cum_correct, cum_cost = self._cut_candidates(j, thresholds)
                dc, dcost = cum_correct[cuts], cum_cost[cuts]
                current = self._current_cut(j, thresholds)
                base_correct, base_cost = cum_correct[current], cum_cost[current]
                new_correct = n_correct + dc - base_correct
                new_cost = total_cost + dcost - base_cost
                ok = new_cost <= limit
                if not ok.any():
                    continue
                # most correct; among equals the most expensive: on a validation set a tie says
                # nothing, and deeper exits are the better bet on unseen data
                key = np.where(ok, new_correct + 1e-6 * new_cost / max(limit, 1e-12), -np.inf)
                best = int(np.argmax(key))
                if new_correct[best] > n_correct + 1e-9 or (new_correct[best] >= n_correct - 1e-9
                                                             and new_cost[best] > total_cost + 1e-9):
                    thresholds[j] = self._threshold_for_cut(j, cuts[best])
                    n_correct, total_cost = new_correct[best], new_cost[best]
                    improved = True
            if not improved:
                break
        return thresholds

    def _current_cut(self, j: int, thresholds) -> int:
        """How many samples, in exit j's order, have a score >= T_j."""
        return int(np.searchsorted(-self.sorted_scores[:, j], -thresholds[j], side="right"))


def cached_search(table, key, scores, min_gap: int = 1) -> ThresholdSearch:
    """The :class:`ThresholdSearch` of ``scores`` (N, K) on ``table``, cached by table content and ``key``
    (what the scores are, e.g. a criterion name) in the solvers' shared cache."""
    return CACHE.get(table, ("threshold_search", key, min_gap),
                     lambda: ThresholdSearch(scores, table.correct, table.costs, min_gap=min_gap))


class LagrangianSolver(BaseSolver):
    """Per-exit thresholds by exact coordinate ascent on accuracy - lambda * cost.

    Parameters
    ----------
    budget : average MFLOPs per image on the fitting table.
    criterion : exit criterion name or callable.
    min_gap : candidate cuts are spaced at least this many samples apart (0 = 0.5% of the table).
    """

    def __init__(self, budget=None, criterion="max_prob", min_gap=0):
        self.budget = budget
        self.criterion = criterion
        self.min_gap = min_gap

    def fit(self, table):
        """Search the thresholds on ``table`` (val) for the budget; returns self. ValueError for a
        budget below the cheapest exit or a negative ``min_gap``."""
        budget = check_budget(self.budget, table.costs)
        if int(self.min_gap) < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        gap = int(self.min_gap) or max(1, table.num_samples // 200)
        scores = table.scores(self.criterion)
        if budget >= table.costs[-1]:
            return self._store(table, all_at_last(table.num_exits), scores)
        if isinstance(self.criterion, str):
            search = cached_search(table, self.criterion, scores, gap)
        else:
            search = ThresholdSearch(scores, table.correct, table.costs, min_gap=gap)
        return self._store(table, search.solve(budget), scores)
