"""The app in a real browser: serve it on a free loopback port, open it in Chromium, move the slider.

Chromium is the system binary (``apt-get install chromium``; ``.ci/run`` installs it), driven by
Playwright's Python API; ``playwright install`` is never used. Without Chromium (or the playwright
package) the test is skipped locally and FAILS in CI (``$CI`` set), where it must run.
"""

import os

import pytest

from dynexit.testing import build_tiny_zoo
from tools import browser  # the repository root is on pytest's pythonpath (pyproject.toml)

ACCURACY = '[data-testid="stMetric"]:has-text("Accuracy (test)") [data-testid="stMetricValue"]'


def _need(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what}: the browser test must run in CI (.ci/run installs chromium)")
    pytest.skip(f"{what}; install it to run the browser test")


@pytest.fixture(scope="module")
def chromium():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("the playwright Python package is missing (pip install -e '.[dev]')")
    path = browser.chromium_path()
    if path is None:
        _need("no Chromium binary found (apt-get install chromium, or set DYNEXIT_CHROMIUM)")
    return path


def test_slider_moved_with_the_keyboard_changes_the_accuracy(chromium, tmp_path_factory, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    zoo_dir = build_tiny_zoo(tmp_path_factory.getbasetemp() / "app_zoo",
                             models=("dynperceiver_fmnist", "static_cnn_fmnist", "mevit_fmnist"))
    log = tmp_path / "streamlit.log"
    with browser.serve(env={"DYNEXIT_ZOO": str(zoo_dir)}, log_path=log) as url, sync_playwright() as p:
        chromium_browser = browser.launch(p, chromium)
        try:
            page = chromium_browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
            accuracy = page.locator(ACCURACY)
            accuracy.wait_for(timeout=120_000)
            browser.wait_idle(page)
            before = accuracy.inner_text()
            slider = page.get_by_role("slider").first
            start = slider.input_value()
            slider.focus()
            page.keyboard.press("Home")  # the cheapest budget
            expect(slider).not_to_have_value(start)
            expect(accuracy).not_to_have_text(before, timeout=60_000)
            browser.wait_idle(page)
            cheap = accuracy.inner_text()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            browser.wait_idle(page)  # the three small moves are done before the big one (a busy CI machine queues them)
            slider.focus()
            page.keyboard.press("End")  # the full model's budget
            expect(slider).to_have_value(slider.get_attribute("max"))  # the key press was not lost
            expect(accuracy).not_to_have_text(cheap, timeout=60_000)
            browser.wait_idle(page)
            final = page.locator('[data-testid="stMetric"]:has-text("Final exit alone") [data-testid="stMetricValue"]')
            if accuracy.inner_text() != final.inner_text():  # not everyone at the last exit: the page says why
                expect(page.locator('[data-testid="stAlert"]', has_text="MFLOPs allowed")).to_contain_text(
                    "spending more did not help on the validation images")
            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            chromium_browser.close()


SLIDER = "[data-testid=stSlider] input[type=range]"


def _png(level: int, mode: str = "RGB") -> bytes:
    import io

    from PIL import Image
    img = Image.new(mode, (60, 40), "white" if mode == "RGB" else 0)
    img.paste(level, (20, 10, 40, 30)) if mode != "RGB" else img.paste((level, level, level), (20, 10, 40, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_keep_the_budget_and_every_page_shows_it(chromium, tmp_path_factory, tmp_path):
    """Issue 13: uploads reset the budget slider to its minimum, and the reset spread to the other pages."""
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=30_000)  # a rerun on a loaded 2-core machine can take several seconds

    zoo_dir = build_tiny_zoo(tmp_path_factory.getbasetemp() / "app_zoo",
                             models=("dynperceiver_fmnist", "static_cnn_fmnist", "mevit_fmnist"))
    uploads = [("shirt.png", _png(30)), ("damaged.png", _png(60)[:80]), ("bag.png", _png(200, "L")),
               ("shoe.png", _png(90)), ("boot.png", _png(150, "L"))]
    with browser.serve(env={"DYNEXIT_ZOO": str(zoo_dir)}, log_path=tmp_path / "streamlit.log") as url, \
            sync_playwright() as p:
        chromium_browser = browser.launch(p, chromium)
        try:
            page = chromium_browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{url}/upload")
            page.get_by_role("heading", name="Your own image").wait_for(timeout=120_000)
            chooser = page.locator("[data-testid=stMain] [data-testid=stFileUploader] input[type=file]")
            chooser.set_input_files(files=[{"name": "first.png", "mimeType": "image/png", "buffer": _png(10)}])
            slider = page.locator(SLIDER).first
            slider.wait_for(timeout=120_000)
            browser.wait_idle(page, settle_ms=500)
            default = slider.input_value()
            slider.focus()
            for _ in range(7):
                page.keyboard.press("ArrowRight")
            expect(slider).not_to_have_value(default)
            browser.wait_idle(page, settle_ms=500)
            budget = slider.input_value()
            caption = f"Budget {budget} MFLOPs"
            expect(page.get_by_text(caption)).to_be_visible()  # the server has the new budget
            for name, data in uploads:
                for attempt in range(3):  # on a loaded machine a file set during a rerun can be dropped
                    chooser.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])
                    try:
                        expect(page.get_by_text(name).first).to_be_visible(timeout=20_000)
                        break
                    except AssertionError:
                        if attempt == 2:
                            raise
                        browser.wait_idle(page, settle_ms=500)
                browser.wait_idle(page, settle_ms=500)
                if name == "damaged.png":
                    expect(page.get_by_text("Cannot use **damaged.png**".replace("**", ""))).to_be_visible()
                    continue
                expect(page.locator(SLIDER).first).to_have_value(budget)
                expect(page.get_by_text(caption)).to_be_visible()
            for title in ("Budget explorer", "Image inspector", "Deadlines"):
                page.locator("[data-testid=stSidebarNav] a", has_text=title).click()
                page.get_by_role("heading", name=title).wait_for(timeout=120_000)
                browser.wait_idle(page, settle_ms=500)
                expect(page.locator(SLIDER).first).to_have_value(budget)
                expect(page.get_by_text(caption)).to_be_visible()
            page.locator("[data-testid=stSidebarNav] a", has_text="Compare models").click()
            page.get_by_role("heading", name="Compare models").wait_for(timeout=120_000)
            expect(page.get_by_text(f"{budget} MFLOPs per image")).to_be_visible(timeout=60_000)
        finally:
            chromium_browser.close()


def test_explorer_says_when_the_rule_leaves_budget_unspent(chromium, tmp_path):
    """On the shipped multi-exit CNN, whose deeper exits are no more accurate on val, the default rule stops
    spending; the explorer says so in words instead of showing a slider that silently does nothing."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    from dynexit import zoo
    name = "multiexit_cnn_fmnist"
    if not zoo.available(name):
        pytest.skip("the shipped zoo is not here")
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    for src in [zoo.weights_path(name), zoo.weights_path(name).with_suffix(".json"),
                *(zoo.table_path(name, s) for s in zoo.SPLITS)]:
        shutil.copy(src, zoo_dir / src.name)
    with browser.serve(env={"DYNEXIT_ZOO": str(zoo_dir)}, log_path=tmp_path / "streamlit.log") as url, \
            sync_playwright() as p:
        chromium_browser = browser.launch(p, chromium)
        try:
            page = chromium_browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.locator(ACCURACY).wait_for(timeout=120_000)
            browser.wait_idle(page)
            slider = page.get_by_role("slider").first
            slider.focus()
            page.keyboard.press("End")  # the whole budget of the full model
            browser.wait_idle(page)
            note = page.locator('[data-testid="stAlert"]', has_text="MFLOPs allowed")
            expect(note).to_contain_text("spending more did not help on the validation images", timeout=120_000)
            import re
            spent, allowed = map(float, re.search(r"spends ([\d.]+) of the ([\d.]+) MFLOPs allowed", note.inner_text()).groups())
            assert allowed >= zoo.declared_costs(name)[-1] - 0.5  # the slider is at its top
            assert spent < allowed - 1
        finally:
            chromium_browser.close()
