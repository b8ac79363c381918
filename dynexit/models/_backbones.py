"""timm CNN backbones split into a stem, four stages and a head, so they can run stage by stage.

Supported timm families: ResNet (``resnet*``, incl. ``resnet*d`` deep stems), RegNet
(``regnetx_*``, ``regnety_*``) and MobileNetV3 (``mobilenetv3_*``). ``small_input=True`` adapts the
stem to tiny images (28x28, 32x32): first convolution of stride ``stem_stride`` (default 1), no max-pool.

Presets (our names, built from timm models):
- ``resnet18_quarter``: timm ResNet-18 at a quarter of the width (16-32-64-128 channels) with the
  3-layer 3x3 "deep" stem (8-8-16 channels); ~30 MFLOPs at 28x28 with ``small_input``.
- ``resnet18_half``: half width (32-64-128-256), deep stem 16-16-32; ~32 MFLOPs at 28x28 with
  ``small_input`` and ``stem_stride=2`` (the Fashion-MNIST backbone).
- ``resnet10_quarter``: timm ResNet-10-T at a quarter width (tests and demos).
"""

from __future__ import annotations

import torch
from torch import nn
import timm

PRESETS: dict[str, tuple[str, dict]] = {
    "resnet18_quarter": ("resnet18", dict(channels=(16, 32, 64, 128), stem_type="deep", stem_width=8)),
    "resnet10_quarter": ("resnet10t", dict(channels=(16, 32, 64, 128), stem_width=8)),
    "resnet18_half": ("resnet18", dict(channels=(32, 64, 128, 256), stem_type="deep", stem_width=16)),
}


class _ResNetHead(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.global_pool = pool

    def forward(self, x):
        return self.global_pool(x)


class _RegNetHead(nn.Module):
    def __init__(self, final_conv, pool):
        super().__init__()
        self.final_conv, self.global_pool = final_conv, pool

    def forward(self, x):
        return self.global_pool(self.final_conv(x))


class _MobileNetV3Head(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.global_pool, self.conv_head, self.norm_head, self.act2, self.flatten = (
            m.global_pool, m.conv_head, getattr(m, "norm_head", nn.Identity()), m.act2, m.flatten)

    def forward(self, x):
        return self.flatten(self.act2(self.norm_head(self.conv_head(self.global_pool(x)))))


class StagedBackbone(nn.Module):
    """A CNN as ``stem -> stages[0..3] -> head (pooled features) -> classifier``.

    Attributes: ``stem_chs``, ``stage_chs`` (out channels of each stage), ``num_features`` (head
    output width), ``drop_rate`` (dropout before the classifier).
    """

    def __init__(self, stem, stages, head, classifier, stem_chs, stage_chs, num_features, drop_rate=0.0):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.classifier = classifier
        self.stem_chs, self.stage_chs, self.num_features = int(stem_chs), [int(c) for c in stage_chs], int(num_features)
        self.drop = nn.Dropout(drop_rate)

    def forward_head(self, x):
        return self.classifier(self.drop(self.head(x)))

    def forward(self, x):
        x = self.stem(x)
        for s in self.stages:
            x = s(x)
        return self.forward_head(x)


def _set_stride(conv: nn.Conv2d, stride: int):
    conv.stride = (stride, stride)


def _create(name: str, in_chans: int, num_classes: int, pretrained: bool, drop_rate: float, drop_path_rate: float,
            **timm_kwargs) -> nn.Module:
    """The timm network of a name or preset; ValueError for an unknown name, RuntimeError when the
    pretrained weights cannot be loaded."""
    if name in PRESETS:
        timm_name, preset = PRESETS[name]
        timm_kwargs = {**preset, **timm_kwargs}
    else:
        timm_name = name
    if not timm.is_model(timm_name):
        raise ValueError(f"unknown timm backbone {name!r}: use a resnet*, regnetx_*/regnety_* or mobilenetv3_* "
                         f"name, or one of the presets {', '.join(PRESETS)}")
    try:
        m = timm.create_model(timm_name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate, **timm_kwargs)
    except Exception as err:
        if pretrained:
            raise RuntimeError(f"could not load pretrained timm weights for {timm_name!r} ({err}); "
                               "pass pretrained=False when offline") from err
        raise
    return m


def build_backbone(name: str, in_chans: int = 3, num_classes: int = 1000, pretrained: bool = False,
                   small_input: bool = False, stem_stride: int = 1, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                   **timm_kwargs) -> StagedBackbone:
    """A timm ResNet / RegNet / MobileNetV3 by name (or a preset of this module) as a :class:`StagedBackbone`.

    ``small_input``: for 28x28 / 32x32 images, the stem's first conv gets stride ``stem_stride``
    (a ResNet's 7x7 stem becomes a 3x3 conv) and the max-pool goes. ValueError for an unknown or
    unsupported network; RuntimeError when ``pretrained`` weights cannot be loaded.
    """
    m = _create(name, in_chans, num_classes, pretrained, drop_rate, drop_path_rate, **timm_kwargs)
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.regnet import RegNet
    from timm.models.resnet import ResNet

    info = m.feature_info if isinstance(m.feature_info, list) else m.feature_info.info
    if isinstance(m, ResNet):
        if small_input:
            first = m.conv1[0] if isinstance(m.conv1, nn.Sequential) else None
            if first is not None:
                _set_stride(first, stem_stride)
            else:  # replace the 7x7 stride-2 conv by a 3x3 conv of the same width
                m.conv1 = nn.Conv2d(in_chans, m.conv1.out_channels, 3, stem_stride, 1, bias=False)
            m.maxpool = nn.Identity()
        stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
        stages = [m.layer1, m.layer2, m.layer3, m.layer4]
        stem_chs = m.bn1.num_features
        head, classifier = _ResNetHead(m.global_pool), m.fc
    elif isinstance(m, RegNet):
        if small_input:
            _set_stride(m.stem.conv, stem_stride)
        stem = m.stem
        stages = [m.s1, m.s2, m.s3, m.s4]
        stem_chs = info[0]["num_chs"]
        head, classifier = _RegNetHead(m.final_conv, m.head.global_pool), m.head.fc
    elif isinstance(m, MobileNetV3):
        if small_input:
            _set_stride(m.conv_stem, stem_stride)
        stem = nn.Sequential(m.conv_stem, m.bn1)
        ends = [int(f["module"].split(".")[1]) for f in info[1:5]]
        starts = [0] + [e + 1 for e in ends[:-1]]
        stages = [nn.Sequential(*[m.blocks[i] for i in range(s, e + 1)]) for s, e in zip(starts, ends)]
        stem_chs = m.bn1.num_features
        head, classifier = _MobileNetV3Head(m), m.classifier
    else:
        raise ValueError(f"backbone {name!r} ({type(m).__name__}) is not supported: use a ResNet, RegNet or "
                         "MobileNetV3 from timm")
    stage_chs = [f["num_chs"] for f in info[1:5]]
    num_features = getattr(m, "head_hidden_size", None) or m.num_features
    if isinstance(m, MobileNetV3):
        num_features = classifier.in_features if isinstance(classifier, nn.Linear) else num_features
    return StagedBackbone(stem, stages, head, classifier, stem_chs, stage_chs, num_features, drop_rate)


@torch.no_grad()
def stage_shapes(backbone: StagedBackbone, in_chans: int, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(C, H, W) of the stem output and of each stage output for one image of ``size``."""
    was = backbone.training
    backbone.eval()
    x = backbone.stem(torch.zeros(1, in_chans, *size))
    shapes = [tuple(x.shape[1:])]
    for s in backbone.stages:
        x = s(x)
        shapes.append(tuple(x.shape[1:]))
    backbone.train(was)
    return shapes
