"""Tables from models, and the speed benchmark (tiny model, few images)."""

import json

import numpy as np
import pytest
import torch

from dynexit import data
from dynexit.bench import benchmark, fit_thresholds, format_result, run_bench
from dynexit.io.checkpoint import save_checkpoint
from dynexit.table import ExitTable
from dynexit.tables import build_table
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
    assert t.meta["data_source"].endswith("t10k-images-idx3-ubyte.gz")  # the file actually read
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
    (dict(budget=1e-6), r"below the cheapest exit .*choose a budget of at least"),
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


@pytest.mark.skipif(not (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="the val split needs the Fashion-MNIST training file (dataset-fashion-mnist)")
def test_run_bench_with_solver(tiny_ckpt, tmp_path):
    val = build_table(str(tiny_ckpt), split="val", limit=200)  # thresholds are fitted on val, never test
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
    from dynexit.cli import main
    out = tmp_path / "val.npz"
    assert main(["table", "--model", str(tiny_ckpt), "--split", "test", "--limit", "50", "--out", str(out), "--quiet"]) == 0
    assert ExitTable.load(out).num_samples == 50
    assert main(["bench", "--model", str(tiny_ckpt), "--thresholds", "0.5,0.5,0.5", "--limit", "32",
                 "--batch-sizes", "16,1", "--batch1-limit", "2", "--repeats", "1"]) == 0
    assert "measured_speedup" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_ckpt), "--thresholds", "0.5", "--limit", "8"]) == 2
    assert "one value per exit" in capsys.readouterr().err
    assert main(["table", "--model", str(tmp_path / "missing.safetensors"), "--split", "val", "--out", str(out)]) == 2


def test_bench_early_exit_with_a_per_sample_criterion_takes_the_table_paths_exits():
    """`random` scores sample i of the split: bench's batches must pass the split's rows, not 0..B-1."""
    from dynexit.bench import predict
    from dynexit.inference import exits_from_logits

    m = tiny("dynperceiver").eval()
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (300,))
    th = [0.5, 0.5, 0.5]
    with torch.no_grad():
        table_exits, _ = exits_from_logits(m(x), th, "random")
    assert 0 < (table_exits == 0).sum() < 300  # the thresholds split the images: the test can fail
    exits, pred_ee, _ = predict(m, x, th, "random", batch_size=16)  # 19 batches
    np.testing.assert_array_equal(exits, table_exits)
    r = benchmark(m, x, y, th, "random", batch_sizes=(300,), repeats=1)  # batches of 256 + 44
    assert r["exit_histogram"] == np.bincount(table_exits, minlength=4).tolist()


def test_a_budget_at_or_above_the_full_cost_is_accepted_like_solve(tiny_ckpt):
    from dynexit.bench import check_request
    from dynexit.io.checkpoint import read_sidecar

    full = read_sidecar(tiny_ckpt)["costs_mflops"][-1]
    for budget in (full, 10 * full):
        costs, _ = check_request(str(tiny_ckpt), budget=budget)
        assert costs[-1] == pytest.approx(full)


def test_thresholds_fitted_on_the_test_split_are_refused(tiny_ckpt, tmp_path, monkeypatch):
    from dynexit import zoo

    test = build_table(str(tiny_ckpt), split="test", limit=20)
    test.save(tmp_path / "test.npz")
    monkeypatch.setattr(zoo, "resolve_model", lambda *a, **k: pytest.fail("the model was built"))
    for val_table in (test, str(tmp_path / "test.npz")):
        with pytest.raises(ValueError, match=r"split 'test'.*thresholds must be fitted on a validation split that "
                                             r"is not the test split"):
            run_bench(str(tiny_ckpt), budget=float(test.costs[1]), val_table=val_table)


def test_format_result_with_given_thresholds_says_so():
    m = tiny("dynperceiver").eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    r = benchmark(m, x, y, thresholds=[np.inf, 0.5, -np.inf, -np.inf], batch_sizes=(8,), repeats=1)
    r.update(model="tiny", budget_mflops=None, solver="given thresholds", criterion="max_prob")
    head = format_result(json.loads(json.dumps(r))).splitlines()[0]
    assert head == "model tiny  thresholds given [inf, 0.5, -inf, -inf]  criterion max_prob"
    assert "None" not in format_result(r)


def test_train_refuses_non_positive_epochs():
    from dynexit.training.loop import TrainConfig

    for bad in (0, -1, 0.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="epochs must be a positive number"):
            TrainConfig(epochs=bad)
    assert TrainConfig(epochs=0.5).epochs == 0.5 and TrainConfig(epochs=3).epochs == 3
