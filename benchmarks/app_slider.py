"""A budget slider move in a real browser: how soon are the new numbers shown, and the rerun finished?

Issue 18's targets, medians over >= 20 moves: new numbers shown <= 100 ms, rerun finished <= 300 ms.
Serves the app (tools/browser.py: ``streamlit run`` on a free loopback port) on the zoo, opens the
budget explorer in the system Chromium at 1280 x 800, waits until everything is drawn, then moves the
budget slider one step with the keyboard (ArrowRight / ArrowLeft, alternating directions in runs so
every move asks for a budget whose result is cached by neither Streamlit nor the browser only at the
first pass) and times each move in the page itself (``performance.now()``, polled every animation
frame and on every DOM change):

- *shown*: from the key press to the moment the budget caption shows the new budget and the
  accuracy metric has been redrawn by this run (its element is no longer marked stale);
- *finished*: from the key press to the moment Streamlit says the run is over (the app's
  ``data-test-script-state`` back to ``notRunning``).

    .venv/bin/python benchmarks/app_slider.py                    # the app's default model
    .venv/bin/python benchmarks/app_slider.py --model mevit_fmnist --moves 30

Prints both medians next to their targets, the machine's load average before and after, and one JSON
line. The machine's load matters (a shared 2-core box is several times slower): report it with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tools/ is not installed

SHOWN_TARGET_MS, FINISHED_TARGET_MS = 100.0, 300.0
CAPTION = "[data-testid=stCaption], [data-testid=stCaptionContainer]"

# Runs in the page, returns at once: fills window.__move with {shown, finished}, in ms after the key press
# that follows it (done: true when the run is over, or after 30 s).
WATCH = """([caption, before]) => {
  const t0 = performance.now(); const out = {shown: null, finished: null, done: false}; let running = false;
  window.__move = out; const resolve = () => { out.done = true; };
  const app = document.querySelector('[data-testid="stApp"]');
  const check = () => {
    const state = app.dataset.testScriptState;
    if (state === 'running') running = true;
    if (out.shown === null && running) {
      const cap = Array.from(document.querySelectorAll(caption)).map(e => e.innerText).find(t => t.startsWith('Budget '));
      const metric = document.querySelector('[data-testid="stMetric"]');
      const box = metric && metric.closest('[data-testid="stElementContainer"]');
      if (cap && cap !== before && box && box.dataset.stale !== 'true') out.shown = performance.now() - t0;
    }
    if (running && state === 'notRunning') {
      out.finished = performance.now() - t0; if (out.shown === null) out.shown = out.finished;
      observer.disconnect(); resolve(out); return true;
    }
    return false;
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
  const frame = () => { if (!check()) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  setTimeout(() => { observer.disconnect(); resolve(out); }, 30000);
}"""


def _caption(page) -> str:
    texts = page.locator(CAPTION).all_inner_texts()
    return next((t for t in texts if t.startswith("Budget ")), "")


def measure(moves: int = 24, model: str | None = None) -> dict:
    """Serve the app, move the explorer's slider ``moves`` times; per-move times (ms) and their medians."""
    from playwright.sync_api import sync_playwright

    from tools import browser

    shown, finished = [], []
    with browser.serve() as url, sync_playwright() as p:
        chromium = browser.launch(p)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
            browser.wait_idle(page)
            if model:
                box = page.locator("[data-testid=stSidebar] .st-key-model input[role=combobox]")
                box.click()
                page.get_by_role("option", name=model, exact=True).click()
                browser.wait_idle(page)
            slider = page.get_by_role("slider").first
            for i in range(moves + 2):  # the first two moves warm up (curve, caches): not counted
                before = _caption(page)
                slider.focus()
                page.evaluate(WATCH, [CAPTION, before])
                page.keyboard.press("ArrowRight" if (i // 6) % 2 == 0 else "ArrowLeft")
                page.wait_for_function("() => window.__move.done", timeout=60_000)
                times = page.evaluate("() => window.__move")
                browser.wait_idle(page, settle_ms=300)
                if i >= 2 and times["finished"] is not None:
                    shown.append(times["shown"])
                    finished.append(times["finished"])
        finally:
            chromium.close()
    return {"moves": len(shown), "shown_ms": shown, "finished_ms": finished,
            "shown_median_ms": statistics.median(shown), "finished_median_ms": statistics.median(finished)}


def main(argv=None):
    """Command line: ``python benchmarks/app_slider.py [--moves N] [--model NAME]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=24, help="timed slider moves (at least 20 for the issue's medians)")
    ap.add_argument("--model", default=None, help="zoo model to select first (default: the app's default)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    r = measure(args.moves, args.model)
    load_after = os.getloadavg()
    print(f"{r['moves']} slider moves in Chromium, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"{'':24}{'median':>10}{'target':>10}{'min':>8}{'max':>8}")
    for label, key, target in (("new numbers shown", "shown", SHOWN_TARGET_MS),
                               ("rerun finished", "finished", FINISHED_TARGET_MS)):
        values = r[f"{key}_ms"]
        ok = "ok" if r[f"{key}_median_ms"] <= target else "OVER"
        print(f"{label:24}{r[f'{key}_median_ms']:8.0f}ms{'<= %.0f' % target:>10}{min(values):8.0f}{max(values):8.0f}  {ok}")
    print(json.dumps({k: v for k, v in r.items() if not k.endswith("_ms") or "median" in k}
                     | {"load_before": load_before[0], "load_after": load_after[0]}))


if __name__ == "__main__":
    main()
