"""The app in a real browser: serve it on a free loopback port, open it in Chromium, move the slider.

Chromium is the system binary (``apt-get install chromium``; ``.ci/run`` installs it), driven by
Playwright's Python API; ``playwright install`` is never used. Without Chromium (or the playwright
package) the test is skipped locally and FAILS in CI (``$CI`` set), where it must run.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import browser  # noqa: E402
from dynexit.testing import build_tiny_zoo  # noqa: E402

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
            start = slider.get_attribute("aria-valuenow")
            slider.focus()
            page.keyboard.press("Home")  # the cheapest budget
            expect(slider).not_to_have_attribute("aria-valuenow", start)
            expect(accuracy).not_to_have_text(before, timeout=60_000)
            browser.wait_idle(page)
            cheap = accuracy.inner_text()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            page.keyboard.press("End")  # the full model: every image at the last exit
            expect(accuracy).not_to_have_text(cheap, timeout=60_000)
            browser.wait_idle(page)
            final = page.locator('[data-testid="stMetric"]:has-text("Final exit alone") [data-testid="stMetricValue"]')
            expect(accuracy).to_have_text(final.inner_text())
            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            chromium_browser.close()
