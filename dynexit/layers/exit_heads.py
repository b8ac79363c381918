"""Exit classifiers: on a CNN feature map, on a latent token set, and a logits embedding."""

from __future__ import annotations

import torch
from torch import nn


class ConvExitHead(nn.Module):
    """MSDNet-style classifier on an intermediate feature map.

    Up to two 3x3 conv-BN-ReLU layers (stride 2 while the map is larger than ``min_size``), global
    average pool, dropout, linear.
    """

    def __init__(self, in_chs: int, num_classes: int, width: int | None = None, spatial: int | None = None,
                 min_size: int = 4, num_convs: int = 2, drop_rate: float = 0.0):
        super().__init__()
        width = width or in_chs
        layers, c, s = [], in_chs, spatial
        for _ in range(num_convs):
            stride = 2 if (s is not None and s > min_size) else 1
            layers += [nn.Conv2d(c, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
            if s is not None:
                s = (s + 2 - 3) // stride + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


class LogitsEmbedding(nn.Sequential):
    """The paper's "isc": a small embedding of the previous exit's logits (Linear, BN, ReLU)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(nn.Linear(num_classes, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))


class LatentExitHead(nn.Module):
    """Mean-pooled latent (optionally concatenated with an embedding of earlier logits) -> linear."""

    def __init__(self, dim: int, num_classes: int, prev_classes: int | None = None, embed_dim: int | None = None):
        super().__init__()
        self.embed = LogitsEmbedding(prev_classes, embed_dim or dim) if prev_classes else None
        self.fc = nn.Linear(dim + ((embed_dim or dim) if prev_classes else 0), num_classes)

    def forward(self, z: torch.Tensor, prev_logits: torch.Tensor | None = None) -> torch.Tensor:
        h = z.mean(dim=1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(prev_logits)], dim=1)
        return self.fc(h)
