"""Screenshots of every page at 1280 x 800 for the README (docs/screenshots/).

Run from the repository root, as a module of the ``tools`` folder (not installed):

    .venv/bin/python -m tools.screenshots                 # the shipped zoo (data/zoo)
    DYNEXIT_ZOO=runs/devzoo .venv/bin/python -m tools.screenshots --out /tmp/shots

Starts the app on a free loopback port, opens each page in Chromium (system binary, see
``tools/browser.py``), waits for it to finish drawing, and saves ``PAGE.png`` (the 1280 x 800 window,
what a user sees first) and ``PAGE_full.png`` (the whole page). It also writes ``MANIFEST.json``: a
hash of what the screenshots show (the app's source, dynexit/viz.py, the zoo's sidecar and bench
files); tests/app/test_screenshots.py fails when that hash no longer matches, i.e. the screenshots
are older than the code or the zoo they show (file contents, not mtimes, which git does not keep).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
from pathlib import Path

from tools import browser

VIEWPORT = {"width": 1280, "height": 800}
# What the screenshots show, as glob patterns under the repository root (not the zoo's tables: the
# sidecars and bench files change whenever a model or its tables are rebuilt).
SHOWN = ("app/**/*.py", "dynexit/viz.py", "data/zoo/*.json")
MANIFEST = "MANIFEST.json"


def shown_files(root: Path = browser.ROOT) -> list[str]:
    """The files the screenshots depend on (paths relative to ``root``, sorted, no __pycache__)."""
    found = {p.relative_to(root).as_posix() for pattern in SHOWN for p in root.glob(pattern) if p.is_file()}
    return sorted(f for f in found if "__pycache__" not in f)


def source_hash(root: Path = browser.ROOT) -> str:
    """SHA-256 (hex) over the names and contents of :func:`shown_files`, line endings normalised, so a
    checkout on any OS hashes alike."""
    h = hashlib.sha256()
    for rel in shown_files(root):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def write_manifest(out: Path, shots: list[Path], root: Path = browser.ROOT) -> Path:
    """``out/MANIFEST.json``: the hash of what the screenshots show, the files hashed, the screenshots, when."""
    path = out / MANIFEST
    path.write_text(json.dumps({
        "source_sha256": source_hash(root), "files": shown_files(root), "viewport": VIEWPORT,
        "screenshots": sorted(p.name for p in shots),
        "taken": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "retake": ".venv/bin/python -m tools.screenshots"}, indent=1) + "\n")
    return path


def sample_upload() -> bytes:
    """A Fashion-MNIST test image as a user's photo would be: dark on white, larger, RGB."""
    from PIL import Image

    from dynexit.data import load_fashion_mnist

    x, _ = load_fashion_mnist("test")  # uint8 (10000, 28, 28)
    img = Image.fromarray(255 - x[0]).resize((280, 280), Image.Resampling.BICUBIC).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def take(out: Path, full: bool = True) -> list[Path]:
    """Serve the app, screenshot its five pages into the folder ``out``; the files written (PNGs, then MANIFEST.json).

    ``full`` adds each whole page (``PAGE_full.png``). RuntimeError when the server does not start or
    no Chromium is found (see ``tools/browser.py``).
    """
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with browser.serve() as url, sync_playwright() as p:
        chromium = browser.launch(p)
        page = chromium.new_page(viewport=VIEWPORT)

        def save(name):
            """Screenshot the page as ``name``.png, and the whole page as ``name``_full.png."""
            browser.wait_idle(page)
            page.screenshot(path=str(out / f"{name}.png"))
            shots.append(out / f"{name}.png")
            if full:  # the main block scrolls, not the page: grow the window to the content, then back
                page.set_viewport_size({"width": VIEWPORT["width"], "height": browser.content_height(page) + 40})
                browser.wait_idle(page, settle_ms=500)
                page.screenshot(path=str(out / f"{name}_full.png"))
                shots.append(out / f"{name}_full.png")
                page.set_viewport_size(VIEWPORT)

        page.goto(url, wait_until="networkidle")
        save("explorer")
        page.goto(f"{url}/inspector", wait_until="networkidle")
        browser.wait_idle(page)
        page.get_by_text("hardest", exact=True).click()
        browser.wait_idle(page)
        page.get_by_role("button", name="Compute attribution").click()
        browser.wait_idle(page)
        page.locator('[data-testid="stMain"]').evaluate("e => e.scrollTo(0, 0)")
        save("inspector")
        page.goto(f"{url}/deadlines", wait_until="networkidle")
        save("deadlines")
        page.goto(f"{url}/compare", wait_until="networkidle")
        save("compare")
        page.goto(f"{url}/upload", wait_until="networkidle")
        browser.wait_idle(page)
        page.locator('[data-testid="stMain"] [data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            files=[{"name": "my_photo.png", "mimeType": "image/png", "buffer": sample_upload()}])
        page.get_by_text("It leaves at exit").wait_for(timeout=60_000)
        save("upload")
        chromium.close()
    shots.append(write_manifest(out, shots))
    return shots


def main(argv=None):
    """Command line: ``python -m tools.screenshots [--out DIR] [--no-full]``; prints each file written."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(browser.ROOT / "docs" / "screenshots"), help="folder for the PNG files")
    ap.add_argument("--no-full", action="store_true", help="only the 1280 x 800 window, not the whole pages")
    args = ap.parse_args(argv)
    for path in take(Path(args.out), full=not args.no_full):
        print(path)


if __name__ == "__main__":
    main()
