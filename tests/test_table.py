import numpy as np
import pytest

from dynexit.table import ExitTable
from conftest import random_table


def test_round_trip(tmp_path, digits):
    val, _ = digits
    path = val.save(tmp_path / "val.npz")
    back = ExitTable.load(path)
    np.testing.assert_array_equal(back.logits, val.logits)
    np.testing.assert_array_equal(back.labels, val.labels)
    np.testing.assert_array_equal(back.costs, val.costs)
    assert back.exit_names == val.exit_names and back.meta == val.meta
    assert back.fingerprint == val.fingerprint


def test_derived_views():
    t = random_table()
    p = t.probabilities()
    assert p.shape == t.logits.shape and np.allclose(p.sum(axis=2), 1, atol=1e-5)
    assert t.exit_accuracy().shape == (t.num_exits,)
    np.testing.assert_array_equal(t.correct, t.logits.argmax(2) == t.labels[:, None])
    sub = t.subset(np.arange(10))
    assert len(sub) == 10 and sub.num_exits == t.num_exits
    sel = t.select_exits([0, 2])
    np.testing.assert_array_equal(sel.costs, t.costs[[0, 2]])
    with pytest.raises(ValueError):
        t.logits[0, 0, 0] = 1.0  # read-only: memoised views stay valid


@pytest.mark.parametrize("change, message", [
    (dict(logits=np.zeros((4, 2))), "shape"),
    (dict(labels=np.array([0, 1, 2])), "labels"),
    (dict(labels=np.array([0, 1, 2, 9])), "range"),
    (dict(costs=[1.0, 0.5]), "cumulative"),
    (dict(costs=[0.0, 1.0]), "positive"),
    (dict(costs=[1.0]), "costs"),
    (dict(exit_names=["a"]), "exit_names"),
])
def test_bad_construction(change, message):
    args = dict(logits=np.zeros((4, 2, 3)), labels=np.array([0, 1, 2, 0]), costs=[1.0, 2.0])
    args.update(change)
    with pytest.raises(ValueError, match=message):
        ExitTable(**args)


def test_nan_logits_named():
    logits = np.zeros((4, 2, 3))
    logits[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN.*sample 2, exit 1"):
        ExitTable(logits, [0, 1, 2, 0], [1.0, 2.0])


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        ExitTable.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        ExitTable.load(garbage)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a dynexit ExitTable"):
        ExitTable.load(foreign)
    # a valid table whose arrays were tampered with is rejected by the same checks
    t = random_table()
    path = t.save(tmp_path / "t.npz")
    data = dict(np.load(path))
    data["costs"] = data["costs"][::-1].copy()
    np.savez(tmp_path / "tampered.npz", **data)
    with pytest.raises(ValueError, match="cumulative"):
        ExitTable.load(tmp_path / "tampered.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.npz"):
        ExitTable.load(truncated)
