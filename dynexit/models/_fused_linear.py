"""A linear layer and the GELU after it as one oneDNN call, in the transformer MLPs of a model.

``torch.ops.mkldnn._linear_pointwise`` is the CPU kernel ``torch.compile`` (Inductor) emits for a
linear layer with a fused element-wise post-op (PyTorch's oneDNN integration): the bias and the
exact (erf) GELU (Hendrycks & Gimpel 2016) are applied while the (N, out) output is still in cache,
instead of a broadcast copy of the bias into the output (``addmm``) and another pass for the GELU.
Same arithmetic as the eager ops up to float32 rounding (the tests compare them). Used by
:func:`dynexit.models.optimize_for_inference` on the MLPs of timm ``Mlp`` modules (ViT blocks, the
Dynamic Perceiver's cross-attention); on a device other than the CPU, a dtype other than float32,
or a PyTorch without the op, the module runs the eager ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_fusion_available() -> bool:
    """True when this PyTorch has oneDNN's fused linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class LinearGELU(nn.Module):
    """``gelu(linear(x))`` (exact erf GELU) in one call. ``linear``: an ``nn.Linear`` with a bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> gelu(linear(x)) (..., out_features)."""
        w, b = self.linear.weight, self.linear.bias
        if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or not linear_fusion_available():
            return F.gelu(F.linear(x, w, b))
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), w, b, "gelu", [], "none")
        return y.view(*x.shape[:-1], w.shape[0])


def _mlp_fusable(m: nn.Module) -> bool:
    from timm.layers import Mlp

    act, drop = getattr(m, "act", None), getattr(m, "drop1", None)
    return (type(m) is Mlp and type(m.fc1) is nn.Linear and m.fc1.bias is not None
            and type(act) is nn.GELU and act.approximate == "none"
            and (isinstance(drop, nn.Identity) or (type(drop) is nn.Dropout and drop.p == 0.0)))


def fuse_linear_gelu(model: nn.Module) -> int:
    """Replace, in place, ``fc1`` + ``act`` of every timm ``Mlp`` of ``model`` whose activation is the exact
    GELU (and whose dropout after it is off) by one :class:`LinearGELU`; returns how many. Eval-mode
    inference only (the fused module has no dropout)."""
    if not linear_fusion_available():
        return 0
    n = 0
    for m in list(model.modules()):
        if _mlp_fusable(m):
            m.fc1, m.act = LinearGELU(m.fc1), nn.Identity()
            n += 1
    return n
