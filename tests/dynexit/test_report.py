"""``dynexit report`` on synthetic zoo tables: the page, its claims and its figures."""

import numpy as np
import pytest

from dynexit import report, solvers, zoo
from dynexit.table import ExitTable

from conftest import random_table


def _tables(seed, k, scale=1.0, costs=None):
    out = {}
    for split, n in (("val", 400), ("test", 600)):
        t = random_table(n=n, k=k, c=10, seed=seed + (split == "test"), sharpness=3.0 * scale)
        c = np.asarray(costs if costs is not None else t.costs, dtype=float)
        out[split] = ExitTable(t.logits, t.labels, c, meta={"split": split})
    return out


@pytest.fixture
def synthetic_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "zoo"))
    specs = {"dynperceiver_fmnist": (0, 4, 1.3, [10, 20, 30, 40]), "multiexit_cnn_fmnist": (10, 4, 1.0, [8, 16, 28, 38]),
             "static_cnn_fmnist": (20, 1, 1.0, [32])}
    for name, (seed, k, scale, costs) in specs.items():
        for split, t in _tables(seed, k, scale, costs).items():
            t.save(zoo.table_path(name, split), logits_dtype="float16")
    return tmp_path


def test_report_writes_page_with_claims_tables_and_figures(synthetic_zoo):
    out = synthetic_zoo / "docs" / "results.md"
    results = report.build_report(out, figures=True)
    assert set(results) == {"dynperceiver_fmnist", "multiexit_cnn_fmnist", "static_cnn_fmnist"}
    page = out.read_text()
    for heading in ("## Summary", "## Accuracy vs MFLOPs", "### Default solver vs MSDNet's geometric rule",
                    "## Exit criteria compared", "## Dynamic Perceiver vs conventional multi-exit CNN vs static CNN"):
        assert heading in page
    dp = results["dynperceiver_fmnist"]
    assert len(dp["curves"][solvers.DEFAULT]["test_accuracy"]) == report.N_BUDGETS == 40
    assert set(dp["criteria"]["accuracy"]) == {*report.CRITERIA, f"{solvers.DEFAULT} (default)"}
    # the default-vs-geometric table is the library's comparison at 100 matched test costs
    cmp = dp["default_vs_geometric"]
    assert cmp["wins"] + cmp["ties"] + cmp["losses"] == 100 and cmp["reference"] == "geometric"
    assert (f"| dynperceiver_fmnist | {cmp['wins']} / {cmp['ties']} / {cmp['losses']} | "
            f"{100 * cmp['mean_gain']:+.2f} | {100 * cmp['worst']:+.2f} |") in page
    # the last-exit claim is stated with the measured numbers
    a, s = dp["test_exit_accuracy"][-1], results["static_cnn_fmnist"]["test_exit_accuracy"][-1]
    assert f"{100 * a:.2f}% vs {100 * s:.2f}%" in page
    # targets are stated with their numbers; models without tables are listed as not shipped
    assert f"| Dynamic Perceiver final exit >= 94.0% | {100 * a:.2f}% | {'met' if a >= 0.94 else '**not met**'} |" in page
    assert "| mevit_fmnist final exit >= 92% | not shipped | not measured |" in page
    assert "Not shipped yet" in page and "`dvt_fmnist_noreuse`" in page and "## Training" in page
    pngs = sorted(p.name for p in (synthetic_zoo / "docs" / "figures").glob("*.png"))
    assert "curve_all.png" in pngs and "curve_dynperceiver_fmnist.png" in pngs and "anytime_all.png" in pngs
    for p in pngs:
        assert f"figures/{p}" in page
        assert (synthetic_zoo / "docs" / "figures" / p).read_bytes()[:4] == b"\x89PNG"


def test_curve_above_reads_both_curves_on_their_common_costs():
    a = {"test_cost": [1, 2, 3], "test_accuracy": [0.5, 0.7, 0.8]}
    b = {"test_cost": [1.5, 2.5, 4], "test_accuracy": [0.4, 0.75, 0.9]}
    r = report.curve_above(a, b)
    assert r["overlap"] and r["range"] == [1.5, 4.0]
    # up to 3 MFLOPs a is at or above b (tie at 2.5 and 3.0); beyond, a keeps its best (0.8) and b reaches 0.9
    assert not r["holds"] and r["min_diff"] == pytest.approx(-0.1) and r["at_worst"] == pytest.approx(4.0)
    r = report.curve_above(a, {"test_cost": [1.5, 2.5, 3], "test_accuracy": [0.4, 0.75, 0.8]})
    assert r["holds"] and abs(r["min_diff"]) < 1e-9
    assert not report.curve_above({"test_cost": [1, 2], "test_accuracy": [0.1, 0.2]}, b)["holds"]


def test_report_without_zoo_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "empty"))
    out = tmp_path / "results.md"
    assert report.build_report(out) == {}
    assert "dynexit zoo reproduce" in out.read_text()
