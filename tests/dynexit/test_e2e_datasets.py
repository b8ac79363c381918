"""End to end on real data other than the Fashion-MNIST zoo (issue 16, item 5), on this machine.

(a) scikit-learn digits: ``dynexit train`` -> ``dynexit table`` (val, test) -> a zoo-folder entry, then
``dynexit bench --data digits`` on it; (b) an ImageFolder tree of real Fashion-MNIST PNGs: one short
epoch of ``dynexit train --data imagefolder:PATH`` and its test table, numbered by the tree's folders.
"""

import json

import numpy as np
import pytest

from _e2e import DIGITS_KWARGS, build_digits_entry, build_imagefolder_tree, run_cli, tree_labels
from dynexit.data import get_dataset
from dynexit.table import ExitTable

NAME = "digits_cnn"


@pytest.fixture(scope="module")
def digits_zoo(tmp_path_factory):
    """A zoo folder with one entry, ``digits_cnn``, trained here on digits (~10 s)."""
    return build_digits_entry(tmp_path_factory.mktemp("digits_zoo"), NAME)


def test_digits_entry_follows_the_folder_convention(digits_zoo):
    assert sorted(p.name for p in digits_zoo.iterdir()) == [f"{NAME}.json", f"{NAME}.safetensors",
                                                           f"{NAME}.test.npz", f"{NAME}.val.npz"]
    side = json.loads((digits_zoo / f"{NAME}.json").read_text())
    assert side["arch"] == "multiexit_cnn" and side["kwargs"]["input_size"] == DIGITS_KWARGS["input_size"]
    spec = get_dataset("digits")
    for split in ("val", "test"):
        table = ExitTable.load(digits_zoo / f"{NAME}.{split}.npz")
        assert table.meta["dataset"] == "digits" and table.meta["split"] == split
        assert list(table.meta["class_names"]) == list(spec.class_names)
        assert table.num_samples == len(spec.load(split)[1])  # the whole split: 359 val, 360 test images
        assert table.num_classes == 10 and table.num_exits == 4
        np.testing.assert_allclose(table.costs, side["costs_mflops"], rtol=1e-9)
        assert table.exit_accuracy()[-1] > 0.8, table.exit_accuracy()  # chance is 0.1
        assert table.meta["weights"]["sha256"] == side["weights_sha256"]


def test_bench_runs_on_the_digits_entry(digits_zoo, tmp_path, capsys):
    val = ExitTable.load(digits_zoo / f"{NAME}.val.npz")
    budget = float(np.mean(val.costs[:2]))
    out = tmp_path / "bench.json"
    run_cli(["bench", "--model", digits_zoo / f"{NAME}.safetensors", "--data", "digits", "--budget", f"{budget:.4f}",
             "--val-table", digits_zoo / f"{NAME}.val.npz", "--batch-sizes", "128", "--repeats", "1",
             "--threads", "1", "--json", out])
    result = json.loads(out.read_text())
    assert result["num_images"] == 360 and result["accuracy_full"] > 0.8
    assert result["mean_cost_mflops"] <= budget * 1.05
    assert "early exit" in capsys.readouterr().out.lower()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/val/test folders of 3 Fashion-MNIST classes, 40 / 8 / 8 real images per class."""
    return build_imagefolder_tree(tmp_path_factory.mktemp("fm_tree") / "tree", classes=3)


@pytest.fixture(scope="module")
def tree_run(tree, tmp_path_factory):
    """One short epoch of ``dynexit train --data imagefolder:TREE``; the checkpoint path."""
    out = tmp_path_factory.mktemp("tree_run")
    kwargs = {"backbone": "resnet10_quarter", "in_chans": 1, "input_size": 16, "num_classes": 3, "exit_after": [2]}
    run_cli(["train", "--model", "multiexit_cnn", "--model-kwargs", json.dumps(kwargs), "--data", f"imagefolder:{tree}",
             "--epochs", "1", "--batch-size", "24", "--ema-decay", "0", "--no-progress", "--out", out])
    return out / "checkpoint.safetensors"


def test_imagefolder_tree_trains_and_tables_by_its_folders(tree, tree_run, tmp_path):
    out = tmp_path / "test.npz"
    run_cli(["table", "--model", tree_run, "--data", f"imagefolder:{tree}", "--split", "test", "--quiet", "--out", out])
    table = ExitTable.load(out)
    names, labels = tree_labels(tree, "test")
    assert names == ["Pullover", "T-shirt-top", "Trouser"]  # sorted folder names, not Fashion-MNIST's order
    assert list(table.meta["class_names"]) == names
    np.testing.assert_array_equal(table.labels, labels)
    assert table.num_classes == 3 and table.meta["dataset"] == f"imagefolder:{tree}"


def test_checkpoints_record_what_they_were_trained_on(digits_zoo, tree, tree_run):
    side = json.loads((digits_zoo / f"{NAME}.json").read_text())
    assert side["training_data"]["dataset"] == "digits"
    assert side["training_data"]["class_names"] == list(get_dataset("digits").class_names)
    record = json.loads(tree_run.with_suffix(".json").read_text())["training_data"]
    assert record["dataset"] == f"imagefolder:{tree}" and record["class_names"] == tree_labels(tree, "train")[0]
    assert "split_rule" in record and "train/, val/ and test/" in record["split_rule"]


def test_a_tree_with_other_classes_is_refused(tree, tree_run, tmp_path, capsys):
    """Another tree whose sorted folders mean other classes would score silently wrong: refused, one line."""
    import shutil

    from dynexit.cli import main
    from dynexit.tables import build_table

    other = tmp_path / "other"
    shutil.copytree(tree, other)
    for split in ("train", "val", "test"):  # same count of classes, but label 2 means another class
        (other / split / "Trouser").rename(other / split / "Bag")
    out = tmp_path / "t.npz"
    assert main(["table", "--model", str(tree_run), "--data", f"imagefolder:{other}", "--split", "test",
                 "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert f"trained on imagefolder:{tree} with classes ['Pullover', 'T-shirt-top', 'Trouser']" in err
    assert "['Bag', 'Pullover', 'T-shirt-top']" in err and f"(--data imagefolder:{tree})" in err
    with pytest.raises(ValueError, match="label 0 is 'Pullover' in training, 'Bag' here"):
        build_table(str(tree_run), "test", dataset=f"imagefolder:{other}")
    # a copy of the same tree elsewhere is the same classes: accepted
    shutil.rmtree(other)
    shutil.copytree(tree, other)
    assert build_table(str(tree_run), "test", dataset=f"imagefolder:{other}", limit=4).num_samples == 4


def test_zoo_reproduce_moves_a_recipe_to_another_dataset_and_folder(tmp_path, monkeypatch, capsys):
    """`dynexit zoo reproduce NAME --data digits --out DIR`: the entry's recipe on digits, a zoo-folder entry in DIR."""
    from dynexit import zoo
    from dynexit.cli import main

    recipe = {"model": "multiexit_cnn", "model_kwargs": {"backbone": "resnet10_quarter", "exit_after": [1, 2]},
              "epochs": 2, "batch_size": 32, "augment": False, "ema_decay": 0, "seed": 0}
    monkeypatch.setitem(zoo.ENTRIES, "tiny_cnn", zoo.ZooEntry("tiny_cnn", "multiexit_cnn", "test entry", recipe))
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "zoo"))
    assert main(["zoo", "reproduce", "tiny_cnn", "--data", "digits", "--work-dir", str(tmp_path / "runs")]) == 2
    assert "give an output folder (--out DIR)" in capsys.readouterr().err
    out = tmp_path / "digits_zoo"
    assert main(["zoo", "reproduce", "tiny_cnn", "--data", "digits", "--out", str(out), "--work-dir",
                 str(tmp_path / "runs"), "--device", "cpu", "--no-bench", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny_cnn.json", "tiny_cnn.safetensors", "tiny_cnn.test.npz",
                                                    "tiny_cnn.val.npz"]
    assert not (tmp_path / "zoo").exists() and (tmp_path / "runs" / "tiny_cnn@digits" / "checkpoint.safetensors").exists()
    side = json.loads((out / "tiny_cnn.json").read_text())
    assert side["kwargs"]["input_size"] == 8 and side["kwargs"]["num_classes"] == 10
    assert side["recipe"]["data"] == "digits" and side["training_data"]["dataset"] == "digits"
    test = ExitTable.load(out / "tiny_cnn.test.npz")
    assert test.meta["dataset"] == "digits" and test.num_samples == 360 and test.exit_accuracy()[-1] > 0.5


def test_zoo_reproduce_names_a_recipe_that_cannot_take_the_dataset():
    from dynexit import zoo
    from dynexit.zoo.reproduce import entry_on_dataset

    with pytest.raises(ValueError, match=r"the recipe of zoo model dvt_fmnist \(dvt_fmnist\) does not fit digits "
                                         r"\(1x8x8 images, 10 classes\)"):
        entry_on_dataset(zoo.get_entry("dvt_fmnist"), "digits")
    moved = entry_on_dataset(zoo.get_entry("mevit_fmnist"), "digits")
    assert moved.recipe["model_kwargs"]["img_size"] == 8
