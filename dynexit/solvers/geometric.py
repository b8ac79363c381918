"""The MSDNet threshold rule: exit shares in a geometric progression.

Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification", ICLR 2018,
Sec. 4 (budgeted batch classification) and its reference code (``dynamic_evaluate``).

For a ratio q, the target share of samples leaving at exit k is proportional to q^k. Walking the
exits in order, T_k is the score of the floor(N * share_k)-th most confident sample among those not
yet exited (the count is of the whole set, not the remainder); samples at or above T_k exit. When
the count is zero, or fewer samples remain than it asks for, T_k stays +inf (as in the reference
code, whose loop then ends without setting it). The last exit takes everyone left.
"""

from __future__ import annotations

import numpy as np

from dynexit.solvers._base import BaseSolver, all_at_last, check_budget, evaluate_thresholds


def geometric_thresholds(scores: np.ndarray, q: float, order: np.ndarray | None = None) -> np.ndarray:
    """MSDNet thresholds (K,) for ratio q; ``order`` is an optional cached descending argsort."""
    n, k = scores.shape
    if not (q > 0 and np.isfinite(q)):
        raise ValueError(f"q must be positive and finite, got {q}")
    log_share = np.arange(k) * np.log(q)
    share = np.exp(log_share - log_share.max())
    share /= share.sum()
    if order is None:
        order = np.argsort(-scores, axis=0, kind="stable")
    thresholds = all_at_last(k)
    exited = np.zeros(n, dtype=bool)
    for j in range(k - 1):
        count = int(np.floor(n * share[j]))
        if count > 0:
            candidates = order[:, j][~exited[order[:, j]]]
            if len(candidates) >= count:
                thresholds[j] = scores[candidates[count - 1], j]
        exited |= scores[:, j] >= thresholds[j]
    return thresholds


class GeometricSolver(BaseSolver):
    """MSDNet's rule, for a given ``q`` or searched for a ``budget`` on the validation table.

    Parameters
    ----------
    q : ratio of the geometric exit shares (q < 1 sends more samples to early exits).
    budget : average MFLOPs per image; q is then searched (log-grid, then bisection) for the
        largest validation cost that does not exceed it.
    criterion : exit criterion name (see :mod:`dynexit.criteria`).
    """

    def __init__(self, q=None, budget=None, criterion="max_prob"):
        self.q = q
        self.budget = budget
        self.criterion = criterion

    def fit(self, table):
        if (self.q is None) == (self.budget is None):
            raise ValueError("GeometricSolver needs exactly one of q= or budget=")
        scores = self.scores(table)
        sort = lambda: np.argsort(-scores, axis=0, kind="stable")  # noqa: E731
        # named criteria give the same scores every time, so their order is cached on the table
        order = table.memo(("geometric_order", self.criterion), sort) if isinstance(self.criterion, str) else sort()
        if self.q is not None:
            self.q_ = float(self.q)
            return self._store(table, geometric_thresholds(scores, self.q_, order), scores)
        budget = check_budget(self.budget, table.costs)
        if budget >= table.costs[-1]:
            self.q_ = np.inf
            return self._store(table, all_at_last(table.num_exits), scores)
        self.q_, thresholds = self._search_q(table, scores, order, budget)
        return self._store(table, thresholds, scores)

    @staticmethod
    def _search_q(table, scores, order, budget):
        def cost(log_q):
            thresholds = geometric_thresholds(scores, float(np.exp(log_q)), order)
            return evaluate_thresholds(table, scores, thresholds).mean_cost, thresholds

        # q = e^-40 puts every sample at exit 1 (share rounds to 1), so the grid always starts feasible
        limit = budget * (1 + 1e-12)  # a mean of equal costs can round one ulp above them
        grid = np.linspace(-40.0, 40.0, 81)
        costs = [cost(g)[0] for g in grid]
        feasible = [i for i, c in enumerate(costs) if c <= limit]
        lo = grid[max(feasible)]
        hi = grid[max(feasible) + 1] if max(feasible) + 1 < len(grid) else lo
        best_log_q = lo
        for _ in range(30):  # bisection: the largest cost that still meets the budget
            if hi - lo < 1e-6:
                break
            mid = (lo + hi) / 2
            if cost(mid)[0] <= limit:
                lo = best_log_q = mid
            else:
                hi = mid
        return float(np.exp(best_log_q)), cost(best_log_q)[1]
