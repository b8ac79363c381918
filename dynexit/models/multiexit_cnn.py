"""Conventional multi-exit CNN and its single-exit static copy (DESIGN 3.2).

Fig. 1a of Han et al., "Dynamic Perceiver for Efficient Visual Recognition" (ICCV 2023): classifiers
on the intermediate feature maps of one backbone, MSDNet / BranchyNet style (Huang et al., ICLR 2018;
Teerapittayanon et al., ICPR 2016), trained end to end. It shares its backbone with the Dynamic
Perceiver so the two can be compared side by side; the static copy (no early exits) is the
reference for "early exits do not hurt the last exit".
"""

from __future__ import annotations

from torch import nn

from dynexit.layers.exit_heads import ConvExitHead
from dynexit.models._registry import register_model
from dynexit.models._backbones import build_backbone, stage_shapes
from dynexit.models._base import MultiExitModel
from dynexit.models._defaults import FMNIST_BACKBONE, default_normalisation


class MultiExitCNN(MultiExitModel):
    """A timm backbone with classifiers after the CNN stages listed in ``exit_after``.

    Parameters
    ----------
    backbone : timm name or preset (see ``dynexit.models._backbones``)
    exit_after : 1-based CNN stages (1..3) followed by an intermediate exit; the backbone's own head
        (global pool + fc) is always the last exit. ``()`` gives the static single-exit network.
    head_width : channels of the intermediate exit heads (default ``max(stage channels, 64)``)
    small_input : stride-1 stem without max-pool, for 28x28 / 32x32 images
    """

    def __init__(self, backbone: str = "resnet18_half", num_classes: int = 10, in_chans: int = 1,
                 input_size: int = 28, exit_after=(1, 2, 3), head_width: int | None = None,
                 small_input: bool | None = None, stem_stride: int = 1, pretrained: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, mean=None, std=None, loss_weights=None):
        if mean is None:
            mean, std = default_normalisation(in_chans)
        super().__init__(num_classes, in_chans, input_size, mean, std)
        small_input = (self.input_size[0] < 64) if small_input is None else small_input
        self.backbone = build_backbone(backbone, in_chans, num_classes, pretrained=pretrained,
                                       small_input=small_input, stem_stride=stem_stride, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        exit_after = sorted({int(e) for e in exit_after})
        if any(e < 1 or e > 3 for e in exit_after):
            raise ValueError(f"exit_after must list CNN stages among 1, 2, 3 (stage 4 ends in the final exit), got {exit_after}")
        self.exit_after = tuple(exit_after)
        shapes = stage_shapes(self.backbone, in_chans, self.input_size)
        self.exit_heads = nn.ModuleList([
            ConvExitHead(shapes[e][0], num_classes, head_width or max(shapes[e][0], 64), spatial=shapes[e][1],
                         drop_rate=drop_rate)
            for e in self.exit_after
        ])
        # stage k of the staged form runs CNN stages segments[k] (0-based)
        ends = list(self.exit_after) + [4]
        starts = [0] + ends[:-1]
        self.segments = [tuple(range(s, e)) for s, e in zip(starts, ends)]
        self.exit_names = tuple([f"cnn_stage{e}" for e in self.exit_after] + ["cnn_head"])
        self.default_loss_weights = tuple(loss_weights) if loss_weights else (1.0,) * self.num_exits
        if len(self.default_loss_weights) != self.num_exits:
            raise ValueError(f"loss_weights needs {self.num_exits} values, got {len(self.default_loss_weights)}")

    def forward_stage(self, k, state):
        x = state["x"]
        if k == 0:
            x = self.backbone.stem(x)
        for i in self.segments[k]:
            x = self.backbone.stages[i](x)
        logits = self.exit_heads[k](x) if k < len(self.exit_heads) else self.backbone.forward_head(x)
        return {"x": x}, logits


def _default_backbone(kwargs: dict) -> dict:
    return kwargs if "backbone" in kwargs else {**FMNIST_BACKBONE, **kwargs}


@register_model
def multiexit_cnn(**kwargs) -> MultiExitCNN:
    """Multi-exit CNN on any supported timm backbone (``backbone=``, default the Fashion-MNIST one)."""
    return MultiExitCNN(**_default_backbone(kwargs))


@register_model
def static_cnn(**kwargs) -> MultiExitCNN:
    """Single-exit copy of :func:`multiexit_cnn` (same backbone, no early exits)."""
    kwargs = _default_backbone(kwargs)
    kwargs.setdefault("exit_after", ())
    return MultiExitCNN(**kwargs)


@register_model
def multiexit_cnn_fmnist(**kwargs) -> MultiExitCNN:
    """Half-width ResNet-18 (deep 3x3 stem of stride 2, no max-pool) with exits after stages 1, 2, 3 and the head."""
    cfg = dict(FMNIST_BACKBONE, num_classes=10, in_chans=1, input_size=28, exit_after=(1, 2, 3))
    return MultiExitCNN(**{**cfg, **kwargs})


@register_model
def static_cnn_fmnist(**kwargs) -> MultiExitCNN:
    """The same half-width ResNet-18 with its final exit only: the static reference."""
    cfg = dict(FMNIST_BACKBONE, num_classes=10, in_chans=1, input_size=28, exit_after=())
    return MultiExitCNN(**{**cfg, **kwargs})


def _imagenet(backbone, exit_after=(1, 2, 3)):
    def make(**kwargs):
        cfg = dict(backbone=backbone, num_classes=1000, in_chans=3, input_size=224, exit_after=exit_after)
        return MultiExitCNN(**{**cfg, **kwargs})
    return make


for _bb in ("resnet18", "resnet50", "regnety_008", "mobilenetv3_large_100"):
    _fn = _imagenet(_bb)
    _fn.__name__ = f"multiexit_cnn_{_bb}"
    _fn.__doc__ = f"Multi-exit {_bb} (ImageNet size, 224x224 RGB) with exits after stages 1-3 and the head."
    register_model(_fn)
    _fn = _imagenet(_bb, ())
    _fn.__name__ = f"static_cnn_{_bb}"
    _fn.__doc__ = f"Single-exit {_bb} (ImageNet size) in the staged form."
    register_model(_fn)
