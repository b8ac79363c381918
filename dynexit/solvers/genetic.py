"""Genetic search over the threshold vector, as used by the Dynamic Vision Transformer.

Wang et al., "Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image
Recognition", NeurIPS 2021, Sec. 3.4 / Appendix: the thresholds maximise validation accuracy subject
to validation cost <= budget, found with a genetic algorithm. That is what the *paper* describes; DVT's
released code instead sets its thresholds with MSDNet's geometric procedure (our ``geometric``).

Like any free search over the thresholds it maximises *validation* accuracy, so where the deeper exits
are no more accurate on the validation images it spends less than the budget (that is the optimum
on val, and ``ExitResult.spending_note()`` says so) and it fits the validation noise.

Genome: one gene in [0, 1] per non-final exit, the quantile of that exit's validation scores used as
threshold (a gene above ``1 - 1/N`` means +inf: nobody leaves there; on a one-sample table, where
that bin would be the whole range, a gene above 0.5). Fitness is the validation
accuracy when the cost fits, and a penalty below every feasible fitness otherwise. Tournament
selection, uniform crossover, Gaussian mutation and elitism; seeded by ``random_state``.
"""

from __future__ import annotations

import numpy as np

from dynexit.solvers._base import BaseSolver, all_at_last, check_budget


class GeneticSolver(BaseSolver):
    """Maximise validation accuracy subject to validation cost <= budget, by a genetic algorithm."""

    def __init__(self, budget=None, criterion="max_prob", population=48, generations=60,
                 mutation_scale=0.1, crossover_rate=0.9, elite=2, random_state=0):
        self.budget = budget
        self.criterion = criterion
        self.population = population
        self.generations = generations
        self.mutation_scale = mutation_scale
        self.crossover_rate = crossover_rate
        self.elite = elite
        self.random_state = random_state

    def _decode(self, genes, sorted_scores):
        """Genes (P, K-1) in [0, 1] -> thresholds (P, K)."""
        n = sorted_scores.shape[0]
        pos = np.clip(np.floor(genes * n).astype(int), 0, n - 1)
        thresholds = sorted_scores[pos, np.arange(genes.shape[1])[None, :]]
        # the top quantile bin means "nobody leaves"; with one sample that bin would swallow the whole
        # gene range and no gene could let the sample leave early, so split the range in half instead
        nobody = genes >= (1 - 1 / n if n > 1 else 0.5)
        thresholds = np.where(nobody, np.inf, thresholds)
        return np.concatenate([thresholds, np.full((len(genes), 1), -np.inf)], axis=1)

    def _fitness(self, thresholds, scores, correct, costs, budget):
        passes = scores[None] >= thresholds[:, None, :]
        passes[..., -1] = True
        exits = passes.argmax(axis=2)                                  # (P, N)
        acc = correct[np.arange(scores.shape[0])[None, :], exits].mean(axis=1)
        cost = costs[exits].mean(axis=1)
        over = np.maximum(cost - budget, 0) / max(costs[-1] - costs[0], 1e-12)
        return np.where(over > 0, -over, acc), acc, cost

    def fit(self, table):
        """Evolve the thresholds on ``table`` (val) for the budget; returns self. ValueError for a
        budget below the cheapest exit or a bad population / generations / elite."""
        budget = check_budget(self.budget, table.costs)
        if self.population < 4 or self.generations < 1 or not 0 <= self.elite < self.population:
            raise ValueError("GeneticSolver needs population >= 4, generations >= 1, 0 <= elite < population")
        scores = table.scores(self.criterion)
        k = table.num_exits
        if budget >= table.costs[-1] or k == 1:
            return self._store(table, all_at_last(k), scores)
        rng = np.random.default_rng(self.random_state)
        sorted_scores = np.sort(scores, axis=0)
        correct = table.correct
        p = int(self.population)
        genes = rng.random((p, k - 1))
        genes[0] = 0.0          # everyone leaves at exit 1: always feasible
        genes[1] = 1.0          # everyone at the last exit
        fit, _, _ = self._fitness(self._decode(genes, sorted_scores), scores, correct, table.costs, budget)
        # the best genome ever seen, so that the answer never gets worse (or infeasible) with elite=0
        best_genes, best_fit = genes[int(np.argmax(fit))].copy(), float(np.max(fit))
        for _ in range(int(self.generations)):
            children = np.empty_like(genes)
            for c in range(p):  # tournament of three for each parent
                a = rng.choice(p, 3, replace=False)
                b = rng.choice(p, 3, replace=False)
                pa, pb = genes[a[np.argmax(fit[a])]], genes[b[np.argmax(fit[b])]]
                mask = rng.random(k - 1) < 0.5 if rng.random() < self.crossover_rate else np.ones(k - 1, bool)
                children[c] = np.where(mask, pa, pb)
            mutate = rng.random(children.shape) < 1.0 / (k - 1)
            children = np.clip(children + mutate * rng.normal(0, self.mutation_scale, children.shape), 0, 1)
            elite = np.argsort(-fit)[: int(self.elite)]
            children[: len(elite)] = genes[elite]
            genes = children
            fit, _, _ = self._fitness(self._decode(genes, sorted_scores), scores, correct, table.costs, budget)
            if fit.max() >= best_fit:  # ">=": with elitism this is exactly the last generation's best
                best_genes, best_fit = genes[int(np.argmax(fit))].copy(), float(fit.max())
        thresholds = self._decode(best_genes[None], sorted_scores)[0]
        self.best_fitness_ = best_fit
        return self._store(table, thresholds, scores)
