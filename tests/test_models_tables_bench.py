"""Tables from models, and the speed benchmark (tiny model, few images)."""

import json

import numpy as np
import pytest
import torch

from dynexit.bench import benchmark, fit_thresholds, format_result, run_bench
from dynexit.checkpoint import save_checkpoint
from dynexit.table import ExitTable
from dynexit.tables_build import build_table
from _tiny_models import tiny


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    m = tiny("dynperceiver").eval()
    return save_checkpoint(m, tmp_path_factory.mktemp("ck") / "dp.safetensors")


def test_build_table_from_checkpoint(tiny_ckpt, tmp_path):
    t = build_table(str(tiny_ckpt), split="test", limit=40, batch_size=16)
    assert t.logits.shape == (40, 4, 10) and t.exit_names[0] == "latent_stage3"
    assert t.meta["model"] == "dynperceiver_tiny" and t.meta["split"] == "test"
    assert len(t.meta["checkpoint_sha256"]) == 64
    assert t.meta["weights"]["sha256"] == t.meta["checkpoint_sha256"] and t.meta["weights"]["path"].endswith("dp.safetensors")
    np.testing.assert_array_equal(t.index, np.arange(40))
    # same logits whatever the batch size: the table is reproducible
    t2 = build_table(str(tiny_ckpt), split="test", limit=40, batch_size=40)
    np.testing.assert_allclose(t.logits, t2.logits, atol=1e-5)
    t.save(tmp_path / "t.npz")
    assert ExitTable.load(tmp_path / "t.npz").meta["model"] == "dynperceiver_tiny"


def test_build_table_rejects_wrong_model():
    m = tiny("dynperceiver_rgb32")
    with pytest.raises(ValueError, match="1x28x28"):
        build_table(m, split="test", limit=8)


def test_an_architecture_name_runs_only_with_untrained():
    with pytest.raises(ValueError, match=r"'dynperceiver_tiny' is an architecture without trained weights.*untrained=True"):
        build_table("dynperceiver_tiny", split="test", limit=8)
    t = build_table("dynperceiver_tiny", split="test", limit=8, untrained=True)
    assert t.meta["weights"] == "untrained" and "checkpoint_sha256" not in t.meta


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=float("nan")), "budget must be a positive, finite number"),
    (dict(budget=-3.0), "budget must be a positive, finite number"),
    (dict(budget=1e9), r"above the full model's cost"),
    (dict(budget=1e-6), r"below the cheapest exit"),
    (dict(), "give a budget"),
    (dict(thresholds=[0.5, float("nan")]), "thresholds must be numbers"),
    (dict(thresholds=[0.5] * 6), r"one value per exit \(4; the last may be omitted\), got 6"),
    (dict(budget=5.0, batch_sizes=(256, 0)), "every batch size must be a positive integer"),
    (dict(budget=5.0, limit=0), "limit must be a positive integer"),
    (dict(budget=5.0, json_path="TMP"), "is a folder"),
    (dict(budget=5.0, json_path="TMP/none/b.json"), "does not exist; create it first"),
    (dict(budget=5.0, data_root="TMP"), "does not hold the Fashion-MNIST test split"),
])
def test_run_bench_checks_the_request_before_it_builds_the_model(tiny_ckpt, tmp_path, monkeypatch, kwargs, match):
    from dynexit import zoo

    def boom(*args, **kw):
        raise AssertionError("the model was built before the request was checked")
    monkeypatch.setattr(zoo, "resolve_model", boom)
    kwargs = {k: v.replace("TMP", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        run_bench(str(tiny_ckpt), **kwargs)


def test_benchmark_with_given_thresholds():
    m = tiny("dynperceiver").eval()
    x = torch.rand(48, 1, 28, 28)
    y = torch.randint(0, 10, (48,))
    r = benchmark(m, x, y, thresholds=[-np.inf, 0, 0, -np.inf], batch_sizes=(16, 1), batch1_limit=3, repeats=1)
    assert r["exit_histogram"] == [48, 0, 0, 0]
    assert r["theoretical_speedup"] == pytest.approx(r["costs_mflops"][-1] / r["costs_mflops"][0])
    assert set(r["timings"]) == {"batch16", "batch1"} and r["measured_speedup"] > 0
    json.dumps(r)


def test_run_bench_with_solver(tiny_ckpt, tmp_path):
    val = build_table(str(tiny_ckpt), split="test", limit=200)  # a stand-in val table for speed
    budget = float(val.costs[1])
    th, crit, solver = fit_thresholds(val, budget, solver="geometric")
    assert th.shape == (4,)
    r = run_bench(str(tiny_ckpt), budget=budget, solver="geometric", val_table=val, limit=64,
                  batch_sizes=(32, 1), batch1_limit=4, repeats=1, json_path=str(tmp_path / "b.json"))
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["solver"] == "geometric" and saved["budget_mflops"] == budget
    assert {"theoretical_speedup", "measured_speedup", "accuracy_full", "accuracy_early_exit"} <= set(saved)
    assert saved["weights"]["path"].endswith("dp.safetensors") and len(saved["weights"]["sha256"]) == 64
    assert f"(sha256 {saved['weights']['sha256'][:12]})" in format_result(saved)


def test_cli_table_and_bench(tiny_ckpt, tmp_path, capsys):
    from dynexit.cli_models import main
    out = tmp_path / "val.npz"
    assert main(["table", "--model", str(tiny_ckpt), "--split", "test", "--limit", "50", "--out", str(out), "--quiet"]) == 0
    assert ExitTable.load(out).num_samples == 50
    assert main(["bench", "--model", str(tiny_ckpt), "--thresholds", "0.5,0.5,0.5", "--limit", "32",
                 "--batch-sizes", "16,1", "--batch1-limit", "2", "--repeats", "1"]) == 0
    assert "measured_speedup" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_ckpt), "--thresholds", "0.5", "--limit", "8"]) == 2
    assert "one value per exit" in capsys.readouterr().err
    assert main(["table", "--model", str(tmp_path / "missing.safetensors"), "--split", "val", "--out", str(out)]) == 2
