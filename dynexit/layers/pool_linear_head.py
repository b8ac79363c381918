"""The lightest exit classifier on a feature map: global average pool, dropout, linear."""

from __future__ import annotations

import torch
from torch import nn


class PoolLinearHead(nn.Module):
    """Global average pool, dropout, linear: the lightest classifier on a feature map.

    Input (B, ``in_chs``, H, W) feature maps, output (B, ``num_classes``) logits. The "linear" exit
    head of :func:`dynexit.attach_exits` (a linear probe on pooled features, as in BranchyNet's
    simplest branch: Teerapittayanon et al., ICPR 2016).
    """

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(x).flatten(1)))
