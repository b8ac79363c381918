"""Compare models: accuracy-vs-budget curves side by side, budgets for a target, measured speedups."""

import numpy as np
import pandas as pd
import streamlit as st

from app import common, logic
from dynexit import viz, zoo

solver, criterion = st.session_state.solver, st.session_state.criterion
available = common.available_models()

st.title("Compare models")
st.markdown("Every zoo model on the same axes. A model is better where its curve is **higher** (more accurate) "
            "and further **left** (less compute). Single-exit models are single points. Curves use the solver "
            f"and criterion chosen in the sidebar (**{solver}**"
            + (f", {criterion}" if solver not in ("learned", "crossval") else "") + "), fitted on validation images, measured on test.")

budget = common.current_budget(st.session_state.model)
if budget is not None:  # the sidebar model's budget, as set on the other pages (the curves span every budget)
    st.caption(f"Your budget for **{st.session_state.model}**: **{budget:g} MFLOPs** per image "
               "(set with the slider of the budget explorer, the inspector or your own image).")
chosen = st.multiselect("Models", available, default=available, key="compare_models")
if not chosen:
    st.info("Choose at least one model.")
    st.stop()

tests, damaged = {}, {}
for n in chosen:  # a damaged zoo file drops that model (in an error box), the others are still compared
    try:
        tests[n] = common.table(n, "test")
        common.table(n, "val")
    except ValueError as err:
        damaged[n] = err
for n, err in damaged.items():
    st.error(f"Cannot load zoo model **{n}**, left out: {err}", icon=":material/error:")
chosen = [n for n in chosen if n in tests]
if not chosen:
    st.stop()
curves = {n: common.solver_curve(n, solver, criterion) for n in chosen}
multi = {n: (c["cost"], c["accuracy"]) for n, c in curves.items() if tests[n].num_exits > 1}
static = {n: (tests[n].costs, tests[n].exit_accuracy(), list(tests[n].exit_names))
          for n in chosen if tests[n].num_exits == 1}
show_exits = st.toggle("Also show each exit on its own (every image stops there)", key="compare_exits")
if show_exits:
    static.update({f"{n}: single exits": (tests[n].costs, tests[n].exit_accuracy(), list(tests[n].exit_names))
                   for n in chosen if tests[n].num_exits > 1})
st.plotly_chart(viz.accuracy_vs_cost(multi, static), width="stretch", key="compare_curves")

lo = min(float(t.costs[0]) for t in tests.values())
hi = max(float(t.costs[-1]) for t in tests.values())
left, right = st.columns(2)
with left:
    st.subheader("Accuracy at chosen budgets")
    st.caption("Each model's test accuracy when it may spend at most this many MFLOPs per image on average "
               "(read off its curve; – where the model cannot run that cheaply).")
    default = ", ".join(f"{b:.1f}" for b in np.linspace(lo, hi, 4)[1:])
    text = st.text_input("Budgets in MFLOPs per image, separated by commas", default, key="compare_budgets")
    try:
        budgets = sorted({float(b) for b in text.replace(";", ",").split(",") if b.strip()})
        if not all(np.isfinite(b) and b > 0 for b in budgets):  # float() reads "nan", "inf" and "-3" too
            raise ValueError
    except ValueError:
        st.error(f"Could not read {text!r}: write positive numbers of MFLOPs separated by commas, e.g. {default}")
        budgets = []
    if budgets:
        rows = {n: logic.accuracy_at_budgets(curves[n], budgets) for n in chosen}
        df = pd.DataFrame({f"{b:g} MFLOPs": ["–" if np.isnan(rows[n][i]) else f"{100 * rows[n][i]:.2f}%" for n in chosen]
                           for i, b in enumerate(budgets)}, index=chosen)
        st.dataframe(df, width="stretch")
with right:
    st.subheader("Budget needed for a target accuracy")
    st.caption("The least average compute at which each model reaches the target on the test images, and how "
               "much faster that is than its own full model.")
    best_final = max(float(t.exit_accuracy()[-1]) for t in tests.values())
    target = st.number_input("Target accuracy (%)", 0.0, 100.0, round(100 * best_final - 1.0, 1), step=0.1,
                             key="compare_target") / 100
    out = []
    for n in chosen:
        need = logic.budget_for_accuracy(curves[n], target)
        full = float(tests[n].costs[-1])
        never = np.isnan(need)
        out.append({"model": n, "MFLOPs": "–" if never else f"{need:.2f}",
                    "of its full cost": "–" if never else f"{need / full:.0%}",
                    "speedup": "–" if never else f"{full / need:.2f}x"})
    st.dataframe(pd.DataFrame(out), hide_index=True, width="stretch")
    st.caption("–: the model never reaches the target. Speedup: over running its full model on every image.")

st.subheader("Measured speedups (`dynexit bench`)")
st.caption("MFLOPs are a proxy. `dynexit bench` times real early exit on CPU (images that leave stop being "
           "computed) against the full model, on the test images, at the budget where the model keeps its final "
           "exit's validation accuracy. Theoretical = full MFLOPs / mean MFLOPs spent.")
benches = {}
for n in chosen:
    try:
        benches[n] = zoo.load_bench(n)
    except ValueError as err:  # a damaged bench file: say which and how to rebuild it, show the rest
        st.error(str(err), icon=":material/error:")
        benches[n] = None
rows = [logic.bench_row(n, b) for n, b in benches.items() if b]
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    series = {k: [r[k] if r[k] is not None else np.nan for r in rows]
              for k in ("theoretical speedup", "measured speedup, batch 256", "measured speedup, batch 1")}
    st.plotly_chart(viz.speedup_bars([r["model"] for r in rows], series), width="stretch", key="bench")
    machine = {b.get("machine") for b in benches.values() if b}
    st.caption("Measured on: " + ", ".join(sorted(m for m in machine if m)))
missing = [n for n, b in benches.items() if not b]
if missing:
    st.info("No bench result for: " + ", ".join(missing) + " (single-exit models have nothing to speed up; "
            "`dynexit zoo reproduce NAME` writes NAME.bench.json).")
