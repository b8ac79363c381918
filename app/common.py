"""Cached loading shared by the pages: tables, models, profiles and the results derived from them.

What can be opened, and the class names and images of an entry, is :mod:`entries`. Caching (Streamlit
idioms; every cached function is safe to call from several sessions' threads):
- models and ExitTables: ``st.cache_resource`` (one shared, read-only object per file version);
- derived results (fitted rules, curves, the oracle): ``st.cache_resource`` / ``st.cache_data``.
Cache keys include ``entries.version(name)`` (the folder and the files' modification times, or an
upload's content hash), so a re-exported model or table is picked up without restarting the server.
What the user chose lives in ``state``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import streamlit as st

from dynexit import zoo
from dynexit.zoo import folder

from . import entries, logic

PREFERRED_MODEL = "dynperceiver_fmnist"
MFLOPS, MS = "MFLOPs", "ms"  # budget units: counted compute, or latency measured by `dynexit profile`
PROFILE_BATCH = 1  # ms per image at batch 1: one image at a time, as an edge device answers
_mtime = folder.modified_ns
NUMBERS_FIRST_MS = 30.0


@functools.cache
def numbers_first_s() -> float:
    """The explorer's pause between its numbers and its figures, in seconds (on every run of its fragment).

    The numbers are sent first; the figures below them take ~45 ms of Python to build and arrive ~10 ms
    apart. Pausing first lets the browser draw and paint the numbers alone while the CPU is free, instead
    of in the same redraws as the figures: it matters when the server and the browser share a small
    machine (`make app` on a 2-core laptop), and only delays the figures by the pause elsewhere.
    ``DYNEXIT_NUMBERS_FIRST_MS`` sets it (0 turns it off; unset or empty: 30); a value that is not a
    number of ms from 0 to 1000 is logged once and the default used. ``python benchmarks/app_slider.py
    --ab`` measures the app with and without it side by side.
    """
    raw = os.environ.get("DYNEXIT_NUMBERS_FIRST_MS", "").strip()
    try:
        ms = float(raw) if raw else NUMBERS_FIRST_MS
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 1000:
        logging.getLogger(__name__).warning("DYNEXIT_NUMBERS_FIRST_MS=%r is not a number of ms from 0 to 1000: "
                                            "using %g", raw, NUMBERS_FIRST_MS)
        ms = NUMBERS_FIRST_MS
    return ms / 1000


# ----------------------------------------------------------------------------- the entries

@contextlib.contextmanager
def zoo_guard(name: str, what: str = ""):
    """Run loading (tables, weights, sidecars, bench results) inside this: a damaged or missing file
    (a ValueError naming the file and what rebuilds it) is shown in an error box and the page stops
    cleanly, instead of a traceback.

    Only loading belongs inside: a ValueError from the page's own code would be shown as a file problem.
    """
    try:
        yield
    except ValueError as err:
        st.error(f"Cannot load {what or 'model'} **{entries.label(name)}**: {err}", icon=":material/error:")
        st.stop()


def available_models() -> list[str]:
    """Every entry the app can open: the folder's table pairs (zoo models first) and this session's
    uploads (checked on every run: cheap directory listing)."""
    return entries.names()


def missing_models() -> list[str]:
    """Zoo models with a file missing from the shipped zoo folder (the sidebar lists them, with the
    command that builds one); none for another folder, which need not hold the zoo."""
    if zoo.zoo_dir().resolve() != zoo.shipped_dir():
        return []
    return [n for n in zoo.list() if not zoo.available(n)]


def missing_files(name: str) -> list[str]:
    """The paths of zoo model ``name``'s weights and tables that are not on disk."""
    paths = [zoo.weights_path(name), *(zoo.table_path(name, s) for s in zoo.SPLITS)]
    return [str(p) for p in paths if not p.exists()]


def cost_unit(name: str) -> str:
    """The unit of the entry's own table costs: MFLOPs (counted), or ms for a table imported in ms."""
    try:
        return entries.table(name, "test").cost_unit
    except ValueError:  # a damaged table: the page's zoo_guard says which file; the sidebar goes on in MFLOPs
        return MFLOPS


@st.cache_resource(show_spinner=False, max_entries=32)
def _ms_table(name: str, split: str, version: tuple, profile_mtime: int):
    from dynexit import profile as profiles

    return profiles.with_costs(entries.table(name, split), profile(name), PROFILE_BATCH)


def table(name: str, split: str = "test", unit: str = MFLOPS):
    """The ExitTable of ``name`` on ``split`` (one shared object per file version); ``unit="ms"`` for
    an MFLOPs table: the same table with the model's measured ms per image (batch 1) as its costs
    (needs a profile). A table whose own costs are in ms is returned as it is."""
    base = entries.table(name, split)
    if unit == MS and base.cost_unit != MS:
        return _ms_table(name, split, entries.version(name), _mtime(profile_path(name)))
    return base


# ----------------------------------------------------------------------------- measured latency

def profile_path(name: str) -> Path:
    """Where ``dynexit profile --model NAME`` stores the zoo model's profile: beside its weights."""
    from dynexit import profile as profiles

    return profiles.profile_path(folder.weights_path(name))


@st.cache_data(show_spinner=False, max_entries=32)
def _profile(path: str, mtime_ns: int):
    from dynexit import profile as profiles

    return profiles.load(path)


def profile(name: str) -> dict | None:
    """The model's latency profile (``dynexit profile``), None when it has none or it does not fit the
    model's tables. ValueError (the file and the command to rerun) for a damaged one."""
    if entries.is_upload(name) or cost_unit(name) == MS:
        return None
    path = profile_path(name)
    if not path.is_file():
        return None
    prof = _profile(str(path), _mtime(path))
    exits = list(table(name, "test").exit_names)
    return prof if prof["exit_names"] == exits and str(PROFILE_BATCH) in prof["batches"] else None


def profile_problem(name: str) -> str | None:
    """None when the model's profile is fine or absent, else why it cannot be used (shown, not fatal)."""
    try:
        if profile(name) is None and not entries.is_upload(name) and profile_path(name).is_file():
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
def _budget_view(name: str, solver: str, criterion: str, budget: float, unit: str, version: tuple):
    return logic.budget_view(table(name, "val", unit), table(name, "test", unit), solver, criterion, budget)


def _mtimes(name: str, unit: str) -> tuple:
    """The file versions a result in ``unit`` depends on: both tables, and the profile for ms."""
    ms = unit == MS and not entries.is_upload(name) and cost_unit(name) != MS
    return entries.version(name) + ((_mtime(profile_path(name)),) if ms else ())


def budget_view(name: str, solver: str, criterion: str, budget: float, unit: str = MFLOPS) -> logic.BudgetView:
    """Thresholds fitted on val at ``budget`` (per image, in ``unit``), evaluated on test; shared by the
    explorer and the inspector, so opening an image or switching pages does not refit the solver."""
    return _budget_view(name, solver, criterion, float(budget), unit, _mtimes(name, unit))


@st.cache_resource(show_spinner="Loading the model ...", max_entries=8)
def _model(name: str, version: tuple):
    import torch

    # The app runs one image at a time through small models: one thread is as fast, and avoids
    # OpenMP threads spin-waiting for each other on a busy CPU (100x slower on a loaded 2-core box).
    torch.set_num_threads(1)
    return folder.load_model(name)


def model_key(name: str) -> tuple:
    """Add to the key of anything cached that the model computed."""
    return entries.version(name)


def model(name: str):
    """The zoo model in eval mode (loaded once per file version)."""
    if not entries.has_weights(name):
        raise ValueError(f"{entries.title(name)} has tables only, no weights: attention maps, attributions and your "
                         "own images need the model (NAME.safetensors + NAME.json beside its tables)")
    return _model(name, model_key(name))


def model_problem(name: str) -> str | None:
    """None when the weights of ``name`` load; otherwise the zoo's message (the file, what is wrong, the
    command that rebuilds it). The app shows it once on every page; the pages that run the model stop."""
    if not entries.has_weights(name):  # a table-only entry: not a problem, the pages that need a model say so
        return None
    try:
        model(name)
    except ValueError as err:
        return str(err)
    return None


@st.cache_data(show_spinner=False, max_entries=32)
def _info(name: str, version: tuple) -> dict:
    return folder.info(name)


def info(name: str) -> dict:
    """``folder.info(name)``: the entry's facts and one-line summary (an upload: from its test table).
    ValueError: a damaged sidecar or table."""
    if entries.is_upload(name):
        return {"name": name, "summary": folder.describe(entries.table(name, "test")), "table_only": True}
    return _info(name, model_key(name))


# ----------------------------------------------------------------------------- derived, cached

@st.cache_data(show_spinner="Fitting the solver at each budget for the curve ...", max_entries=64)
def _curve(name: str, solver: str, criterion: str, unit: str, version: tuple, n: int) -> dict:
    return logic.solver_curve(table(name, "val", unit), table(name, "test", unit), solver, criterion, n)


def solver_curve(name: str, solver: str, criterion: str, n: int = logic.CURVE_POINTS, unit: str = MFLOPS) -> dict:
    """Test cost (in ``unit``) and accuracy of ``solver`` at ``n`` budgets (fitted once per model, solver,
    criterion, n, unit)."""
    return _curve(name, solver, criterion, unit, _mtimes(name, unit), n)


def dip_curve(name: str, solver: str, criterion: str, unit: str = MFLOPS) -> dict:
    """The curve the explorer checks for "a smaller budget was more accurate on test": dense
    (``logic.DIP_POINTS`` budgets) where fits take milliseconds, the plotted curve for the slow genetic solver."""
    n = logic.CURVE_POINTS if solver == "genetic" else logic.DIP_POINTS
    return solver_curve(name, solver, criterion, n, unit)


@st.cache_data(show_spinner=False, max_entries=64)
def _oracle(name: str, unit: str, version: tuple) -> tuple[list, list]:
    x, y = logic.oracle_points(table(name, "test", unit))
    return x.tolist(), y.tolist()


def oracle(name: str, unit: str = MFLOPS):
    """The oracle's accuracy against mean cost (in ``unit``) on the test table: the ceiling of any threshold policy."""
    return _oracle(name, unit, _mtimes(name, unit))


def missing_zoo_message():
    """What to show when the folder holds no table pair: for the shipped zoo, which files are missing
    and which command rebuilds them; for another folder, what an entry is made of."""
    st.title("dynexit: nothing to explore yet")
    st.error(f"No val / test table pair (`NAME.val.npz` + `NAME.test.npz`) in `{zoo.zoo_dir()}`.")
    if not any(zoo.available(n) for n in zoo.list()):
        lines = []
        for name in zoo.list():
            files = "\n".join(f"    {f}" for f in missing_files(name))
            lines.append(f"{name}: missing\n{files}\n  rebuild: dynexit zoo reproduce {name}")
        st.markdown("The zoo is missing too. Each zoo model needs its weights (`NAME.safetensors` + `NAME.json`) and its tables "
                    "(`NAME.val.npz`, `NAME.test.npz`). Restore them from git (`git checkout -- data/zoo`), or "
                    "rebuild them:")
        st.code("\n".join(lines), language="text")
    st.markdown("Point the app at a folder of your own tables with `DYNEXIT_ZOO=FOLDER make app` (README: \"Your data, "
                "your tables\"), or upload a val / test table pair here:")
