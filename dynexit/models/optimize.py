"""Inference-time rewrites of a multi-exit CNN that are exact in real arithmetic (float32 within 1e-4).

:func:`optimize_for_inference` returns a NEW module (a deep copy: the model given is never touched,
since the app shares model objects across threads) in eval mode, with

- **BatchNorm folded into the convolution before it** (``torch.nn.utils.fusion.fuse_conv_bn_eval``;
  Ioffe & Szegedy 2015's affine map merged into the conv's weight and bias, the standard deployment
  rewrite of e.g. TensorRT / ``torch.fx.experimental.optimization.fuse``): a conv directly followed
  by a BatchNorm in an ``nn.Sequential`` (nested ones are read as one chain), and the conv/BN pairs
  of timm's ResNet blocks, ``ConvNormAct`` and MobileNet blocks (a timm ``BatchNormAct2d`` leaves its
  dropout + activation behind);
- **residual depthwise convs folded**: the Dynamic Perceiver's ``dwc(x) + x`` becomes one conv whose
  centre tap is one larger;
- **conv + ReLU (+ residual add) fused** into one oneDNN call (:mod:`dynexit.models._fused_conv`, the
  kernel ``torch.compile`` emits on CPU) in ``nn.Sequential`` chains and timm ResNet basic blocks;
- **linear + GELU fused** into one oneDNN call (:mod:`dynexit.models._fused_linear`) in the timm
  ``Mlp`` of the transformer blocks and cross-attentions;
- **adaptive average pools** that only copy (output size = input size) or pool whole blocks (input a
  multiple of the output) run as identity / ``avg_pool2d``;
- **channels-last** memory format for the convolutions and the images (``channels_last=True``): the
  oneDNN kernels run on NHWC directly, and a channels-last map turned into tokens (B, HW, C) is a
  view, not a copy; backbone stages on maps smaller than 7x7 stay NCHW (slower channels-last there).

FLOP counts are the model's, not the copy's: ``exit_costs()`` of the copy returns the original's
counts (tables are built on the unoptimised model). ``check=True`` compares every exit of the copy
with the original on random images and raises if they differ by more than ``atol``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dynexit.models._fused_conv import _leaves, fuse_relu
from dynexit.models._fused_linear import fuse_linear_gelu

# timm block classes and their (conv, norm) attribute pairs, where the norm is applied to the conv's
# output and nothing else reads the conv's output (checked against timm's forward code)
_PAIRS = {
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "ConvNormAct": (("conv", "bn"),),
    "ConvNormActAa": (("conv", "bn"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def _after_norm(bn: nn.Module) -> nn.Module:
    """What stays of a norm layer once its affine map is in the conv: nothing, or timm's drop + act."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _foldable(conv, bn) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def _fold(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    """Fold ``parent.<bn_name>`` into ``parent.<conv_name>`` in place (both children of ``parent``)."""
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not _foldable(conv, bn):
        return False
    setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(parent, bn_name, _after_norm(bn))
    return True


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold every conv -> BatchNorm pair that is consecutive in the call order of ``seq``."""
    leaves, n = list(_leaves(seq)), 0
    for (pc, nc, conv), (pb, nb, bn) in zip(leaves, leaves[1:]):
        if _foldable(conv, bn) and getattr(pc, nc) is conv:
            setattr(pc, nc, fuse_conv_bn_eval(conv, bn))
            setattr(pb, nb, _after_norm(bn))
            n += 1
    return n


def fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorm2d layers into the convolutions before them, in place; returns how many.

    ``model`` must be in eval mode (the running statistics are folded). Only the pairs this module
    knows to be chained (see the module docstring) are folded; any other BatchNorm stays.
    """
    n = 0
    for m in list(model.modules()):
        if type(m) is nn.Sequential:
            n += _fold_sequential(m)
        for conv_name, bn_name in _PAIRS.get(type(m).__name__, ()):
            n += _fold(m, conv_name, bn_name)
    return n


def fold_residual_depthwise(conv: nn.Conv2d) -> nn.Conv2d:
    """A conv computing ``conv(x) + x`` for a depthwise, odd-kernel, stride-1, same-padding ``conv``.

    Adds one to the centre tap of every channel's kernel (exact in real arithmetic). ValueError
    when ``conv`` is not of that form.
    """
    kh, kw = conv.kernel_size
    if (conv.groups != conv.in_channels or conv.in_channels != conv.out_channels or conv.stride != (1, 1)
            or kh % 2 == 0 or kw % 2 == 0 or conv.padding != (kh // 2, kw // 2) or conv.dilation != (1, 1)):
        raise ValueError(f"cannot fold the residual into {conv}: it needs a depthwise, stride-1, same-padding, odd kernel")
    new = copy.deepcopy(conv)
    with torch.no_grad():
        new.weight[:, 0, kh // 2, kw // 2] += 1.0
    new.includes_identity = True
    return new


class FastAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` for a fixed output size, computed as identity when the
    input already has that size and as ``avg_pool2d`` when it is a whole multiple of it (the same
    averages over the same windows; PyTorch's adaptive kernel is slower for both)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, *output_size)."""
        (h, w), (oh, ow) = x.shape[-2:], self.output_size
        if (h, w) == (oh, ow):
            return x
        if h % oh == 0 and w % ow == 0:
            return F.avg_pool2d(x, (h // oh, w // ow))
        return F.adaptive_avg_pool2d(x, (oh, ow))


def _replace_pools(model: nn.Module) -> int:
    n = 0
    for parent in list(model.modules()):
        for name, m in list(parent.named_children()):
            if type(m) is nn.AdaptiveAvgPool2d and isinstance(m.output_size, (tuple, list)) \
                    and None not in tuple(m.output_size):
                setattr(parent, name, FastAdaptiveAvgPool2d(m.output_size))
                n += 1
    return n


def _fold_dwc(model: nn.Module) -> int:
    dwc = getattr(model, "dwc", None)
    if not isinstance(dwc, nn.ModuleDict):
        return 0
    for key in list(dwc.keys()):
        if not getattr(dwc[key], "includes_identity", False):
            dwc[key] = fold_residual_depthwise(dwc[key])
    return len(dwc)


class ContiguousFormat(nn.Module):
    """Runs ``module`` on NCHW (contiguous) input with NCHW weights, inside a channels-last model."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.to(memory_format=torch.contiguous_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in any memory format -> the module's output, computed on NCHW."""
        return self.module(x.contiguous())


def _small_stages_nchw(model: nn.Module, min_size: int) -> int:
    """Put back to NCHW the backbone stages whose input map is smaller than ``min_size`` on a side.

    On small maps (the last ResNet stage on 28x28 images sees 4x4) oneDNN's channels-last kernels
    measured slower than NCHW on this project's CPU (about 2x for the Fashion-MNIST backbone's 4th
    stage), while on 14x14 and 7x7 maps channels-last was faster.
    """
    from dynexit.models._backbones import StagedBackbone, stage_shapes

    n = 0
    for b in [m for m in model.modules() if isinstance(m, StagedBackbone)]:
        size = getattr(model, "input_size", None)
        if size is None:
            continue
        shapes = stage_shapes(b, getattr(model, "in_chans", 3), size)
        for i, (_, h, w) in enumerate(shapes[:4]):
            if min(h, w) < min_size and not isinstance(b.stages[i], ContiguousFormat):
                b.stages[i] = ContiguousFormat(b.stages[i])
                n += 1
    return n


@torch.no_grad()
def max_exit_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the logits of any exit of ``a`` and ``b`` on images ``x``
    (B, C, H, W) in [0, 1]."""
    return max(float((p.float() - q.float()).abs().max()) for p, q in zip(a(x), b(x)))


def optimize_for_inference(model: nn.Module, channels_last: bool = True, check: bool = True,
                           atol: float = 1e-4, min_channels_last_size: int = 7, fuse: bool = True) -> nn.Module:
    """A new eval-mode copy of ``model`` with the exact rewrites of this module's docstring applied.

    ``model`` (a :class:`~dynexit.models.MultiExitModel`) is deep-copied, never modified. The copy
    keeps the original's exit costs (``exit_costs()``: MFLOPs of the model as trained) and records
    what was done in ``inference_rewrites`` (a dict of counts). ``channels_last``: the copy runs
    channels-last, except the backbone stages whose input map is smaller than
    ``min_channels_last_size`` on a side (slower there). ``fuse``: convs and their ReLU (and a ResNet
    block's residual add) as one oneDNN call (:mod:`dynexit.models._fused_conv`), outside those NCHW
    stages (slower there too), and the first linear layer + GELU of each transformer MLP
    (:mod:`dynexit.models._fused_linear`). ``check``: run both on 4 random
    images and raise RuntimeError if any exit's logits differ by more than ``atol`` (absolute).
    """
    was_training = model.training
    fast = copy.deepcopy(model).eval()
    costs = model.exit_costs() if hasattr(model, "exit_costs") else None
    done = {"batchnorm_folded": fold_batchnorm(fast), "residual_dwconv_folded": _fold_dwc(fast),
            "adaptive_pools": _replace_pools(fast), "channels_last": bool(channels_last)}
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        fast.memory_format = torch.channels_last
        done["nchw_stages"] = _small_stages_nchw(fast, min_channels_last_size)
    # fused only where the maps are channels-last: on the small NCHW maps it measured slower
    done["relu_fused"] = fuse_relu(fast, skip=(ContiguousFormat,)) if fuse else 0
    done["linear_gelu_fused"] = fuse_linear_gelu(fast) if fuse else 0
    if costs is not None:
        fast._costs_cache = costs
    fast.inference_rewrites = done
    if check and hasattr(model, "input_size"):
        ref = model if not was_training else copy.deepcopy(model).eval()
        x = torch.rand(4, model.in_chans, *model.input_size, generator=torch.Generator().manual_seed(0))
        diff = max_exit_difference(ref, fast, x)
        if not diff <= atol:
            raise RuntimeError(f"optimize_for_inference changed the logits by {diff:.3g} (> {atol}): a rewrite is "
                               "not exact for this model; use the model as it is")
    return fast
