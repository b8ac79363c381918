"""Compare models: accuracy-vs-budget curves side by side, budgets for a target, measured speedups."""

import numpy as np
import pandas as pd
import streamlit as st

from dynexit import viz
from dynexit.zoo import folder
from dynexit_app import common, entries, logic, state


def load_tests(names: list[str]) -> dict:
    """{name: test table} of the models whose tables load; a damaged file leaves its model out, in an
    error box, and the others are still compared."""
    tests, damaged = {}, {}
    for n in names:
        try:
            common.table(n, "val")
            tests[n] = common.table(n, "test")
        except ValueError as err:
            damaged[n] = err
    for n, err in damaged.items():
        st.error(f"Cannot load **{entries.label(n)}**, left out: {err}", icon=":material/error:")
    return tests


def curves_plot(tests: dict, curves: dict):
    """Every model's accuracy-vs-budget curve (single-exit models: points), optionally every exit alone."""
    def exits(t):
        """(cumulative MFLOPs, test accuracy, name) of each exit of the test table ``t`` used alone."""
        return t.costs, t.exit_accuracy(), list(t.exit_names)

    multi = {n: (c["cost"], c["accuracy"]) for n, c in curves.items() if not common.is_static(tests[n])}
    static = {n: exits(t) for n, t in tests.items() if common.is_static(t)}
    if st.toggle("Also show each exit on its own (every image stops there)", key="compare_exits"):
        static.update({f"{n}: single exits": exits(t) for n, t in tests.items() if not common.is_static(t)})
    fig = viz.accuracy_vs_cost(multi, static, unit=next(iter(tests.values())).cost_unit)
    zoom = st.selectbox("Accuracy axis", ["every model", *tests], key="compare_zoom",
                        format_func=lambda z: z if z == "every model" else f"zoomed to {z}",
                        help="The models span several points of accuracy, which flattens the curves of the close ones "
                             "(the CNNs): zoom the accuracy axis to one model's curve (the others are cut where they "
                             "leave it), or drag a box on the plot; double-click resets.")
    if zoom != "every model":
        fig.update_yaxes(range=logic.zoom_range(curves[zoom]["accuracy"], tests[zoom].exit_accuracy()))
    st.plotly_chart(fig, width="stretch", key="compare_curves")


def accuracy_at_budgets(tests: dict, curves: dict):
    """A table: each model's test accuracy at budgets the user types (per image, in the tables' cost unit)."""
    unit = next(iter(tests.values())).cost_unit  # one unit: the page compares tables of one unit only
    st.subheader("Accuracy at chosen budgets")
    st.caption(f"Each model's test accuracy when it may spend at most this many {unit} per image on average "
               "(read off its curve; – where the model cannot run that cheaply).")
    lo = min(float(t.costs[0]) for t in tests.values())
    hi = max(float(t.costs[-1]) for t in tests.values())
    default = ", ".join(f"{b:.3g}" for b in np.linspace(lo, hi, 4)[1:])
    text = st.text_input(f"Budgets in {unit} per image, separated by commas", default, key="compare_budgets")
    try:
        budgets = sorted({float(b) for b in text.replace(";", ",").split(",") if b.strip()})
        if not all(np.isfinite(b) and b > 0 for b in budgets):  # float() reads "nan", "inf" and "-3" too
            raise ValueError
    except ValueError:
        st.error(f"Could not read {text!r}: write positive numbers of {unit} separated by commas, e.g. {default}")
        return
    if budgets:
        rows = {n: logic.accuracy_at_budgets(curves[n], budgets) for n in tests}
        df = pd.DataFrame({f"{b:g} {unit}": ["–" if np.isnan(rows[n][i]) else f"{100 * rows[n][i]:.2f}%" for n in tests]
                           for i, b in enumerate(budgets)}, index=list(tests))
        st.dataframe(df, width="stretch")


def budget_for_target(tests: dict, curves: dict):
    """A table: the least budget at which each model reaches a target accuracy, and its speedup."""
    st.subheader("Budget needed for a target accuracy")
    st.caption("The least average compute at which each model reaches the target on the test images, and how "
               "much faster that is than its own full model.")
    best_final = max(float(t.exit_accuracy()[-1]) for t in tests.values())
    target = st.number_input("Target accuracy (%)", 0.0, 100.0, round(100 * best_final - 1.0, 1), step=0.1,
                             key="compare_target") / 100
    out = []
    for n, t in tests.items():
        need = logic.budget_for_accuracy(curves[n], target)
        full = float(t.costs[-1])
        never = np.isnan(need)
        out.append({"model": n, t.cost_unit: "–" if never else viz.cost_text(need, 2),
                    "of its full cost": "–" if never else f"{need / full:.0%}",
                    "speedup": "–" if never else f"{full / need:.2f}x"})
    st.dataframe(pd.DataFrame(out), hide_index=True, width="stretch")
    st.caption("–: the model never reaches the target. Speedup: over running its full model on every image.")


# short headers and rounded numbers, so the table fits a 1024 px screen (the keys are logic.bench_row's)
BENCH_COLUMNS = {
    "model": st.column_config.TextColumn("model", width=150),
    "budget (MFLOPs)": st.column_config.NumberColumn("budget", format="%.1f", width=62,
                                                     help="the budget in MFLOPs per image"),
    "theoretical speedup": st.column_config.NumberColumn("FLOPs", format="%.2fx", width=62,
                                                         help="theoretical speedup: full MFLOPs / mean MFLOPs spent"),
    "measured speedup, batch 256": st.column_config.NumberColumn("b. 256", format="%.2fx", width=62,
                                                                 help="measured speedup at batch 256"),
    "measured speedup, batch 1": st.column_config.NumberColumn("b. 1", format="%.2fx", width=62,
                                                               help="measured speedup at batch 1"),
    "accuracy": st.column_config.TextColumn("accuracy", width=140,
                                            help="test accuracy of the full model → with early exit"),
}


def bench_table(rows: list[dict]) -> pd.DataFrame:
    """The bench rows as shown: both accuracies in one column (full → early exit), so six columns fit 1024 px."""
    def pct(v):
        return "–" if v is None else f"{100 * float(v):.2f}%"
    df = pd.DataFrame(rows)
    df["accuracy"] = [f"{pct(r['accuracy full'])} → {pct(r['accuracy early exit'])}" for r in rows]
    return df.drop(columns=["accuracy full", "accuracy early exit"])


def measured_speedups(names: list[str]):
    """The `dynexit bench` results of these models (those with weights): a table and bars; nothing without any."""
    if not names:
        return
    st.subheader("Measured speedups (`dynexit bench`)")
    st.caption("MFLOPs are a proxy. `dynexit bench` times real early exit on CPU (images that leave stop being "
               "computed) against the full model, on the test images, at the budget where the model keeps its final "
               "exit's validation accuracy. FLOPs = the theoretical speedup, full MFLOPs / mean MFLOPs spent; b. 256 and "
               "b. 1 = measured at batch 256 and batch 1; test accuracy of the full model → with early exit.")
    benches = {}
    for n in names:
        try:
            benches[n] = None if entries.is_upload(n) else folder.load_bench(n)
        except ValueError as err:  # a damaged bench file: say which and how to rebuild it, show the rest
            st.error(str(err), icon=":material/error:")
            benches[n] = None
    rows = [logic.bench_row(entries.label(n), b) for n, b in benches.items() if b]
    if rows:
        st.dataframe(bench_table(rows), hide_index=True, width="stretch", column_config=BENCH_COLUMNS)
        series = {k: [r[k] if r[k] is not None else np.nan for r in rows]
                  for k in ("theoretical speedup", "measured speedup, batch 256", "measured speedup, batch 1")}
        st.plotly_chart(viz.speedup_bars([r["model"] for r in rows], series), width="stretch", key="bench")
        machine = {b.get("machine") for b in benches.values() if b}
        st.caption("Measured on: " + ", ".join(sorted(m for m in machine if m)))
    missing = [n for n, b in benches.items() if not b]
    if missing:
        st.info("No bench result for: " + ", ".join(entries.label(n) for n in missing) + " (single-exit models have "
                "nothing to speed up; `dynexit zoo reproduce NAME` writes a zoo model's NAME.bench.json, "
                "`dynexit bench --model NAME.safetensors ... --json NAME.bench.json` any other's).")


def profiled_speedups(names: list[str]):
    """Per-exit speedups measured by `dynexit profile` (ms) next to the FLOPs speedups, for models with a profile."""
    st.subheader("Measured per-exit speedups (`dynexit profile`)")
    rows, machines = [], set()
    for n in names:
        try:
            prof = common.profile(n)
        except ValueError as err:
            st.error(str(err), icon=":material/error:")
            continue
        if prof is None or common.is_static(common.table(n, "test")):
            continue
        flops, ms = common.table(n, "test").costs, common.table(n, "test", common.MS).costs
        machines.add(common.machine(n))
        rows += [{"model": entries.label(n), "exit": e, "ms per image": round(float(m), 3), "MFLOPs": round(float(f), 2),
                  "measured speedup": round(float(ms[-1] / m), 2), "FLOPs speedup": round(float(flops[-1] / f), 2),
                  "measured / FLOPs": round(float((ms[-1] / m) / (flops[-1] / f)), 2)}
                 for e, m, f in zip(common.table(n, "test").exit_names, ms, flops)]
    if not rows:
        st.caption("No model has a latency profile yet: `dynexit profile --model NAME` measures one on this machine.")
        return
    st.caption("Leaving at each exit instead of the last, per image at batch 1: the speedup measured by "
               "`dynexit profile` against the one the MFLOPs promise (below 1: the exit saves less time than its "
               "MFLOPs say). Measured on " + "; ".join(sorted(machines)) + ".")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


choice = state.choices()
solver, criterion = choice.solver, choice.criterion


def comparable(a: str, b: str) -> bool:
    """Whether two entries' curves share axes: the same dataset (as their tables name it), classes and cost unit."""
    try:
        ta, tb = common.table(a, "test"), common.table(b, "test")
    except ValueError:  # a damaged file: offered, so that load_tests says what is wrong with it
        return True
    return (ta.meta.get("dataset"), ta.num_classes, ta.cost_unit) == (tb.meta.get("dataset"), tb.num_classes, tb.cost_unit)


available = [n for n in common.available_models() if comparable(choice.model, n)]
others = len(common.available_models()) - len(available)

st.title("Compare models")
st.markdown("Every model of the sidebar model's dataset on the same axes. A model is better where its curve is **higher** (more accurate) "
            "and further **left** (less compute). Single-exit models are single points. Curves use the solver "
            f"and criterion chosen in the sidebar (**{solver}**"
            + (f", {criterion}" if choice.uses_criterion else "") + "), fitted on validation images, measured on test.")

if choice.budget is not None:  # the sidebar model's budget, as set on the other pages (the curves span every budget)
    st.caption(f"Your budget for **{entries.label(choice.model)}**: **{choice.budget:g} {choice.unit}** per image "
               "(set with the slider of the budget explorer, the inspector or your own image).")
if others:
    st.caption(f"{others} other model(s) of the folder were trained on other data (or count costs in another unit): "
               "pick one in the sidebar to compare it with its own kind.")
if not set(st.session_state.get("compare_models", [])) <= set(available):  # the sidebar switched to other data
    del st.session_state["compare_models"]
chosen = st.multiselect("Models", available, default=available, key="compare_models", format_func=entries.label)
if not chosen:
    st.info("Choose at least one model.")
    st.stop()

tests = load_tests(chosen)
if not tests:
    st.stop()
curves = {n: common.solver_curve(n, solver, criterion) for n in tests}
# what the plots and tables show: labels ("mine (uploaded)", "digits_cnn (tables only)"), never internal names
shown_tests = {entries.label(n): t for n, t in tests.items()}
shown_curves = {entries.label(n): c for n, c in curves.items()}
curves_plot(shown_tests, shown_curves)
accuracy_at_budgets(shown_tests, shown_curves)  # one under the other: side by side, a 1024 px screen cut their columns
budget_for_target(shown_tests, shown_curves)
if next(iter(tests.values())).cost_unit == common.MFLOPS:  # tables in measured ms need neither bench nor profile
    measured_speedups([n for n in tests if entries.has_weights(n)])
    profiled_speedups(list(tests))
