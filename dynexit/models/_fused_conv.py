"""Convolutions with their ReLU (and a ResNet block's residual add) fused into one oneDNN call.

``torch.ops.mkldnn._convolution_pointwise`` is the CPU kernel ``torch.compile`` (Inductor) emits for
a convolution with a fused post-op (PyTorch's oneDNN integration): the ReLU and the residual add
are applied while the output is still in cache, instead of two more passes over a (B, C, H, W)
map. Same arithmetic as the eager ops (the tests compare them). Used by
:func:`dynexit.models.optimize_for_inference` after BatchNorm folding; on a device other than the
CPU, or a PyTorch without the op, the modules run the eager ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fused_available() -> bool:
    """True when this PyTorch has oneDNN's fused convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _plain(conv) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.bias is not None)


def _args(conv: nn.Conv2d):
    return conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


class ConvReLU(nn.Module):
    """``relu(conv(x))`` in one call. ``conv``: a Conv2d with a bias (a folded BatchNorm gives one)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> relu(conv(x))."""
        if x.device.type == "cpu" and fused_available():
            return torch.ops.mkldnn._convolution_pointwise(x, *_args(self.conv), "relu", [], "")
        return F.relu(self.conv(x))


class FusedBasicBlock(nn.Module):
    """timm's ResNet ``BasicBlock`` in eval mode with BatchNorm folded: ``relu(conv2(relu(conv1(x))) +
    shortcut(x))`` as two fused calls."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.conv2, self.downsample = block.conv1, block.conv2, block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> the block's output (B, C', H', W')."""
        shortcut = x if self.downsample is None else self.downsample(x)
        if x.device.type != "cpu" or not fused_available():
            return F.relu(self.conv2(F.relu(self.conv1(x))) + shortcut)
        y = torch.ops.mkldnn._convolution_pointwise(x, *_args(self.conv1), "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(y, shortcut.contiguous(memory_format=_format(y)),
                                                              *_args(self.conv2), "add", 1.0, "relu", [], "")


def _format(t: torch.Tensor):
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() \
        else torch.contiguous_format


def _basic_block_fusable(m: nn.Module) -> bool:
    from timm.models.resnet import BasicBlock

    return (type(m) is BasicBlock and _plain(m.conv1) and _plain(m.conv2) and m.se is None and m.drop_path is None
            and all(isinstance(getattr(m, a), nn.Identity) for a in ("bn1", "bn2", "drop_block", "aa"))
            and all(type(getattr(m, a)) is nn.ReLU for a in ("act1", "act2")))


def _leaves(seq: nn.Sequential):
    """(parent, name, module) of a Sequential's modules in call order, nested Sequentials flattened."""
    for name, m in seq.named_children():
        if type(m) is nn.Sequential:
            yield from _leaves(m)
        else:
            yield seq, name, m


def fuse_relu(model: nn.Module, skip=()) -> int:
    """Fuse, in place, the ReLU after every bias-carrying conv of an ``nn.Sequential`` chain (identity
    layers in between skipped) and every folded timm ``BasicBlock``; returns how many. Call it after
    BatchNorm folding, in eval mode. Modules inside a module of a type in ``skip`` are left alone."""
    if not fused_available():
        return 0
    skipped = {id(d) for m in model.modules() if isinstance(m, tuple(skip)) for d in m.modules()}
    n = 0
    for parent in [m for m in model.modules() if id(m) not in skipped]:
        for name, child in list(parent.named_children()):
            if _basic_block_fusable(child):
                setattr(parent, name, FusedBasicBlock(child))
                n += 1
    for seq in [m for m in model.modules() if type(m) is nn.Sequential and id(m) not in skipped]:
        leaves = [leaf for leaf in _leaves(seq) if not isinstance(leaf[2], nn.Identity)]
        for (pc, nc, conv), (pr, nr, relu) in zip(leaves, leaves[1:]):
            if _plain(conv) and type(relu) is nn.ReLU and getattr(pc, nc) is conv:
                setattr(pc, nc, ConvReLU(conv))
                setattr(pr, nr, nn.Identity())
                n += 1
    return n
