"""The one curve comparison (metrics.compare_at_matched_cost / compare_solvers), on hand-checked curves."""

import re
from pathlib import Path

import numpy as np
import pytest

from dynexit import metrics
from dynexit.table import ExitTable

from conftest import random_table

ROOT = Path(__file__).resolve().parents[2]


def _curve(costs, accuracies):
    return {"test_cost": list(costs), "test_accuracy": list(accuracies)}


@pytest.fixture
def oracle_table():
    """2 exits costing 1 and 3; sample 0 right at both, 1 and 2 right only at exit 2, 3 never right.

    Budget-limited oracle at mean cost 1, 1.5, 2, 2.5, 3: 0.25, 0.5, 0.75, 0.75, 0.75 (each of samples
    1 and 2 costs 2 more per image, i.e. 0.5 more on the mean over 4 images).
    """
    right, wrong = [3.0, 0.0], [0.0, 3.0]
    logits = np.array([[right, right], [wrong, right], [wrong, right], [wrong, wrong]])
    return ExitTable(logits, np.zeros(4, dtype=int), [1.0, 3.0])


def test_wins_ties_worst_on_hand_checked_curves():
    # on the grid 1, 1.5, 2, 2.5, 3: a = .5 .6 .7 .75 .8, b = .5 .575 .65 .725 .8
    a, b = _curve([1, 2, 3], [0.5, 0.7, 0.8]), _curve([1, 3], [0.5, 0.8])
    cmp = metrics.compare_at_matched_cost(a, b, n_grid=5)
    assert (cmp["wins"], cmp["ties"], cmp["losses"]) == (3, 2, 0)
    assert cmp["mean_gain"] == pytest.approx(0.02)
    assert cmp["worst"] == pytest.approx(0.0) and cmp["loss_costs"] is None
    assert cmp["grid"] == pytest.approx([1, 1.5, 2, 2.5, 3]) and cmp["gap_closed"] is None
    back = metrics.compare_at_matched_cost(b, a, n_grid=5)
    assert (back["wins"], back["ties"], back["losses"]) == (0, 2, 3)
    assert back["worst"] == pytest.approx(-0.05) and back["worst_cost"] == pytest.approx(2.0)
    assert back["loss_costs"] == pytest.approx([1.5, 2.5])
    # a 0.025-point difference is a tie at the default 0.1-point tie, a loss at a 0.01-point tie
    assert metrics.compare_at_matched_cost(b, a, n_grid=5, tie=0.03)["losses"] == 1


def test_compared_from_the_shared_start_to_the_costliest_end():
    """A curve that stops short (a solver leaving budget unspent) keeps its best accuracy up to where the
    other curve ends: it is judged over the whole budget range, not only where both have points."""
    a, b = _curve([1, 2, 3], [0.5, 0.7, 0.8]), _curve([2, 4], [0.6, 0.9])
    cmp = metrics.compare_at_matched_cost(a, b, n_grid=3)
    assert cmp["cost_range"] == [2.0, 4.0]
    # at 2: .7 vs .6; at 3: .8 vs .75; at 4: .8 (a's best, held) vs .9
    assert cmp["diff"] == pytest.approx([0.1, 0.05, -0.1])
    assert cmp["losses"] == 1 and cmp["loss_costs"] == [4.0, 4.0]
    # one curve ends before the other starts: it is held at its best over the other's range
    apart = metrics.compare_at_matched_cost(_curve([1, 2], [0.5, 0.6]), _curve([3, 4], [0.7, 0.8]), n_grid=2)
    assert apart["cost_range"] == [3.0, 4.0] and apart["diff"] == pytest.approx([-0.1, -0.2])
    with pytest.raises(ValueError, match="n_grid"):
        metrics.compare_at_matched_cost(a, b, n_grid=1)
    with pytest.raises(ValueError, match="test_cost and test_accuracy"):
        metrics.compare_at_matched_cost({"cost": [1]}, b)


def test_gap_closed_against_the_budget_limited_oracle(oracle_table):
    np.testing.assert_allclose(metrics.oracle_curve(oracle_table, [1, 1.5, 2, 2.5, 3]), [0.25, 0.5, 0.75, 0.75, 0.75])
    geo = _curve([1, 3], [0.25, 0.75])  # .25 .375 .5 .625 .75: gap to the oracle 0 .125 .25 .125 0, mean 0.1
    at_oracle = _curve([1, 2, 3], [0.25, 0.75, 0.75])
    half = _curve([1, 2, 3], [0.25, 0.625, 0.75])  # diff 0 .0625 .125 .0625 0, mean 0.05
    assert metrics.compare_at_matched_cost(at_oracle, geo, oracle_table, n_grid=5)["gap_closed"] == pytest.approx(1.0)
    assert metrics.compare_at_matched_cost(half, geo, oracle_table, n_grid=5)["gap_closed"] == pytest.approx(0.5)
    assert metrics.compare_at_matched_cost(geo, half, oracle_table, n_grid=5)["gap_closed"] == pytest.approx(-1.0)
    # a reference already at the oracle leaves no gap to close: nan, not a division by zero
    assert np.isnan(metrics.compare_at_matched_cost(geo, at_oracle, oracle_table, n_grid=5)["gap_closed"])


def test_compare_solvers_fits_on_val_and_compares_on_test():
    val, test = random_table(n=300, k=3, seed=1), random_table(n=300, k=3, seed=2)
    test = ExitTable(test.logits, test.labels, val.costs)
    out = metrics.compare_solvers(val, test, ["lagrangian"], reference="geometric", n_budgets=6, n_grid=20)
    assert list(out) == ["geometric", "lagrangian"]
    geo, lag = out["geometric"], out["lagrangian"]
    assert (geo.wins, geo.ties, geo.losses, geo.gap_closed) == (0, 20, 0, 0.0)
    assert lag.wins + lag.ties + lag.losses == 20
    assert lag.curve.budgets == pytest.approx(metrics.budget_grid(val, 6).tolist())
    again = metrics.compare_at_matched_cost(lag.curve, geo.curve, test, n_grid=20)
    assert (lag.wins, lag.losses, lag.worst, lag.gap_closed) == (again["wins"], again["losses"], again["worst"],
                                                                 again["gap_closed"])
    assert lag.fit_first_s > 0 and lag.fit_median_s > 0 and lag.fit_total_s >= lag.fit_first_s
    assert "curve" not in lag.to_dict() and "curve" in lag.to_dict(with_curve=True)
    assert val._memo == {}  # each solver fitted on its own copy: no cache of one solver times another's fit


def test_compare_solvers_times_a_cold_first_fit(monkeypatch):
    """crossval caches by table content: compare_solvers must clear that cache, or a second comparison in
    the same process would time a lookup as the "first fit"."""
    from dynexit.solvers import crossval
    val, test = random_table(n=300, k=3, seed=5), random_table(n=300, k=3, seed=6)
    test = ExitTable(test.logits, test.labels, val.costs)
    metrics.compare_solvers(val, test, ["crossval"], n_budgets=3, n_grid=10)
    calls = []
    real = crossval._prepare
    monkeypatch.setattr(crossval, "_prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    metrics.compare_solvers(val, test, ["crossval"], n_budgets=3, n_grid=10)
    assert calls == [1]  # computed afresh once, then reused for the other budgets


@pytest.mark.parametrize("kwargs, match", [
    ({"solvers": ["nope"]}, "unknown solver"),
    ({"reference": "nope"}, "unknown solver"),
    ({"n_budgets": 1}, "n_budgets"),
])
def test_compare_solvers_bad_arguments(kwargs, match):
    val = random_table(n=50, k=3)
    with pytest.raises(ValueError, match=match):
        metrics.compare_solvers(val, val, **{"solvers": ["geometric"], **kwargs})


def test_compare_solvers_refuses_mismatched_or_single_exit_tables():
    val = random_table(n=50, k=3, seed=0)
    with pytest.raises(ValueError, match="val and test tables differ"):
        other = random_table(n=50, k=3, seed=5)  # another model: other exit costs
        metrics.compare_solvers(val, ExitTable(other.logits, other.labels, other.costs * 1.1), ["geometric"])
    one = random_table(n=50, k=1)
    with pytest.raises(ValueError, match="1 exit"):
        metrics.compare_solvers(one, one, ["geometric"])


def test_no_second_comparison_is_left():
    """Report and benchmark call the library's comparison; nobody else counts wins or losses of curves."""
    report, bench = (ROOT / "dynexit" / "report.py").read_text(), (ROOT / "benchmarks" / "solvers.py").read_text()
    assert "metrics.compare_solvers(" in report and "metrics.compare_solvers(" in bench
    assert "metrics.compare_at_matched_cost(" in report  # curve_above: two models' curves, no oracle
    sources = [*(ROOT / "dynexit").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "app").rglob("*.py")]
    counting = re.compile(r"""["']?(wins|losses)["']?\s*[:=]\s*(int\()?\s*(np\.)?(sum|count_nonzero)""")
    reading = re.compile(r"accuracy_at_cost\(")
    for path in sources:
        if path.name == "metrics.py" and path.parent.name == "dynexit":
            continue
        text = path.read_text()
        assert not counting.search(text), f"{path} counts wins / losses itself: call metrics.compare_at_matched_cost"
        # app/logic.py reads one curve at the user's budgets (no comparison); nobody else interpolates curves
        if path.relative_to(ROOT).as_posix() != "app/logic.py":
            assert not reading.search(text), f"{path} reads curves itself: call metrics.compare_at_matched_cost"
