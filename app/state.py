"""What the user chose, as one typed value: the sidebar writes it, every page reads it through :func:`choices`.

Streamlit keeps a widget's value in ``st.session_state`` under the widget's key; this module is the only
code that knows those keys. The sidebar's selectboxes own ``model``, ``solver`` and ``criterion``; the
budget of each model (per image, one per model and unit, shared by every page) lives in
``st.session_state["budgets"][budget_key(model, unit)]`` and changes only when the user moves a budget
slider. The unit is MFLOPs, or ms when the model has a latency profile (``dynexit profile``) and the
user picks ms in the sidebar. Session
state belongs to one browser session, so nothing here is shared between threads; the shared objects
(models, tables) are the caches of ``common``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from dynexit import criteria, solvers

from . import common, entries, logic

MODEL, SOLVER, CRITERION, UNIT = "model", "solver", "criterion", "budget_unit"  # the sidebar's widget keys
BUDGETS = "budgets"  # {model name: budget in MFLOPs per image, "model [ms]": budget in ms per image}
PICKED_ROW, INSPECT_HOW = "inspect_row", "inspect_how"  # the image a gallery sends to the inspector
UPLOAD_VAL, UPLOAD_TEST, UPLOAD_ERROR = "upload_val_table", "upload_test_table", "upload_table_error"
UPLOAD_ROUND = "upload_round"  # bumped after each opened pair: fresh, empty uploaders for the next one
FROM_GALLERY = "from the gallery"
INSPECTOR_PAGE = "views/inspector.py"

CRITERION_HELP = ("How ready an image is to leave at an exit, computed from that exit's class probabilities: "
                  "max_prob = the top probability, entropy = how spread out the probabilities are, "
                  "margin = top-1 minus top-2, patience = how many exits in a row agree, random = a control.")
SOLVER_HELP = ("How the per-exit thresholds are chosen for a budget, on the validation images: crossval (ours, "
               "default) is MSDNet's geometric rule on the exit score that wins by cross-validation on the validation "
               "images; learned (ours) learns an exit score from all exits so far; lagrangian (ours) searches "
               "thresholds exactly; geometric is MSDNet's rule; genetic is the search the DVT paper describes (its "
               "released code uses the geometric rule; slow: seconds per budget).")


@dataclass(frozen=True)
class Choices:
    """The sidebar's choices, shared by every page.

    ``model``: an entry name (:mod:`entries`: a zoo model, another table pair of the folder, an upload); ``solver``: a name of ``dynexit.solvers.available()``; ``criterion``: a
    name of ``dynexit.criteria.available()`` (unused when ``uses_criterion`` is False); ``budget``: the
    budget per image last set for ``model`` in ``unit`` on any page, None before any of its sliders was
    shown; ``unit``: ``common.MFLOPS``, or ``common.MS`` (the model has a profile and the user chose it).
    """

    model: str
    solver: str
    criterion: str
    budget: float | None
    unit: str = common.MFLOPS

    @property
    def uses_criterion(self) -> bool:
        """False for a solver that chooses its own exit score (crossval, learned): the criterion is unused."""
        return solvers.takes_criterion(self.solver)


def budget_key(model: str, unit: str) -> str:
    """Where a model's budget in ``unit`` is stored in ``st.session_state["budgets"]``."""
    return model if unit == common.MFLOPS else f"{model} [{unit}]"


def unit_of(model: str) -> str:
    """The budget unit in use for ``model``: ms only when the user chose it and the model has a profile."""
    try:
        has_profile = common.profile(model) is not None
    except ValueError:
        has_profile = False
    return common.MS if st.session_state.get(UNIT) == common.MS and has_profile else common.MFLOPS


def choices() -> Choices:
    """The current choices (the sidebar has run: ``streamlit_app.py`` draws it before any page)."""
    model = st.session_state[MODEL]
    unit = unit_of(model)
    if common.cost_unit(model) == common.MS:  # a table imported with costs in ms: its own unit
        unit = common.MS
    return Choices(model, st.session_state[SOLVER], st.session_state[CRITERION],
                   st.session_state.get(BUDGETS, {}).get(budget_key(model, unit)), unit)


def _unit_selector(name: str) -> None:
    """MFLOPs or measured ms, offered when the model has a latency profile; says where it was measured."""
    if common.cost_unit(name) == common.MS:
        st.caption("Budgets in ms: the costs this table was saved with (measured, not counted).")
        return
    problem = common.profile_problem(name)
    if problem:
        st.warning(f"Latency profile not used: {problem}", icon=":material/timer_off:")
    if common.profile(name) is None:
        how = (f" For budgets in milliseconds on your machine: `dynexit profile --model {name}`."
               if entries.has_weights(name) else "")
        st.caption(f"Budgets in MFLOPs.{how}")
        return
    st.radio("Budget unit", [common.MFLOPS, common.MS], key=UNIT, horizontal=True,
             format_func=lambda u: "MFLOPs (counted)" if u == common.MFLOPS else "ms (measured)",
             help="MFLOPs: compute counted on the early-exit path, the same on every machine. ms: each exit's latency "
                  "per image at batch 1, measured by `dynexit profile` on one machine (below): your own machine "
                  "gives other numbers; measure it with `dynexit profile --model NAME`.")
    st.caption(f"Latency measured on {common.machine(name)}.")


def sidebar() -> Choices:
    """Draw the sidebar's model, solver and criterion selectors; the choices they hold."""
    names = common.available_models()
    if st.session_state.get(MODEL) not in names:  # first run, or its upload / files are gone
        with_weights = [n for n in names if entries.has_weights(n)]
        st.session_state[MODEL] = (common.PREFERRED_MODEL if common.PREFERRED_MODEL in names
                                   else (with_weights or names)[0])
    with st.sidebar:
        st.header("Choices")
        name = st.selectbox("Model", names, key=MODEL, format_func=entries.label,
                            help="Every val / test table pair in the zoo folder (data/zoo, or DYNEXIT_ZOO), then the "
                                 "tables you uploaded below. An entry without weights is explored from its tables.")
        solver = st.selectbox("Threshold solver", solvers.available(), index=solvers.available().index(solvers.DEFAULT),
                              key=SOLVER, help=SOLVER_HELP)
        uses_criterion = solvers.takes_criterion(solver)
        st.selectbox("Exit criterion", criteria.available(), key=CRITERION, help=CRITERION_HELP,
                     disabled=not uses_criterion)
        if not uses_criterion:
            st.caption(f"The {solver} solver chooses its own exit score on the validation images, so the criterion "
                       "is not used.")
        try:
            st.caption(common.info(name)["summary"])
        except ValueError as err:  # a damaged sidecar: the page may still work from the tables
            st.error(str(err))
        try:
            _unit_selector(name)
        except ValueError:  # a damaged table: the page's own zoo_guard says which file
            pass
        missing = common.missing_models()
        if missing:
            st.caption("Not in the zoo (yet): " + ", ".join(missing) + ". Build one with `dynexit zoo reproduce NAME`.")
        left_out = entries.skipped()
        if left_out:
            st.caption("Left out of the folder: " + "; ".join(left_out[:4])
                       + (f"; and {len(left_out) - 4} more" if len(left_out) > 4 else "") + ".")
        upload_tables()
    return choices()


# ----------------------------------------------------------------------------- uploaded tables

def _tables_uploaded() -> None:
    """Both files of a pair are there: validate them, keep them in the session, open them."""
    st.session_state.pop(UPLOAD_ERROR, None)
    n = st.session_state.get(UPLOAD_ROUND, 0)
    val, test = st.session_state.get(f"{UPLOAD_VAL}_{n}"), st.session_state.get(f"{UPLOAD_TEST}_{n}")
    if val is None or test is None:
        return
    try:
        st.session_state[MODEL] = entries.add_upload(val, test)
    except ValueError as err:  # the files stay in the uploaders: replacing either one tries the pair again
        st.session_state[UPLOAD_ERROR] = str(err)
        return
    # both uploaders start empty again, so that changing one file never pairs it with the last pair's other file
    st.session_state[UPLOAD_ROUND] = n + 1


def upload_tables(expanded: bool = False) -> None:
    """Two uploaders (val and test ExitTable .npz, as ``dynexit table`` / ``ExitTable.save`` write them):
    a valid pair becomes an entry of this session and is opened at once; anything wrong is said here."""
    with st.expander("Open your own tables", expanded=expanded or UPLOAD_ERROR in st.session_state):
        st.caption(f"A val / test pair of ExitTable .npz files (up to {entries.MAX_UPLOAD_MB} MB each; README: \"Your "
                   "data, your tables\"). Thresholds are fitted on val, results measured on test.")
        n = st.session_state.get(UPLOAD_ROUND, 0)
        st.file_uploader("Validation table (.npz)", type=["npz"], key=f"{UPLOAD_VAL}_{n}", on_change=_tables_uploaded)
        st.file_uploader("Test table (.npz)", type=["npz"], key=f"{UPLOAD_TEST}_{n}", on_change=_tables_uploaded)
        if UPLOAD_ERROR in st.session_state:
            st.error(f"Cannot open these tables: {st.session_state[UPLOAD_ERROR]}", icon=":material/error:")


# ----------------------------------------------------------------------------- the budget

def _budget_moved(store_key: str, wkey: str):
    """The user moved a budget slider: the one place the budget changes."""
    st.session_state[BUDGETS][store_key] = float(st.session_state[wkey])


def budget_slider(name: str, costs, key: str, label: str | None = None, unit: str = common.MFLOPS) -> float:
    """A budget slider for ``name``; ``costs`` (K,) are its exits' cumulative costs per image in ``unit``
    (MFLOPs or ms); returns the budget in ``unit``.

    The budget changes only in the slider's ``on_change`` callback, i.e. when the user moves a slider.
    The slider is created with the stored budget as its ``value`` (never left to default): Streamlit
    forgets a widget's state when its page is not shown or a run stops before it (a rejected upload),
    and a slider created without ``value`` then comes back in the browser at its default, the minimum,
    which the browser sends back as a "change" that overwrote the budget on every page (issue 13).
    Nothing is written to the widget's key from code.
    """
    lo, hi, step = logic.slider_steps(costs)
    store, skey = st.session_state.setdefault(BUDGETS, {}), budget_key(name, unit)
    current = float(np.clip(store.get(skey, logic.default_budget(costs)), lo, hi))
    store.setdefault(skey, current)
    wkey = f"{key}_{name}" if unit == common.MFLOPS else f"{key}_{name}_{unit}"
    decimals = max(0, int(-np.floor(np.log10(step))))
    what = ("compute you allow per image, in millions of multiply-adds (MFLOPs)" if unit == common.MFLOPS else
            "latency you allow per image, in milliseconds measured at batch 1 by `dynexit profile`")
    budget = st.slider(label or f"Budget: mean {unit} per image", min_value=lo, max_value=hi, value=current, step=step,
                       key=wkey, format=f"%.{decimals}f", on_change=_budget_moved, args=(skey, wkey),
                       help=f"The average {what}. Thresholds are fitted on the validation images to spend at most "
                            "this on average; the numbers below are measured on the test images.")
    full = float(costs[-1])
    if budget >= full:  # the slider's top is rounded up onto its grid: every image may reach the last exit
        st.caption(f"Budget {budget:.{decimals}f} {unit}: at least the full model's {full:.{decimals}f} {unit}, "
                   "every image may go to the last exit (**100%**, no speedup required).")
    else:
        st.caption(f"Budget {budget:.{decimals}f} {unit} = **{budget / full:.0%}** of the full model's "
                   f"{full:.{decimals}f} {unit}, an allowed speedup of **{full / budget:.2f}x**.")
    return float(budget)


def budget_control(name: str, test, key: str, unit: str = common.MFLOPS) -> float:
    """The budget (per image, in ``unit``) of model ``name`` whose test table (costs in ``unit``) is
    ``test``: the slider ``key`` of a multi-exit model; a single-exit model has nothing to choose, says
    so and returns its one cost."""
    if common.is_static(test):
        st.info(f"**{name}** has a single exit: every image pays its full {test.costs[0]:.1f} {unit}, so there is no "
                "budget to choose. It is the static reference the early-exit models are compared with.")
        return float(test.costs[0])
    if test.costs[-1] <= test.costs[0]:  # a table whose exits all cost the same: leaving early saves nothing
        st.info(f"Every exit of **{entries.title(name)}** costs the same {test.costs[0]:.3g} {unit} per image, so early exit "
                "saves nothing and there is no budget to choose: the rule below is fitted for that cost.")
        return float(test.costs[-1])
    return budget_slider(name, test.costs, key, unit=unit)


# ----------------------------------------------------------------------------- gallery -> inspector

def open_in_inspector(row: int):
    """Switch to the image inspector showing test-table row ``row`` (a gallery's pick)."""
    st.session_state[PICKED_ROW] = int(row)
    st.session_state[INSPECT_HOW] = FROM_GALLERY
    st.switch_page(INSPECTOR_PAGE)


def _gallery_picked(key: str):
    """A gallery's "open in the inspector" box changed: remember the row and empty the box (so it does not
    send the user back to the inspector when they return); the page switches in :func:`follow_gallery_pick`
    (st.switch_page does nothing inside a callback)."""
    if st.session_state.get(key) is not None:
        st.session_state[_GALLERY_PICK] = int(st.session_state[key])
        st.session_state[key] = None


_GALLERY_PICK = "gallery_pick"


def gallery_picker(rows, key: str, label) -> None:
    """One box under a gallery: choosing one of its images (test-table ``rows``) opens it in the image
    inspector. ``label(row)`` is what the box shows for a row."""
    st.selectbox("Open one of these images in the inspector", [int(r) for r in rows], index=None, key=key,
                 placeholder="choose an image", format_func=label, on_change=_gallery_picked, args=(key,))


def follow_gallery_pick() -> None:
    """Open the inspector when a :func:`gallery_picker` was just used (call before drawing the page's galleries)."""
    if (row := st.session_state.pop(_GALLERY_PICK, None)) is not None:
        open_in_inspector(row)


def picked_row() -> int | None:
    """The test-table row last sent by :func:`open_in_inspector`; None before any."""
    return st.session_state.get(PICKED_ROW)


# ----------------------------------------------------------------------------- on-demand attributions

ATTRIBUTION_REQUEST = "attr_request"


def request_attribution(request: tuple) -> None:
    """Remember that the user asked for the attribution ``request`` (it is computed on demand only)."""
    st.session_state[ATTRIBUTION_REQUEST] = request


def attribution_requested(request: tuple) -> bool:
    """Whether the user asked for exactly this attribution (same model, image, exit, method, class)."""
    return st.session_state.get(ATTRIBUTION_REQUEST) == request
