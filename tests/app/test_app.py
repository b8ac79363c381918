"""The Streamlit app with AppTest on a tiny zoo: every page, the slider, the selectors, uploads.

The zoo is built in a temporary folder (dynexit.testing.build_tiny_zoo: untrained tiny models under the
zoo's names, synthetic tables), so these tests do not depend on the shipped zoo being there.
"""

import io
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dynexit import zoo
from dynexit.testing import build_tiny_zoo

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "app" / "streamlit_app.py")
MODELS = ("dynperceiver_fmnist", "static_cnn_fmnist", "mevit_fmnist")


@pytest.fixture(scope="session")
def tiny_zoo_dir(tmp_path_factory):
    return build_tiny_zoo(tmp_path_factory.getbasetemp() / "app_zoo", models=MODELS)


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The app sets torch to one thread when it loads a model; AppTest runs it in this process."""
    import torch
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def app_zoo(tiny_zoo_dir, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tiny_zoo_dir))
    if "mevit_fmnist" not in zoo.ENTRIES:  # the ViT joins the zoo later; the app must show it when it does
        monkeypatch.setitem(zoo.ENTRIES, "mevit_fmnist", zoo.ZooEntry("mevit_fmnist", "mevit_tiny", "Multi-Exit ViT"))
    return tiny_zoo_dir


def start(page: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    ok(at)
    if page:
        at.switch_page(page).run()
        ok(at)
    return at


def ok(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [e.value for e in at.error] + [w.value for w in at.warning])


def captions(at) -> str:
    return "\n".join(c for image in at.image for c in image.captions)


def charts(at) -> int:
    return len(at.get("plotly_chart"))


def png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- budget explorer

def test_explorer_renders_and_the_slider_changes_the_metrics(app_zoo):
    at = start()
    assert at.title[0].value == "Budget explorer"
    assert at.selectbox(key="model").value == "dynperceiver_fmnist"  # the preferred default
    assert set(metrics(at)) == {"Accuracy (test)", "Mean MFLOPs per image", "Speedup", "Final exit alone"}
    assert charts(at) >= 4  # curve, histogram, one exit's gallery, overthinking
    slider = at.slider(key="explorer_budget_dynperceiver_fmnist")
    lo, hi = slider.min, slider.max
    seen = []
    for value in (lo, hi):
        at.slider(key="explorer_budget_dynperceiver_fmnist").set_value(value).run()
        ok(at)
        seen.append(metrics(at))
        assert f"Budget {value:.1f} MFLOPs" in texts(at)
    assert seen[0]["Mean MFLOPs per image"] != seen[1]["Mean MFLOPs per image"]
    assert seen[0]["Accuracy (test)"] != seen[1]["Accuracy (test)"]
    # at the full cost every image goes to the last exit, or the page says why the rule spends less
    if seen[1]["Speedup"] == "1.00x":
        assert seen[1]["Accuracy (test)"] == seen[1]["Final exit alone"]
    else:
        assert any("MFLOPs allowed: spending more did not help on the validation images" in i.value for i in at.info)


def test_selectors_solver_criterion_and_model(app_zoo):
    at = start()
    assert at.selectbox(key="criterion").disabled  # the default solver chooses its own score
    at.selectbox(key="solver").set_value("geometric").run()
    ok(at)
    assert not at.selectbox(key="criterion").disabled
    geometric = metrics(at)
    at.selectbox(key="criterion").set_value("random").run()
    ok(at)
    assert metrics(at)["Accuracy (test)"] != geometric["Accuracy (test)"]  # random exits are worse
    # a single-exit model: one point, no slider
    at.selectbox(key="model").set_value("static_cnn_fmnist").run()
    ok(at)
    assert not at.slider and "single exit" in texts(at)
    assert metrics(at)["Speedup"] == "1.00x"
    # a ViT: a budget slider of its own
    at.selectbox(key="model").set_value("mevit_fmnist").run()
    ok(at)
    assert at.slider(key="explorer_budget_mevit_fmnist")


def test_gallery_opens_the_image_in_the_inspector(app_zoo):
    at = start()
    pick = at.selectbox(key="pick_0")
    assert pick.value is None and len(pick.options) > 1  # nothing chosen yet: no page switch
    index = int(pick.options[1].split("#")[1].split(",")[0])  # "row 1, image 2: ✓ Coat 97% (test image #i, Coat)"
    assert pick.options[1].startswith("row 1, image 2: ")
    pick.select_index(1).run()
    ok(at)
    assert at.title[0].value == "Image inspector"
    assert at.radio(key="inspect_how").value == "from the gallery"
    assert f"test image #{index}," in captions(at)
    at.switch_page("views/explorer.py").run()  # back: the box is empty again, the explorer stays
    ok(at)
    assert at.title[0].value == "Budget explorer" and at.selectbox(key="pick_0").value is None


# ----------------------------------------------------------------------------- image inspector

def test_inspector_choices_attention_and_attribution(app_zoo):
    at = start("views/inspector.py")
    assert at.title[0].value == "Image inspector"
    assert "x2z: what the latent code reads" in texts(at) and "z2x: where the latent code writes back" in texts(at)
    test = zoo.load_table("dynperceiver_fmnist", "test")
    at.radio(key="inspect_how").set_value("by index").run()
    at.number_input(key="inspect_index").set_value(5).run()
    ok(at)
    assert f"test image #{int(test.index[5])}," in captions(at)
    for how in ("by class", "hardest", "easiest"):
        at.radio(key="inspect_how").set_value(how).run()
        ok(at)
    assert "leaves at exit" in texts(at)
    at.radio(key="attr_method").set_value("saliency").run()
    at.button[0].click().run()  # "Compute attribution"
    ok(at)
    assert at.get("plotly_chart")[-1].proto.id and "saliency of exit" in at.get("plotly_chart")[-1].proto.spec


def test_inspector_shows_vit_attention_and_handles_a_static_cnn(app_zoo):
    at = start()
    at.selectbox(key="model").set_value("mevit_fmnist").run()
    at.switch_page("views/inspector.py").run()
    ok(at)
    assert "attention rollout to each exit" in texts(at) and "class-token attention before each exit" in texts(at)
    # a CNN with a single exit: no slider, no attention, still a page
    at.selectbox(key="model").set_value("static_cnn_fmnist").run()
    ok(at)
    assert not at.slider and "has no attention layers" in texts(at)


# ----------------------------------------------------------------------------- compare, upload, missing zoo

def test_compare_page(app_zoo):
    at = start("views/compare.py")
    assert at.title[0].value == "Compare models"
    assert set(at.multiselect(key="compare_models").value) == set(MODELS)
    assert len(at.dataframe) >= 2 and charts(at) >= 1
    for bad in ("1, two", "nan", "5, -inf"):
        at.text_input(key="compare_budgets").set_value(bad).run()
        ok(at)
        assert "Could not read" in texts(at), bad
    at.toggle(key="compare_exits").set_value(True).run()
    ok(at)


def test_upload_runs_real_early_exit_and_rejects_bad_files(app_zoo):
    at = start("views/upload.py")
    assert at.title[0].value == "Your own image"
    photo = Image.new("RGB", (120, 80), "white")
    photo.paste((40, 40, 40), (40, 20, 80, 60))  # a dark object on white paper
    at.file_uploader(key="upload").set_value(("photo.png", png(photo), "image/png")).run()
    ok(at)
    assert "It leaves at exit" in texts(at) and "inverted: the object is darker than its background" in texts(at)
    import struct
    import zlib
    text = zlib.compress(b" " * 2**21)  # a zTXt chunk inflating past Pillow's 1 MB limit: a bare ValueError before
    ztxt = struct.pack(">I", len(text) + 9) + b"zTXtComment\x00\x00" + text
    ztxt += struct.pack(">I", zlib.crc32(ztxt[4:]))
    tiff = bytearray(png(photo, "TIFF"))
    tiff[96] = 12  # "invalid extents" out of the TIFF decoder
    bad = {"notes.txt": b"just some text", "empty.png": b"", "broken.png": png(photo)[:60],
           "huge.png": png(Image.new("1", (8000, 6000))), "text.png": png(photo)[:33] + ztxt + png(photo)[33:],
           "extents.tif": bytes(tiff)}
    for name, data in bad.items():
        at.file_uploader(key="upload").set_value((name, data, "application/octet-stream")).run()
        ok(at)
        assert at.error and at.error[0].value.startswith(f"Cannot use **{name}**"), name
    # odd modes are converted, with a note
    frames = [Image.new("L", (30, 30), i) for i in (0, 80, 160)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    at.file_uploader(key="upload").set_value(("anim.gif", buf.getvalue(), "image/gif")).run()
    ok(at)
    assert "only the first frame is used" in texts(at) and not at.error
    # a uniform image runs, with a visible warning that the answer means nothing
    at.file_uploader(key="upload").set_value(("gray.png", png(Image.new("L", (40, 40), 128)), "image/png")).run()
    ok(at)
    assert at.warning and "blank or nearly uniform" in at.warning[0].value and "It leaves at exit" in texts(at)


def test_damaged_zoo_file_says_which_and_how_to_rebuild(tiny_zoo_dir, tmp_path, monkeypatch):
    import shutil
    broken = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, broken)
    (broken / "dynperceiver_fmnist.test.npz").write_bytes(b"not a table")
    monkeypatch.setenv("DYNEXIT_ZOO", str(broken))
    at = AppTest.from_file(ENTRY, default_timeout=60).run()
    ok(at)
    assert "damaged zoo file" in at.error[0].value and "dynexit zoo reproduce dynperceiver_fmnist" in at.error[0].value


def test_missing_zoo_says_which_files_and_which_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "empty"))
    at = AppTest.from_file(ENTRY, default_timeout=60).run()
    ok(at)
    assert "nothing to explore" in at.title[0].value and "No val / test table pair" in at.error[0].value
    listing = at.code[0].value
    for name in zoo.list():
        assert f"{name}.safetensors" in listing and f"dynexit zoo reproduce {name}" in listing


PAGES = ("views/explorer.py", "views/inspector.py", "views/compare.py", "views/upload.py")


def _sidecar_folder(zoo_dir: Path) -> str:
    sidecar = zoo_dir / "dynperceiver_fmnist.json"
    sidecar.unlink()
    sidecar.mkdir()
    return "dynperceiver_fmnist.json"


def _truncated_table(zoo_dir: Path) -> str:
    table = zoo_dir / "dynperceiver_fmnist.val.npz"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    return "dynperceiver_fmnist.val.npz"


def _garbage_weights(zoo_dir: Path) -> str:
    weights = zoo_dir / "dynperceiver_fmnist.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    return "dynperceiver_fmnist.safetensors"


@pytest.mark.parametrize("damage", [_sidecar_folder, _truncated_table, _garbage_weights])
def test_damaged_zoo_files_are_error_boxes_on_every_page(damage, tiny_zoo_dir, tmp_path, monkeypatch):
    """Each page shows the zoo's message (the file and the rebuild command) in an error box, never a traceback."""
    import shutil
    broken = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, broken)
    damaged = damage(broken)
    (broken / "static_cnn_fmnist.bench.json").write_text("{not json")  # the comparison reads every model's bench
    monkeypatch.setenv("DYNEXIT_ZOO", str(broken))
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    for page in PAGES:
        if page != PAGES[0]:
            at.switch_page(page).run()
        ok(at)
        errors = "\n".join(e.value for e in at.error)
        assert damaged in errors and "dynexit zoo reproduce dynperceiver_fmnist" in errors, (page, errors)
        if page == "views/compare.py" and damage is _garbage_weights:  # the tables are fine: the curves are drawn
            assert "static_cnn_fmnist.bench.json" in errors and charts(at) >= 1


# ----------------------------------------------------------------------------- the app as an installed package

def test_the_app_folder_is_installed_as_dynexit_app(tmp_path):
    """app/ imports as ``dynexit_app`` from anywhere (the editable install), never as a top-level ``app``."""
    import subprocess
    import sys
    code = ("import importlib.util as u, pathlib; "
            "print(pathlib.Path(u.find_spec('dynexit_app.state').origin).resolve()); "
            "print(u.find_spec('app'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == [str(ROOT / "app" / "state.py"), "None"]


def test_pyproject_lists_every_package_folder():
    """pyproject.toml names its packages one by one (app/ is mapped to dynexit_app): a new subpackage
    folder missing from the list would be left out of a wheel."""
    import tomllib

    from setuptools import find_packages
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"dynexit_app": "app"}
    folders = find_packages(str(ROOT), include=["dynexit", "dynexit.*"])
    folders += ["dynexit_app" + p.removeprefix("app") for p in find_packages(str(ROOT), include=["app", "app.*"])]
    assert sorted(config["packages"]) == sorted(folders)


def test_no_sys_path_edits_in_the_app_and_tools():
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]:
        assert "sys.path" not in path.read_text(), path


def test_streamlit_does_not_collect_garbage_after_every_run():
    """Streamlit's gc.collect(2) after each run holds the GIL ~300 ms with torch loaded, delaying every slider
    move's end (benchmarks/app_slider.py); the repository's config turns it off for `make app` and the tests."""
    import tomllib
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


@pytest.mark.parametrize("raw, expected", [(None, 0.03), ("", 0.03), ("0", 0.0), ("12.5", 0.0125), ("1000", 1.0),
                                           ("fast", 0.03), ("-5", 0.03), ("nan", 0.03), ("inf", 0.03), ("5000", 0.03)])
def test_the_numbers_first_pause_reads_its_variable(raw, expected, monkeypatch, caplog):
    """The explorer's pause between numbers and figures (benchmarks/app_slider.py --ab switches it off):
    a bad value is logged and the default used, never an exception in the page."""
    from dynexit_app import common
    if raw is None:
        monkeypatch.delenv("DYNEXIT_NUMBERS_FIRST_MS", raising=False)
    else:
        monkeypatch.setenv("DYNEXIT_NUMBERS_FIRST_MS", raw)
    common.numbers_first_s.cache_clear()  # read once per process
    assert common.numbers_first_s() == pytest.approx(expected)
    common.numbers_first_s.cache_clear()
    bad = raw in ("fast", "-5", "nan", "inf", "5000")
    assert ("DYNEXIT_NUMBERS_FIRST_MS" in caplog.text) == bad
