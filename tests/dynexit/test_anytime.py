"""Anytime prediction under deadlines: the exact expectations against a direct simulation."""

import numpy as np
import pytest

from dynexit import anytime
from dynexit.anytime import Deadline
from dynexit.table import ExitTable


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    n, k, c = 3000, 4, 5
    labels = rng.integers(0, c, n)
    # later exits are more often right: signal grows with depth
    logits = rng.normal(size=(n, k, c)).astype(np.float32)
    for j in range(k):
        logits[np.arange(n), j, labels] += 0.6 + 0.5 * j
    return ExitTable(logits, labels, np.array([2.0, 5.0, 9.0, 12.0]))


def simulate(table, exits, deadlines, policy):
    """Mean correctness over sampled deadlines, each image run to its answer by hand."""
    correct, costs = table.correct, table.costs
    # the last exit finished by each deadline (-1: none); deadlines with the same one give the same answers
    last = np.searchsorted(costs, deadlines, side="right") - 1
    total = 0.0
    for k, count in zip(*np.unique(last, return_counts=True)):
        if k < 0:
            continue  # no answer: wrong
        if policy == "anytime":
            value = correct[:, k].mean()
        elif policy == "budgeted":
            value = correct[np.arange(len(exits)), np.minimum(exits, k)].mean()
        else:  # oracle: right when any finished exit is right
            value = correct[:, :k + 1].any(axis=1).mean()
        total += count * value
    return total / len(deadlines)


N_SIM = 100_000
DEADLINES = [Deadline.make("fixed", at=7.0), Deadline.make("uniform", low=0.0, high=14.0),
             Deadline.make("normal", mean=6.0, std=3.0), Deadline.make("exponential", mean=5.0)]


@pytest.mark.parametrize("deadline", DEADLINES, ids=lambda d: d.kind)
@pytest.mark.parametrize("policy", ["anytime", "budgeted", "oracle"])
def test_exact_expectation_matches_a_simulation(table, deadline, policy):
    exits = np.random.default_rng(1).integers(0, table.num_exits, table.num_samples)
    fn = {"anytime": lambda: anytime.anytime(table, deadline), "oracle": lambda: anytime.oracle(table, deadline),
          "budgeted": lambda: anytime.budgeted(table, exits, deadline)}[policy]
    result = fn()
    sampled = simulate(table, exits, deadline.sample(N_SIM, seed=2), policy)
    # the simulation's own error: accuracies are bounded in [0, 1], so its standard error <= 0.5 / sqrt(n)
    assert abs(result.accuracy - sampled) < 4 * 0.5 / np.sqrt(N_SIM), (result.accuracy, sampled)
    assert result.answer_share.shape == (table.num_exits + 1,)
    assert result.answer_share.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("k", range(4))
def test_a_fixed_deadline_is_the_anytime_accuracy_of_the_last_finished_exit(table, k):
    for at in (table.costs[k], table.costs[k] + 0.5):
        result = anytime.anytime(table, Deadline.make("fixed", at=at))
        assert result.accuracy == pytest.approx(table.exit_accuracy()[k])
        assert result.answer_share[k + 1] == 1.0


def test_no_deadline_pressure_gives_the_rule_its_own_accuracy(table):
    exits = np.random.default_rng(3).integers(0, table.num_exits, table.num_samples)
    late = Deadline.make("fixed", at=100.0)
    planned = table.correct[np.arange(table.num_samples), exits].mean()
    assert anytime.budgeted(table, exits, late).accuracy == pytest.approx(planned)
    assert anytime.anytime(table, late).accuracy == pytest.approx(table.exit_accuracy()[-1])
    assert anytime.oracle(table, late).accuracy == pytest.approx(table.correct.any(axis=1).mean())


@pytest.mark.parametrize("deadline", DEADLINES, ids=lambda d: d.kind)
def test_the_oracle_bounds_both_policies(table, deadline):
    exits = np.random.default_rng(4).integers(0, table.num_exits, table.num_samples)
    out = anytime.compare(table, exits, deadline)
    assert out["oracle"].accuracy >= out["anytime"].accuracy - 1e-12
    assert out["oracle"].accuracy >= out["budgeted"].accuracy - 1e-12


def test_no_answer_counts_as_wrong_or_as_the_prior_class(table):
    early = Deadline.make("fixed", at=1.0)  # before the first exit
    assert anytime.anytime(table, early).accuracy == 0.0
    prior = anytime.anytime(table, early, no_answer="prior", prior_labels=np.zeros(10, dtype=int))
    assert prior.accuracy == pytest.approx(np.mean(table.labels == 0))
    assert prior.answer_share[0] == 1.0


def test_costs_in_another_unit(table):
    ms = np.array([1.0, 2.0, 3.0, 4.0])
    result = anytime.anytime(table, Deadline.make("fixed", at=2.5), costs=ms)
    assert result.accuracy == pytest.approx(table.exit_accuracy()[1])


@pytest.mark.parametrize("make, match", [
    (lambda: Deadline.make("poisson", mean=1.0), "unknown deadline distribution"),
    (lambda: Deadline.make("uniform", low=1.0), "takes low, high"),
    (lambda: Deadline.make("uniform", low=3.0, high=1.0), "above high"),
    (lambda: Deadline.make("normal", mean=1.0, std=0.0), "std must be positive"),
    (lambda: Deadline.make("fixed", at=float("nan")), "finite number"),
    (lambda: Deadline.make("exponential", mean=-1.0), "mean must be positive"),
])
def test_bad_deadlines_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_refused(table):
    d = Deadline.make("fixed", at=5.0)
    with pytest.raises(ValueError, match="exits must be"):
        anytime.budgeted(table, np.full(table.num_samples, table.num_exits), d)
    with pytest.raises(ValueError, match="costs must be"):
        anytime.anytime(table, d, costs=[3.0, 2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="prior_labels"):
        anytime.anytime(table, d, no_answer="prior")
    with pytest.raises(ValueError, match="no_answer"):
        anytime.anytime(table, d, no_answer="guess")
    with pytest.raises(ValueError, match="Deadline"):
        anytime.anytime(table, 5.0)


def test_more_bad_inputs_are_refused(table):
    d = Deadline.make("fixed", at=5.0)
    with pytest.raises(ValueError, match="finite number"):
        Deadline.make("fixed", at=10 ** 400)
    with pytest.raises(ValueError, match="positive"):
        anytime.anytime(table, d, costs=[-1.0, 2.0, 3.0, 4.0])
    for prior in ([1.7], [99], [-1]):
        with pytest.raises(ValueError, match="integer class labels"):
            anytime.anytime(table, d, no_answer="prior", prior_labels=np.array(prior))
    with pytest.raises(ValueError, match="ExitTable"):
        anytime.anytime(None, d)
