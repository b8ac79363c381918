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


def _saved_arrays(tmp_path):
    path = random_table(n=12, k=3, c=4).save(tmp_path / "t.npz")
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("key, value, message", [
    ("labels", np.array(["a"] * 12), "'labels' holds dtype <U1"),
    ("labels", np.arange(12, dtype=np.float64) % 4, "'labels' holds dtype float64"),
    ("logits", np.ones((12, 3, 4), dtype=np.complex64), "'logits' holds dtype complex64"),
    ("logits", np.ones((12, 3, 4), dtype=np.int32), "'logits' holds dtype int32"),
    ("logits", np.ones((12, 3), dtype=np.float32), "'logits' holds dtype float32 with 2 dimensions"),
    ("costs", np.array([1, 2, 3], dtype=object), "'costs' holds Python objects"),
    ("costs", np.array([1.0, np.nan, 3.0]), "costs must be positive and finite"),
    ("meta", np.array('{"format": "dynexit.ExitTable", "format_version": 1, "x": ' + "[" * 50_000 + "]" * 50_000
                      + "}"), "corrupt meta field"),
    ("exit_names", np.array([1.0, 2.0, 3.0]), "'exit_names' holds dtype float64"),
    ("index", -np.arange(12), "non-negative"),
])
def test_bad_arrays_in_a_file(tmp_path, key, value, message):
    data = _saved_arrays(tmp_path)
    data[key] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    with pytest.raises(ValueError, match=message) as err:
        ExitTable.load(bad)
    assert str(err.value).startswith(str(bad)) and "allow_pickle" not in str(err.value)


def test_renamed_empty_folder_and_pickle(tmp_path):
    npy = tmp_path / "array.npz"
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(npy)
    with pytest.raises(ValueError, match=r"single numpy array \(.npy\) renamed .npz"):
        ExitTable.load(npy)
    objects = tmp_path / "objects.npz"
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "objects.npy").rename(objects)
    with pytest.raises(ValueError, match="renamed") as err:
        ExitTable.load(objects)
    assert "allow_pickle" not in str(err.value)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        ExitTable.load(empty)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        ExitTable.load(folder)


def test_damaged_header_promising_huge_array(tmp_path):
    data = _saved_arrays(tmp_path)
    path = tmp_path / "t.npz"
    np.savez(path, **data)  # stored, not compressed: the header is plain bytes in the file
    raw = path.read_bytes()
    old = b"'shape': (12, 3, 4)"
    assert old in raw
    path.write_bytes(raw.replace(old, b"'shape': (12, 3, 9)"))  # same length, more data promised
    with pytest.raises(ValueError, match="damaged"):
        ExitTable.load(path)


@pytest.mark.parametrize("change, message", [
    (dict(logits=np.ones((4, 2, 3), dtype=np.complex128)), "real numbers"),
    (dict(logits=np.full((4, 2, 3), 1e300)), "NaN or inf"),
    (dict(labels=np.array([0, 1, 2.5, 0])), "labels must be integers"),
    (dict(labels=np.array([0, 1, 1e30, 0])), "range"),
    (dict(labels=np.array(["0", "1", "2", "0"])), "labels must be integers"),
    (dict(costs=np.array(["1", "2"])), "costs must be real"),
    (dict(index=np.array([0.5, 1, 2, 3])), "index must be integers"),
    (dict(exit_names=[["a"], ["b"]]), "exit_names must be a list"),
    (dict(meta=[1, 2]), "meta must be a dict"),
])
def test_more_bad_construction(change, message):
    args = dict(logits=np.zeros((4, 2, 3)), labels=np.array([0, 1, 2, 0]), costs=[1.0, 2.0])
    args.update(change)
    with pytest.raises(ValueError, match=message):
        ExitTable(**args)
