"""Cached loading shared by the pages: the zoo's tables and models, the test images, derived results.

Caching (Streamlit idioms; every cached function is safe to call from several sessions' threads):
- models and ExitTables: ``st.cache_resource`` (one shared object per file version; a table
  memoises its probabilities and scores on itself, which copies would lose);
- the 10,000 test images: ``st.cache_resource`` too, as a read-only array (``st.cache_data``
  would pickle a copy on every rerun);
- derived, small results (curves, one image's attention maps, attributions): ``st.cache_data``.
Cache keys include the zoo folder and the file's modification time, so a re-exported model or
table is picked up without restarting the server. What the user chose lives in ``state``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import streamlit as st

from dynexit import zoo
from dynexit.data import get_dataset

from . import logic

PREFERRED_MODEL = "dynperceiver_fmnist"
MFLOPS, MS = "MFLOPs", "ms"  # budget units: counted compute, or latency measured by `dynexit profile`
PROFILE_BATCH = 1  # ms per image at batch 1: one image at a time, as an edge device answers
# The dataset every zoo model was trained on: the test images, the class names of every caption.
DATASET = get_dataset("fashion-mnist")
CLASSES = DATASET.class_names
SHORT_CLASSES = DATASET.short_names  # at most 8 characters: gallery captions, bar labels


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
    """Zoo models with a file missing (the sidebar lists them, with the command that builds one)."""
    return [n for n in zoo.list() if not zoo.available(n)]


def missing_files(name: str) -> list[str]:
    """The paths of ``name``'s weights and tables that are not on disk."""
    paths = [zoo.weights_path(name), *(zoo.table_path(name, s) for s in zoo.SPLITS)]
    return [str(p) for p in paths if not p.exists()]


def _version(path: Path) -> tuple[str, int]:
    """(zoo folder, file mtime): part of every cache key, so a rebuilt file is read again."""
    return str(zoo.zoo_dir()), _mtime(path)


@st.cache_resource(show_spinner="Loading the model's ExitTable ...", max_entries=32)
def _table(name: str, split: str, zoo_dir: str, mtime_ns: int):
    return zoo.load_table(name, split)


@st.cache_resource(show_spinner=False, max_entries=32)
def _ms_table(name: str, split: str, zoo_dir: str, mtime_ns: int, profile_mtime: int):
    from dynexit import profile as profiles

    return profiles.with_costs(table(name, split), profile(name), PROFILE_BATCH)


def table(name: str, split: str = "test", unit: str = MFLOPS):
    """The zoo ExitTable of ``name`` on ``split`` (one shared object per file version); ``unit="ms"``:
    the same table with the model's measured ms per image (batch 1) as its costs (needs a profile)."""
    if unit == MS:
        return _ms_table(name, split, *_version(zoo.table_path(name, split)), _mtime(profile_path(name)))
    return _table(name, split, *_version(zoo.table_path(name, split)))


# ----------------------------------------------------------------------------- measured latency

def profile_path(name: str) -> Path:
    """Where ``dynexit profile --model NAME`` stores the zoo model's profile: beside its weights."""
    from dynexit import profile as profiles

    return profiles.profile_path(zoo.weights_path(name))


@st.cache_data(show_spinner=False, max_entries=32)
def _profile(path: str, mtime_ns: int):
    from dynexit import profile as profiles

    return profiles.load(path)


def profile(name: str) -> dict | None:
    """The model's latency profile (``dynexit profile``), None when it has none or it does not fit the
    model's tables. ValueError (the file and the command to rerun) for a damaged one."""
    path = profile_path(name)
    if not path.is_file():
        return None
    prof = _profile(str(path), _mtime(path))
    exits = list(table(name, "test").exit_names)
    return prof if prof["exit_names"] == exits and str(PROFILE_BATCH) in prof["batches"] else None


def profile_problem(name: str) -> str | None:
    """None when the model's profile is fine or absent, else why it cannot be used (shown, not fatal)."""
    try:
        if profile(name) is None and profile_path(name).is_file():
            return (f"{profile_path(name)} does not match the model's exits (or lacks batch {PROFILE_BATCH}); "
                    f"measure it again with `dynexit profile --model {name}`")
    except ValueError as err:
        return str(err)
    return None


def machine(name: str) -> str:
    """Where the model's profile was measured, in words (device, threads, torch), and when."""
    from dynexit import profile as profiles

    prof = profile(name)
    return f"{profiles.machine(prof)}, measured {prof.get('created', '?')[:10]}" if prof else ""


def is_static(table) -> bool:
    """True for a single-exit (static) model's table: every image pays the one cost, so there is no
    budget to choose and no curve to draw (the one test every page makes, here only)."""
    return table.num_exits == 1


@st.cache_resource(show_spinner=False, max_entries=64)
def _budget_view(name: str, solver: str, criterion: str, budget: float, unit: str, zoo_dir: str, mtimes: tuple):
    return logic.budget_view(table(name, "val", unit), table(name, "test", unit), solver, criterion, budget)


def _mtimes(name: str, unit: str) -> tuple:
    """The file versions a result in ``unit`` depends on: both tables, and the profile for ms."""
    files = [zoo.table_path(name, s) for s in zoo.SPLITS] + ([profile_path(name)] if unit == MS else [])
    return tuple(_mtime(f) for f in files)


def budget_view(name: str, solver: str, criterion: str, budget: float, unit: str = MFLOPS) -> logic.BudgetView:
    """Thresholds fitted on val at ``budget`` (per image, in ``unit``), evaluated on test; shared by the
    explorer and the inspector, so opening an image or switching pages does not refit the solver."""
    return _budget_view(name, solver, criterion, float(budget), unit, str(zoo.zoo_dir()), _mtimes(name, unit))


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
def _info(name: str, zoo_dir: str, mtime_ns: int) -> dict:
    return zoo.info(name)


def info(name: str) -> dict:
    """``zoo.info(name)``: the model's sidecar facts and one-line summary. ValueError: a damaged sidecar."""
    return _info(name, *model_key(name))


@st.cache_resource(show_spinner="Loading the test images ...")
def _test_images() -> np.ndarray:
    x, _ = DATASET.load("test")
    x = x[:, 0]  # gray images (one channel): what the pages draw and the models take
    x.setflags(write=False)
    return x


def images(test, rows) -> np.ndarray:
    """Float32 images (n, H, W) in [0, 1] of the given rows of the test table (H = W = 28 pixels)."""
    return _test_images()[test.index[np.asarray(rows, dtype=np.int64)]]


def image(test, row: int) -> np.ndarray:
    """One float32 image (H, W) in [0, 1]: row ``row`` of the test table (see :func:`images`)."""
    return images(test, [row])[0]


# ----------------------------------------------------------------------------- derived, cached

@st.cache_data(show_spinner="Fitting the solver at each budget for the curve ...", max_entries=64)
def _curve(name: str, solver: str, criterion: str, unit: str, zoo_dir: str, mtimes: tuple, n: int) -> dict:
    return logic.solver_curve(table(name, "val", unit), table(name, "test", unit), solver, criterion, n)


def solver_curve(name: str, solver: str, criterion: str, n: int = logic.CURVE_POINTS, unit: str = MFLOPS) -> dict:
    """Test cost (in ``unit``) and accuracy of ``solver`` at ``n`` budgets (fitted once per model, solver,
    criterion, n, unit)."""
    return _curve(name, solver, criterion, unit, str(zoo.zoo_dir()), _mtimes(name, unit), n)


def dip_curve(name: str, solver: str, criterion: str, unit: str = MFLOPS) -> dict:
    """The curve the explorer checks for "a smaller budget was more accurate on test": dense
    (``logic.DIP_POINTS`` budgets) where fits take milliseconds, the plotted curve for the slow genetic solver."""
    n = logic.CURVE_POINTS if solver == "genetic" else logic.DIP_POINTS
    return solver_curve(name, solver, criterion, n, unit)


@st.cache_data(show_spinner=False, max_entries=64)
def _oracle(name: str, unit: str, zoo_dir: str, mtimes: tuple) -> tuple[list, list]:
    x, y = logic.oracle_points(table(name, "test", unit))
    return x.tolist(), y.tolist()


def oracle(name: str, unit: str = MFLOPS):
    """The oracle's accuracy against mean cost (in ``unit``) on the test table: the ceiling of any threshold policy."""
    return _oracle(name, unit, str(zoo.zoo_dir()), _mtimes(name, unit))


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

