"""Every model family follows the MultiExitModel contract (tiny configs)."""

import numpy as np
import pytest
import torch

from dynexit.models import MultiExitModel, create_model, list_models, register_model
from _tiny_models import TINY, assert_staged_equals_forward, images, tiny


@pytest.mark.parametrize("key", list(TINY))
def test_output_shapes_and_names(key):
    m = tiny(key).eval()
    x = images(m, 5)
    outs = m(x)
    assert isinstance(m, MultiExitModel)
    assert len(outs) == m.num_exits == len(m.exit_names) == len(m.loss_weights())
    for o in outs:
        assert o.shape == (5, m.num_classes)
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("key", list(TINY))
def test_staged_form_equals_forward(key):
    m = tiny(key).eval()
    assert_staged_equals_forward(m, images(m, 4))


@pytest.mark.parametrize("key", list(TINY))
def test_costs_positive_increasing(key):
    m = tiny(key)
    c = m.exit_costs()
    assert c.shape == (m.num_exits,)
    assert np.all(c > 0) and np.all(np.diff(c) > 0)
    assert m.training  # counting restores the mode


def test_backward_reaches_every_exit():
    m = tiny("dynperceiver").train()
    outs = m(images(m, 4))
    sum(o.sum() for o in outs).backward()
    assert m.latent.grad is not None and m.latent.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"


@pytest.mark.parametrize("key", ["dynperceiver", "multiexit_cnn"])
def test_bad_inputs_are_clear_errors(key):
    m = tiny(key).eval()
    with pytest.raises(ValueError, match="1-channel"):
        m(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="size 28x28"):
        m(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="4-d"):
        m(torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="float"):
        m(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_registry():
    names = list_models()
    for required in ("dynperceiver_fmnist", "multiexit_cnn_fmnist", "static_cnn_fmnist"):
        assert required in names
    assert all("fmnist" in n for n in list_models("*fmnist*"))
    assert list_models("dynperceiver_res*")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_model")
    m = create_model("static_cnn", backbone="resnet10_quarter")
    assert m.arch_name == "static_cnn" and m.arch_kwargs == {"backbone": "resnet10_quarter"}
    assert m.num_exits == 1

    with pytest.raises(ValueError, match="already registered"):
        @register_model
        def dynperceiver_fmnist():  # noqa: F811
            pass


def test_fmnist_models_share_backbone():
    shapes = {}
    for name in ("dynperceiver_fmnist", "multiexit_cnn_fmnist", "static_cnn_fmnist"):
        m = create_model(name)
        bb = m.cnn if hasattr(m, "cnn") else m.backbone
        shapes[name] = [tuple(p.shape) for p in bb.parameters()]
    assert shapes["dynperceiver_fmnist"] == shapes["multiexit_cnn_fmnist"] == shapes["static_cnn_fmnist"]


def test_normalisation_inside_model():
    m = tiny("static_cnn")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(m.init_state(x)["x"], (x - 0.2860) / 0.3530)


@pytest.mark.parametrize("key", list(TINY))
def test_forward_upto_runs_only_the_first_stages(key):
    model = tiny(key).eval()
    x = images(model, 3)
    calls = []
    real = model.forward_stage
    model.forward_stage = lambda k, state: calls.append(k) or real(k, state)
    with torch.no_grad():
        full = model(x)
        calls.clear()
        first = model.forward_upto(x, 0)
    assert calls == [0] and len(first) == 1
    torch.testing.assert_close(first[0], full[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_upto(x, model.num_exits)
