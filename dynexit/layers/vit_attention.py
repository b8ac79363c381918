"""Capturable ViT self-attention: timm's ``Attention`` that can hand its weights to a recorder.

Used by every ViT in dynexit (Multi-Exit ViT, the DVT cascade, exits attached to a timm ViT) so
their per-block attention comes out in the same :class:`~dynexit.layers.AttentionMap` format as the
Dynamic Perceiver's cross-attention (``grid_axis="both"``: class-token attention with
``AttentionMap.spatial()``, rollout with :func:`~dynexit.layers.attention_rollout`).

The normal path is timm's own (fused scaled-dot-product attention); only inside a recording that
covers the layer, opened by the calling thread (see :func:`~dynexit.layers.attention_capture.recording`),
does the layer compute the softmax explicitly so the weights can be kept. Another thread running the
same layer meanwhile keeps the fused path.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import Attention

from dynexit.layers.attention_capture import CapturesAttention


class CapturingAttention(Attention, CapturesAttention):
    """timm ``Attention`` whose weights (B, heads, N, N) can be recorded.

    ``grid`` (h, w) is the patch-token grid; ``attn_num_prefix_tokens`` the class / register
    tokens in front of it. An additive float ``attn_mask`` (B or 1, heads or 1, N, N) is added
    to the attention logits, as in timm.
    """

    grid: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not self.capturing:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if is_causal:
            raise NotImplementedError("attention capture supports plain (non-causal, ungated) ViT attention")
        return self.explicit_forward(x, attn_mask)[0]

    def explicit_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
        """``(output, pre-softmax logits (B, heads, N, N))`` with the softmax computed explicitly (DVT
        relationship reuse needs the logits); the weights go to the calling thread's recordings of this
        layer, if any. The logits include ``attn_mask``."""
        if self.gate is not None:
            raise NotImplementedError("attention capture supports plain (non-causal, ungated) ViT attention")
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits + attn_mask if attn_mask.dtype != torch.bool else logits.masked_fill(~attn_mask, float("-inf"))
        attn = logits.softmax(dim=-1)
        self.record_attention(attn, self.grid)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out))), logits


def make_attention_capturable(blocks: nn.Module, grid: tuple[int, int], num_prefix_tokens: int,
                              name: str = "block", stage: int = 0, first_index: int = 0) -> list[CapturingAttention]:
    """Turn every timm ``Attention`` under ``blocks`` into a :class:`CapturingAttention`, in place.

    Weights and behaviour are unchanged (the class is swapped, no parameter is copied). The
    maps are named ``f"{name}{i}"`` for i = first_index, first_index + 1, ... in module order,
    with kind ``"vit"`` and the given ``stage`` (e.g. the DVT cascade stage).
    """
    found = []
    for module in blocks.modules():
        if isinstance(module, Attention):
            if not isinstance(module, CapturingAttention):
                module.__class__ = CapturingAttention
            idx = first_index + len(found)
            module.grid = (int(grid[0]), int(grid[1]))
            module.set_attention_info(f"{name}{idx}", "vit", stage, "both", num_prefix_tokens)
            found.append(module)
    if not found:
        raise ValueError("make_attention_capturable found no timm Attention layer in the given module")
    return found
