"""A budget slider move in a real browser: how soon are the new numbers shown, and the rerun finished?

Issue 18's targets, medians over >= 20 moves: new numbers shown <= 100 ms, rerun finished <= 300 ms.
Serves the app (tools/browser.py: ``streamlit run`` on a free loopback port) on the zoo, opens the
budget explorer in the system Chromium at 1280 x 800, waits until everything is drawn, then moves the
budget slider one step with the keyboard, in blocks of six moves one way and six back (so the budget stays
near its start, and a block's moves ask for budgets the previous block cached), and times each move in the
page itself (``performance.now()`` from the keydown event, checked on every DOM change and animation
frame, reading ``textContent`` so the check forces no layout):

- *in the page*: the budget caption shows the new budget and the accuracy metric has been redrawn by this
  run (its element is no longer marked stale);
- *shown*: the first frame with them has been painted (a task posted from that frame's
  ``requestAnimationFrame`` runs after its paint): what the target is about;
- *finished*: Streamlit says the run is over (the app's ``data-test-script-state`` back to ``notRunning``).

    .venv/bin/python benchmarks/app_slider.py                    # the app's default model
    .venv/bin/python benchmarks/app_slider.py --model mevit_fmnist --moves 30
    .venv/bin/python benchmarks/app_slider.py --ab               # with and without the numbers-first pause

``--ab`` serves the app twice, as shipped and with ``DYNEXIT_NUMBERS_FIRST_MS=0`` (the explorer draws its
figures right after its numbers), and moves both sliders in one browser, a block of six moves each in turn
(the order alternating per block), so the two are measured side by side under the same load.

Prints the medians next to their targets, the machine's load average before and after, and one JSON
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

# Runs in the page, returns at once: fills window.__move with {written, shown, finished}, in ms after the key
# press that follows it (done: true when all are known, or after 30 s). *written*: the new numbers are in the
# page (DOM); *shown*: the first frame with them has been painted (a task posted from that frame's
# requestAnimationFrame runs after its paint).
WATCH = """([caption]) => {
  const read = () => { for (const e of document.querySelectorAll(caption)) { const t = e.textContent;
                         if (t.startsWith('Budget ')) return t; } return null; };
  const before = read(); let t0 = performance.now();
  document.addEventListener('keydown', () => { t0 = performance.now(); }, {capture: true, once: true});
  const out = {written: null, shown: null, finished: null, done: false}; let running = false;
  window.__move = out;
  const settle = () => { if (out.finished !== null && out.shown !== null) out.done = true; };
  const afterPaint = () => requestAnimationFrame(() => {
    const ch = new MessageChannel(); ch.port1.onmessage = () => { out.shown = performance.now() - t0; settle(); };
    ch.port2.postMessage(0); });
  const app = document.querySelector('[data-testid="stApp"]');
  const check = () => {
    const state = app.dataset.testScriptState;
    if (state === 'running') running = true;
    if (out.written === null && running) {
      const cap = read();
      const metric = document.querySelector('[data-testid="stMetric"]');
      const box = metric && metric.closest('[data-testid="stElementContainer"]');
      if (cap && cap !== before && box && box.dataset.stale !== 'true') { out.written = performance.now() - t0; afterPaint(); }
    }
    if (running && state === 'notRunning') {
      out.finished = performance.now() - t0;
      if (out.written === null) { out.written = out.finished; afterPaint(); }
      observer.disconnect(); settle(); return true;
    }
    return false;
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                                   attributeFilter: ['data-test-script-state', 'data-stale']});
  const frame = () => { if (!check()) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  setTimeout(() => { observer.disconnect(); out.done = true; }, 30000);
}"""

# --ab: the app as shipped, and without the explorer's pause between its numbers and its figures
VARIANTS = {"as shipped": {"DYNEXIT_NUMBERS_FIRST_MS": ""}, "no numbers-first pause": {"DYNEXIT_NUMBERS_FIRST_MS": "0"}}


def _open(chromium, url: str, model: str | None):
    from tools import browser

    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.get_by_role("heading", name="Budget explorer").wait_for(timeout=120_000)
    browser.wait_idle(page)
    if model:
        box = page.locator("[data-testid=stSidebar] .st-key-model input[role=combobox]")
        box.click()
        page.get_by_role("option", name=model, exact=True).click()
        browser.wait_idle(page)
    return page


def _move(page, key: str) -> dict:
    """One slider step with the keyboard; {written, shown, finished} in ms (None when the run never ended)."""
    from tools import browser

    page.bring_to_front()
    page.get_by_role("slider").first.focus()
    page.evaluate(WATCH, [CAPTION])
    page.keyboard.press(key)
    page.wait_for_function("() => window.__move.done", timeout=60_000)
    times = page.evaluate("() => window.__move")
    browser.wait_idle(page, settle_ms=300)
    return times


KEYS = ("written", "shown", "finished")


def measure(moves: int = 24, model: str | None = None, variants: dict | None = None, block: int = 6) -> dict:
    """Serve the app once per variant (name -> extra environment), move each explorer's slider ``moves``
    times; per variant, per-move times (ms) and their medians.

    Moves come in blocks of ``block`` in one direction, the next block back (so the budget stays near
    where it started); every variant makes each block's moves in turn, the order alternating per block.
    """
    import contextlib

    from playwright.sync_api import sync_playwright

    from tools import browser

    variants = variants or {"as shipped": {}}
    times = {v: {f"{k}_ms": [] for k in KEYS} for v in variants}
    with contextlib.ExitStack() as stack, sync_playwright() as p:
        urls = {v: stack.enter_context(browser.serve(env=env)) for v, env in variants.items()}
        chromium = browser.launch(p)
        try:
            pages = {v: _open(chromium, url, model) for v, url in urls.items()}
            for page in pages.values():  # two warm-up moves each (curve, caches): not counted
                for key in ("ArrowRight", "ArrowLeft"):
                    _move(page, key)
            for b in range(-(-moves // block)):
                key = "ArrowRight" if b % 2 == 0 else "ArrowLeft"
                order = list(pages.items()) if b % 2 == 0 else list(pages.items())[::-1]
                for v, page in order:
                    for _ in range(min(block, moves - b * block)):
                        t = _move(page, key)
                        if t["finished"] is not None and t["shown"] is not None:
                            for k in KEYS:
                                times[v][f"{k}_ms"].append(t[k])
        finally:
            chromium.close()
    for t in times.values():
        t["moves"] = len(t["shown_ms"])
        for k in KEYS:
            t[f"{k}_median_ms"] = statistics.median(t[f"{k}_ms"]) if t[f"{k}_ms"] else None
    return times


def main(argv=None):
    """Command line: ``python benchmarks/app_slider.py [--moves N] [--model NAME] [--ab]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=24, help="timed slider moves (at least 20 for the issue's medians)")
    ap.add_argument("--model", default=None, help="zoo model to select first (default: the app's default)")
    ap.add_argument("--ab", action="store_true", help="also measure the app without the numbers-first pause, "
                                                      "interleaved with the shipped app in one browser")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    r = measure(args.moves, args.model, VARIANTS if args.ab else None)
    load_after = os.getloadavg()
    print(f"slider moves in Chromium, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"{'':48}{'moves':>6}{'median':>10}{'target':>10}{'min':>8}{'max':>8}")
    for variant, t in r.items():
        for label, key, target in (("new numbers in the page", "written", None),
                                   ("new numbers shown", "shown", SHOWN_TARGET_MS),
                                   ("rerun finished", "finished", FINISHED_TARGET_MS)):
            values, median = t[f"{key}_ms"], t[f"{key}_median_ms"]
            if not values:
                print(f"{variant + ': ' + label:48}{0:6}  no move finished")
                continue
            ok = "" if target is None else "ok" if median <= target else "OVER"
            print(f"{variant + ': ' + label:48}{len(values):6}{median:8.0f}ms{'' if target is None else '<= %.0f' % target:>10}"
                  f"{min(values):8.0f}{max(values):8.0f}  {ok}")
    print(json.dumps({v: {k: x for k, x in t.items() if not k.endswith("_ms") or "median" in k} for v, t in r.items()}
                     | {"load_before": load_before[0], "load_after": load_after[0]}))


if __name__ == "__main__":
    main()
