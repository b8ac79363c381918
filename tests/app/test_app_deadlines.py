"""The deadlines page and budgets in milliseconds, with AppTest on the tiny zoo (see test_app.py)."""

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dynexit import anytime, profile, zoo
from dynexit.testing import build_tiny_zoo
from test_app import ENTRY, metrics, ok, texts

MODEL = "dynperceiver_fmnist"


@pytest.fixture(scope="module")
def ms_zoo(tmp_path_factory):
    """A tiny zoo whose preferred model has a (synthetic) latency profile."""
    out = build_tiny_zoo(tmp_path_factory.mktemp("deadline_zoo") / "zoo", models=(MODEL, "static_cnn_fmnist"))
    return out


def _write_profile(zoo_dir, names):
    k = len(names)
    prof = {"format": profile.FORMAT, "format_version": profile.FORMAT_VERSION, "exit_names": list(names),
            "device": "cpu", "device_name": "test cpu (2 cores)", "threads": 1, "torch": "x", "python": "3",
            "created": "2026-01-01T00:00:00+00:00",
            "batches": {"1": {"median_ms": [1.0 + k_ for k_ in range(k)], "iqr_ms": [0.0] * k}}}
    profile.save(prof, profile.profile_path(zoo_dir / f"{MODEL}.safetensors"))


@pytest.fixture
def app_zoo(ms_zoo, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(ms_zoo))
    return ms_zoo


def test_deadline_page_shows_three_exact_accuracies(app_zoo):
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    ok(at)
    at.switch_page("views/deadlines.py").run()
    ok(at)
    assert at.title[0].value == "Deadlines"
    labels = set(metrics(at))
    assert {"Anytime: the last exit finished", "Budgeted early exit, interrupted", "Oracle (knows the labels)"} == labels
    # a fixed deadline at exit 2's cost: anytime accuracy is that exit's accuracy (exact)
    test = zoo.load_table(MODEL, "test")
    at.selectbox(key="deadline_kind").set_value("fixed").run()
    ok(at)
    slider = at.slider(key=f"deadline_fixed_at_{MODEL}_MFLOPs")
    value = min(v for v in np.arange(slider.min, slider.max + slider.step, slider.step) if v >= test.costs[1])
    slider.set_value(float(value)).run()
    ok(at)
    expected = anytime.anytime(test, anytime.Deadline.make("fixed", at=float(value))).accuracy
    assert metrics(at)["Anytime: the last exit finished"] == f"{expected:.2%}"
    assert "counts as **wrong**" in texts(at)
    at.radio(key="deadline_no_answer").set_value("prior").run()
    ok(at)
    assert "prior guess" in texts(at)
    for kind in ("uniform", "exponential"):
        at.selectbox(key="deadline_kind").set_value(kind).run()
        ok(at)
    # a single-exit model: said, still a page
    at.selectbox(key="model").set_value("static_cnn_fmnist").run()
    ok(at)
    assert "single exit" in texts(at)


def test_budgets_in_milliseconds_when_the_model_has_a_profile(app_zoo):
    at = AppTest.from_file(ENTRY, default_timeout=180).run()
    ok(at)
    assert "budget_unit" not in [r.key for r in at.radio]  # no profile: MFLOPs only
    test = zoo.load_table(MODEL, "test")
    _write_profile(app_zoo, test.exit_names)
    try:
        at.run()
        ok(at)
        at.radio(key="budget_unit").set_value("ms").run()
        ok(at)
        assert "Mean ms per image" in metrics(at)
        slider = at.slider(key=f"explorer_budget_{MODEL}_ms")
        assert slider.max <= len(test.exit_names) + 1
        assert "test cpu (2 cores), 1 thread" in "\n".join(c.value for c in at.sidebar.caption)
        at.switch_page("views/deadlines.py").run()
        ok(at)
        assert at.slider(key=f"deadline_normal_mean_{MODEL}_ms")
        at.switch_page("views/compare.py").run()
        ok(at)
        assert "dynexit profile" in texts(at)
    finally:
        profile.profile_path(app_zoo / f"{MODEL}.safetensors").unlink()


def test_fixed_deadline_curves_are_the_library_s_exact_values():
    from dynexit_app import logic
    from dynexit.table import ExitTable

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 3, 4)).astype(np.float32)
    logits[np.arange(300), :, labels] += [0.5, 1.0, 2.0]
    t = ExitTable(logits, labels, [2.0, 5.0, 9.0])
    exits = rng.integers(0, 3, 300)
    curves = logic.fixed_deadline_curves(t, exits, t.costs, n=25)
    for at, a, b, o in zip(curves["deadlines"], curves["anytime"], curves["budgeted"], curves["oracle"]):
        r = anytime.compare(t, exits, anytime.Deadline.make("fixed", at=float(at)))
        assert (a, b, o) == pytest.approx((r["anytime"].accuracy, r["budgeted"].accuracy, r["oracle"].accuracy))
    for kind in ("fixed", "uniform", "normal", "exponential"):
        ranges = logic.deadline_defaults(kind, t.costs)
        assert all(lo <= d <= hi for lo, hi, d in ranges.values())
