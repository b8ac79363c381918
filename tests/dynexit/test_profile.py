"""Exit latency profiles: measured, saved, loaded, and used as a budget in milliseconds."""

import json

import numpy as np
import pytest

from dynexit import profile, solvers
from dynexit.table import ExitTable
from _tiny_models import tiny


@pytest.fixture(scope="module")
def measured():
    model = tiny("multiexit_cnn").eval()
    prof = profile.measure(model, batch_sizes=(1, 4), min_run_time=0.01, threads=1)
    # timings on a shared CI CPU can fall with depth (refused, see below); the other tests check the
    # plumbing, not this machine: the measured medians, put in depth order
    for entry in prof["batches"].values():
        entry["median_ms"] = sorted(entry["median_ms"])
    return model, prof


def test_a_profile_has_every_exit_at_every_batch_size(measured):
    model, prof = measured
    assert prof["exit_names"] == list(model.exit_names) and prof["threads"] == 1
    assert set(prof["batches"]) == {"1", "4"}
    for entry in prof["batches"].values():
        assert len(entry["median_ms"]) == model.num_exits
        assert all(m > 0 for m in entry["median_ms"])
    costs = profile.exit_costs_ms(prof, 1)
    assert costs.shape == (model.num_exits,) and np.all(np.diff(costs) >= 0)


def test_round_trip_and_damage(measured, tmp_path):
    _, prof = measured
    path = profile.save(prof, profile.profile_path(tmp_path / "m.safetensors"))
    assert path.name == "m.profile.json"
    assert profile.load(path) == json.loads(json.dumps(prof))
    with pytest.raises(ValueError, match="not a readable profile"):
        (tmp_path / "bad.json").write_text("{")
        profile.load(tmp_path / "bad.json")
    broken = json.loads(json.dumps(prof))
    for bad in (float("nan"), 0.0, -1.0):  # a zero latency would make an exit free
        broken["batches"]["1"]["median_ms"][0] = bad
        with pytest.raises(ValueError, match="median_ms must be .* finite positive numbers"):
            profile.save(broken, tmp_path / "x.json")
    with pytest.raises(ValueError, match="no such profile"):
        profile.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not 8"):
        profile.exit_costs_ms(prof, 8)


def test_a_budget_in_milliseconds_is_solved_and_evaluated(measured):
    model, prof = measured
    ms = profile.exit_costs_ms(prof, 4)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    logits = rng.normal(size=(400, model.num_exits, 10)).astype(np.float32)
    logits[np.arange(400), :, labels] += np.linspace(0.5, 2.0, model.num_exits)
    val, test = ExitTable(logits[:200], labels[:200], ms), ExitTable(logits[200:], labels[200:], ms)
    budget = float((ms[0] + ms[-1]) / 2)
    fitted = solvers.make("geometric", budget).fit(val)
    result = fitted.evaluate(test)
    assert fitted.expected_cost_ <= budget + 1e-9
    assert ms[0] <= result.mean_cost <= ms[-1]


def test_with_costs_gives_a_table_in_milliseconds(measured):
    model, prof = measured
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 50)
    logits = rng.normal(size=(50, model.num_exits, 10)).astype(np.float32)
    flops = ExitTable(logits, labels, np.arange(1.0, model.num_exits + 1), list(model.exit_names), meta={"model": "m"})
    ms = profile.with_costs(flops, prof, 4)
    assert np.array_equal(ms.costs, profile.exit_costs_ms(prof, 4)) and ms.meta["costs_unit"] == "ms"
    assert np.array_equal(ms.logits, flops.logits) and flops.costs[0] == 1.0  # the original is untouched
    assert "thread" in ms.meta["profile"] and "batch 4" in ms.meta["profile"]
    assert profile.speedups(prof, 1)[-1] == 1.0 and np.all(profile.speedups(prof, 1) >= 1.0)
    with pytest.raises(ValueError, match="another model"):
        profile.with_costs(ExitTable(logits[:, :2], labels, [1.0, 2.0]), prof)
    renamed = ExitTable(logits, labels, flops.costs, [f"e{k}" for k in range(model.num_exits)])
    with pytest.raises(ValueError, match="not the table's"):
        profile.with_costs(renamed, prof)


def test_latencies_that_fall_with_depth_are_refused_not_flattened(measured):
    _, prof = measured
    noisy = json.loads(json.dumps(prof))
    k = len(noisy["batches"]["4"]["median_ms"])
    noisy["batches"]["4"]["median_ms"] = [1.0] + [0.3] * (k - 1)  # deeper exits "faster": a busy machine
    with pytest.raises(ValueError, match="fall with depth"):
        profile.exit_costs_ms(noisy, 4)
    noisy["batches"]["4"]["median_ms"] = [1.0] + [0.95] * (k - 1)  # within timing noise: smoothed
    assert np.all(profile.exit_costs_ms(noisy, 4) == 1.0)
