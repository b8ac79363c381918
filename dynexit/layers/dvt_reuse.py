"""Feature and relationship reuse between the ViTs of a Dynamic Vision Transformer cascade.

Wang et al., "Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image
Recognition" (NeurIPS 2021), section 3.3. A downstream ViT (finer token grid) reuses what the
upstream ViT (coarser grid) already computed for the same image:

- **Feature reuse** (:class:`FeatureReuse`, inside every :class:`ReuseBlock`): the upstream final
  tokens -> LayerNorm + MLP to a small width -> patch tokens on their grid -> resized to the
  downstream grid -> concatenated (zero for the class token) to the input of the block's MLP.
- **Relationship reuse** (:class:`RelationReuse`): the upstream attention logits of all layers and
  heads, stacked (B, L_up * H_up, N_up, N_up) -> an MLP across that channel to the downstream
  L * H -> resized on the key and the query axis as grids (class-token row and column resized
  along the other axis only) -> one (B, H, N, N) additive bias per downstream layer.

Grids are resized by interpolation (:func:`resize_grid_axis`, :func:`resize_relations`; bilinear,
``align_corners=False``: constants stay constant, a map separable in queries and keys stays
separable). Like pooling, interpolation is not counted by :mod:`dynexit.flops`; the MLPs are.

Speed note: while training, an attention bias that needs gradients sends PyTorch's
scaled-dot-product attention to its unfused path (about 2-3x slower per layer on CPU); inference
keeps the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from dynexit.layers.vit_attention import CapturingAttention


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    corners = {} if mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
    return F.interpolate(x, size=tuple(size), mode=mode, **corners)


def resize_grid_axis(t: torch.Tensor, src_grid, dst_grid, mode: str = "bilinear") -> torch.Tensor:
    """Resize the last axis of ``t``, the row-major flattening of a ``src_grid`` (h, w) map.

    Returns ``t`` with its last axis ``dst_grid[0] * dst_grid[1]`` long; every other axis is a batch.
    """
    (hs, ws), (hd, wd) = tuple(src_grid), tuple(dst_grid)
    if t.shape[-1] != hs * ws:
        raise ValueError(f"last axis has {t.shape[-1]} entries, a {hs}x{ws} grid needs {hs * ws}")
    if (hs, ws) == (hd, wd):
        return t
    return _resize(t.reshape(-1, 1, hs, ws), (hd, wd), mode).reshape(*t.shape[:-1], hd * wd)


def resize_relations(rel: torch.Tensor, src_grid, dst_grid, num_prefix_tokens: int = 1,
                     mode: str = "bilinear") -> torch.Tensor:
    """Resize attention logits (..., N_src, N_src) between token grids on both axes.

    Tokens are ``num_prefix_tokens`` (class) tokens followed by the grid's patches. The patch x
    patch block is resized as a 4-d (query grid x key grid) map; the prefix rows are resized along
    the key axis only, the prefix columns along the query axis only, the prefix x prefix corner is
    kept.
    """
    p = int(num_prefix_tokens)
    (hs, ws), (hd, wd) = tuple(src_grid), tuple(dst_grid)
    ps, pd = hs * ws, hd * wd
    if rel.shape[-1] != p + ps or rel.shape[-2] != p + ps:
        raise ValueError(f"relations of shape {tuple(rel.shape)} do not match {p} prefix tokens + a "
                         f"{hs}x{ws} grid ({p + ps} tokens on the last two axes)")
    if (hs, ws) == (hd, wd):
        return rel
    lead = rel.shape[:-2]
    # patch x patch: resize the query grid (keys as channels), then the key grid (queries as channels)
    x = rel[..., p:, p:].transpose(-1, -2).reshape(-1, ps, hs, ws)
    x = _resize(x, (hd, wd), mode).reshape(-1, ps, pd).transpose(1, 2).reshape(-1, pd, hs, ws)
    patches = _resize(x, (hd, wd), mode).reshape(*lead, pd, pd)
    rows = resize_grid_axis(rel[..., :p, p:], src_grid, dst_grid, mode)  # prefix queries: key grid only
    cols = resize_grid_axis(rel[..., p:, :p].transpose(-1, -2), src_grid, dst_grid, mode).transpose(-1, -2)
    return torch.cat([torch.cat([rel[..., :p, :p], rows], dim=-1), torch.cat([cols, patches], dim=-1)], dim=-2)


class FeatureReuse(nn.Module):
    """Upstream final tokens (B, N_up, in_dim) -> reused features (B, N_down, out_dim).

    LayerNorm + MLP (``in_dim -> hidden_dim -> out_dim``) on the upstream tokens, then the patch
    tokens are resized from ``src_grid`` to ``dst_grid``; the prefix (class) tokens get zeros.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, src_grid, dst_grid,
                 num_prefix_tokens: int = 1, act_layer=nn.GELU, norm_layer=nn.LayerNorm, drop: float = 0.0,
                 mode: str = "bilinear"):
        super().__init__()
        self.src_grid, self.dst_grid = tuple(src_grid), tuple(dst_grid)
        self.num_prefix_tokens, self.mode = int(num_prefix_tokens), mode
        self.out_dim = int(out_dim)
        self.norm = norm_layer(in_dim)
        self.mlp = Mlp(in_dim, hidden_dim, out_dim, act_layer=act_layer, drop=drop)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        f = self.mlp(self.norm(tokens[:, p:]))  # only the patch tokens are reused
        f = resize_grid_axis(f.transpose(1, 2), self.src_grid, self.dst_grid, self.mode).transpose(1, 2)
        return torch.cat([f.new_zeros(f.shape[0], p, f.shape[2]), f], dim=1)


class RelationReuse(nn.Module):
    """Upstream stacked attention logits -> one additive attention bias per downstream layer.

    ``(B, in_layers * in_heads, N_up, N_up)`` -> MLP across the channel (hidden width
    ``mlp_ratio * out channels``) -> :func:`resize_relations` -> ``depth`` tensors (B, heads, N, N).
    """

    def __init__(self, in_channels: int, depth: int, num_heads: int, src_grid, dst_grid,
                 num_prefix_tokens: int = 1, mlp_ratio: float = 3.0, act_layer=nn.GELU, mode: str = "bilinear"):
        super().__init__()
        self.depth, self.num_heads = int(depth), int(num_heads)
        self.src_grid, self.dst_grid = tuple(src_grid), tuple(dst_grid)
        self.num_prefix_tokens, self.mode = int(num_prefix_tokens), mode
        out = self.depth * self.num_heads
        self.mlp = Mlp(in_channels, max(1, int(mlp_ratio * out)), out, act_layer=act_layer)

    def forward(self, relations: torch.Tensor) -> list[torch.Tensor]:
        r = self.mlp(relations.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # mix at the (small) upstream size
        r = resize_relations(r, self.src_grid, self.dst_grid, self.num_prefix_tokens, self.mode)
        return list(r.split(self.num_heads, dim=1))


class ReuseBlock(nn.Module):
    """Pre-norm ViT block (timm layout and parameter names) with DVT feature and relationship reuse.

    ``x = x + attn(norm1(x), bias)``; ``x = x + mlp(norm2(cat(x, reused)))``. With ``reuse`` (a
    :class:`FeatureReuse`, owned by this block as in the paper: one per downstream layer) the MLP
    takes ``dim + reuse.out_dim`` channels; without it this is timm's ``Block``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 reuse: FeatureReuse | None = None, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.norm1 = norm_layer(dim)
        self.attn = CapturingAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.reuse = reuse
        mlp_in = dim + (reuse.out_dim if reuse is not None else 0)
        self.norm2 = norm_layer(mlp_in)
        self.mlp = Mlp(mlp_in, int(dim * mlp_ratio), dim, act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, upstream_tokens: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None, return_logits: bool = False):
        """Returns ``(x, attention logits or None)``; logits only with ``return_logits``."""
        if return_logits:
            y, logits = self.attn.explicit_forward(self.norm1(x), attn_mask=attn_bias)
        else:
            y, logits = self.attn(self.norm1(x), attn_mask=attn_bias), None
        x = x + self.drop_path1(y)
        h = x
        if self.reuse is not None:
            if upstream_tokens is None:
                raise ValueError("this block reuses upstream features: pass upstream_tokens")
            h = torch.cat([x, self.reuse(upstream_tokens)], dim=-1)
        return x + self.drop_path2(self.mlp(self.norm2(h))), logits
