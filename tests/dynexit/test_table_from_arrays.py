"""ExitTable.from_arrays (logits of any framework) and the cost unit named in the table and its file."""

import json
import zipfile

import numpy as np
import pytest
import torch

from dynexit.table import ExitTable


def _arrays(n=30, k=3, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k, c)).astype(np.float32), np.arange(n) % c, [1.0, 2.5, 4.0][:k]


def test_from_arrays_numpy_list_and_torch(tmp_path):
    logits, labels, costs = _arrays()
    t = ExitTable.from_arrays(logits, labels, costs, exit_names=["a", "b", "c"], cost_unit="ms", dataset="digits",
                              indices=np.arange(30) + 100)
    assert t.cost_unit == "ms" and t.meta["dataset"] == "digits" and t.index[0] == 100 and t.exit_names[2] == "c"
    per_exit = ExitTable.from_arrays([logits[:, k] for k in range(3)], labels, costs)  # K arrays (N, C)
    np.testing.assert_array_equal(per_exit.logits, t.logits)
    assert per_exit.cost_unit == "MFLOPs"
    from_torch = ExitTable.from_arrays(torch.from_numpy(logits.copy()), torch.from_numpy(labels), torch.tensor(costs))
    assert from_torch.fingerprint == per_exit.fingerprint
    back = ExitTable.load(t.save(tmp_path / "t.npz"))
    assert back.cost_unit == "ms" and back.meta == t.meta


@pytest.mark.parametrize("change, message", [
    (dict(logits=np.zeros((4, 5))), r"shape \(N, K, C\)"),
    (dict(logits=[np.zeros((30, 5)), np.zeros((30, 4))]), "one shape"),
    (dict(logits=np.full((30, 3, 5), "x")), "real numbers"),
    (dict(labels=np.arange(30)), r"lie in \[0, 5\)"),
    (dict(costs=[3.0, 2.0, 1.0]), "cumulative"),
    (dict(cost_unit="seconds"), "cost unit must be one of MFLOPs, ms"),
    (dict(dataset=""), "dataset must be"),
])
def test_from_arrays_refuses_bad_input(change, message):
    logits, labels, costs = _arrays()
    args = dict(logits=logits, labels=labels, costs=costs)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        ExitTable.from_arrays(**args)


def test_old_files_load_as_mflops(tmp_path):
    logits, labels, costs = _arrays()
    path = ExitTable(logits, labels, costs, meta={"model": "m"}).save(tmp_path / "old.npz")
    # rewrite the meta as a file from before the unit was recorded
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    arrays = {name[:-4]: np.load(__import__("io").BytesIO(data)) for name, data in members.items()}
    meta = json.loads(str(arrays["meta"][()]))
    del meta["costs_unit"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    assert ExitTable.load(path).cost_unit == "MFLOPs"
    with pytest.raises(ValueError, match="contradicts"):
        ExitTable(logits, labels, costs, meta={"costs_unit": "ms"}, cost_unit="MFLOPs")


def test_torch_tensors_of_any_kind_are_read():
    torch = pytest.importorskip("torch")
    logits = torch.randn(6, 2, 3, requires_grad=True)
    for given in (logits, logits.detach().bfloat16(), logits.detach().half()):
        table = ExitTable.from_arrays(given, torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1.0, 2.0]))
        assert table.logits.dtype == np.float32
        np.testing.assert_allclose(table.logits, given.detach().float().numpy())


def test_repeated_exit_names_are_refused():
    with pytest.raises(ValueError, match="exit_names must be distinct, got 'a' more than once"):
        ExitTable.from_arrays(np.zeros((2, 2, 3)), [0, 1], [1.0, 2.0], exit_names=["a", "a"])


@pytest.mark.parametrize("kwargs, message", [
    ({"exit_names": ["a", " "]}, "exit_names must not be empty"),
    ({"meta": {"class_names": ["x"]}}, r"meta\['class_names'\] must be 3 non-empty strings, one per class, got 1 entries"),
    ({"dataset": "digits", "meta": {"dataset": "cifar10"}}, "dataset='digits' contradicts meta"),
])
def test_names_and_datasets_that_would_mislabel_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExitTable.from_arrays(np.zeros((2, 2, 3)), [0, 1], [1.0, 2.0], **kwargs)
