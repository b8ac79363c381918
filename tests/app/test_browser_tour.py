"""Every page of every shipped model in a real Chromium, at 1280 x 800 and 1024 x 768 (issue 18).

One server on the shipped zoo (data/zoo), one browser page reused: the model is chosen in the sidebar
and the pages are opened from the sidebar's navigation, as a user does. Every request the browser makes
is recorded; the test fails on any that leaves the machine (the app must work offline), on any
exception shown by Streamlit, on any JavaScript error, and on a traceback in the server's log.
On "Your own image" a Fashion-MNIST picture is uploaded, so that page runs real early exit too. About
two minutes on 2 shared cores (60 visits). Set ``DYNEXIT_TOUR_SHOTS=DIR`` to keep a whole-page
screenshot of each visit (``SIZE_MODEL_PAGE.png``) and look at them.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tools import browser

PAGES = ("Budget explorer", "Image inspector", "Deadlines", "Compare models", "Your own image")
SIZES = {"1280x800": {"width": 1280, "height": 800}, "1024x768": {"width": 1024, "height": 768}}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def outside(url: str) -> bool:
    """True for a request that would leave the machine (http(s)/ws(s) to a host other than loopback)."""
    parts = urlparse(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOOPBACK


def test_outside_tells_loopback_from_the_network():
    assert not outside("http://127.0.0.1:8501/_stcore/health")
    assert not outside("ws://localhost:1/_stcore/stream")
    assert not outside("data:image/png;base64,AAAA")
    assert outside("https://fonts.gstatic.com/s/i/short-term/release/materialsymbolsrounded/speed/default/24px.svg")


@pytest.fixture(scope="module")
def chromium_binary():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is missing (pip install -e '.[dev]')")
    path = browser.chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium binary found: the browser tests must run in CI")
        pytest.skip("no Chromium binary found (apt-get install chromium, or set DYNEXIT_CHROMIUM)")
    return path


def _choose_model(page, name: str):
    box = page.locator("[data-testid=stSidebar] .st-key-model input[role=combobox]")
    if box.input_value() == name:
        return
    box.click()
    page.get_by_role("option", name=name, exact=True).click()
    browser.wait_idle(page, settle_ms=400)


def _visit(page, title: str):
    page.locator("[data-testid=stSidebarNav] a", has_text=title).click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
    browser.wait_idle(page, settle_ms=400)


def _upload(page):
    from tools.screenshots import sample_upload
    if page.get_by_text("It leaves at exit").count():
        return
    page.locator('[data-testid="stMain"] [data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "my_photo.png", "mimeType": "image/png", "buffer": sample_upload()}])
    page.get_by_text("It leaves at exit").first.wait_for(timeout=60_000)
    browser.wait_idle(page, settle_ms=400)


def _whole_page(page, viewport: dict, path: Path):
    """The main block scrolls, not the page: grow the window to the content, screenshot, shrink it back."""
    page.set_viewport_size({"width": viewport["width"], "height": browser.content_height(page) + 40})
    browser.wait_idle(page, settle_ms=400)
    page.screenshot(path=str(path))
    page.set_viewport_size(viewport)
    browser.wait_idle(page, settle_ms=200)


def test_every_page_of_every_model_offline_and_without_errors(chromium_binary, tmp_path):
    from playwright.sync_api import sync_playwright

    from dynexit import zoo
    models = [n for n in zoo.list() if zoo.available(n)]
    if not models:
        pytest.skip("the shipped zoo is not here")
    shots = Path(os.environ["DYNEXIT_TOUR_SHOTS"]) if os.environ.get("DYNEXIT_TOUR_SHOTS") else None
    log = tmp_path / "streamlit.log"
    requests, problems = [], []
    with browser.serve(log_path=log) as url, sync_playwright() as p:
        chromium = browser.launch(p, chromium_binary)
        try:
            page = chromium.new_page(viewport=SIZES["1280x800"])
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
            page.goto(url)
            page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
            browser.wait_idle(page)
            for size, viewport in SIZES.items():
                page.set_viewport_size(viewport)
                for name in models:
                    _choose_model(page, name)
                    for title in PAGES:
                        _visit(page, title)
                        if title == "Your own image":
                            _upload(page)
                        where = f"{size} {name} {title}"
                        errors = page.locator("[data-testid=stException]")
                        if errors.count():
                            problems.append(f"{where}: {errors.first.inner_text()[:500]}")
                        if shots:
                            shots.mkdir(parents=True, exist_ok=True)
                            _whole_page(page, viewport, shots / f"{size}_{name}_{title.split()[-1].lower()}.png")
        finally:
            chromium.close()
    server = log.read_text(errors="replace")
    assert "Traceback" not in server, server[-3000:]
    assert not problems, problems
    assert requests
    assert not [u for u in requests if outside(u)], sorted({u for u in requests if outside(u)})
