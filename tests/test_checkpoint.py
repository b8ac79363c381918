"""Checkpoints: round trip and every bad-input error."""

import json

import numpy as np
import pytest
import torch

from dynexit.checkpoint import load_checkpoint, load_weights, read_sidecar, resolve_model, save_checkpoint
from _tiny_models import images, tiny


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
    from safetensors.torch import load_file, save_file
    m, path = saved
    w = load_file(str(path))
    first = sorted(w)[0]
    del w[first]
    save_file(w, str(path))
    with pytest.raises(ValueError, match="1 missing keys"):
        load_checkpoint(path)
    w[first] = torch.zeros(1)
    w["bogus.weight"] = torch.zeros(3)
    save_file(w, str(path))
    with pytest.raises(ValueError, match="unexpected keys .*bogus.weight"):
        load_checkpoint(path)


def test_wrong_shapes(saved):
    from safetensors.torch import load_file, save_file
    _, path = saved
    w = load_file(str(path))
    w["latent"] = torch.zeros(3, 3)
    save_file(w, str(path))
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
    with pytest.raises(ValueError, match="neither a registered model"):
        resolve_model("not_a_model")
