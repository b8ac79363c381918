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

from dynexit.policy import assign_exits
from dynexit.solvers._base import CACHE, BaseSolver, all_at_last, check_budget


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


# log q of a ratio grid: e^-40 puts everyone at exit 1, e^40 everyone at the last exit; the fine
# part covers the ratios where the exit shares actually move for up to ~10 exits
LOG_Q_GRID = np.concatenate([[-40.0], np.linspace(-6.0, 6.0, 193), [40.0]])


def geometric_grid(scores: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSDNet thresholds (Q, K) for every ratio ``exp(log_q)`` (Q,) and the exits (Q, N) they give.

    Same rule as :func:`geometric_thresholds` (the count is of the whole set; +inf where it is zero
    or more than the samples left), walked one ratio at a time on the descending order of each exit's
    scores: the count-th sample still left is read off the order directly (6x faster at 40,000 x 5
    than cumulative counts over (Q, N) arrays), and the exits come out of the same walk. Equal to
    :func:`geometric_thresholds` at every ratio, checked by the tests.
    """
    n, k = scores.shape
    log_share = np.arange(k)[None, :] * np.asarray(log_q, dtype=np.float64)[:, None]
    share = np.exp(log_share - log_share.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    counts = np.floor(n * share).astype(np.int64)                     # (Q, K), as in the grid
    # one contiguous row per exit: the walk reads whole exits at a time
    by_exit = np.ascontiguousarray(scores.T)                          # (K, N)
    order = np.argsort(-by_exit, axis=1, kind="stable")               # (K, N) descending, ties by index
    ordered = np.take_along_axis(by_exit, order, axis=1)
    thresholds = np.full((len(counts), k), np.inf)
    thresholds[:, -1] = -np.inf
    exits = np.zeros((len(counts), n), dtype=np.uint8 if k < 256 else np.intp)
    left, in_order = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
    for q, count in enumerate(counts):
        left[:] = True
        for j in range(k - 1):
            if count[j] > 0 and j == 0:
                if n >= count[0]:                          # everyone is left at the first exit
                    thresholds[q, 0] = ordered[0, count[0] - 1]
            elif count[j] > 0:
                alive = np.flatnonzero(np.take(left, order[j], out=in_order))  # positions, in exit-j order, of those left
                if len(alive) >= count[j]:
                    thresholds[q, j] = ordered[j, alive[count[j] - 1]]
            left &= by_exit[j] < thresholds[q, j]
            exits[q] += left                               # as in _exits
    return thresholds, exits.astype(np.intp, copy=False)


def geometric_thresholds_grid(scores: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """MSDNet thresholds (Q, K) for every ratio ``exp(log_q)`` (Q,): see :func:`geometric_grid`."""
    return geometric_grid(scores, log_q)[0]


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
        """MSDNet's thresholds on ``table`` (val) for ``q``, or the ratio searched for ``budget``; returns
        self. ValueError unless exactly one of them is given, or for a budget below the cheapest exit."""
        if (self.q is None) == (self.budget is None):
            raise ValueError("GeometricSolver needs exactly one of q= or budget=")
        scores = table.scores(self.criterion)
        sort = lambda: np.argsort(-scores, axis=0, kind="stable")  # noqa: E731
        # named criteria give the same scores every time, so their order is cached (by table content)
        order = CACHE.get(table, ("geometric_order", self.criterion), sort) if isinstance(self.criterion, str) else sort()
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
        return geometric_for_budget(scores, table.costs, budget, order)


def geometric_for_budget(scores: np.ndarray, costs: np.ndarray, budget: float,
                         order: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """``(q, thresholds (K,))``: the ratio whose validation cost is the largest that meets ``budget``.

    ``scores`` (N, K) of the fitting table, ``costs`` (K,) cumulative MFLOPs per exit. Searched on a
    log grid, then by bisection (MSDNet's reference code sweeps q; a budget needs its inverse).
    """
    costs = np.asarray(costs, dtype=np.float64)
    if order is None:
        order = np.argsort(-scores, axis=0, kind="stable")

    def cost(log_q):
        thresholds = geometric_thresholds(scores, float(np.exp(log_q)), order)
        return float(costs[assign_exits(scores, thresholds)].mean()), thresholds

    # q = e^-40 puts every sample at exit 1 (share rounds to 1), so the grid always starts feasible
    limit = budget * (1 + 1e-12)  # a mean of equal costs can round one ulp above them
    grid = np.linspace(-40.0, 40.0, 81)
    grid_costs = [cost(g)[0] for g in grid]
    feasible = [i for i, c in enumerate(grid_costs) if c <= limit]
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
