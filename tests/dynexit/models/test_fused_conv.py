"""Fused conv + ReLU (+ residual add): the eager ops' results, in both memory formats."""

import pytest
import timm
import torch
from torch import nn

from dynexit.models._fused_conv import ConvReLU, FusedBasicBlock, fuse_relu, fused_available
from dynexit.models.optimize import fold_batchnorm

pytestmark = pytest.mark.skipif(not fused_available(), reason="this PyTorch has no oneDNN fused convolution")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_conv_relu_equals_eager(fmt):
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).to(memory_format=fmt)
    x = torch.randn(4, 8, 9, 9).contiguous(memory_format=fmt)
    with torch.no_grad():
        torch.testing.assert_close(ConvReLU(conv)(x), torch.relu(conv(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_a_folded_resnet_stage_equals_timm(fmt):
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", channels=(8, 16, 32, 64), stem_width=8, in_chans=1).eval()
    stage = net.layer2  # a downsampling block: conv shortcut
    x = torch.randn(3, 8, 12, 12).contiguous(memory_format=fmt)
    with torch.no_grad():
        ref = stage(x)
        assert fold_batchnorm(stage) > 0
        stage = stage.to(memory_format=fmt)
        assert fuse_relu(stage) == 1 and isinstance(stage[0], FusedBasicBlock)
        torch.testing.assert_close(stage(x), ref, atol=1e-5, rtol=1e-5)


def test_a_conv_without_a_relu_after_it_is_left_alone():
    seq = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Identity(), nn.GELU())
    assert fuse_relu(seq) == 0 and type(seq[0]) is nn.Conv2d
