"""Image inspector: one test image at every exit, where it leaves, where the model looks."""

import numpy as np
import pandas as pd
import streamlit as st

from dynexit import explain, viz
from dynexit_app import common, entries, logic, state

choice = state.choices()
name, solver, criterion, unit = choice.model, choice.solver, choice.criterion, choice.unit
with common.zoo_guard(name):
    test = common.table(name, "test", unit)
    common.table(name, "val", unit)  # the solvers fit on it
names = list(test.exit_names)
K, N = test.num_exits, test.num_samples
CLASSES, SHORT = entries.class_names(name), entries.short_names(name)
HOW = [state.FROM_GALLERY, "by index", "by class", "hardest", "easiest"]

st.title("Image inspector")
st.markdown("Pick one test image and follow it through the network: how confident each exit is, what each exit "
            "predicts, where it leaves at your budget, and which parts of the image the model looks at.")


@st.cache_data(show_spinner="Capturing the model's attention on this image ...", max_entries=256)
def attention(name: str, row: int, version: tuple) -> list:
    """``explain.attention_views`` of test row ``row`` (one entry per attention kind; [] for a CNN)."""
    return explain.attention_views(common.model(name), entries.model_input(entries.image(name, row)))


@st.cache_data(show_spinner="Computing the attribution (captum) ...", max_entries=256)
def attribution(name: str, row: int, k: int, method: str, target: int, version: tuple):
    """``explain.attribution`` of exit ``k`` for class ``target`` on test row ``row``: (signed map (H, W), class)."""
    return explain.attribution(common.model(name), entries.model_input(entries.image(name, row)), k, target=target,
                               method=method)


def choose_row() -> int:
    """The test-table row of the image to inspect."""
    how = st.radio("Choose an image", HOW, horizontal=True, key=state.INSPECT_HOW)
    if how == state.FROM_GALLERY:
        row = state.picked_row()
        if row is None or not 0 <= row < N:
            st.info("No image picked yet: open one from a gallery of the budget explorer. Showing the first test image.")
            return 0
        return int(row)
    c1, c2 = st.columns([1, 2])
    if how == "by index":
        return int(c1.number_input(f"Test image (0 to {N - 1})", 0, N - 1, 0, key="inspect_index"))
    if how == "by class":
        cls = c1.selectbox("Class", range(len(CLASSES)), format_func=lambda c: CLASSES[c], key="inspect_class")
        rows = np.flatnonzero(test.labels == cls)
        if not len(rows):
            st.warning("No test image of this class.")
            return 0
        i = c2.number_input(f"Which one ({len(rows):,} of this class)", 1, len(rows), 1, key=f"inspect_class_{cls}")
        return int(rows[i - 1])
    rank = c1.number_input(f"Rank (1 = the {how})", 1, N, 1, key=f"inspect_rank_{how}",
                           help="hardest: fewest exits right, then least sure of the true class at the last exit. "
                                "easiest: most sure of the true class already at the first exit.")
    return int(logic.rank_images(test, how)[rank - 1])


row = choose_row()
img = entries.image(name, row)  # None when the table's images are not available here
gray = None if img is None else (img if img.ndim == 2 else img.mean(axis=-1))  # what the maps are drawn over
label = int(test.labels[row])
probs = test.probabilities_of(row)  # (K, C)


@st.fragment
def budget_dependent():
    """Reruns alone when the slider moves: where this image leaves at the budget, its scores, each exit."""
    c_img, c_main = st.columns([1, 3])
    with c_img:
        words = f"test image #{int(test.index[row])}, true class: {CLASSES[label]}"
        if img is None:
            st.caption(f"{words}. Image not shown: {entries.images_problem(name)}.")
        else:
            st.image(entries.enlarge(img), clamp=True, caption=words)
    with c_main:
        budget = state.budget_control(name, test, key="inspector_budget", unit=unit)
        view = common.budget_view(name, solver, criterion, budget, unit)
        k = int(view.result.exits[row])
        right = bool(test.correct[row, k])
        when = "At this budget it" if test.costs[-1] > test.costs[0] else "It"  # equal costs: no budget to speak of
        st.markdown(f"{when} leaves at exit **{k + 1} ({names[k]})** after **{viz.cost_text(test.costs[k])} {unit}** "
                    f"of {viz.cost_text(test.costs[-1])}, predicting **{CLASSES[test.predictions[row, k]]}**: "
                    f"**{'right' if right else 'wrong'}**.")
        if common.is_static(test):
            st.caption(f"{name} has a single exit: no exit score, no threshold; every image runs the whole network.")
            return _exit_table(view, k)
        score_name = view.score_name
        fig = viz.confidence_trace(view.scores[row], view.thresholds, names, k,
                                   [SHORT[p] for p in test.predictions[row]], list(test.correct[row]),
                                   criterion=score_name)
        st.plotly_chart(fig, width="stretch", key="trace")
        st.caption("Bars: this image's exit score at every exit (blue: that exit is right, orange: wrong), with the "
                   "exit's prediction written in the bar. Dotted: the thresholds at this budget. The image leaves at "
                   "the first exit whose bar reaches its threshold; the last exit takes everyone left.")
    _exit_table(view, k)


def _threshold_words(t: float, last: bool) -> str:
    """A threshold for the table: the number, or what an infinite one means (the last exit has none)."""
    if last:
        return "none (last)"
    if np.isfinite(t):
        return f"{t:.3f}"
    return "closed" if t > 0 else "open"


def _exit_table(view, k: int):
    """One row per exit: cost so far, prediction, probabilities, score and threshold; ▶ marks where it leaves."""
    table = pd.DataFrame({
        "exit": [f"{'▶ ' if j == k else ''}{j + 1}. {n}" for j, n in enumerate(names)],
        unit: [viz.cost_text(c, 2) for c in test.costs],
        "prediction": [CLASSES[p] for p in test.predictions[row]],
        "p(top)": np.round(probs.max(axis=1), 3),
        "p(true)": np.round(probs[:, label], 3),
        "right": test.correct[row],
        "score": np.round(view.scores[row], 3),
        "threshold": [_threshold_words(t, j == K - 1) for j, t in enumerate(view.thresholds)],
    })
    # widths in pixels, headers short and explained on hover: the columns fit a 1024 px screen without scrolling
    col = st.column_config
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "exit": col.TextColumn(width=130, help="▶: the exit this image leaves at, at this budget"),
        unit: col.TextColumn(width=56, help=f"{unit} per image spent to reach this exit (cumulative)"),
        "prediction": col.TextColumn(width=92),
        "p(top)": col.NumberColumn(width=54, help="the probability of the exit's prediction"),
        "p(true)": col.NumberColumn(width=56, help=f"the probability of the true class, {CLASSES[label]}"),
        "right": col.CheckboxColumn(width=44),
        "score": col.NumberColumn(width=54, help=f"the image's {view.score_name} at this exit"),
        "threshold": col.TextColumn(width=84, help="the image leaves at the first exit whose score reaches this; "
                                                   "open: everyone leaves, closed: nobody does; the last exit takes "
                                                   "everyone left"),
    })


budget_dependent()

def _grid_words(title: str, maps: dict) -> str:
    """What the "(7x7)" in a map's title means: the grid it is drawn on, and how many pixels a cell covers."""
    import re

    grids = sorted({(int(h), int(w)) for key in maps for h, w in re.findall(r"\((\d+)x(\d+)\)", key)}, reverse=True)
    if not grids:
        return ""
    h, w = gray.shape
    what = {"x2z": "the stage's feature map, average-pooled to a small grid before the latent code reads it "
                   "(attention over a 7x7 grid is cheap whatever the image size)",
            "z2x": "the stage's own feature map, which gets smaller the deeper the CNN goes"}.get(
        title.split(":")[0], "the token grid of that part of the model")
    cells = "; ".join(f"on {gh}x{gw} a cell covers about {h / gh:.0f}x{w / gw:.0f} pixels" for gh, gw in grids)
    return f" In brackets, each map's grid: {what}. The maps are stretched over the {h}x{w} image ({cells})."


def where_it_looks():
    """The model's attention on this image (nothing for a CNN: the attribution below still works)."""
    st.subheader("Where the model looks")
    if not entries.has_weights(name):
        st.info(f"{entries.title(name)} has tables only: attention maps and attributions need its weights "
                "(NAME.safetensors + NAME.json beside the tables).", icon=":material/info:")
        st.stop()
    if img is None:
        st.info("Attention maps and attributions need the image, which is not available here.", icon=":material/info:")
        st.stop()
    if common.model_problem(name):  # damaged weights: the error box above the page says which file and how to rebuild it
        st.stop()
    views = attention(name, row, common.model_key(name))
    if not views:
        st.caption(f"{name} has no attention layers (it is a CNN); the attribution below shows which pixels matter.")
    for v in views:
        st.markdown(f"**{v.title}**")
        st.caption(v.description + _grid_words(v.title, v.maps))
        st.plotly_chart(viz.attention_overlays(gray, v.maps, size=170), width="stretch", key=f"attn_{v.title}")


def which_pixels():
    """A captum attribution of one exit for one class, computed when the button asks for it."""
    st.subheader("Which pixels drive an exit (captum)")
    st.caption("Attribution of one exit's score for a class to every pixel. Integrated Gradients adds up the gradients "
               "along a path from a black image to this one; Saliency is the size of the gradient. Orange pixels raise "
               "the class score, purple ones lower it. Computed on demand (a few seconds), then cached.")
    c1, c2, c3 = st.columns(3)
    k_attr = c1.selectbox("Exit", range(K), index=K - 1, format_func=lambda j: f"{j + 1}. {names[j]}", key="attr_exit")
    method = c2.radio("Method", explain.ATTRIBUTION_METHODS, format_func=lambda m: m.replace("_", " "),
                      key="attr_method")
    target_kind = c3.radio("For the class", ["predicted at that exit", "true class"], key="attr_target")
    target = int(test.predictions[row, k_attr]) if target_kind == "predicted at that exit" else label
    request = (name, row, k_attr, method, target)
    if st.button("Compute attribution", icon=":material/bolt:"):
        state.request_attribution(request)
    if state.attribution_requested(request):
        amap, _ = attribution(name, row, k_attr, method, target, common.model_key(name))
        st.plotly_chart(viz.attribution_map(gray, amap, title=f"{method.replace('_', ' ')} of exit {k_attr + 1} "
                                            f"({names[k_attr]}) for class {CLASSES[target]}"),
                        width="stretch", key="attribution")


where_it_looks()
which_pixels()
