"""Deadlines: anytime prediction when inference may be interrupted at an unknown moment.

The Multi-Exit ViT paper's edge / IoT setting (Bakhtiarnia et al., 2021; MSDNet's "anytime
classification"): the time available per image is variable and not known in advance. The user picks a
deadline distribution; :mod:`dynexit.anytime` gives the exact expected accuracy of anytime inference,
of budgeted early exit (the sidebar's rule at its budget) and of the oracle, from the ExitTable.
"""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dynexit import viz
from dynexit.anytime import DISTRIBUTIONS, Deadline
from dynexit_app import common, entries, logic, state

choice = state.choices()
name, solver, criterion, unit = choice.model, choice.solver, choice.criterion, choice.unit
with common.zoo_guard(name):
    test = common.table(name, "test", unit)
    val = common.table(name, "val", unit)
names = list(test.exit_names)
costs = test.costs
POLICIES = {"anytime": "Anytime: the last exit finished",
            "budgeted": "Budgeted early exit, interrupted",
            "oracle": "Oracle (knows the labels)"}

st.title("Deadlines")
st.markdown(
    "On an edge device the time left for an image is often **not known in advance**: the computation may be "
    "interrupted at any moment and must answer with what it has (the *anytime* setting of the Multi-Exit ViT "
    "and MSDNet papers). Pick how the deadline is distributed; the accuracies below are exact expectations over "
    "that distribution, computed from every test image's answer at every exit (no sampling).")
st.markdown(
    f"- **Anytime**: every image runs until the deadline and answers with the last exit finished.\n"
    f"- **Budgeted early exit**: the sidebar's **{solver}** rule at your budget; an image stops at its planned exit "
    "when that exit finishes before the deadline, else it answers with the last exit finished.\n"
    "- **Oracle**: right whenever the first exit that gets the image right has finished (no policy does better).")


def _deadline_inputs() -> tuple[Deadline, str]:
    """The distribution and its parameters (in ``unit``), and how an unanswered image counts."""
    c1, c2 = st.columns([1, 2])
    kind = c1.selectbox("Deadline distribution", DISTRIBUTIONS, index=2, key="deadline_kind",
                        help="fixed: always the same; uniform: anywhere between two values; normal: around a mean; "
                             "exponential: an interruption that can come at any moment (memoryless).")
    params = {}
    ranges = logic.deadline_defaults(kind, costs)
    cols = c2.columns(len(ranges))
    step = logic.slider_steps(costs)[2]
    for col, (p, (lo, hi, default)) in zip(cols, ranges.items()):
        lo, hi = round(lo, 10), round(max(hi, lo + step), 10)
        value = float(np.clip(round(default / step) * step, lo, hi))
        decimals = max(0, int(-np.floor(np.log10(step))))  # as many as the step has: 0.0025 is not 0.00
        params[p] = col.slider(f"{p} ({unit})", min_value=lo, max_value=hi, value=value, step=step,
                               format=f"%.{decimals}f", key=f"deadline_{kind}_{p}_{name}_{unit}")
    if kind == "uniform" and params["low"] > params["high"]:
        st.warning("low is above high: swapped.")
        params["low"], params["high"] = params["high"], params["low"]
    how = st.radio("When no exit has finished by the deadline, the answer", list(logic.NO_ANSWER),
                   format_func=lambda k: logic.NO_ANSWER[k], key="deadline_no_answer", horizontal=True)
    return Deadline.make(kind, **params), how


def _numbers(results: dict, deadline: Deadline, how: str, budget: float):
    c = st.columns(3)
    for col, (k, label) in zip(c, POLICIES.items()):
        col.metric(label, f"{results[k].accuracy:.2%}")
    prior = (f"the most frequent validation class ({entries.class_names(name)[np.bincount(val.labels).argmax()]}), right for "
             f"{np.mean(test.labels == np.bincount(val.labels).argmax()):.1%} of the test images")
    none = results["anytime"].answer_share[0]
    st.caption(f"Deadline {deadline.describe(unit)}. With probability {none:.1%} no exit has finished "
               f"({viz.cost_text(costs[0], 2)} {unit} for the first); such an image "
               + ("counts as **wrong**." if how == "wrong" else f"answers with a **prior guess**: {prior}.")
               + f" Budgeted rule: {solver} at {budget:g} {unit} per image (the sidebar's budget).")


LEGEND_ON_TOP = dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0)  # clear of the x-axis title


def _shares(results: dict):
    # short tick labels (exit numbers, as in the explorer's tabs) stay horizontal on a half-width column;
    # the hover gives each exit's name
    labels = ["none"] + [str(k + 1) for k in range(len(names))]
    full = ["no exit finished"] + [f"exit {k + 1}: {n}" for k, n in enumerate(names)]
    df = pd.DataFrame({POLICIES[k]: np.round(100 * r.answer_share, 1) for k, r in results.items()}, index=labels)
    fig = go.Figure([go.Bar(x=labels, y=df[col], name=col, marker_color=viz.color(i), customdata=full,
                            hovertemplate="%{customdata}: %{y:.1f}%<extra>" + col + "</extra>")
                     for i, col in enumerate(df.columns)])
    fig.layout.template = viz.TEMPLATE
    fig.update_layout(barmode="group", height=380, margin=dict(l=10, r=10, t=80, b=10), legend=LEGEND_ON_TOP)
    fig.update_xaxes(title="answering exit (hover for its name)")
    fig.update_yaxes(title="share of answers (%)")
    st.plotly_chart(fig, width="stretch", key="deadline_shares")


def _fixed_curves(exits, deadline: Deadline):
    curves = logic.fixed_deadline_curves(test, exits, costs)
    fig = go.Figure([go.Scatter(x=curves["deadlines"], y=100 * curves[k], name=POLICIES[k], line_shape="hv",
                                line=dict(color=viz.color(i))) for i, k in enumerate(POLICIES)])
    sample = deadline.sample(400, seed=0)
    fig.add_trace(go.Histogram(x=sample, name="deadlines (a sample)", yaxis="y2", opacity=0.25, marker_color="gray",
                               histnorm="probability"))
    fig.layout.template = viz.TEMPLATE
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=80, b=10), legend=LEGEND_ON_TOP,
                      yaxis=dict(title="accuracy (%)"),  # the histogram's axis (y2) has no title nor ticks
                      yaxis2=dict(overlaying="y", side="right", showgrid=False, showticklabels=False))
    fig.update_xaxes(title=f"fixed deadline ({unit} per image)", range=[0, float(curves["deadlines"][-1])])
    st.plotly_chart(fig, width="stretch", key="deadline_curves")


@st.fragment
def deadline_dependent():
    """Reruns alone when a deadline control moves: exact expectations, numpy over the cached tables."""
    if common.is_static(test):  # one note, not the budget control's too: there is neither a budget nor a policy
        st.info(f"**{entries.title(name)}** has a single exit: it answers only when its {viz.cost_text(costs[0])} {unit} "
                "are done, so every policy is the same. Pick a multi-exit model in the sidebar to compare them.")
        budget = float(costs[0])
    else:
        budget = state.budget_control(name, test, key="deadline_budget", unit=unit)
    deadline, how = _deadline_inputs()
    view = common.budget_view(name, solver, criterion, budget, unit)
    results = logic.deadline_results(test, view.result.exits, deadline, costs, how, val.labels)
    _numbers(results, deadline, how, budget)
    left, right = st.columns(2)
    with left:
        st.subheader("Who answers")
        st.caption("Expected share of test images answered by each exit under this deadline distribution.")
        _shares(results)
    with right:
        st.subheader("Accuracy at a fixed deadline")
        st.caption("Each policy when the deadline is always the same (no answer counts as wrong); grey: how your "
                   "distribution spreads the deadline.")
        _fixed_curves(view.result.exits, deadline)
    if unit == common.MS:
        st.caption(f"Latency measured on {common.machine(name)}: on another machine measure it with "
                   f"`dynexit profile --model {name}`.")


deadline_dependent()
