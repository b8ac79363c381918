"""Dynamic Perceiver specifics: attention capture, exit order, ablations, timm backbones."""

import pytest
import torch

from dynexit.models import create_model
from _tiny_models import images, tiny


def test_attention_capture_shapes():
    m = tiny("dynperceiver").eval()
    x = images(m, 3)
    with m.capture_attention() as rec:
        m(x)
    assert rec.names() == ["x2z1", "z2x2", "x2z2", "z2x3", "x2z3", "z2x4", "x2z4", "z2x_last"]
    for a in rec:
        b, heads, q, k = a.weights.shape
        assert b == 3 and heads >= 1
        torch.testing.assert_close(a.weights.sum(-1), torch.ones(b, heads, q))
        h, w = a.grid
        assert (k if a.grid_axis == "keys" else q) == h * w
        assert a.spatial().shape == (3, h, w)
    assert rec["x2z1"].kind == "x2z" and rec["x2z1"].grid == (7, 7)
    assert rec["z2x2"].grid == (28, 28)
    # nothing is recorded outside the context
    n = len(rec)
    m(x)
    assert len(rec) == n
    with pytest.raises(KeyError, match="captured"):
        rec["nope"]


def test_exit_order_and_weights():
    m = tiny("dynperceiver")
    assert m.exit_names == ("latent_stage3", "latent_stage4", "cnn_head", "fusion")
    assert m.loss_weights() == [0.5, 0.5, 1.0, 1.0]


def test_exit1_does_not_run_cnn_stage3():
    """Exit 1 is read before CNN stage 3 runs (the paper's inference order)."""
    m = tiny("dynperceiver").eval()
    called = []
    h = m.cnn.stages[2].register_forward_hook(lambda *a: called.append(1))
    state = m.init_state(images(m, 2))
    m.forward_stage(0, state)
    assert not called
    h.remove()


@pytest.mark.parametrize("flags", [dict(with_z2x=False), dict(with_x2z=False), dict(with_last_ca=False, with_isc=False)])
def test_ablations_run(flags):
    m = create_model("dynperceiver_tiny", **flags).eval()
    outs = m(images(m, 2))
    assert len(outs) == 4


@pytest.mark.parametrize("backbone", ["resnet18", "regnety_004", "mobilenetv3_large_075"])
def test_timm_backbones(backbone):
    m = create_model("dynperceiver", backbone=backbone, in_chans=3, num_classes=7, input_size=64,
                     num_latents=16, sa_depths=(1, 1, 1, 1), sa_heads=(1, 1, 1, 1), small_input=False).eval()
    outs = m(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 7)] * 4


def test_imagenet_entrypoint_builds():
    m = create_model("dynperceiver_regnety_004_t128")
    assert m.input_size == (224, 224) and m.in_chans == 3 and m.num_classes == 1000
    with pytest.raises(ValueError, match="size 224x224"):
        m(torch.rand(1, 3, 28, 28))
