"""The app on any folder of tables (issue 16, item 4): table-only entries beside zoo models, class names
and images from the table's dataset, uploaded table pairs (valid, damaged, mismatched, too big).

The folder holds a tiny zoo model and tables made with ``ExitTable.from_arrays`` for scikit-learn's
digits (real labels, synthetic logits that get better with depth); the browser test with a trained
digits model is tests/app/test_browser_folders.py.
"""

import io
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dynexit.data import get_dataset
from dynexit.table import ExitTable
from dynexit.testing import build_tiny_zoo
from dynexit.zoo import folder

from test_app import ENTRY, ok

DIGITS = get_dataset("digits")


def digits_table(split: str, seed: int = 0, dataset: str | None = "digits", **kw) -> ExitTable:
    """3 exits on the real digits split: the true class gets a margin that grows with depth."""
    _, labels = DIGITS.load(split)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 3, 10)).astype(np.float32)
    logits[np.arange(len(labels)), :, labels] += np.array([1.0, 2.0, 3.5], dtype=np.float32)
    return ExitTable.from_arrays(logits, labels, kw.pop("costs", [0.5, 1.0, 2.0]), ["early", "middle", "last"],
                                 dataset=dataset, meta={"model": "digits_logits", "split": split}, **kw)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """A folder with one zoo model (weights + tables) and two table-only entries."""
    root = tmp_path_factory.mktemp("mixed")
    build_tiny_zoo(root, models=("dynperceiver_fmnist",))
    for split in ("val", "test"):
        digits_table(split).save(root / f"digits_logits.{split}.npz")
        digits_table(split, dataset=None).save(root / f"anonymous.{split}.npz")
    digits_table("val").save(root / "lonely.val.npz")  # no test table: not an entry
    return root


@pytest.fixture
def app_dir(mixed_dir, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(mixed_dir))
    return mixed_dir


def test_folder_lists_every_pair_zoo_first(mixed_dir):
    assert folder.entry_names(mixed_dir) == ["dynperceiver_fmnist", "anonymous", "digits_logits"]
    assert not folder.has_weights("digits_logits", mixed_dir) and folder.has_weights("dynperceiver_fmnist", mixed_dir)
    assert folder.class_names(folder.load_table("digits_logits", "test", mixed_dir)) == list(DIGITS.class_names)
    assert folder.class_names(folder.load_table("anonymous", "test", mixed_dir))[:2] == ["class 0", "class 1"]
    with pytest.raises(ValueError, match="table-only"):
        folder.load_model("digits_logits", mixed_dir)


def _open(model: str, page: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    ok(at)
    at.sidebar.selectbox(key="model").select(model).run()
    ok(at)
    if page:
        at.switch_page(page).run()
        ok(at)
    return at


def test_table_only_entry_gets_the_explorer_with_its_classes_and_images(app_dir):
    at = _open("digits_logits")
    assert at.sidebar.selectbox(key="model").options == ["dynperceiver_fmnist", "anonymous (tables only)",
                                                          "digits_logits (tables only)"]
    assert any("digits_logits on digits: 3 exits, 10 classes" in c.value for c in at.sidebar.caption)  # from its table
    acc = [m.value for m in at.metric if m.label == "Accuracy (test)"][0]
    slider = at.slider(key="explorer_budget_digits_logits")
    slider.set_value(slider.max).run()
    ok(at)
    assert [m.value for m in at.metric if m.label == "Accuracy (test)"][0] != acc
    assert not [i for i in at.info if "Images not shown" in i.value]  # digits ships with scikit-learn
    picks = at.selectbox(key="pick_0")
    assert picks.options[0].rsplit(", ", 1)[1].rstrip(")") in DIGITS.class_names  # "... (test image #i, class)"


def test_entry_without_dataset_shows_scores_not_images(app_dir):
    at = _open("anonymous")
    assert any("Images not shown" in i.value for i in at.info)
    at.switch_page("views/inspector.py").run()
    ok(at)
    assert any("Image not shown" in c.value for c in at.caption)
    assert any("tables only" in i.value for i in at.info)  # no attention maps without weights


def test_pages_that_need_a_model_say_so_for_a_table_only_entry(app_dir):
    at = _open("digits_logits", "views/upload.py")
    assert any("has tables only" in i.value for i in at.info)
    at.switch_page("views/deadlines.py").run()
    ok(at)


def test_compare_offers_only_the_same_data(app_dir):
    at = _open("digits_logits", "views/compare.py")
    assert at.multiselect(key="compare_models").options == ["digits_logits (tables only)"]
    at.sidebar.selectbox(key="model").select("dynperceiver_fmnist").run()
    ok(at)
    assert at.multiselect(key="compare_models").value == ["dynperceiver_fmnist"]


def _upload(name: str, table: ExitTable | bytes, tmp_path) -> SimpleNamespace:
    if isinstance(table, bytes):
        return SimpleNamespace(name=name, getvalue=lambda: table)
    path = table.save(tmp_path / name)
    return SimpleNamespace(name=name, getvalue=path.read_bytes)


@pytest.fixture
def session(monkeypatch):
    """``st.session_state`` as a plain dict: entries' upload store outside a running app."""
    import streamlit as st
    state: dict = {}
    monkeypatch.setattr(st, "session_state", state)
    return state


def test_an_uploaded_pair_becomes_an_entry_of_this_session_only(session, tmp_path):
    from dynexit_app import entries
    name = entries.add_upload(_upload("mine.val.npz", digits_table("val"), tmp_path),
                              _upload("mine.test.npz", digits_table("test"), tmp_path))
    assert entries.is_upload(name) and entries.label(name) == "mine (uploaded)" and name in entries.names()
    assert entries.table(name, "test").num_samples == len(DIGITS.load("test")[1])
    assert not entries.has_weights(name)
    session.clear()  # another session
    assert name not in entries.names()
    with pytest.raises(ValueError, match="upload them again"):
        entries.table(name, "test")


@pytest.mark.parametrize("val, test, message", [
    (b"not a table", None, r"val table 'v.npz': not an ExitTable .npz \(not a zip archive\)"),
    (None, b"\x93NUMPY\x01\x00", r"test table 't.npz': a single numpy array \(.npy\) renamed .npz"),
    ("other costs", None, r"not of one model: exit costs \[0.5, 1.0, 3.0\] \(val\) vs \[0.5, 1.0, 2.0\] \(test\)"),
    ("ms", None, r"costs in ms \(val\) vs MFLOPs \(test\)"),
])
def test_a_bad_upload_is_refused_with_what_is_wrong(session, tmp_path, val, test, message):
    from dynexit_app import entries
    good = {"v.npz": digits_table("val"), "t.npz": digits_table("test")}
    if val == "other costs":
        val = digits_table("val", costs=[0.5, 1.0, 3.0])
    elif val == "ms":
        val = digits_table("val", cost_unit="ms")
    with pytest.raises(ValueError, match=message):
        entries.add_upload(_upload("v.npz", good["v.npz"] if val is None else val, tmp_path),
                           _upload("t.npz", good["t.npz"] if test is None else test, tmp_path))
    assert not session.get(entries.UPLOADS)


def test_an_upload_over_the_limit_is_refused_before_reading(session, tmp_path, monkeypatch):
    from dynexit_app import entries
    monkeypatch.setattr(entries, "MAX_UPLOAD_MB", 0.01)
    with pytest.raises(ValueError, match="over the 0.01 MB upload limit.*DYNEXIT_ZOO"):
        entries.add_upload(_upload("v.npz", digits_table("val"), tmp_path), _upload("t.npz", digits_table("test"), tmp_path))


def test_a_damaged_table_in_the_folder_is_an_error_box_not_a_crash(mixed_dir, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(mixed_dir, broken)
    (broken / "digits_logits.test.npz").write_bytes(b"PK\x03\x04 damaged")
    monkeypatch.setenv("DYNEXIT_ZOO", str(broken))
    at = _open("digits_logits")
    assert "digits_logits.test.npz" in at.error[0].value and "damaged" in at.error[0].value


# ----------------------------------------------------------------------------- what a reviewer broke

def _folder_with(tmp_path, monkeypatch, **pairs) -> "Path":
    """A folder holding the digits pair and the given {stem: (val table or bytes, test table or bytes)}."""
    root = tmp_path / "odd"
    root.mkdir()
    for split in ("val", "test"):
        digits_table(split).save(root / f"digits_logits.{split}.npz")
    for stem, tables in pairs.items():
        for split, t in zip(("val", "test"), tables):
            path = root / f"{stem}.{split}.npz"
            path.write_bytes(t) if isinstance(t, bytes) else t.save(path)
    monkeypatch.setenv("DYNEXIT_ZOO", str(root))
    return root


def test_a_stem_that_cannot_be_a_name_is_left_out_and_said(tmp_path, monkeypatch):
    root = _folder_with(tmp_path, monkeypatch, **{"x.test": (digits_table("val"), digits_table("test"))})
    (root / "lonely.val.npz").write_bytes(b"")
    (root / "dir_entry.val.npz").mkdir()
    digits_table("test").save(root / "dir_entry.test.npz")
    assert folder.entry_names(root) == ["digits_logits"]
    notes = " | ".join(folder.skipped_files(root))
    assert "'x.test' is not an entry name" in notes and "lonely.val.npz: no lonely.test.npz" in notes
    assert "dir_entry.val.npz: not a regular file" in notes
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    ok(at)
    assert any("Left out of the folder" in c.value for c in at.sidebar.caption)


def test_a_pair_of_two_models_is_an_error_box_on_every_page(tmp_path, monkeypatch):
    four = ExitTable.from_arrays(np.random.default_rng(0).normal(size=(len(digits_table("test")), 4, 10)),
                                 digits_table("test").labels, [1, 2, 3, 4], dataset="digits")
    _folder_with(tmp_path, monkeypatch, mismatch=(digits_table("val"), four))
    for page in (None, "views/inspector.py", "views/deadlines.py"):
        at = _open("mismatch", page) if page is None else _open("digits_logits", page)
        if page:
            at.sidebar.selectbox(key="model").select("mismatch").run()
            ok(at)
        assert "are not of one model: exits" in at.error[0].value


def test_compare_leaves_out_an_entry_with_a_damaged_val_table(tmp_path, monkeypatch):
    _folder_with(tmp_path, monkeypatch, garbage=(b"not a zip", digits_table("test", seed=1)))
    at = _open("digits_logits", "views/compare.py")
    assert any("Cannot load **garbage (tables only)**, left out" in e.value for e in at.error)
    assert at.multiselect(key="compare_models").value == ["digits_logits", "garbage"]


def test_exits_that_all_cost_the_same_leave_no_budget_to_choose(tmp_path, monkeypatch):
    _folder_with(tmp_path, monkeypatch, flat=(digits_table("val", costs=[1.0, 1.0, 1.0]),
                                              digits_table("test", costs=[1.0, 1.0, 1.0])))
    for page in (None, "views/inspector.py", "views/deadlines.py", "views/compare.py"):
        at = _open("flat", page)
        assert page == "views/compare.py" or any("costs the same" in i.value for i in at.info)


def test_an_unreadable_table_is_a_message(tmp_path, monkeypatch):
    import dynexit.table as table_module
    path = digits_table("val").save(tmp_path / "t.val.npz")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(table_module, "open", refuse, raising=False)
    with pytest.raises(ValueError, match="t.val.npz: cannot read the file \\(Permission denied\\)"):
        ExitTable.load(path)


@pytest.mark.parametrize("val, test, message", [
    (lambda: digits_table("test"), lambda: digits_table("test"), "are the same table"),
    (lambda: digits_table("test", seed=3), lambda: digits_table("val"), "swapped"),
    (lambda: digits_table("val"), lambda: digits_table("test", dataset="mnist-like"),
     "dataset 'digits' \\(val\\) vs 'mnist-like' \\(test\\)"),
])
def test_a_pair_that_is_not_a_val_test_pair_is_refused(val, test, message):
    with pytest.raises(ValueError, match=message):
        folder.check_pair(val(), test(), "mine")


def test_ms_tables_say_ms_everywhere(tmp_path, monkeypatch):
    _folder_with(tmp_path, monkeypatch, timed=(digits_table("val", cost_unit="ms"), digits_table("test", cost_unit="ms")))
    at = _open("timed")
    assert any(m.label == "Mean ms per image" for m in at.metric)
    assert not [i.value for i in at.info if "MFLOPs" in i.value]
    at.switch_page("views/compare.py").run()
    ok(at)
    assert at.multiselect(key="compare_models").options == ["timed (tables only)"]  # MFLOPs tables are another unit


def test_images_problem_says_the_class_count_differs(tmp_path, monkeypatch):
    labels = DIGITS.load("test")[1] % 2
    two = [ExitTable.from_arrays(np.random.default_rng(i).normal(size=(len(labels), 2, 2)), labels, [1, 2],
                                 dataset="digits", meta={"split": s}) for i, s in enumerate(("val", "test"))]
    _folder_with(tmp_path, monkeypatch, two=tuple(two))
    at = _open("two")
    assert any("the table has 2 classes, the dataset 'digits' 10" in i.value for i in at.info)


def test_uploaders_start_empty_after_a_pair_is_opened_and_labels_stay_distinct(session, tmp_path):
    from dynexit_app import entries, state
    for i, seed in enumerate((0, 1)):
        n = session.get(state.UPLOAD_ROUND, 0)
        session[f"{state.UPLOAD_VAL}_{n}"] = _upload("mine.val.npz", digits_table("val", seed=seed), tmp_path)
        session[f"{state.UPLOAD_TEST}_{n}"] = _upload("mine.test.npz", digits_table("test", seed=seed), tmp_path)
        state._tables_uploaded()
        assert session[state.UPLOAD_ROUND] == i + 1 and state.UPLOAD_ERROR not in session
    assert [entries.label(n) for n in session[entries.UPLOADS]] == ["mine (uploaded)", "mine (uploaded 2)"]


def test_compare_shows_an_uploads_label_never_its_internal_name(app_dir):
    from dynexit_app import entries
    at = AppTest.from_file(ENTRY, default_timeout=180)
    name = "upload:0123456789abcdef"
    at.session_state[entries.UPLOADS] = {name: ("mine (uploaded)", digits_table("val", seed=5),
                                                digits_table("test", seed=5))}
    at.run()
    ok(at)
    at.sidebar.selectbox(key="model").select("digits_logits").run()  # the upload is of the same dataset
    at.switch_page("views/compare.py").run()
    ok(at)
    assert at.multiselect(key="compare_models").value == ["digits_logits", name]
    shown = " ".join([c.value for c in at.caption] + [m.value for m in at.markdown]
                     + [str(d.value) for d in at.dataframe])
    assert "mine (uploaded)" in shown and "upload:" not in shown


def test_tiny_costs_are_not_shown_as_zero(tmp_path, monkeypatch):
    costs = [0.001, 0.002, 0.004]
    _folder_with(tmp_path, monkeypatch, tiny=(digits_table("val", costs=costs, dataset=None),  # compared alone
                                              digits_table("test", costs=costs, dataset=None)))
    at = _open("tiny", "views/compare.py")
    assert not at.error and at.text_input(key="compare_budgets").value == "0.002, 0.003, 0.004"
    at.switch_page("views/inspector.py").run()
    ok(at)
    assert " 0.0 MFLOPs" not in " ".join(m.value for m in at.markdown)


def test_a_table_built_on_an_imagefolder_tree_shows_its_images(tmp_path):
    """`dynexit table --data imagefolder:TREE` records the tree as data_root too; the viewer must still open it."""
    from PIL import Image
    x, y = get_dataset("fashion-mnist").load("test")
    for split in ("train", "test"):
        for i in range(6):
            d = tmp_path / "tree" / split / f"c{y[i] % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(d / f"{i}.png")
    tree = tmp_path / "tree"
    spec = get_dataset(f"imagefolder:{tree}")
    labels = np.array([spec.torch_dataset("test")[i][1] for i in range(6)])
    table = ExitTable.from_arrays(np.zeros((6, 2, 2)), labels, [1.0, 2.0], dataset=f"imagefolder:{tree}",
                                  meta={"data_root": str(tree)})
    assert folder.dataset_problem(table) is None and folder.class_names(table) == ["c0", "c1"]
