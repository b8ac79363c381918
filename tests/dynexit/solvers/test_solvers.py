import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from dynexit import criteria, metrics, solvers
from dynexit.policy import ExitRule
from dynexit.table import ExitTable
from dynexit.solvers import assign_exits
from conftest import random_table


def plain_msdnet(conf, q):
    """MSDNet's dynamic_evaluate, written again from the description with plain loops."""
    n, k = len(conf), len(conf[0])
    p = [q ** (i + 1) for i in range(k)]
    p = [x / sum(p) for x in p]
    T = [math.inf] * k
    filtered = [False] * n
    for j in range(k - 1):
        out_n = math.floor(n * p[j])
        ranked = sorted(range(n), key=lambda i: -conf[i][j])
        count = 0
        for i in ranked:
            if not filtered[i]:
                count += 1
                if count == out_n:
                    T[j] = conf[i][j]
                    break
        for i in range(n):
            if conf[i][j] >= T[j]:
                filtered[i] = True
    T[k - 1] = -math.inf
    exits = []
    for i in range(n):
        for j in range(k):
            if conf[i][j] >= T[j] or j == k - 1:
                exits.append(j)
                break
    return T, exits


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("q", [0.3, 0.8, 1.0, 1.7, 4.0])
def test_geometric_matches_plain_msdnet(seed, q):
    table = random_table(n=150, k=4, seed=seed)
    solver = solvers.GeometricSolver(q=q).fit(table)
    conf = criteria.max_prob(table.probabilities()).astype(np.float64).tolist()
    T, exits = plain_msdnet(conf, q)
    np.testing.assert_array_equal(solver.thresholds_, T)
    np.testing.assert_array_equal(solver.evaluate(table).exits, exits)


def test_geometric_on_real_table(digits):
    val, _ = digits
    for q in (0.5, 1.0, 2.0):
        conf = criteria.max_prob(val.probabilities()).astype(np.float64).tolist()
        T, exits = plain_msdnet(conf, q)
        fitted = solvers.GeometricSolver(q=q).fit(val)
        np.testing.assert_array_equal(fitted.thresholds_, T)
        np.testing.assert_array_equal(fitted.evaluate(val).exits, exits)


def test_sklearn_conventions(digits):
    val, test = digits
    for name in solvers.available():
        solver = solvers.make(name, budget=float(val.costs[1]))
        assert not any(k.endswith("_") for k in vars(solver))  # __init__ only stores
        with pytest.raises(NotFittedError):
            solver.evaluate(test)
        assert solver.fit(val) is solver
        assert solver.thresholds_.shape == (val.num_exits,) and solver.thresholds_[-1] == -np.inf
        assert clone(solver).get_params() == solver.get_params()
        result = solver.evaluate(test)
        assert result.histogram.sum() == len(test)
        assert 0 <= result.accuracy <= 1


# what a table may cache about itself: its fingerprint, probabilities, predictions, correctness and
# criterion scores; never a solver's state
TABLE_OWN_KEYS = ("fingerprint", "pred", "correct", "probs", "scores")


@pytest.mark.parametrize("name", solvers.available())
def test_fit_writes_nothing_into_the_table_and_the_rule_is_the_solver(digits, name):
    val, test = digits
    val, test = ExitTable(val.logits, val.labels, val.costs), ExitTable(test.logits, test.labels, test.costs)
    fitted = solvers.make(name, budget=float(val.costs[1] + 0.3 * (val.costs[-1] - val.costs[1]))).fit(val)
    for table in (val, test):
        fitted.evaluate(table)
        fitted.scores(table)
        keys = [k if isinstance(k, str) else k[0] for k in table._memo]
        assert set(keys) <= set(TABLE_OWN_KEYS), keys
    assert isinstance(fitted.rule_, ExitRule)
    np.testing.assert_array_equal(fitted.rule_.thresholds, fitted.thresholds_)
    mine, its = fitted.rule_.evaluate(test), fitted.evaluate(test)
    np.testing.assert_array_equal(mine.exits, its.exits)
    assert mine.summary() == its.summary()
    # the saved rule is the fitted one
    assert ExitRule.from_dict(ExitRule.from_solver(fitted).to_dict()).evaluate(test).exits.tolist() == its.exits.tolist()


def test_out_of_fold_scores_are_asked_for_explicitly(digits):
    val, test = digits
    fitted = solvers.make("learned", budget=float(val.costs[1]), n_folds=3).fit(val)
    np.testing.assert_array_equal(fitted.scores(val, out_of_fold=True), fitted.fit_scores_)
    assert not np.array_equal(fitted.scores(val), fitted.fit_scores_)  # the refitted score differs from the cross-fitted
    np.testing.assert_allclose(fitted.scores(val), fitted.rule_.scores(val))
    with pytest.raises(ValueError, match="fitting table only"):
        fitted.scores(test, out_of_fold=True)
    assert fitted.evaluate(val).mean_cost == pytest.approx(fitted.expected_cost_)  # evaluated on what it was fitted on


def test_solvers_say_whether_they_take_a_criterion():
    assert [n for n in solvers.available() if solvers.takes_criterion(n)] == ["lagrangian", "geometric", "genetic"]
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.takes_criterion("nope")


def test_budget_outside_range_is_an_error(digits):
    val, _ = digits
    for name in solvers.available():
        # the message names no upper bound: budgets above the full model's cost are accepted
        with pytest.raises(ValueError, match=r"below the cheapest exit .*choose a budget of at least"):
            solvers.make(name, budget=val.costs[0] / 2).fit(val)
        with pytest.raises(ValueError, match="budget"):
            solvers.make(name, budget=float("nan")).fit(val)
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.get("magic")


tables = st.builds(random_table, n=st.integers(20, 120), k=st.integers(2, 5), c=st.integers(2, 6),
                   seed=st.integers(0, 10_000), sharpness=st.floats(0.0, 6.0))


@settings(max_examples=25, deadline=None)
@given(table=tables, share=st.floats(0.0, 1.2), name=st.sampled_from(solvers.available()))
def test_properties(table, share, name):
    budget = table.costs[0] + share * (table.costs[-1] - table.costs[0])
    fitted = solvers.make(name, budget=budget, **({"n_folds": 2} if name == "learned" else {})).fit(table)
    result = fitted.evaluate(table)
    assert result.exits.shape == (len(table),)                     # exactly one exit per sample
    assert result.exits.min() >= 0 and result.exits.max() < table.num_exits
    assert result.histogram.sum() == len(table)
    scores = fitted.scores(table)
    all_pass = np.full(table.num_exits, -np.inf)
    assert np.all(assign_exits(scores, all_pass) == 0)
    nobody = np.full(table.num_exits, np.inf)
    assert np.all(assign_exits(scores, nobody) == table.num_exits - 1)  # the last exit accepts all
    if budget >= table.costs[-1] and name == "crossval":
        # the most accurate rule on the fitting table within the budget: never below everyone-at-the-last-exit
        assert fitted.expected_accuracy_ >= table.exit_accuracy()[-1] - 1e-12
    elif budget >= table.costs[-1]:
        assert result.accuracy == pytest.approx(table.exit_accuracy()[-1])
    if name in solvers.available():
        assert fitted.expected_cost_ <= budget * (1 + 1e-9)      # never over the budget it was fitted for


@settings(max_examples=25, deadline=None)
@given(table=tables, share=st.floats(0.0, 1.0))
def test_geometric_search_never_exceeds_budget(table, share):
    budget = table.costs[0] + share * (table.costs[-1] - table.costs[0])
    fitted = solvers.GeometricSolver(budget=budget).fit(table)
    assert fitted.expected_cost_ <= budget * (1 + 1e-12)  # up to float rounding of the mean


def test_genetic_is_seeded(digits):
    val, _ = digits
    b = float(val.costs[1])
    a1 = solvers.GeneticSolver(budget=b, random_state=3).fit(val).thresholds_
    a2 = solvers.GeneticSolver(budget=b, random_state=3).fit(val).thresholds_
    np.testing.assert_array_equal(a1, a2)


def test_lagrangian_at_least_geometric_on_fitting_table(digits):
    """The exact search starts from a path that contains the all-at-exit-1 point and only improves:
    on the table it is fitted on it must reach geometric's accuracy within the same budget."""
    val, _ = digits
    for budget in metrics.budget_grid(val, 8)[1:-1]:
        geo = solvers.GeometricSolver(budget=budget).fit(val)
        lag = solvers.LagrangianSolver(budget=budget, min_gap=1).fit(val)
        assert lag.expected_accuracy_ >= geo.expected_accuracy_ - 1e-12


def test_learned_score_uses_only_earlier_exits(digits):
    val, test = digits
    fitted = solvers.LearnedScoreSolver(budget=float(val.costs[1])).fit(val)
    p = test.probabilities()
    full = fitted.scorer_(p)
    for k in range(test.num_exits):
        np.testing.assert_allclose(fitted.scorer_(p[:, : k + 1])[:, k], full[:, k])


def test_oracle_and_metrics(digits):
    _, test = digits
    o = metrics.oracle(test)
    assert o.accuracy == pytest.approx(test.correct.any(axis=1).mean())
    grid = metrics.budget_grid(test, 10)
    top = metrics.oracle_curve(test, grid)
    assert np.all(np.diff(top) >= 0) and top[-1] == pytest.approx(o.accuracy)
    for name in solvers.available():
        for b in grid[1:]:
            assert solvers.make(name, b).fit(test).evaluate(test).accuracy <= \
                metrics.oracle_curve(test, [b])[0] + 1e-12
    assert metrics.practical_exits([0.5, 0.7, 0.6, 0.8]).tolist() == [True, True, False, True]


def test_easy_hard_overthinking():
    from dynexit.table import ExitTable
    logits = np.zeros((3, 3, 2))
    logits[0, :, 0] = 5          # right everywhere
    logits[1, 0, 1] = 5          # right at exit 1 only (label 1), wrong later
    logits[1, 1:, 0] = 5
    logits[2, :, 1] = 5          # always wrong (label 0)
    t = ExitTable(logits, [0, 1, 0], [1.0, 2.0, 3.0])
    result = solvers.evaluate_thresholds(t, np.zeros((3, 3)), np.array([np.inf, np.inf, -np.inf]))
    sets = metrics.easy_hard(t, result)
    assert sets["overthinking"].tolist() == [1]
    assert sets["hard"].tolist() == [0, 1, 2] and sets["easy"].tolist() == []


def _tiny_table(kind, n, k=3, c=3, seed=0):
    from dynexit.table import ExitTable
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k, c))
    labels = rng.integers(0, c, n)
    costs = np.cumsum(rng.uniform(0.5, 2.0, k))
    if kind == "identical":
        logits[:] = logits[:1]          # every sample scores the same at every exit
    elif kind == "one_class":
        labels[:] = 0
    elif kind == "ties":
        logits = np.round(logits)       # many equal scores
        costs[1] = costs[0]             # and two exits that cost the same
    return ExitTable(logits, labels, costs)


@pytest.mark.parametrize("name", solvers.available())
@pytest.mark.parametrize("n", [1, 2, 3, 12])
@pytest.mark.parametrize("kind", ["random", "identical", "one_class", "ties"])
def test_tiny_tables_meet_the_budget_or_raise(name, n, kind):
    """On 1, 2, 3 or 12 samples every solver returns thresholds within the budget or raises ValueError."""
    table = _tiny_table(kind, n)
    met = 0
    for share in (0.0, 1e-12, 0.5, 0.999):
        budget = table.costs[0] + share * (table.costs[-1] - table.costs[0])
        small = {"learned": {"n_folds": 2}, "crossval": {"n_folds": 2},
                 "genetic": {"population": 8, "generations": 5}}.get(name, {})
        solver = solvers.make(name, budget=budget, **small)
        try:
            solver.fit(table)
        except ValueError as err:
            assert name == "learned" and n < 4 and "samples per fold" in str(err)  # the only allowed refusal
            continue
        met += 1
        assert solver.evaluate(table).mean_cost <= budget * (1 + 1e-9)
        assert solver.thresholds_[-1] == -np.inf
    assert met or (name == "learned" and n < 4)


def test_genetic_one_sample_regression():
    """A one-sample table used to decode every gene to +inf: all at the last exit, over the budget."""
    table = _tiny_table("random", 1)
    fitted = solvers.GeneticSolver(budget=float(table.costs[0])).fit(table)
    assert fitted.evaluate(table).exits.tolist() == [0]


def test_base_refuses_a_solver_over_budget():
    class Greedy(solvers.BaseSolver):  # ignores its budget: everyone at the last exit
        def __init__(self, budget=None, criterion="max_prob"):
            self.budget, self.criterion = budget, criterion

        def fit(self, table):
            return self._store(table, np.r_[np.full(table.num_exits - 1, np.inf), -np.inf])

    table = random_table(n=20)
    with pytest.raises(ValueError, match="could not meet the budget"):
        Greedy(budget=float(table.costs[0])).fit(table)
    assert Greedy(budget=float(table.costs[-1])).fit(table).expected_cost_ == pytest.approx(table.costs[-1])


def test_a_budget_above_the_full_cost_is_not_reported_as_unspent():
    """Everyone at the last exit spends all there is: no note, whatever the budget above the full cost."""
    table = random_table(n=200, k=3, c=4, seed=1)
    for budget in (table.costs[-1], 2 * table.costs[-1]):
        fitted = solvers.make("geometric", budget).fit(table)
        result = fitted.evaluate(table)
        assert fitted.expected_cost_ == pytest.approx(table.costs[-1])
        assert fitted.budget_shortfall_ < 1e-9 and result.unspent < 1e-9 and result.spending_note() is None
    half = solvers.make("geometric", float(table.costs[0])).fit(table)  # spends exactly the cheapest exit
    assert half.evaluate(table).spending_note() is None
