"""The zoo: the reproduce pipeline on a tiny entry, clear errors, and the shipped files themselves."""

import json

import numpy as np
import pytest
import torch

from dynexit import solvers, zoo
from dynexit.metrics import budget_grid
from dynexit.table import ExitTable
from dynexit.tables import build_table
from dynexit.zoo.reproduce import PIPELINES, match_final_budget, reproduce

from conftest import random_table

TINY_RECIPE = {"model": "multiexit_cnn", "model_kwargs": {"backbone": "resnet10_quarter", "exit_after": [1, 2, 3]},
               "epochs": 1, "batch_size": 64, "train_subset": 256, "val_subset": 128, "seed": 0}


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "zoo"))
    entry = zoo.ZooEntry("tiny_cnn_fmnist", "multiexit_cnn", "test entry", TINY_RECIPE)
    monkeypatch.setitem(zoo.ENTRIES, entry.name, entry)
    return entry


def test_reproduce_builds_weights_tables_that_the_weights_reproduce(tiny_zoo, tmp_path, monkeypatch):
    # only a slice of each split: the pipeline is what is under test, not the numbers
    import dynexit.tables as tb
    real = tb.load_split_images
    def first_300(split, dataset="fashion-mnist", data_root=None, limit=None, return_source=False):
        x, y, source = real(split, return_source=True)
        n = min(300, limit or 300)
        return (x[:n], y[:n], source) if return_source else (x[:n], y[:n])
    monkeypatch.setattr(tb, "load_split_images", first_300)
    out = reproduce("tiny_cnn_fmnist", device="cpu", work_dir=tmp_path / "runs", progress=False, bench=False)
    assert zoo.available("tiny_cnn_fmnist")
    info = zoo.info("tiny_cnn_fmnist")
    assert info["train"]["epochs"] == 1 and info["train"]["trained_recipe"]["train_subset"] == 256
    assert info["recipe"] == TINY_RECIPE
    side = json.loads(zoo.weights_path("tiny_cnn_fmnist").with_suffix(".json").read_text())
    assert side["weights_storage"] == "float16"
    model = zoo.load_model("tiny_cnn_fmnist")
    assert not model.training
    test = zoo.load_table("tiny_cnn_fmnist", "test")
    assert test.meta["logits_storage"] == "float16"
    assert out["test_accuracy"] == pytest.approx(test.exit_accuracy().tolist())
    again = build_table(model, "test", limit=64)
    np.testing.assert_array_equal(again.predictions, test.subset(np.arange(64)).predictions)
    np.testing.assert_allclose(again.logits, test.logits[:64], atol=0.02, rtol=2e-3)
    # reproduce again with skip_train: same weights, same tables
    reproduce("tiny_cnn_fmnist", work_dir=tmp_path / "runs", skip_train=True, progress=False, bench=False)
    np.testing.assert_array_equal(zoo.load_table("tiny_cnn_fmnist", "test").logits, test.logits)


def test_reproduce_loads_the_exported_weights_once(tiny_zoo, tmp_path, monkeypatch):
    """--skip-train: the exported file is loaded once; both tables and the bench run that model object."""
    import dynexit.io.checkpoint as ck
    import dynexit.tables as tb
    from _tiny_models import tiny

    real_images, real_load = tb.load_split_images, ck.load_checkpoint
    def first_64(split, dataset="fashion-mnist", data_root=None, limit=None, return_source=False):
        x, y, source = real_images(split, return_source=True)
        return (x[:64], y[:64], source) if return_source else (x[:64], y[:64])
    loads = []
    def counted(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)
    monkeypatch.setattr(tb, "load_split_images", first_64)
    monkeypatch.setattr(ck, "load_checkpoint", counted)
    work = tmp_path / "runs"
    ck.save_checkpoint(tiny("multiexit_cnn").eval(), work / tiny_zoo.name / "checkpoint.safetensors")
    out = reproduce(tiny_zoo.name, work_dir=work, skip_train=True, progress=False, bench=True)
    weights = str(zoo.weights_path(tiny_zoo.name))
    assert loads.count(weights) == 1, loads  # (the other load reads the trained checkpoint to export it)
    assert len(loads) == 2 and out["bench"]["num_images"] == 64
    assert out["bench"]["model"] == weights and out["bench"]["weights"]["sha256"] == zoo.load_table(
        tiny_zoo.name, "val").meta["checkpoint_sha256"]
    assert zoo.load_bench(tiny_zoo.name)["val_expected_accuracy"] == out["bench"]["val_expected_accuracy"]


def test_missing_and_damaged_files_name_the_file_and_the_command(tiny_zoo):
    with pytest.raises(ValueError, match=r"tiny_cnn_fmnist\.safetensors.*dynexit zoo reproduce tiny_cnn_fmnist"):
        zoo.load_model("tiny_cnn_fmnist")
    with pytest.raises(ValueError, match=r"tiny_cnn_fmnist\.test\.npz.*dynexit zoo reproduce tiny_cnn_fmnist"):
        zoo.load_table("tiny_cnn_fmnist", "test")
    path = zoo.table_path("tiny_cnn_fmnist", "val")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a table")
    with pytest.raises(ValueError, match=r"damaged zoo file.*dynexit zoo reproduce tiny_cnn_fmnist"):
        zoo.load_table("tiny_cnn_fmnist", "val")
    with pytest.raises(ValueError, match="unknown zoo model 'nope'"):
        zoo.info("nope")
    with pytest.raises(ValueError, match="split must be one of"):
        zoo.load_table("tiny_cnn_fmnist", "train")


def test_match_final_budget_is_the_first_grid_budget_that_keeps_final_accuracy_on_val():
    val = random_table(n=600, k=4, c=5, seed=3)
    budget = match_final_budget(val, tolerance=0.001)
    target = val.exit_accuracy()[-1] - 0.001
    grid = budget_grid(val, 40)
    assert budget in grid
    assert solvers.make(solvers.DEFAULT, budget).fit(val).expected_accuracy_ >= target
    earlier = grid[grid < budget]
    for b in earlier:
        assert solvers.make(solvers.DEFAULT, float(b)).fit(val).expected_accuracy_ < target


# ----------------------------------------------------------------------------- the shipped zoo

SHIPPED = [name for name in zoo.list() if zoo.available(name)]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_test_table_is_reproduced_by_the_shipped_weights(name):
    model = zoo.load_model(name)
    table = zoo.load_table(name, "test")
    assert table.num_samples == 10_000 and zoo.load_table(name, "val").num_samples == 5_000
    np.testing.assert_allclose(table.costs, model.exit_costs(), rtol=1e-6)
    with torch.no_grad():
        again = build_table(model, "test", limit=256)
    # the table stores float16 logits, so compare predictions in that format: two logits a hair apart
    # in float32 can round to the same float16 value, where the stored argmax takes the first class
    stored = table.subset(np.arange(256)).predictions
    np.testing.assert_array_equal(again.logits.astype(np.float16).argmax(-1), stored)
    assert (again.predictions != stored).mean() < 0.01  # and float32 disagrees only on such ties
    np.testing.assert_allclose(again.logits, table.logits[:256], rtol=1e-3, atol=1e-2)


def test_shipped_tables_use_the_registered_split_sizes():
    for name in SHIPPED:
        for split, n in (("val", 5_000), ("test", 10_000)):
            t = ExitTable.load(zoo.table_path(name, split))
            assert t.num_samples == n and t.meta["split"] == split


def test_branch_study_pipeline_keeps_practical_branches_on_a_frozen_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path / "zoo"))
    recipe = {"model": "mevit_tiny", "model_kwargs": {"exits": []}, "epochs": 1, "batch_size": 64,
              "train_subset": 256, "val_subset": 256, "seed": 0}
    study = {"blocks": [0, 1], "types": ["mlp", "cnn_add"], "study_epochs": 1, "final_epochs": 1, "lr": 1e-3,
             "max_branches": 2, "min_branches": 1, "max_steps": 3}
    entry = zoo.ZooEntry("tiny_mevit_fmnist", "mevit_tiny", "test entry", recipe, "branch-study", study)
    monkeypatch.setitem(zoo.ENTRIES, entry.name, entry)
    ckpt, _ = PIPELINES["branch-study"](entry, tmp_path / "runs", "cpu", False)
    from dynexit.io.checkpoint import load_checkpoint
    backbone = load_checkpoint(tmp_path / "runs" / "backbone" / "checkpoint.safetensors")
    model = load_checkpoint(ckpt)
    saved = zoo.load_branch_study(entry.name)
    assert saved == json.loads((tmp_path / "zoo" / "tiny_mevit_fmnist.branch_study.json").read_text())
    assert {(r["block"], r["type"]) for r in saved["rows"] if r["type"] != "head"} == {
        (0, "mlp"), (0, "cnn_add"), (1, "mlp"), (1, "cnn_add")}
    assert model.arch_kwargs["exits"] == saved["exits"] and 1 <= len(saved["exits"]) <= 2
    assert [[r["block"], r["type"]] for r in saved["rows"] if r["selected"]] == saved["exits"]
    # classifier-wise: the final model's backbone is the trained backbone, bit for bit
    for k, v in backbone.vit.state_dict().items():
        assert torch.equal(v, model.vit.state_dict()[k]), k


def test_load_branch_study_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path))
    with pytest.raises(ValueError, match="without a branch study"):
        zoo.load_branch_study("dvt_fmnist")
    with pytest.raises(ValueError, match=r"mevit_fmnist\.branch_study\.json: missing file.*zoo reproduce mevit_fmnist"):
        zoo.load_branch_study("mevit_fmnist")
    zoo.branch_study_path("mevit_fmnist").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match="damaged zoo file"):
        zoo.load_branch_study("mevit_fmnist")


DEEP = "[" * 100000 + "]" * 100000  # json raises RecursionError on it, not a ValueError


def test_deeply_nested_zoo_json_is_a_damaged_file_not_a_recursion_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path))
    zoo.branch_study_path("mevit_fmnist").write_text(DEEP)
    zoo.bench_path("dvt_fmnist").write_text(DEEP)
    with pytest.raises(ValueError, match=r"mevit_fmnist\.branch_study\.json: damaged zoo file \(JSON nested too "
                                         r"deeply to read\).*zoo reproduce mevit_fmnist"):
        zoo.load_branch_study("mevit_fmnist")
    with pytest.raises(ValueError, match=r"dvt_fmnist\.bench\.json: damaged zoo file \(JSON nested too deeply"):
        zoo.load_bench("dvt_fmnist")


@pytest.mark.parametrize("costs", [DEEP, '"1, 2"', '["1.5", "24"]', "[24.78, 1.531]", "[1, 1e999]", "[0, 3]",
                                   "[-1, 3]", "[true, 2]", "[]", "{}", "null", "[[1], [2]]", "[1, NaN]",
                                   "[1, " + "9" * 400 + "]"])
def test_declared_costs_trusts_only_positive_finite_non_decreasing_numbers(costs, tmp_path):
    side = tmp_path / "m.json"
    side.write_text(DEEP if costs == DEEP else '{"costs_mflops": %s}' % costs)
    assert zoo.declared_costs(tmp_path / "m.safetensors") is None  # the loader then names the problem


def test_declared_costs_reads_a_valid_sidecar(tmp_path):
    (tmp_path / "m.json").write_text('{"costs_mflops": [1.5, 1.5, 24]}')
    np.testing.assert_array_equal(zoo.declared_costs(tmp_path / "m.safetensors"), [1.5, 1.5, 24.0])


# ----------------------------------------------------------------------------- names -> weights

def test_a_folder_in_place_of_a_zoo_file_is_a_value_error_with_the_rebuild_command(tiny_zoo):
    name = tiny_zoo.name
    for path in (zoo.weights_path(name), zoo.table_path(name, "test"), zoo.bench_path(name)):
        path.mkdir(parents=True)
    fix = rf"damaged zoo file.*dynexit zoo reproduce {name}"
    with pytest.raises(ValueError, match=rf"{name}\.safetensors: {fix}"):
        zoo.load_model(name)
    with pytest.raises(ValueError, match=rf"{name}\.safetensors: {fix}"):
        zoo.resolve_model(name)
    with pytest.raises(ValueError, match=rf"{name}\.test\.npz: {fix}"):
        zoo.load_table(name, "test")
    with pytest.raises(ValueError, match=rf"{name}\.bench\.json: {fix}"):
        zoo.load_bench(name)
    assert not zoo.available(name)


def test_resolve_model_names_the_missing_file_and_never_falls_back_to_random_weights(tiny_zoo, tmp_path):
    # tiny_cnn_fmnist is a zoo entry without files: its name must not quietly build the architecture
    with pytest.raises(ValueError, match=r"tiny_cnn_fmnist\.safetensors: missing file.*dynexit zoo reproduce tiny_cnn_fmnist"):
        zoo.resolve_model("tiny_cnn_fmnist")
    with pytest.raises(ValueError, match=r"'multiexit_cnn' is an architecture without trained weights.*untrained=True"):
        zoo.resolve_model("multiexit_cnn")
    with pytest.raises(ValueError, match=r"'nope' is not a zoo model"):
        zoo.resolve_model("nope")
    with pytest.raises(ValueError, match=r"only apply to an untrained architecture"):
        zoo.resolve_model("tiny_cnn_fmnist", backbone="resnet10_quarter")
    with pytest.raises(ValueError, match=r"no such checkpoint file"):
        zoo.resolve_model(tmp_path / "gone.safetensors")
    model = zoo.resolve_model("tiny_cnn_fmnist", untrained=True)  # the entry's architecture and kwargs, random weights
    assert model.arch_name == "multiexit_cnn" and model.arch_kwargs["backbone"] == "resnet10_quarter"
    assert zoo.weights_source(model) == "untrained" and "UNTRAINED" in zoo.describe_weights("untrained")
    assert zoo.declared_costs("tiny_cnn_fmnist") is None  # no sidecar: the loader gives the precise error later


@pytest.mark.skipif("dvt_fmnist" not in SHIPPED, reason="dvt_fmnist is not shipped in data/zoo")
def test_a_zoo_name_resolves_to_the_shipped_weights_its_tables_came_from():
    model = zoo.resolve_model("dvt_fmnist")
    source = zoo.weights_source(model)
    assert source["zoo"] == "dvt_fmnist" and source["path"].endswith("dvt_fmnist.safetensors")
    assert source["sha256"] == zoo.load_table("dvt_fmnist", "val").meta["checkpoint_sha256"]
    assert zoo.resolve_model(zoo.weights_path("dvt_fmnist")).weights_source["sha256"] == source["sha256"]
    np.testing.assert_allclose(zoo.declared_costs("dvt_fmnist"), model.exit_costs(), rtol=1e-6)
    assert f"sha256 {source['sha256'][:12]}" in zoo.describe_weights(source)


@pytest.mark.skipif(not zoo.available("dvt_fmnist"), reason="no shipped zoo")
def test_shipped_sidecars_carry_the_weights_checksum(tmp_path):
    """A flipped byte in a shipped weights file is refused, not loaded as a silently different model."""
    import hashlib
    import shutil
    for name in zoo.list():
        w = zoo.weights_path(name)
        side = json.loads(w.with_suffix(".json").read_text())
        assert side["weights_sha256"] == hashlib.sha256(w.read_bytes()).hexdigest(), name
    src = zoo.weights_path("dvt_fmnist")
    dst = tmp_path / src.name
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    data = bytearray(src.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data, after the header
    dst.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha|SHA|checksum|changed"):
        zoo.resolve_model(str(dst))


@pytest.mark.skipif(not zoo.available("dvt_fmnist"), reason="no shipped zoo")
def test_a_zoo_sidecar_without_its_checksum_is_refused(tmp_path, monkeypatch):
    import shutil
    for src in [zoo.weights_path("dvt_fmnist"), *(zoo.table_path("dvt_fmnist", s) for s in zoo.SPLITS)]:
        shutil.copy(src, tmp_path / src.name)
    side = json.loads(zoo.weights_path("dvt_fmnist").with_suffix(".json").read_text())
    del side["weights_sha256"]
    (tmp_path / "dvt_fmnist.json").write_text(json.dumps(side))
    monkeypatch.setenv("DYNEXIT_ZOO", str(tmp_path))
    with pytest.raises(ValueError, match="no weights_sha256.*dynexit zoo reproduce dvt_fmnist"):
        zoo.load_model("dvt_fmnist")
