"""Self-attention on a latent token set: a stack of timm ViT blocks."""

from __future__ import annotations

from torch import nn
from timm.models.vision_transformer import Block


class LatentSelfAttention(nn.Sequential):
    """``depth`` pre-norm transformer blocks (timm ``vision_transformer.Block``) of width ``dim``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop: float = 0.0, drop_path: float | list[float] = 0.0):
        dpr = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        super().__init__(*[
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop, drop_path=dpr[i])
            for i in range(depth)
        ])
