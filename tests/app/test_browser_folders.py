"""Issue 16 end to end in a real browser: a folder holding a shipped zoo model and a digits model trained
here (``dynexit train`` + ``dynexit table``, tests/_e2e.py), side by side in the app; the slider works on
both; an uploaded table pair opens at once; a damaged upload gets a clear message, and the app goes on.

Chromium and Playwright as in tests/app/test_browser.py (skipped locally without them, FAILS in CI).
"""

import shutil
from pathlib import Path

import pytest

from _e2e import build_digits_entry
from test_browser import ACCURACY, chromium  # noqa: F401 - the fixture
from tools import browser

ROOT = Path(__file__).resolve().parents[2]
ZOO_MODEL = "multiexit_cnn_fmnist"


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """A shipped zoo model (its four files) and a trained digits entry in one folder."""
    folder = tmp_path_factory.mktemp("side_by_side")
    for suffix in (".safetensors", ".json", ".val.npz", ".test.npz"):
        shutil.copyfile(ROOT / "data" / "zoo" / f"{ZOO_MODEL}{suffix}", folder / f"{ZOO_MODEL}{suffix}")
    return build_digits_entry(folder, name="digits_cnn")


def _choose_model(page, label: str):
    box = page.locator("[data-testid=stSidebar] .st-key-model input[role=combobox]")
    if box.input_value() != label:
        box.click()
        page.get_by_role("option", name=label, exact=True).click()
    page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
    browser.wait_idle(page, settle_ms=400)
    assert box.input_value() == label


def _slider_moves(page, accuracy_changes: bool):
    """Home (cheapest budget) then End (the full model): the budget caption follows, and the accuracy too
    when ``accuracy_changes`` (the digits model is 98% right at its first exit already: its accuracy may not)."""
    from playwright.sync_api import expect

    accuracy = page.locator(ACCURACY)
    accuracy.wait_for(timeout=120_000)
    caption = page.locator("[data-testid=stCaptionContainer]", has_text="the full model's").first
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("Home")
    browser.wait_idle(page, settle_ms=400)
    cheap, cheap_caption = accuracy.inner_text(), caption.inner_text()
    slider.focus()
    page.keyboard.press("End")
    expect(caption).not_to_have_text(cheap_caption, timeout=60_000)
    expect(caption).to_contain_text("100%")
    if accuracy_changes:
        expect(accuracy).not_to_have_text(cheap, timeout=60_000)
    browser.wait_idle(page, settle_ms=400)


def _upload_pair(page, val: Path, test: Path):
    sidebar = page.locator("[data-testid=stSidebar]")
    expander = sidebar.locator("[data-testid=stExpander]", has_text="Open your own tables")
    if not expander.locator("input[type=file]").first.is_visible():
        expander.locator("summary").click()
    inputs = expander.locator("input[type=file]")
    inputs.nth(0).set_input_files(str(val))
    browser.wait_idle(page, settle_ms=400)
    inputs.nth(1).set_input_files(str(test))
    browser.wait_idle(page, settle_ms=600)


def test_a_folder_of_zoo_and_digits_models_and_uploaded_tables(chromium, side_by_side, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for split in ("val", "test"):
        shutil.copyfile(side_by_side / f"digits_cnn.{split}.npz", uploads / f"mine.{split}.npz")
    (uploads / "bad.val.npz").write_bytes(b"PK\x03\x04 this is not a table")
    errors: list[str] = []
    with browser.serve(env={"DYNEXIT_ZOO": str(side_by_side)}, log_path=tmp_path / "streamlit.log") as url, \
            sync_playwright() as p:
        chromium_browser = browser.launch(p, chromium)
        try:
            page = chromium_browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
            browser.wait_idle(page)
            for label in (ZOO_MODEL, "digits_cnn"):
                _choose_model(page, label)
                _slider_moves(page, accuracy_changes=label == ZOO_MODEL)
            # the digits model's gallery shows digits, captioned with digits' class names
            expect(page.locator(".st-key-gallery_0, [class*=gallery_0]").first).to_be_visible(timeout=60_000)

            _upload_pair(page, uploads / "bad.val.npz", uploads / "mine.test.npz")
            alert = page.locator("[data-testid=stSidebar] [data-testid=stAlert]", has_text="Cannot open these tables")
            expect(alert).to_contain_text("val table 'bad.val.npz'", timeout=60_000)
            expect(alert).to_contain_text("damaged ExitTable .npz")
            # the page goes on with the model it showed
            expect(page.get_by_role("heading", name="Budget explorer")).to_be_visible()

            _upload_pair(page, uploads / "mine.val.npz", uploads / "mine.test.npz")
            box = page.locator("[data-testid=stSidebar] .st-key-model input[role=combobox]")
            expect(box).to_have_value("mine (uploaded)", timeout=60_000)
            _slider_moves(page, accuracy_changes=False)
            page.screenshot(path=str(tmp_path / "uploaded.png"))
        finally:
            chromium_browser.close()
    assert not errors, errors
