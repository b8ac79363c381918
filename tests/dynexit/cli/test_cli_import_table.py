"""``dynexit import-table``: (N, K, C) arrays of any framework become an ExitTable; bad input is one clear line."""

import numpy as np
import pytest

from dynexit.cli import main
from dynexit.table import ExitTable


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.normal(size=(40, 3, 4)).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.arange(40) % 4)
    np.savez(tmp_path / "both.npz", logits=rng.normal(size=(40, 3, 4)), labels=np.arange(40) % 4)
    bad = rng.normal(size=(40, 3, 4))
    bad[5, 2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "flat.npy", rng.normal(size=(40, 12)))
    np.save(tmp_path / "labels7.npy", np.arange(40) % 7)
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "text.npy", np.full((40, 3, 4), "x"))
    return tmp_path


def test_import_npy_and_npz(files, capsys):
    out = files / "t.npz"
    assert main(["import-table", str(files / "logits.npy"), str(files / "labels.npy"), "--costs", "1,2.5,4",
                 "--unit", "ms", "--exit-names", "a,b,c", "--dataset", "digits", "--split", "val", "--out", str(out)]) == 0
    t = ExitTable.load(out)
    assert t.cost_unit == "ms" and t.exit_names == ("a", "b", "c") and t.meta["split"] == "val"
    np.testing.assert_array_equal(t.logits, np.load(files / "logits.npy"))
    assert main(["import-table", str(files / "both.npz"), str(files / "both.npz"), "--costs", "1,2,3",
                 "--out", str(out)]) == 0
    assert ExitTable.load(out).cost_unit == "MFLOPs"


@pytest.mark.parametrize("logits, labels, extra, message", [
    ("flat.npy", "labels.npy", [], r"laid out \(N, K, C\).*\(40, 12\)"),
    ("text.npy", "labels.npy", [], "real numbers"),
    ("nan.npy", "labels.npy", [], "NaN or inf.*sample 5, exit 2"),
    ("logits.npy", "labels7.npy", [], r"labels must lie in \[0, 4\)"),
    ("logits.npy", "labels.npy", ["--costs", "3,2,1"], "must not decrease"),
    ("logits.npy", "labels.npy", ["--costs", "0,1,2"], "positive"),
    ("logits.npy", "labels.npy", ["--costs", "1,2"], "2 values for 3 exits"),
    ("object.npy", "labels.npy", [], "Python objects"),
    ("logits.npy", "logits.npy", [], r"labels must have shape \(40,\)"),
])
def test_bad_input_is_one_clear_line(files, capsys, logits, labels, extra, message):
    argv = ["import-table", str(files / logits), str(files / labels), *(extra or ["--costs", "1,2,3"]),
            "--out", str(files / "t.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (files / "t.npz").exists()


def test_a_dataset_that_viewers_cannot_use_is_warned_about(files, capsys):
    # 4 classes recorded as digits (10): the table is written as asked, and the user hears why images won't show
    assert main(["import-table", str(files / "logits.npy"), str(files / "labels.npy"), "--costs", "1,2,3",
                 "--dataset", "digits", "--out", str(files / "w.npz")]) == 0
    err = capsys.readouterr().err
    assert "warning: the table has 4 classes, the dataset 'digits' 10" in err
