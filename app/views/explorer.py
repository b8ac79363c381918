"""Budget explorer: one slider, the compute budget; everything below follows it."""

import time

import numpy as np
import streamlit as st

from dynexit import viz
from dynexit_app import common, entries, logic, state

choice = state.choices()
name, solver, criterion, unit = choice.model, choice.solver, choice.criterion, choice.unit
with common.zoo_guard(name):
    test = common.table(name, "test", unit)
    common.table(name, "val", unit)  # the solvers fit on it
names = list(test.exit_names)
static = common.is_static(test)
CLASSES, SHORT = entries.class_names(name), entries.short_names(name)
NO_IMAGES = entries.images_problem(name)  # None when the test images can be drawn

st.title("Budget explorer")
st.markdown(
    "A **multi-exit network** has several classifiers (*exits*) along its depth: an easy image can stop at an early, "
    "cheap exit, a hard one goes on to deeper, costlier exits. Choose a **budget** (the average compute per image) "
    "and a solver picks, per exit, the confidence an image needs to leave there.")


def _caption(row: int, k: int, view) -> str:
    pred = int(test.predictions[row, k])
    mark = "✓" if test.correct[row, k] else "✗"
    return f"{mark} {SHORT[pred]} {view.confidence[row]:.0%}"


def _gallery_figure(most, least, k, view, title):
    """Most confident on the first row(s), least confident starting on a new row."""
    n = logic.GALLERY_SIZE
    pad = _pad(len(most), len(least))
    rows = np.concatenate([most, least]).astype(int)
    imgs = entries.images(name, rows)
    imgs = np.concatenate([imgs[:len(most)], np.full((pad, *imgs.shape[1:]), np.nan), imgs[len(most):]])
    caps = [_caption(r, k, view) for r in most] + [""] * pad + [_caption(r, k, view) for r in least]
    right = [bool(test.correct[r, k]) for r in most] + [None] * pad + [bool(test.correct[r, k]) for r in least]
    return viz.gallery(imgs, caps, right, cols=n, title=title, scale=_scale(imgs))


def _scale(imgs) -> int:
    """Upscaling for gallery tiles of about 84 pixels (3x for 28 x 28 images, 10x for digits' 8 x 8)."""
    return max(1, 84 // max(imgs.shape[1:3]))


def _pad(n_most: int, n_least: int) -> int:
    """Empty tiles after a gallery's most confident images, so the least confident start a new row."""
    return (-n_most) % logic.GALLERY_SIZE if n_least else 0


def _places(n_most: int, n_least: int) -> list[int]:
    """Tile positions in a gallery: the most confident first, the least confident from a new row."""
    return list(range(n_most)) + [n_most + _pad(n_most, n_least) + j for j in range(n_least)]


def _picker(rows, captions, places, key):
    """Choosing one image of a gallery opens it in the image inspector: one box, no button (fewer elements
    for the browser to redraw on each slider move: benchmarks/app_slider.py, issue 18). Each choice names
    its tile as the gallery shows it (row, place, caption), so two tiles with the same caption differ."""
    if not len(rows):
        return
    n = logic.GALLERY_SIZE
    labels = {int(r): f"row {p // n + 1}, image {p % n + 1}: {cap} (test image #{int(test.index[r])}, "
                      f"{CLASSES[test.labels[r]]})" for r, cap, p in zip(rows, captions, places)}
    state.gallery_picker(list(labels), key, labels.__getitem__)


def _cost(x: float, sign: bool = False) -> str:
    """A cost for a metric: two decimals, or three significant digits for tiny ones (costs of 1e-6 are not 0.00)."""
    fmt = ("+" if sign else "") + (".2f" if abs(x) >= 0.1 or x == 0 else ".3g")
    return f"{x:{fmt}}"


def _numbers(view):
    """The four headline numbers at this budget, and the notes that explain a surprising one."""
    c = st.columns(4)
    points, saved = round(100 * view.change_vs_final, 2), _cost(view.mean_cost - view.full_cost, sign=True)
    saved = None if abs(view.mean_cost - view.full_cost) <= 1e-9 * view.full_cost else saved
    # a change that rounds to zero (always so for a single-exit model) is gray, without a sign or an arrow
    c[0].metric("Accuracy (test)", f"{view.accuracy:.2%}",
                delta=f"{points:+.2f} points" if points else "same", delta_description="vs the final exit",
                delta_color="normal" if points else "off", delta_arrow="auto" if points else "off",
                help=f"Share of the {len(test):,} test images classified right, each at the exit it left. The change compares "
                     "with running every image through the whole model (the last exit).")
    c[1].metric(f"Mean {unit} per image", _cost(view.mean_cost),
                delta=saved or "same", delta_description="vs the full model",
                delta_color="inverse" if saved else "off", delta_arrow="auto" if saved else "off",
                help="Average compute actually spent per test image (the budget is met on the validation images).")
    c[2].metric("Speedup", f"{view.speedup:.2f}x", help=f"Full model's {unit} divided by the mean {unit} spent.")
    c[3].metric("Final exit alone", f"{view.final_accuracy:.2%}", help="Accuracy when every image goes to the last exit.")
    # (a single-exit model gets neither note: its one cost leaves nothing unspent, no smaller budget exists)
    if view.spending_note:
        st.info(f"This rule {view.spending_note}.", icon=":material/savings:")
    if dip := logic.accuracy_dip_note(view, common.dip_curve(name, solver, criterion, unit)):
        st.info(dip.replace("MFLOPs", unit), icon=":material/trending_down:")


def _curve_and_histogram(view):
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Accuracy vs budget")
        st.caption("A single exit: one point, every image pays the full cost (the star)." if static else
                   "The line: this solver at 12 budgets. Diamonds: each exit on its own (every image stops there). "
                   "Dashed: the oracle, which knows the labels and sends each image to its first right exit, the "
                   "best any threshold policy could do. The star is the budget you chose.")
        anytime = {"single exits": (test.costs, test.exit_accuracy(), names)}
        if static:  # a single point: no solver line, no oracle
            solver_line, oracle = None, None
        else:
            cv = common.solver_curve(name, solver, criterion, unit=unit)
            solver_line, oracle = {f"{solver} solver": (cv["cost"], cv["accuracy"])}, common.oracle(name, unit)
        fig = viz.accuracy_vs_cost(solver_line, anytime, oracle, (view.mean_cost, view.accuracy), unit=unit)
        st.plotly_chart(fig, width="stretch", key="curve")
        if not static and common.profile(name) is not None:
            _other_unit_curve()
    with right:
        st.subheader("Where the images leave")
        st.caption("Test images leaving at each exit at this budget, split into right (blue) and wrong (orange, "
                   "hatched). Exits are numbered as in the tabs below; hover a bar for its name.")
        fig = viz.exit_histogram(view.result.histogram_correct, view.result.histogram_wrong, names, test.costs, unit=unit)
        st.plotly_chart(fig, width="stretch", key="histogram")


def _other_unit_curve():
    """The same solver's curve in the other unit: measured ms next to counted MFLOPs (or back)."""
    other = common.MS if unit == common.MFLOPS else common.MFLOPS
    with st.expander(f"The same curve in {'measured milliseconds' if other == common.MS else 'MFLOPs'}",
                     expanded=False):
        t = common.table(name, "test", other)
        cv = common.solver_curve(name, solver, criterion, unit=other)
        fig = viz.accuracy_vs_cost({f"{solver} solver": (cv["cost"], cv["accuracy"])},
                                   {"single exits": (t.costs, t.exit_accuracy(), names)}, common.oracle(name, other),
                                   unit=other)
        st.plotly_chart(fig, width="stretch", key="curve_other_unit")
        speed = t.costs[-1] / t.costs
        st.caption(f"Latency measured on {common.machine(name)} (ms per image, batch 1). Speedup of each exit over "
                   "the last, measured vs counted: " + ", ".join(
                       f"{n} {s:.2f}x vs {f:.2f}x" for n, s, f in zip(names, *(
                           (speed, test.costs[-1] / test.costs) if other == common.MS else
                           (test.costs[-1] / test.costs, speed)))) + ".")


def _exit_galleries(view):
    st.subheader("Easy and hard images")
    st.caption("For each exit, the images that leave there at this budget: the most confident first, then the least "
               "confident. Blue frame and ✓: right; orange, thick frame and ✗: wrong. The caption is the prediction "
               "and its probability.")
    if NO_IMAGES:
        st.info(f"Images not shown: {NO_IMAGES}. Pick one below to see its scores in the inspector.",
                icon=":material/hide_image:")
    # only the open tab is drawn (labels stay fixed so the open tab survives a slider move)
    tabs = st.tabs([f"{k + 1}. {n}" for k, n in enumerate(names)], key="gallery_tab", on_change="rerun")
    for k, tab in enumerate(tabs):
        if not tab.open:
            continue
        with tab:
            most, least = logic.exit_gallery(view, k)
            n_k = int(view.result.histogram[k])
            if n_k == 0:
                st.write(f"No image leaves at {names[k]} at this budget.")
                continue
            share = view.result.histogram_correct[k] / n_k
            title = (f"{n_k:,} images leave at {names[k]}, {share:.1%} right. First row: most confident"
                     + ("; second row: least confident" if len(least) else ""))
            if NO_IMAGES:
                st.write(title.split(". First row")[0] + ".")
            else:
                st.plotly_chart(_gallery_figure(most, least, k, view, title), width="stretch", key=f"gallery_{k}")
            rows = np.concatenate([most, least]).astype(int)
            _picker(rows, [_caption(r, k, view) for r in rows], _places(len(most), len(least)), key=f"pick_{k}")


def _overthinking(view):
    n_over = len(view.overthinking)
    st.subheader(f"Overthinking: {n_over:,} image{'' if n_over == 1 else 's'}")
    st.caption("Images an earlier exit got right but that went on and left wrong: computing more made them worse "
               "(Kaya et al., 2019). The caption says the exit that was right first.")
    rows, first_right = logic.overthinking_gallery(view, test)
    if len(rows):
        caps = [f"✗ {SHORT[test.predictions[r, view.result.exits[r]]]}, right at {f + 1}"
                for r, f in zip(rows, first_right)]
        if not NO_IMAGES:
            imgs = entries.images(name, rows)
            fig = viz.gallery(imgs, caps, [False] * len(rows), cols=logic.GALLERY_SIZE, scale=_scale(imgs))
            st.plotly_chart(fig, width="stretch", key="overthinking")
        _picker(rows, caps, range(len(rows)), key="pick_over")
    else:
        st.write("None at this budget.")


@st.fragment
def budget_dependent():
    """Reruns alone when the slider moves: a solver fit and an evaluation on the cached tables."""
    state.follow_gallery_pick()  # an image was chosen under a gallery: to the inspector
    budget = state.budget_control(name, test, key="explorer_budget", unit=unit)
    if solver == "genetic" and not static:
        st.caption("The genetic search takes seconds per budget: expect a wait after each move (and for the curve).")
    view = common.budget_view(name, solver, criterion, budget, unit)
    _numbers(view)
    time.sleep(common.numbers_first_s())  # the browser draws the numbers alone (issue 18)
    _curve_and_histogram(view)
    # below the fold at 1280 x 800: the browser skips its style, layout and paint while it is off screen
    # (CSS content-visibility in streamlit_app.py), so the numbers are painted sooner after a move
    with st.container(key="galleries"):
        _exit_galleries(view)
        _overthinking(view)


budget_dependent()
