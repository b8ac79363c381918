"""Checkpoints: round trip and every bad-input error."""

import hashlib
import json

import numpy as np
import pytest
import torch

from dynexit.io.checkpoint import load_checkpoint, load_weights, read_sidecar, save_checkpoint
from dynexit.zoo import resolve_model
from _tiny_models import images, tiny


def rewrite_weights(path, weights):
    """Replace the weights and record their new SHA-256, as a consistent (but wrong) re-save would."""
    from safetensors.torch import save_file
    save_file(weights, str(path))
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


@pytest.fixture
def saved(tmp_path):
    m = tiny("dynperceiver").eval()
    path = save_checkpoint(m, tmp_path / "dp.safetensors", val_accuracy=[0.5, 0.6, 0.7, 0.8], recipe={"epochs": 1})
    return m, path


def test_round_trip(saved):
    m, path = saved
    assert path.exists() and path.with_suffix(".json").exists()
    m2 = load_checkpoint(path)
    assert not m2.training and m2.arch_name == "dynperceiver_tiny"
    x = images(m, 4)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    meta = read_sidecar(path)
    assert meta["val_accuracy"] == [0.5, 0.6, 0.7, 0.8] and meta["recipe"] == {"epochs": 1}
    np.testing.assert_allclose(meta["costs_mflops"], m.exit_costs())
    np.testing.assert_allclose(m2.exit_costs(), m.exit_costs())
    assert meta["exit_names"] == list(m.exit_names) and "git_commit" in meta
    assert resolve_model(str(path)).arch_name == "dynperceiver_tiny"


def test_kwargs_round_trip(tmp_path):
    m = tiny("multiexit_cnn_two")
    p = save_checkpoint(m, tmp_path / "c")
    assert p.suffix == ".safetensors"
    m2 = load_checkpoint(p)
    assert m2.num_exits == 2 and m2.arch_kwargs == {"backbone": "resnet10_quarter", "exit_after": [2]}


def test_other_architecture(saved):
    _, path = saved
    other = tiny("multiexit_cnn")
    with pytest.raises(ValueError, match="architecture 'dynperceiver_tiny'"):
        load_weights(other, path)


def test_missing_and_extra_keys(saved, tmp_path):
    from safetensors.torch import load_file
    m, path = saved
    w = load_file(str(path))
    first = sorted(w)[0]
    del w[first]
    rewrite_weights(path, w)
    with pytest.raises(ValueError, match="1 missing keys"):
        load_checkpoint(path)
    w[first] = torch.zeros(1)
    w["bogus.weight"] = torch.zeros(3)
    rewrite_weights(path, w)
    with pytest.raises(ValueError, match="unexpected keys .*bogus.weight"):
        load_checkpoint(path)


def test_wrong_shapes(saved):
    from safetensors.torch import load_file
    _, path = saved
    w = load_file(str(path))
    w["latent"] = torch.zeros(3, 3)
    rewrite_weights(path, w)
    with pytest.raises(ValueError, match="wrong shape"):
        load_checkpoint(path)


def test_pickle_is_refused(saved, tmp_path):
    m, path = saved
    torch.save(m.state_dict(), path)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_checkpoint(path)
    path.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_checkpoint(path)


def test_corrupt_sidecar(saved):
    _, path = saved
    side = path.with_suffix(".json")
    side.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint sidecar"):
        load_checkpoint(path)
    side.write_text(json.dumps({"format": "dynexit.checkpoint", "format_version": 1}))
    with pytest.raises(ValueError, match="corrupt checkpoint sidecar"):
        load_checkpoint(path)
    side.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a dynexit checkpoint"):
        load_checkpoint(path)
    side.unlink()
    with pytest.raises(ValueError, match="no JSON sidecar"):
        load_checkpoint(path)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="not_a_model"):
        resolve_model("not_a_model")


def test_changed_weights_fail_the_checksum(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one bit of one weight: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match the SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype, message", [
    (torch.int32, "dtype torch.int32, the model needs a floating"),
    (torch.bool, "dtype torch.bool"),
    (torch.complex64, "dtype torch.complex64"),
])
def test_weight_dtypes(saved, dtype, message):
    from safetensors.torch import load_file
    _, path = saved
    w = load_file(str(path))
    w["latent"] = torch.ones_like(w["latent"], dtype=dtype)
    rewrite_weights(path, w)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300])  # 1e300 overflows float32
def test_non_finite_weights(saved, value):
    from safetensors.torch import load_file
    _, path = saved
    w = load_file(str(path))
    w["latent"] = w["latent"].double()
    w["latent"][0, 0] = value
    rewrite_weights(path, w)
    with pytest.raises(ValueError, match="latent holds 1 NaN or infinite"):
        load_checkpoint(path)


def test_float16_and_float64_weights_load(saved):
    from safetensors.torch import load_file
    m, path = saved
    w = load_file(str(path))
    rewrite_weights(path, {k: v.double() if v.is_floating_point() else v for k, v in w.items()})
    m2 = load_checkpoint(path)
    x = images(m, 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[-1], m2(x)[-1])


@pytest.mark.parametrize("field, value, message", [
    ("costs_mflops", [1.0, 2.0], "costs_mflops' has 2 entries"),
    ("costs_mflops", [4.0, 3.0, 2.0, 1.0], "cumulative"),
    ("costs_mflops", [1.0, float("nan"), 2.0, 3.0], "finite positive"),
    ("costs_mflops", {"a": 1}, "finite positive"),
    ("num_classes", -3, "'num_classes' must be a positive integer"),
    ("num_classes", True, "'num_classes' must be a positive integer"),
    ("num_classes", 7, "'num_classes' is 7 but the model"),
    ("num_exits", 3, "'exit_names' has 4 entries but num_exits is 3"),
    ("val_accuracy", [0.5, 1.5, 0.7, 0.8], r"accuracies in \[0, 1\]"),
    ("input_size", "28x28", "input_size"),
    ("exit_names", ["a", "b", "c", "d"], "'exit_names' is"),
    ("arch", 5, "'arch' must be a registry name"),
    ("kwargs", [], "'kwargs' must be a JSON object"),
    ("kwargs", {"width": 999}, "saved with kwargs"),
    ("arch", "multiexit_cnn", "saved for architecture 'dynperceiver_tiny'"),
    ("format_version", True, "format version True"),
    ("weights_sha256", "zz", "64 lowercase hex"),
    ("training_data", "digits", "'training_data' must be a JSON object"),
    ("training_data", {"class_names": list("0123456789")}, "'training_data.dataset' must be a dataset name"),
    ("training_data", {"dataset": "digits", "class_names": []}, "'training_data.class_names' must be a non-empty"),
    ("training_data", {"dataset": "digits", "class_names": list("012")}, "has 3 entries but num_classes is 10"),
    ("training_data", {"dataset": "digits", "class_names": list("0123456789"), "split_rule": 3}, "split_rule"),
])
def test_sidecar_fields_are_validated(saved, field, value, message):
    _, path = saved
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta[field] = value
    side.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path.with_suffix("")))  # names dp.json or dp.safetensors


def test_damaged_json_and_folders(saved):
    _, path = saved
    side = path.with_suffix(".json")
    side.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_checkpoint(path)
    side.unlink()
    side.mkdir()
    with pytest.raises(ValueError, match="is a folder, not a checkpoint sidecar"):
        load_checkpoint(path)
    side.rmdir()
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        load_checkpoint(path)


def test_header_damage(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[9] = ord("]")  # the JSON header now starts "{]"
    path.write_bytes(bytes(data))
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["weights_sha256"]  # an older checkpoint without a checksum: the header parser must say it
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="damaged safetensors header|corrupt or truncated"):
        load_checkpoint(path)


def test_save_refuses_what_load_would_refuse(tmp_path):
    m = tiny("multiexit_cnn_two")
    with pytest.raises(ValueError, match="cannot save.*'val_accuracy' has 1 entries but num_exits is 2"):
        save_checkpoint(m, tmp_path / "c", val_accuracy=[0.5])
    assert not list(tmp_path.iterdir())


def test_sidecar_costs_must_equal_a_recount(saved):
    """The sidecar is not covered by the weights' checksum: edited costs are caught by counting them again."""
    _, path = saved
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["costs_mflops"] = [1.0, 2.0, 3.0, 4.0]
    side.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="costs_mflops .* differ from what this model counts"):
        load_checkpoint(path)


def test_loading_never_changes_a_models_mode_but_its_own(saved):
    m, path = saved
    assert not load_checkpoint(path).training and load_checkpoint(path, eval=False).training


def test_training_data_record_round_trips_and_old_sidecars_load(saved):
    """``training_data`` (dataset, class names, split rule) is written and read back; a sidecar without it
    (the shipped zoo's, older runs') loads as before."""
    from dynexit.io.sidecar import class_names_mismatch, training_data_record

    m, path = saved
    record = training_data_record("fashion-mnist", [f"c{i}" for i in range(10)], "train: 55,000 ...")
    path = save_checkpoint(m, path, extra={"training_data": record})
    assert load_checkpoint(path).checkpoint_meta["training_data"] == record
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["training_data"]
    side.write_text(json.dumps(meta))
    assert "training_data" not in load_checkpoint(path).checkpoint_meta
    assert class_names_mismatch(record, "x", [f"c{i}" for i in range(10)]) is None
    swapped = [f"c{i}" for i in (1, 0, *range(2, 10))]
    assert "label 0 is 'c0' in training, 'c1' here" in class_names_mismatch(record, "imagefolder:/t", swapped)
    assert "10 classes vs 3" in class_names_mismatch(record, "imagefolder:/t", ["a", "b", "c"])
