"""Fused linear + GELU: the eager ops' results, and only where the MLP is linear -> exact GELU."""

import pytest
import torch
from timm.layers import Mlp
from torch import nn

from dynexit.models._fused_linear import LinearGELU, fuse_linear_gelu, linear_fusion_available

pytestmark = pytest.mark.skipif(not linear_fusion_available(), reason="this PyTorch has no oneDNN fused linear")


@pytest.mark.parametrize("shape", [(7, 12), (3, 5, 12), (2, 3, 4, 12)])
def test_linear_gelu_equals_eager(shape):
    torch.manual_seed(0)
    lin = nn.Linear(12, 20)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(LinearGELU(lin)(x), nn.functional.gelu(lin(x)), atol=1e-5, rtol=1e-5)
        xt = torch.randn(shape[-1], *shape[:-1]).movedim(0, -1)  # not contiguous
        torch.testing.assert_close(LinearGELU(lin)(xt), nn.functional.gelu(lin(xt)), atol=1e-5, rtol=1e-5)


def test_fuse_linear_gelu_in_timm_mlps_only():
    torch.manual_seed(0)
    model = nn.Sequential(Mlp(8, 16), Mlp(8, 16, act_layer=nn.ReLU), Mlp(8, 16, act_layer=lambda: nn.GELU("tanh")),
                          Mlp(8, 16, drop=0.1)).eval()
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        ref = model(x)
        assert fuse_linear_gelu(model) == 1
        assert isinstance(model[0].fc1, LinearGELU) and isinstance(model[0].act, nn.Identity)
        assert all(type(m.fc1) is nn.Linear for m in model[1:])
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
