"""Streamlit glue shared by the pages: cached loading, the sidebar's choices, the budget slider.

Caching (Streamlit idioms):
- models and ExitTables: ``st.cache_resource`` (one shared object; a table memoises its
  probabilities, scores and fitted solver state on itself, which copies would lose);
- the 10,000 test images: ``st.cache_resource`` too, as a read-only array (``st.cache_data``
  would pickle a 7.8 MB copy on every rerun);
- derived, small results (curves, one image's attention maps, attributions): ``st.cache_data``.
Cache keys include the zoo folder and the file's modification time, so a re-exported model or
table is picked up without restarting the server.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import streamlit as st

from app import logic
from dynexit import criteria, solvers, zoo
from dynexit.data import FASHION_MNIST_CLASSES, load_fashion_mnist

PREFERRED_MODEL = "dynperceiver_fmnist"
CLASSES = FASHION_MNIST_CLASSES
SHORT_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")

CRITERION_HELP = ("How ready an image is to leave at an exit, computed from that exit's class probabilities: "
                  "max_prob = the top probability, entropy = how spread out the probabilities are, "
                  "margin = top-1 minus top-2, patience = how many exits in a row agree, random = a control.")
SOLVER_HELP = ("How the per-exit thresholds are chosen for a budget, on the validation images: crossval (ours, "
               "default) is MSDNet's geometric rule on the exit score that wins by cross-validation on the validation "
               "images; learned (ours) learns an exit score from all exits so far; lagrangian (ours) searches "
               "thresholds exactly; geometric is MSDNet's rule; genetic is the search the DVT paper describes (its "
               "released code uses the geometric rule; slow: seconds per budget).")


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


# ----------------------------------------------------------------------------- the zoo

@contextlib.contextmanager
def zoo_guard(name: str, what: str = ""):
    """Run zoo loading (tables, weights, sidecars, bench results) inside this: a damaged or missing file
    (the zoo's ValueError, which names the file and the command that rebuilds it) is shown in an error
    box and the page stops cleanly, instead of a traceback.

    Only loading belongs inside: a ValueError from the page's own code would be shown as a zoo problem.
    """
    try:
        yield
    except ValueError as err:
        st.error(f"Cannot load {what or 'zoo model'} **{name}**: {err}", icon=":material/error:")
        st.stop()


def available_models() -> list[str]:
    """Zoo models whose weights and both tables are on disk (checked on every run: cheap stats)."""
    return [n for n in zoo.list() if zoo.available(n)]


def missing_models() -> list[str]:
    return [n for n in zoo.list() if not zoo.available(n)]


def missing_files(name: str) -> list[str]:
    paths = [zoo.weights_path(name), *(zoo.table_path(name, s) for s in zoo.SPLITS)]
    return [str(p) for p in paths if not p.exists()]


def _version(path: Path) -> tuple[str, int]:
    """(zoo folder, file mtime): part of every cache key, so a rebuilt file is read again."""
    return str(zoo.zoo_dir()), _mtime(path)


@st.cache_resource(show_spinner="Loading the model's ExitTable ...", max_entries=32)
def _table(name: str, split: str, zoo_dir: str, mtime_ns: int):
    return zoo.load_table(name, split)


def table(name: str, split: str = "test"):
    """The zoo ExitTable of ``name`` on ``split`` (one shared object per file version)."""
    return _table(name, split, *_version(zoo.table_path(name, split)))


@st.cache_resource(show_spinner=False, max_entries=64)
def _budget_view(name: str, solver: str, criterion: str, budget: float, zoo_dir: str, val_mtime: int, test_mtime: int):
    return logic.budget_view(table(name, "val"), table(name, "test"), solver, criterion, budget)


def budget_view(name: str, solver: str, criterion: str, budget: float) -> logic.BudgetView:
    """Thresholds fitted on val at ``budget``, evaluated on test; shared by the explorer and the inspector,
    so opening an image or switching pages does not refit the solver (seconds for the genetic one)."""
    return _budget_view(name, solver, criterion, float(budget), str(zoo.zoo_dir()),
                        _mtime(zoo.table_path(name, "val")), _mtime(zoo.table_path(name, "test")))


@st.cache_resource(show_spinner="Loading the model ...", max_entries=8)
def _model(name: str, zoo_dir: str, mtime_ns: int):
    import torch

    # The app runs one image at a time through small models: one thread is as fast, and avoids
    # OpenMP threads spin-waiting for each other on a busy CPU (100x slower on a loaded 2-core box).
    torch.set_num_threads(1)
    return zoo.load_model(name)


def model_key(name: str) -> tuple[str, int]:
    """Add to the key of anything cached that the model computed."""
    return _version(zoo.weights_path(name))


def model(name: str):
    """The zoo model in eval mode (loaded once per file version)."""
    return _model(name, *model_key(name))


def model_problem(name: str) -> str | None:
    """None when the weights of ``name`` load; otherwise the zoo's message (the file, what is wrong, the
    command that rebuilds it). The app shows it once on every page; the pages that run the model stop."""
    try:
        model(name)
    except ValueError as err:
        return str(err)
    return None


@st.cache_data(show_spinner=False, max_entries=32)
def model_info(name: str, zoo_dir: str = "", mtime_ns: int = 0) -> dict:
    return zoo.info(name)


def info(name: str) -> dict:
    return model_info(name, *model_key(name))


@st.cache_resource(show_spinner="Loading the Fashion-MNIST test images ...")
def _test_images() -> np.ndarray:
    x, _ = load_fashion_mnist("test")
    x.setflags(write=False)
    return x


def images(test, rows) -> np.ndarray:
    """Float images (n, 28, 28) in [0, 1] of the given rows of the test table."""
    return _test_images()[test.index[np.asarray(rows, dtype=np.int64)]] / 255.0


def image(test, row: int) -> np.ndarray:
    return images(test, [row])[0]


# ----------------------------------------------------------------------------- derived, cached

@st.cache_data(show_spinner="Fitting the solver at each budget for the curve ...", max_entries=64)
def curve(name: str, solver: str, criterion: str, zoo_dir: str = "", mtimes: tuple = (),
          n: int = logic.CURVE_POINTS) -> dict:
    return logic.solver_curve(table(name, "val"), table(name, "test"), solver, criterion, n)


def solver_curve(name: str, solver: str, criterion: str, n: int = logic.CURVE_POINTS) -> dict:
    """Test cost and accuracy of ``solver`` at ``n`` budgets (fitted once per model, solver, criterion, n)."""
    mtimes = tuple(_mtime(zoo.table_path(name, s)) for s in zoo.SPLITS)
    return curve(name, solver, criterion, str(zoo.zoo_dir()), mtimes, n)


def dip_curve(name: str, solver: str, criterion: str) -> dict:
    """The curve the explorer checks for "a smaller budget was more accurate on test": dense
    (``logic.DIP_POINTS`` budgets) where fits take milliseconds, the plotted curve for the slow genetic solver."""
    return solver_curve(name, solver, criterion, logic.CURVE_POINTS if solver == "genetic" else logic.DIP_POINTS)


@st.cache_data(show_spinner=False, max_entries=64)
def _oracle(name: str, zoo_dir: str, mtime_ns: int) -> tuple[list, list]:
    x, y = logic.oracle_points(table(name, "test"))
    return x.tolist(), y.tolist()


def oracle(name: str):
    """The oracle's accuracy against mean cost on the test table: the ceiling of any threshold policy."""
    return _oracle(name, *_version(zoo.table_path(name, "test")))


# ----------------------------------------------------------------------------- shared widgets

def sidebar() -> tuple[str, str, str]:
    """Model, solver and criterion chosen in the sidebar (shared by every page)."""
    names = available_models()
    default = names.index(PREFERRED_MODEL) if PREFERRED_MODEL in names else 0
    with st.sidebar:
        st.header("Choices")
        name = st.selectbox("Model", names, index=default, key="model",
                            help="Models of the zoo (data/zoo) that are on disk. Each was trained on Fashion-MNIST.")
        solver = st.selectbox("Threshold solver", solvers.available(), index=solvers.available().index(solvers.DEFAULT),
                              key="solver", help=SOLVER_HELP)
        uses_criterion = "criterion" in solvers.get(solver)._get_param_names()
        criterion = st.selectbox("Exit criterion", criteria.available(), key="criterion", help=CRITERION_HELP,
                                 disabled=not uses_criterion)
        if not uses_criterion:
            st.caption(f"The {solver} solver chooses its own exit score on the validation images, so the criterion "
                       "is not used.")
        try:
            st.caption(info(name)["summary"])
        except ValueError as err:  # a damaged sidecar: the page may still work from the tables
            st.error(str(err))
        missing = missing_models()
        if missing:
            st.caption("Not in the zoo (yet): " + ", ".join(missing) + ". Build one with `dynexit zoo reproduce NAME`.")
    return name, solver, criterion


def current_budget(name: str) -> float | None:
    """The budget (MFLOPs per image) last set for ``name`` on any page; None before any slider was shown."""
    return st.session_state.get("budgets", {}).get(name)


def _budget_moved(name: str, wkey: str):
    """The user moved a budget slider: the one place the budget changes."""
    st.session_state["budgets"][name] = float(st.session_state[wkey])


def budget_slider(name: str, costs, key: str, label: str = "Budget: mean MFLOPs per image") -> float:
    """A budget slider for ``name`` (MFLOPs per image); one budget per model, shared by every page.

    The budget lives in ``st.session_state["budgets"][name]`` and changes only in the slider's
    ``on_change`` callback, i.e. when the user moves a slider. The slider is created with that value as
    its ``value`` (never left to default): Streamlit forgets a widget's state when its page is not shown
    or a run stops before it (a rejected upload), and a slider created without ``value`` then comes back
    in the browser at its default, the minimum, which the browser sends back as a "change" that
    overwrote the budget on every page (issue 13). Nothing is written to the widget's key from code.
    """
    lo, hi, step = logic.slider_steps(costs)
    store = st.session_state.setdefault("budgets", {})
    current = float(np.clip(store.get(name, logic.default_budget(costs)), lo, hi))
    store.setdefault(name, current)
    wkey = f"{key}_{name}"
    decimals = max(0, int(-np.floor(np.log10(step))))
    budget = st.slider(label, min_value=lo, max_value=hi, value=current, step=step, key=wkey,
                       format=f"%.{decimals}f", on_change=_budget_moved, args=(name, wkey),
                       help="The average compute you allow per image, in millions of multiply-adds (MFLOPs). "
                            "Thresholds are fitted on the validation images to spend at most this on average; "
                            "the numbers below are measured on the 10,000 test images.")
    full = float(costs[-1])
    st.caption(f"Budget {budget:.{decimals}f} MFLOPs = **{min(budget / full, 1):.0%}** of the full model's "
               f"{full:.{decimals}f} MFLOPs, an allowed speedup of **{max(full / budget, 1):.2f}x**.")
    return float(budget)


def missing_zoo_message():
    """What to show when no zoo model is on disk: which files, which command rebuilds them."""
    st.title("dynexit: the model zoo is missing")
    st.error(f"No zoo model is complete in `{zoo.zoo_dir()}`, so there is nothing to explore yet.")
    lines = []
    for name in zoo.list():
        files = "\n".join(f"    {f}" for f in missing_files(name))
        lines.append(f"{name}: missing\n{files}\n  rebuild: dynexit zoo reproduce {name}")
    st.markdown("Each model needs its weights (`NAME.safetensors` + `NAME.json`) and its tables "
                "(`NAME.val.npz`, `NAME.test.npz`). Restore them from git (`git checkout -- data/zoo`), or "
                "rebuild them, or point the app at another zoo folder with the `DYNEXIT_ZOO` "
                "environment variable:")
    st.code("\n".join(lines), language="text")
