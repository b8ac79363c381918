"""The token embedding of a timm ``VisionTransformer``, run on its own.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021): patch embedding, prefix tokens
(class and register tokens), position embedding. Models that run a ViT block by block (Multi-Exit
ViT, exits attached to a timm ViT) start with this step; it mirrors the first lines of timm's
``VisionTransformer.forward_features`` so the staged forward equals timm's own.
"""

from __future__ import annotations

import torch
from torch import nn


def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (B, N, D) tokens, as timm's ``forward_features`` makes them before ``blocks``."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def embed_parts(vit: nn.Module) -> tuple[list[nn.Module], dict[str, nn.Parameter]]:
    """The modules and the bare parameters (prefix tokens, position embedding) that ``embed_tokens`` uses,
    so exit training can train or freeze the embedding like any other stage."""
    modules = [vit.patch_embed, vit.pos_drop, vit.patch_drop, vit.norm_pre]
    params = {n: getattr(vit, n) for n in ("cls_token", "reg_token", "pos_embed")
              if isinstance(getattr(vit, n, None), nn.Parameter)}
    return modules, params
