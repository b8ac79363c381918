"""CrossValidatedSolver (issue 14): never below MSDNet's geometric rule, monotone in the budget."""

from pathlib import Path

import numpy as np
import pytest

from dynexit import metrics
from dynexit.solvers.crossval import CrossValidatedSolver
from dynexit.solvers.geometric import geometric_thresholds_grid
from dynexit.solvers.geometric import geometric_thresholds
from dynexit.table import ExitTable

ZOO = Path(__file__).resolve().parents[3] / "data" / "zoo"
MODELS = ["dynperceiver_fmnist", "multiexit_cnn_fmnist", "mevit_fmnist", "dvt_fmnist", "dvt_fmnist_noreuse"]
N_BUDGETS = 40
TIE = 1e-3  # 0.1 point: the tie of compare_at_matched_cost


@pytest.fixture(scope="module")
def curves():
    """Per shipped model: (val, test, crossval curve, geometric curve) at 40 budgets."""
    out = {}
    for name in MODELS:
        val, test = ExitTable.load(ZOO / f"{name}.val.npz"), ExitTable.load(ZOO / f"{name}.test.npz")
        budgets = metrics.budget_grid(val, N_BUDGETS)
        ours = metrics.BudgetCurve("crossval", "-", budgets.tolist())
        for b in budgets:
            fitted = CrossValidatedSolver(budget=float(b)).fit(val)
            result = fitted.evaluate(test)
            ours.val_cost.append(fitted.expected_cost_)
            ours.val_accuracy.append(fitted.expected_accuracy_)
            ours.test_cost.append(result.mean_cost)
            ours.test_accuracy.append(result.accuracy)
        out[name] = (val, test, ours, metrics.budget_curve(val, test, "geometric", budgets))
    return out


def test_vectorised_rule_is_msdnet_rule():
    rng = np.random.default_rng(0)
    scores = rng.random((300, 4))
    scores[:50, 1] = 0.5  # ties
    log_q = np.array([-40.0, -3.0, -0.7, 0.0, 0.4, 2.5, 40.0])
    grid = geometric_thresholds_grid(scores, log_q)
    for row, lq in zip(grid, log_q):
        np.testing.assert_array_equal(row, geometric_thresholds(scores, float(np.exp(lq))))


def test_meets_budget_and_val_accuracy_never_falls(curves):
    for name, (val, _, ours, _) in curves.items():
        assert np.all(np.array(ours.val_cost) <= np.array(ours.budgets) * (1 + 1e-9)), name
        assert np.all(np.diff(ours.val_accuracy) >= 0), name
    # where spending more lowers validation accuracy the fit stops spending, and says so
    val = curves["multiexit_cnn_fmnist"][0]
    fitted = CrossValidatedSolver(budget=float(val.costs[-1])).fit(val)
    assert fitted.budget_shortfall_ == pytest.approx(val.costs[-1] - fitted.expected_cost_)
    assert fitted.budget_shortfall_ > 0


def test_test_accuracy_does_not_fall_beyond_a_tie(curves):
    # test accuracy is not monotone by construction (more compute can overthink), but on the
    # shipped tables it never drops below its running best by more than the 0.1-point tie
    for name, (_, _, ours, _) in curves.items():
        acc = np.array(ours.test_accuracy)
        assert (np.maximum.accumulate(acc) - acc).max() <= TIE, name


def test_never_below_geometric_at_matched_test_cost(curves):
    """The acceptance test of issue 14: worst >= -0.1 point at each of 100 matched costs, per model."""
    gains = []
    for name, (_, test, ours, geo) in curves.items():
        cmp = metrics.compare_at_matched_cost(ours, geo, test, n_grid=100)
        assert cmp["worst"] >= -TIE, (name, cmp["worst"])
        assert cmp["losses"] == 0, name
        gains.append(cmp["mean_gain"])
    assert np.mean(gains) > 0, gains


def test_never_z_is_the_geometric_rule(curves):
    val, test, _, geo = curves["mevit_fmnist"]
    fitted = CrossValidatedSolver(budget=12.0, z=np.inf).fit(val)
    assert fitted.score_ == "max_prob" and fitted.criterion == "max_prob"
    reference = [c for b, c in zip(geo.budgets, geo.val_accuracy) if b <= fitted.expected_cost_ + 1e-9]
    # the anchor is MSDNet's rule on a grid of budgets: at least as accurate on val as its best point
    # at or below the cost spent
    assert fitted.expected_accuracy_ >= max(reference) - 1e-12


def test_a_later_fit_reuses_the_cached_grid_and_leaves_the_table_alone(curves, monkeypatch):
    """Speed lives in benchmarks/solvers.py; here: a later fit computes nothing again, and no fit
    writes into the table it is given (scikit-learn convention)."""
    from dynexit.solvers import crossval
    val = curves["dvt_fmnist"][0]
    CrossValidatedSolver(budget=7.0).fit(val)
    memo_before = dict(val._memo)
    monkeypatch.setattr(crossval, "_prepare", lambda *a, **k: pytest.fail("the grid was computed again"))
    fitted = CrossValidatedSolver(budget=9.0).fit(val)
    assert fitted.expected_cost_ <= 9.0 and val._memo.keys() == memo_before.keys()


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": ("nope",)}, "unknown candidate score"),
    ({"n_folds": 1}, "n_folds"),
    ({"z": -1.0}, "z must be"),
    ({"n_budgets": 1}, "n_budgets"),
    ({"budget": 0.1}, "below the cheapest exit"),
])
def test_bad_parameters_raise(curves, kwargs, match):
    val = curves["dvt_fmnist"][0]
    with pytest.raises(ValueError, match=match):
        CrossValidatedSolver(**{"budget": 5.0, **kwargs}).fit(val)
