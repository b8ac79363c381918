"""How long does the app take to answer a slider move? (issue 6: median full rerun <= 300 ms)

Runs the app with Streamlit's AppTest on the zoo model with the largest test table (the most
logits), warms it up (tables loaded, the accuracy curve fitted), then moves the budget slider
through 20 values spread over the model's whole range and times each full rerun of the script
(AppTest reruns the whole page, not only the slider's fragment, so this is an upper bound of what
a browser user waits for). Every value is new, so each rerun really fits the solver and evaluates.

    .venv/bin/python benchmarks/app_rerun.py                   # the shipped zoo (data/zoo)
    DYNEXIT_ZOO=runs/devzoo .venv/bin/python benchmarks/app_rerun.py --solver geometric
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGET_MS = 300.0


def largest_model() -> str:
    """The available zoo model whose test table holds the most logits (N x K x C)."""
    from dynexit import zoo

    names = [n for n in zoo.list() if zoo.available(n)]
    if not names:
        raise SystemExit(f"no zoo model is complete in {zoo.zoo_dir()}: build one with `dynexit zoo reproduce NAME`")
    return max(names, key=lambda n: zoo.load_table(n, "test").logits.size)


def run(model: str | None = None, solver: str | None = None, values: int = 20) -> dict:
    import numpy as np
    from streamlit.testing.v1 import AppTest

    from dynexit import zoo

    model = model or largest_model()
    test = zoo.load_table(model, "test")
    if test.num_exits < 2:
        raise SystemExit(f"{model} has a single exit: no budget slider to move")
    at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=600)
    at.run()
    at.selectbox(key="model").set_value(model).run()
    if solver:
        at.selectbox(key="solver").set_value(solver).run()
    key = f"explorer_budget_{model}"
    slider = at.slider(key=key)
    lo, hi, step = slider.min, slider.max, slider.step
    grid = [round(lo + round(i * (hi - lo) / (values - 1) / step) * step, 10) for i in range(values)]
    at.slider(key=key).set_value(grid[len(grid) // 2] + step).run()  # warm-up at a value not timed
    times = []
    for v in grid:
        t0 = time.perf_counter()
        at.slider(key=key).set_value(v).run()
        times.append(time.perf_counter() - t0)
        if at.exception:
            raise SystemExit(f"the app raised at budget {v}: {at.exception[0].value}")
    ms = np.asarray(times) * 1e3
    return {"model": model, "test_table": f"{test.num_samples} x {test.num_exits} x {test.num_classes}",
            "solver": solver or at.selectbox(key="solver").value, "values": len(grid),
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max()),
            "target_ms": TARGET_MS, "all_ms": [round(float(x), 1) for x in ms]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="zoo model (default: the one with the largest test table)")
    ap.add_argument("--solver", help="threshold solver (default: the app's default)")
    ap.add_argument("--values", type=int, default=20, help="slider values to time")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    r = run(args.model, args.solver, args.values)
    print(f"{r['model']} (test table {r['test_table']}), solver {r['solver']}: median full rerun "
          f"{r['median_ms']:.0f} ms over {r['values']} slider values (p90 {r['p90_ms']:.0f}, max {r['max_ms']:.0f}); "
          f"target <= {TARGET_MS:.0f} ms: {'OK' if r['median_ms'] <= TARGET_MS else 'TOO SLOW'}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0 if r["median_ms"] <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
