"""Dynamic Vision Transformer: a cascade of ViTs on increasingly fine token grids (DESIGN 3.4).

Wang, Huang, Song, Yang and Huang, "Not All Images are Worth 16x16 Words: Dynamic Transformers for
Efficient Image Recognition" (NeurIPS 2021). Stage k is a whole ViT (its own patch embedding at its
own patch size, class token, position embedding, blocks, norm and head) on the same image, and is
exit k: an easy image leaves after the cheap coarse ViT, a hard one goes on to finer grids. Each
downstream ViT reuses its upstream neighbour's work (layers in :mod:`dynexit.layers.dvt_reuse`):

- feature reuse: the upstream final tokens, through a per-layer LayerNorm + MLP to a small width and
  resized to the downstream grid, are concatenated to the input of every downstream MLP block (but
  the last block of the last ViT, whose patch tokens nobody reads);
- relationship reuse: the upstream attention logits of all layers and heads, mixed by an MLP across
  layers x heads and resized on both token axes, are added to the downstream attention logits.

With both switches off the stages are independent ViTs (the paper's ablation). Loss: the sum of the
exits' cross-entropies. The state between stages holds the normalised image and, for the samples
still running, what the next ViT reuses: its final tokens (``"tokens"``) and its stacked attention
logits (``"relations"``, (B, depth * heads, N, N)).
"""

from __future__ import annotations

import math

import torch
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn

from dynexit.layers.dvt_reuse import FeatureReuse, RelationReuse, ReuseBlock
from dynexit.layers.vit_attention import make_attention_capturable
from dynexit.models._registry import register_model
from dynexit.models._base import MultiExitModel
from dynexit.models._defaults import default_normalisation


class DVTStage(nn.Module):
    """One ViT of the cascade (timm parameter names), optionally reusing an upstream ViT's work.

    ``upstream`` describes the previous stage (``dim``, ``grid``, ``depth``, ``heads``) and is
    needed when ``feature_reuse`` or ``relationship_reuse`` is on.
    """

    def __init__(self, *, img_size, in_chans: int, patch_size: int, grid: tuple[int, int], embed_dim: int,
                 depth: int, num_heads: int, num_classes: int, mlp_ratio: float, qkv_bias: bool,
                 drop_rate: float, attn_drop_rate: float, drop_path_rates, upstream: dict | None,
                 feature_reuse: bool, relationship_reuse: bool, reuse_dim: int, reuse_hidden_dim: int,
                 relation_mlp_ratio: float, is_last: bool):
        super().__init__()
        self.grid, self.depth, self.num_heads = tuple(grid), int(depth), int(num_heads)
        pad = img_size[0] % patch_size != 0 or img_size[1] % patch_size != 0
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      strict_img_size=not pad, dynamic_img_pad=pad)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        def feature_reuse_module():
            return FeatureReuse(upstream["dim"], reuse_dim, reuse_hidden_dim, upstream["grid"], self.grid,
                                num_prefix_tokens=1, drop=drop_rate)

        # Every block reuses features, except the last block of the last ViT: only its class token is
        # read (by the head), and the class token's reused feature is zero.
        reusing = [feature_reuse and upstream is not None and not (is_last and i == depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            ReuseBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                       drop_path=drop_path_rates[i], reuse=feature_reuse_module() if reusing[i] else None)
            for i in range(depth)])
        self.relation_reuse = None
        if relationship_reuse and upstream is not None:
            self.relation_reuse = RelationReuse(upstream["depth"] * upstream["heads"], depth, num_heads,
                                                upstream["grid"], self.grid, num_prefix_tokens=1,
                                                mlp_ratio=relation_mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, upstream_tokens: torch.Tensor | None = None,
                upstream_relations: torch.Tensor | None = None, return_relations: bool = False):
        """``(class logits, final tokens (B, N, dim), stacked attention logits or None)``."""
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.pos_drop(t)
        if self.relation_reuse is not None:
            if upstream_relations is None:
                raise ValueError("this stage reuses upstream attention logits: pass upstream_relations")
            biases = self.relation_reuse(upstream_relations)
        else:
            biases = [None] * self.depth
        relations = []
        for block, bias in zip(self.blocks, biases):
            t, logits = block(t, upstream_tokens, bias, return_logits=return_relations)
            relations.append(logits)
        out = self.head(self.head_drop(self.norm(t)[:, 0]))
        return out, t, torch.cat(relations, dim=1) if return_relations else None


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _per_stage(value, n: int, name: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} needs one value per stage ({n} patch sizes), got {len(value)}: {list(value)}")
    return value


class DynamicViT(MultiExitModel):
    """A DVT cascade: one ViT per patch size, coarse to fine; ViT k is exit k.

    Parameters
    ----------
    patch_sizes : one patch size per stage; stage k sees a ``ceil(H / p_k) x ceil(W / p_k)`` token grid
        (the image is zero-padded on the right / bottom when p_k does not divide it). The grids must
        get strictly finer.
    embed_dims, depths, num_heads : per stage, or one value for all
    feature_reuse, relationship_reuse : the two reuse mechanisms of the paper (both off: independent ViTs)
    reuse_dim, reuse_hidden_dim : width of the reused features and of their MLP's hidden layer
    relation_mlp_ratio : hidden width of the relation MLP, in multiples of its output (depth x heads)
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, input_size: int | tuple[int, int] = 224,
                 patch_sizes=(32, 23, 16), embed_dims=384, depths=12, num_heads=6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, feature_reuse: bool = True, relationship_reuse: bool = True,
                 reuse_dim: int = 48, reuse_hidden_dim: int = 128, relation_mlp_ratio: float = 3.0,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mean=None, std=None):
        if mean is None:
            mean, std = default_normalisation(in_chans)
        super().__init__(num_classes, in_chans, input_size, mean, std)
        patch_sizes = tuple(int(p) for p in patch_sizes)
        n = len(patch_sizes)
        if n == 0:
            raise ValueError("patch_sizes needs at least one patch size (one per stage)")
        h, w = self.input_size
        if any(p < 1 or p > min(h, w) for p in patch_sizes):
            raise ValueError(f"patch sizes must be between 1 and the image size {h}x{w}, got {list(patch_sizes)}")
        grids = [(math.ceil(h / p), math.ceil(w / p)) for p in patch_sizes]
        tokens = [gh * gw for gh, gw in grids]
        if any(b <= a for a, b in zip(tokens, tokens[1:])):
            raise ValueError(f"DVT stages must see strictly finer token grids, coarse to fine; patch sizes "
                             f"{list(patch_sizes)} give grids {[f'{gh}x{gw}' for gh, gw in grids]}")
        dims = tuple(int(d) for d in _per_stage(embed_dims, n, "embed_dims"))
        depths = tuple(int(d) for d in _per_stage(depths, n, "depths"))
        heads = tuple(int(d) for d in _per_stage(num_heads, n, "num_heads"))
        for k, (d, L, H) in enumerate(zip(dims, depths, heads)):
            if d < 1 or L < 1 or H < 1 or d % H:
                raise ValueError(f"stage {k}: need embed dim, depth, heads >= 1 and the embed dim divisible by the "
                                 f"heads, got embed_dim={d}, depth={L}, num_heads={H}")
        if (feature_reuse and n > 1) and (reuse_dim < 1 or reuse_hidden_dim < 1):
            raise ValueError(f"feature reuse needs reuse_dim and reuse_hidden_dim >= 1, got {reuse_dim}, {reuse_hidden_dim}")
        if relationship_reuse and n > 1 and relation_mlp_ratio <= 0:
            raise ValueError(f"relation_mlp_ratio must be > 0, got {relation_mlp_ratio}")

        self.patch_sizes, self.grids = patch_sizes, tuple(grids)
        self.feature_reuse, self.relationship_reuse = bool(feature_reuse), bool(relationship_reuse)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth over the whole cascade
        self.stages = nn.ModuleList()
        for k in range(n):
            upstream = None if k == 0 else dict(dim=dims[k - 1], grid=grids[k - 1], depth=depths[k - 1], heads=heads[k - 1])
            self.stages.append(DVTStage(
                img_size=self.input_size, in_chans=self.in_chans, patch_size=patch_sizes[k], grid=grids[k],
                embed_dim=dims[k], depth=depths[k], num_heads=heads[k], num_classes=self.num_classes,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rates=dpr[sum(depths[:k]):sum(depths[:k + 1])], upstream=upstream,
                feature_reuse=self.feature_reuse, relationship_reuse=self.relationship_reuse,
                reuse_dim=reuse_dim, reuse_hidden_dim=reuse_hidden_dim, relation_mlp_ratio=relation_mlp_ratio,
                is_last=k == n - 1))
            make_attention_capturable(self.stages[k].blocks, grids[k], num_prefix_tokens=1, name=f"s{k}.block", stage=k)
        self.exit_names = tuple(f"vit{gh}x{gw}" for gh, gw in grids)
        self.default_loss_weights = (1.0,) * n  # the paper's loss: the plain sum of the exits' CE

    def forward_stage(self, k, state):
        last = k == self.num_exits - 1
        logits, tokens, relations = self.stages[k](
            state["x"], upstream_tokens=state.get("tokens"), upstream_relations=state.get("relations"),
            return_relations=self.relationship_reuse and not last)
        new = {"x": state["x"]}
        if not last and self.feature_reuse:
            new["tokens"] = tokens
        if relations is not None:
            new["relations"] = relations
        return new, logits

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", grids={[f'{gh}x{gw}' for gh, gw in self.grids]}, "
                f"feature_reuse={self.feature_reuse}, relationship_reuse={self.relationship_reuse}")


# ----------------------------------------------------------------------------- entrypoints

# Fashion-MNIST cascade: 4x4, 6x6 and 7x7 tokens (patches 7, 5, 4) on 28x28 gray images, token counts
# 16 : 36 : 49 like the paper's 49 : 100 : 196 in spirit. A 14x14 grid (patch 2) trains ~4x slower on a
# CPU, which is where this zoo is trained.
FMNIST_DVT = dict(num_classes=10, in_chans=1, input_size=28, patch_sizes=(7, 5, 4), embed_dims=(48, 64, 64),
                  depths=(3, 4, 4), num_heads=(2, 2, 2), mlp_ratio=4.0, reuse_dim=32, reuse_hidden_dim=64)


@register_model
def dvt(**kwargs) -> DynamicViT:
    """Dynamic Vision Transformer with any configuration (defaults: the DeiT-S sized ImageNet cascade)."""
    return DynamicViT(**kwargs)


@register_model
def dvt_fmnist(**kwargs) -> DynamicViT:
    """28x28 grayscale, 10 classes: ViTs on 4x4 / 6x6 / 7x7 tokens (patches 7, 5, 4; the image zero-padded
    to 30x30 for patch 5) with feature and relationship reuse."""
    return DynamicViT(**{**FMNIST_DVT, **kwargs})


@register_model
def dvt_fmnist_noreuse(**kwargs) -> DynamicViT:
    """:func:`dvt_fmnist` with both reuse mechanisms off: three independent ViTs (the ablation)."""
    return DynamicViT(**{**FMNIST_DVT, "feature_reuse": False, "relationship_reuse": False, **kwargs})


@register_model
def dvt_tiny(**kwargs) -> DynamicViT:
    """A very small config for tests and demos (28x28 grayscale, 4x4 / 7x7 / 14x14 tokens, 1-2 blocks per ViT)."""
    cfg = dict(num_classes=10, in_chans=1, input_size=28, patch_sizes=(7, 4, 2), embed_dims=16, depths=(1, 2, 2),
               num_heads=2, mlp_ratio=2.0, reuse_dim=8, reuse_hidden_dim=16, relation_mlp_ratio=2.0)
    return DynamicViT(**{**cfg, **kwargs})


@register_model
def dvt_deit_small(**kwargs) -> DynamicViT:
    """ImageNet size (224x224 RGB, 1000 classes): three DeiT-S ViTs on 7x7 / 10x10 / 14x14 tokens
    (patches 32, 23, 16), with both reuse mechanisms, as in the paper's DeiT-based DVT."""
    cfg = dict(num_classes=1000, in_chans=3, input_size=224, patch_sizes=(32, 23, 16), embed_dims=384, depths=12,
               num_heads=6, mlp_ratio=4.0, reuse_dim=48, reuse_hidden_dim=128)
    return DynamicViT(**{**cfg, **kwargs})
