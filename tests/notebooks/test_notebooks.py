"""The Jupyter tutorials in notebooks/ run top to bottom in a fresh kernel, and follow the house rules.

Each notebook is executed by nbclient in its own kernel (working directory notebooks/, one thread:
``OMP_NUM_THREADS=1``) against a tiny zoo built in a temporary folder
(:func:`dynexit.testing.build_tiny_zoo`: untrained stand-ins under the zoo's names, synthetic
tables), so the test does not depend on the shipped zoo and checks that the notebooks reach the zoo
through ``dynexit.zoo`` only. An error inside a widget callback counts too: ipywidgets' ``Output``
swallows the exception and prints the traceback into the widget, so the widget outputs nbclient
records are searched for errors.

``DYNEXIT_NOTEBOOK_ZOO=data/zoo`` runs them on a real zoo instead (e.g. the shipped one, to check the
prose against real numbers); a notebook whose models that zoo lacks fails with the zoo's error.

Notebooks 04 and 06 train on a slice of the Fashion-MNIST training split: skipped without it (the
``dataset-fashion-mnist`` Debian package or ``$DYNEXIT_DATA``; ``.ci/run`` installs the package).
Notebook 06 takes any dataset of the registry (``DYNEXIT_NOTEBOOK_DATA=NAME[:ROOT]``, issue 16): it also
runs on scikit-learn's digits, which ship offline, so that run is never skipped.
"""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path
from queue import Empty

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from dynexit import data  # noqa: E402
from dynexit.testing import build_tiny_zoo  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NEEDS_TRAIN_SPLIT = {"04_multi_exit_vit", "06_bring_your_own_model"}
HAS_TRAIN = (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists() or bool(os.environ.get("DYNEXIT_DATA"))
CELL_TIMEOUT_S = 300


class _Client(nbclient.NotebookClient):
    """nbclient, with its waits on the kernel's shell and IOPub channels cut into 0.5 s slices.

    With widget-heavy cells nbclient sometimes does not wake up when the kernel's reply arrives and
    sits until the cell timeout, then goes on as if nothing happened
    (https://github.com/jupyter/nbclient/issues/312). Polling in short slices picks the message up.
    """

    async def async_start_new_kernel_client(self, **kwargs):
        out = await super().async_start_new_kernel_client(**kwargs)
        for channel in (self.kc.shell_channel, self.kc.iopub_channel):
            channel.get_msg = _sliced(channel.get_msg)
        return out


def _sliced(get_msg, step_s: float = 0.5):
    async def sliced(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = step_s if deadline is None else max(0.0, min(step_s, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=step)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
    return sliced


def _widget_errors(nb) -> list[str]:
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [f"{o.get('ename')}: {o.get('evalue')}\n" + "\n".join(o.get("traceback", []))
            for model in state.values() if model.get("model_name") == "OutputModel"
            for o in model.get("state", {}).get("outputs", []) if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def notebook_zoo(tmp_path_factory):
    if os.environ.get("DYNEXIT_NOTEBOOK_ZOO"):
        return Path(os.environ["DYNEXIT_NOTEBOOK_ZOO"]).resolve()
    return build_tiny_zoo(tmp_path_factory.getbasetemp() / "notebook_zoo")


def test_there_are_seven_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped_and_follows_the_house_rules(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and "What you will learn" in nb.cells[0].source
    assert nb.cells[-1].cell_type == "markdown" and "## Exercises" in nb.cells[-1].source
    source = "\n".join(c.source for c in code)
    assert "widgets." in source, "each notebook has at least one interactive control"
    sliders = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", getattr(node.func, "id", "")).endswith("Slider")]
    for slider in sliders:
        update = [k.value for k in slider.keywords if k.arg == "continuous_update"]
        assert update and isinstance(update[0], ast.Constant) and update[0].value is False, \
            f"line {slider.lineno}: sliders take continuous_update=False (update on release only)"
    assert "data/zoo" not in source, "reach the zoo through dynexit.zoo (DYNEXIT_ZOO), not by path"


# Numbers that read as results: percentages, decimals, speedups ("1.8x"), durations, accuracy points.
RESULT_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\s(?:points?|seconds|s|ms|minutes?)\b|\d+(?:[.,]\d+)?\s?%"
                           r"|\b\d+\.\d+\b|\b\d+(?:\.\d+)?x\b(?!\d)|\babout (?:a|one|two) (?:minute|second)s?\b")
# The phrases in which such a number is a definition, an exercise's setting or a time claim, not a result
# of the zoo (time claims: the measured times are printed by the notebook test, see the README).
NOT_RESULTS = {
    "01": ["in steps of 0.005 from 0.8"],
    "02": ["with 80% confidence, about 80% are right", "to 10% and 80% of the cost range"],
    "03": ["in about a minute"],
    "04": ["about a minute on a laptop CPU"],
    "06": ["in about a minute", "The agreement should be 100%"],
}


def prose_results(source: str, allowed: list[str]) -> list[str]:
    """The result-like numbers of a markdown text outside the ``allowed`` phrases (whitespace, line
    breaks included, counts as one space)."""
    source = " ".join(source.split())
    for phrase in allowed:
        source = source.replace(phrase, " ")
    return RESULT_NUMBER.findall(source)


def test_prose_results_finds_numbers_that_read_as_results():
    assert prose_results("accuracy 93.5% at 1.8x, 0.62 points better, about a minute", []) == [
        "93.5%", "1.8x", "0.62 points", "about a minute"]
    assert prose_results("exit 1 of 4 on a 7x7 grid (ICLR 2018), ResNet-18", []) == []
    assert prose_results("with 80% confidence", ["with 80% confidence"]) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_prose_states_no_result_the_cells_do_not_print(path):
    """Issue 18: prose must match the shipped zoo after every zoo change. So the markdown states no
    measured number (accuracy, share, speedup, time): the cells print them, computed from the zoo, and the
    prose says what to look for. Exit numbers, grid sizes, years and architecture facts are not results."""
    nb = nbformat.read(path, as_version=4)
    found = {i: hits for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
             and (hits := prose_results(c.source, NOT_RESULTS.get(path.name[:2], [])))}
    assert not found, (f"markdown cells state results the cells should print instead (cell: numbers): {found}; "
                       "print them from a code cell, or add the phrase to NOT_RESULTS if it is not a result")


def _execute(path: Path, zoo: Path, tmp_path: Path, monkeypatch, **env: str):
    """Run the notebook at ``path`` top to bottom in a fresh kernel (environment ``env`` added); returns it
    with its outputs. A cell that raises fails the test (CellExecutionError naming the cell), so does an
    error inside a widget callback; the seconds taken are printed."""
    # the kernel inherits this environment
    monkeypatch.setenv("DYNEXIT_ZOO", str(zoo))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what a notebook writes to a temporary folder lands here
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    nb = nbformat.read(path, as_version=4)
    client = _Client(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = _widget_errors(nb)
    assert not errors, "a widget callback raised:\n" + "\n\n".join(errors)
    print(f"{path.name}{' ' + str(env) if env else ''}: {seconds:.1f} s")
    return nb


def _printed(nb) -> str:
    """Everything the notebook's code cells printed (stream outputs), in cell order."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, notebook_zoo, tmp_path, monkeypatch):
    if path.stem in NEEDS_TRAIN_SPLIT and not HAS_TRAIN:
        pytest.skip("needs the Fashion-MNIST training split: `apt-get install dataset-fashion-mnist` "
                    "(.ci/run installs it) or $DYNEXIT_DATA")
    _execute(path, notebook_zoo, tmp_path, monkeypatch)


BYOM = ROOT / "notebooks" / "06_bring_your_own_model.ipynb"


def test_notebook_06_takes_its_dataset_from_the_registry():
    """Issue 16: the first code cell is the DATA parameter; no Fashion-MNIST constant is left in the code."""
    code = [c.source for c in nbformat.read(BYOM, as_version=4).cells if c.cell_type == "code"]
    assert 'DATA = os.environ.get("DYNEXIT_NOTEBOOK_DATA", "fashion-mnist")' in code[0]
    rest = "\n".join(code[1:])
    assert "get_dataset(" in rest
    for constant in ("fashion_mnist", "FASHION_MNIST", "in_chans=1", "num_classes=10", "0.2860", "28"):
        assert constant not in rest, f"notebook 06 hard-codes {constant!r}: read it from the dataset spec"


def test_notebook_06_runs_on_digits(notebook_zoo, tmp_path, monkeypatch):
    """Notebook 06 on another dataset of the registry (scikit-learn's digits: offline, 8x8, seconds), to the end."""
    nb = _execute(BYOM, notebook_zoo, tmp_path, monkeypatch, DYNEXIT_NOTEBOOK_DATA="digits")
    printed = _printed(nb)
    assert "digits: 10 classes" in printed and "model input 1x8x8" in printed
    assert "meta: dataset 'digits'" in printed  # the tables name their dataset: the app shows its images
    assert "same exit as the table predicted for 100.0% of the images" in printed  # the last section ran
    assert [c for c in nb.cells if c.cell_type == "code"][-1].outputs, "the last cell (the speedup bars) ran"
