"""optimize_for_inference: a new module, exact within 1e-4 on every exit, for every CNN family."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from dynexit import zoo
from dynexit.inference import early_exit
from dynexit.models import create_model
from dynexit.models.optimize import (FastAdaptiveAvgPool2d, fold_batchnorm, fold_residual_depthwise,
                                     max_exit_difference, optimize_for_inference)
from dynexit.models.timm_exits import attach_exits
from _tiny_models import images, tiny

TINY_BACKBONES = {  # the three timm CNN families the staged backbone supports, tiny and at 28x28
    "regnet": dict(backbone="regnetx_002"),
    "mobilenetv3": dict(backbone="mobilenetv3_small_050"),
}


def _random_bn_stats(model, seed=0):
    """Untrained BatchNorms are the identity (mean 0, var 1, weight 1, bias 0): folding them proves nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _models():
    yield "dynperceiver", tiny("dynperceiver")
    yield "dynperceiver_rgb32", tiny("dynperceiver_rgb32")
    yield "multiexit_cnn", tiny("multiexit_cnn")
    yield "static_cnn", tiny("static_cnn")
    for fam, kw in TINY_BACKBONES.items():
        torch.manual_seed(0)
        yield f"multiexit_cnn_{fam}", create_model("multiexit_cnn", **kw)
        torch.manual_seed(0)
        yield f"dynperceiver_{fam}", create_model("dynperceiver", num_latents=16, sa_depths=(1, 1, 1, 1),
                                                  sa_heads=(1, 1, 1, 1), sa_mlp_ratio=1.0, pool_size=4, **kw)
    torch.manual_seed(0)
    yield "timm_exits_resnet", attach_exits(timm.create_model("resnet10t", num_classes=10, in_chans=1,
                                                              channels=[16, 32, 64, 128], stem_width=8), input_size=28)


@pytest.mark.parametrize("key, model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_exit_within_1e4_and_the_model_untouched(key, model):
    model = _random_bn_stats(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    fast = optimize_for_inference(model)
    assert fast is not model and fast.inference_rewrites["batchnorm_folded"] > 0
    assert list(model.modules()) == modules and not any(isinstance(m, FastAdaptiveAvgPool2d) for m in modules)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = images(model, 16)
    assert max_exit_difference(model, fast, x) <= 1e-4
    np.testing.assert_array_equal(fast.exit_costs(), model.exit_costs())  # the costs are the model's
    def bn2d(m):
        return [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert len(bn2d(fast)) == len(bn2d(model)) - fast.inference_rewrites["batchnorm_folded"]
    with torch.no_grad():  # real early exit on the copy takes the model's exits
        out = model(x)
        # each threshold halfway between two neighbouring scores: no score sits on it
        t = [float(torch.softmax(o, 1).max(1).values.sort().values[7:9].mean()) for o in out]
        _, ex_ref = early_exit(model, x, t)
        _, ex_fast = early_exit(fast, x, t)
    torch.testing.assert_close(ex_fast, ex_ref)


def test_a_model_in_train_mode_stays_in_train_mode():
    m = _random_bn_stats(tiny("multiexit_cnn")).train()
    fast = optimize_for_inference(m)
    assert m.training and all(mod.training for mod in m.modules()) and not fast.training


def test_channels_last_is_optional():
    m = _random_bn_stats(tiny("dynperceiver"))
    fast = optimize_for_inference(m, channels_last=False)
    assert fast.memory_format is None and m.memory_format is None
    assert optimize_for_inference(m).memory_format == torch.channels_last
    assert max_exit_difference(m, fast, images(m, 4)) <= 1e-4


def test_fold_batchnorm_leaves_a_norm_that_is_not_chained():
    seq = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)).eval()
    assert fold_batchnorm(seq) == 0
    nested = _random_bn_stats(nn.Sequential(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 1)),
                                            nn.BatchNorm2d(3), nn.ReLU()))
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        ref = nested(x)
        assert fold_batchnorm(nested) == 1  # the inner Sequential's last conv feeds the outer BatchNorm
        torch.testing.assert_close(nested(x), ref, atol=1e-5, rtol=1e-5)


def test_residual_depthwise_fold_and_its_limits():
    conv = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fold_residual_depthwise(conv)(x), conv(x) + x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="depthwise"):
        fold_residual_depthwise(nn.Conv2d(4, 4, 3, padding=1))


@pytest.mark.parametrize("size, out", [(7, 7), (14, 7), (8, 4), (7, 4)])
def test_fast_adaptive_pool_equals_adaptive_pool(size, out):
    x = torch.randn(3, 5, size, size)
    torch.testing.assert_close(FastAdaptiveAvgPool2d(out)(x), nn.AdaptiveAvgPool2d(out)(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in ("dynperceiver_fmnist", "multiexit_cnn_fmnist") if zoo.available(n)])
def test_shipped_models_on_the_first_256_test_images(name):
    from dynexit.tables import load_split_images

    model = zoo.load_model(name)
    x, _ = load_split_images("test", limit=256)
    fast = optimize_for_inference(model)
    assert max_exit_difference(model, fast, x) <= 1e-4


def test_the_latent_mlps_are_fused_and_optional():
    m = _random_bn_stats(tiny("dynperceiver"))
    fast, plain = optimize_for_inference(m), optimize_for_inference(m, fuse=False)
    from timm.layers import Mlp

    from dynexit.models._fused_linear import linear_fusion_available

    mlps = sum(type(mod) is Mlp for mod in m.modules())  # every cross-attention's and latent block's
    assert mlps > 0 and fast.inference_rewrites["linear_gelu_fused"] == (mlps if linear_fusion_available() else 0)
    assert plain.inference_rewrites["linear_gelu_fused"] == 0
    assert max_exit_difference(m, fast, images(m, 8)) <= 1e-4
