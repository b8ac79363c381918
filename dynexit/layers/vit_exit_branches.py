"""Early-exit branches for Vision Transformers: the seven types of the Multi-Exit ViT.

Bakhtiarnia, Zhang and Iosifidis, "Multi-Exit Vision Transformer for Dynamic Inference"
(arXiv:2106.15183, 2021). Every branch reads the token sequence after a ViT block,
``(B, num_prefix_tokens + h * w, dim)`` (class / register tokens first, then the patch tokens of the
h x w grid in row-major order, as in timm), and returns logits ``(B, num_classes)``. All of them end
in the same three-layer MLP (:class:`ExitMLP`).

==============  ===========================================================================
``mlp``         MLP-EE: LayerNorm, MLP on the class token (the mean token without one)
``cnn_ignore``  CNN-Ignore-EE: patch tokens back on their grid, class token dropped;
                3x3 conv + BatchNorm + GELU, 2x2 max-pool, flatten, MLP
``cnn_add``     CNN-Add-EE: the same, with the class token added to every patch token
``cnn_project`` CNN-Project-EE: the same, with the class token concatenated to every patch
                token channel-wise (2 * dim channels, projected back by the conv)
``vit``         ViT-EE: one transformer encoder layer (timm ``Block``), LayerNorm, MLP on the
                class token
``mixer``       MLP-Mixer-EE: one timm ``MixerBlock`` over the patch tokens, LayerNorm, global
                average pool, MLP
``resmlp``      ResMLP-EE: one timm ResMLP layer (``ResBlock``), Affine norm, global average
                pool, MLP
==============  ===========================================================================

The token-mixing MLP of MLP-Mixer and ResMLP is defined over a fixed set of patch positions and the
original networks have no class token, so ``mixer`` and ``resmlp`` drop the prefix tokens (like
``cnn_ignore``); ``vit`` keeps them, as a ViT layer does.

>>> branch = create_branch("cnn_add", dim=128, grid=(7, 7), num_prefix_tokens=1, num_classes=10)
>>> branch(tokens).shape   # tokens (B, 50, 128) -> (B, 10)
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from timm.layers import ConvNormAct, Mlp
from timm.models.mlp_mixer import Affine, MixerBlock, ResBlock
from timm.models.vision_transformer import Block


class ExitMLP(nn.Sequential):
    """Three linear layers with GELU and dropout: timm ``Mlp`` (in -> hidden -> hidden), then -> classes."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, drop: float = 0.0):
        super().__init__(Mlp(in_features, hidden, hidden, drop=(drop, 0.0)), nn.GELU(), nn.Dropout(drop),
                         nn.Linear(hidden, num_classes))


class TokenBranch(nn.Module):
    """Base of the branches: knows the token layout (prefix tokens + h x w patch grid)."""

    def __init__(self, dim: int, grid, num_prefix_tokens: int, num_classes: int):
        super().__init__()
        self.dim, self.grid = int(dim), (int(grid[0]), int(grid[1]))
        self.num_prefix_tokens, self.num_classes = int(num_prefix_tokens), int(num_classes)
        if self.num_prefix_tokens < 0 or min(self.grid) < 1:
            raise ValueError(f"{type(self).__name__}: bad token layout grid={grid}, "
                             f"num_prefix_tokens={num_prefix_tokens}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image: prefix tokens plus one per patch."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    def check_tokens(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` is (B, num_tokens, dim)."""
        if x.ndim != 3 or x.shape[1] != self.num_tokens or x.shape[2] != self.dim:
            raise ValueError(f"{type(self).__name__} expects tokens (B, {self.num_tokens}, {self.dim}) "
                             f"({self.num_prefix_tokens} prefix + {self.grid[0]}x{self.grid[1]} patches), "
                             f"got {tuple(x.shape)}")

    def pooled_token(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (B, dim), or the mean patch token when there is no prefix token."""
        return x[:, 0] if self.num_prefix_tokens else x.mean(dim=1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens (B, h*w, dim), prefix tokens dropped."""
        return x[:, self.num_prefix_tokens:]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}, num_prefix_tokens={self.num_prefix_tokens}"


class MLPBranch(TokenBranch):
    """MLP-EE: LayerNorm, then :class:`ExitMLP` on the class token (or the mean token)."""

    def __init__(self, dim, grid, num_prefix_tokens, num_classes, hidden: int | None = None, drop: float = 0.0):
        super().__init__(dim, grid, num_prefix_tokens, num_classes)
        self.norm = nn.LayerNorm(dim)
        self.head = ExitMLP(dim, hidden or dim, num_classes, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_tokens(x)
        return self.head(self.pooled_token(self.norm(x)))


class CNNBranch(TokenBranch):
    """CNN-*-EE: patch tokens on their grid, 3x3 conv + BatchNorm + GELU, 2x2 max-pool, :class:`ExitMLP`.

    ``cls_mode`` says what happens to the class token: ``"ignore"`` (dropped), ``"add"`` (added to
    every patch token) or ``"project"`` (concatenated to every patch token channel-wise). The last
    two need a class token. ``conv_dim`` defaults to ``dim // 2``.
    """

    cls_mode = "ignore"

    def __init__(self, dim, grid, num_prefix_tokens, num_classes, hidden: int | None = None, drop: float = 0.0,
                 conv_dim: int | None = None):
        super().__init__(dim, grid, num_prefix_tokens, num_classes)
        if self.cls_mode != "ignore" and not self.num_prefix_tokens:
            raise ValueError(f"the {type(self).__name__} branch needs a class token (num_prefix_tokens >= 1); "
                             "use cnn_ignore for a ViT without one")
        conv_dim = conv_dim or max(dim // 2, 1)
        in_chs = 2 * dim if self.cls_mode == "project" else dim
        self.conv = ConvNormAct(in_chs, conv_dim, 3, padding=1, act_layer=nn.GELU)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        pooled = -(-self.grid[0] // 2) * -(-self.grid[1] // 2)
        self.head = ExitMLP(conv_dim * pooled, hidden or dim, num_classes, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_tokens(x)
        patches = self.patches(x)
        if self.cls_mode == "add":
            patches = patches + x[:, :1]
        elif self.cls_mode == "project":
            patches = torch.cat([patches, x[:, :1].expand_as(patches)], dim=2)
        fmap = patches.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.head(self.pool(self.conv(fmap)).flatten(1))


class CNNIgnoreBranch(CNNBranch):
    """CNN-Ignore-EE: the class token is dropped."""
    cls_mode = "ignore"


class CNNAddBranch(CNNBranch):
    """CNN-Add-EE: the class token is added to every patch token."""
    cls_mode = "add"


class CNNProjectBranch(CNNBranch):
    """CNN-Project-EE: the class token is concatenated to every patch token; the conv projects."""
    cls_mode = "project"


class ViTBranch(TokenBranch):
    """ViT-EE: one timm transformer ``Block`` over all tokens, LayerNorm, :class:`ExitMLP` on the class token."""

    def __init__(self, dim, grid, num_prefix_tokens, num_classes, hidden: int | None = None, drop: float = 0.0,
                 num_heads: int | None = None, mlp_ratio: float = 4.0):
        super().__init__(dim, grid, num_prefix_tokens, num_classes)
        num_heads = num_heads or max(dim // 64, 1)
        if dim % num_heads:
            raise ValueError(f"ViT-EE: dim {dim} is not divisible by num_heads {num_heads}")
        self.block = Block(dim, num_heads, mlp_ratio, qkv_bias=True)
        self.norm = nn.LayerNorm(dim)
        self.head = ExitMLP(dim, hidden or dim, num_classes, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_tokens(x)
        return self.head(self.pooled_token(self.norm(self.block(x))))


class MixerBranch(TokenBranch):
    """MLP-Mixer-EE: one timm ``MixerBlock`` over the patch tokens (prefix dropped), LayerNorm, mean, MLP."""

    def __init__(self, dim, grid, num_prefix_tokens, num_classes, hidden: int | None = None, drop: float = 0.0,
                 mlp_ratio=(0.5, 4.0)):
        super().__init__(dim, grid, num_prefix_tokens, num_classes)
        self.block = MixerBlock(dim, self.grid[0] * self.grid[1], mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = ExitMLP(dim, hidden or dim, num_classes, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_tokens(x)
        return self.head(self.norm(self.block(self.patches(x))).mean(dim=1))


class ResMLPBranch(TokenBranch):
    """ResMLP-EE: one timm ResMLP layer (``ResBlock``) over the patch tokens, Affine norm, mean, MLP."""

    def __init__(self, dim, grid, num_prefix_tokens, num_classes, hidden: int | None = None, drop: float = 0.0,
                 mlp_ratio: float = 4.0):
        super().__init__(dim, grid, num_prefix_tokens, num_classes)
        self.block = ResBlock(dim, self.grid[0] * self.grid[1], mlp_ratio=mlp_ratio)
        self.norm = Affine(dim)
        self.head = ExitMLP(dim, hidden or dim, num_classes, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_tokens(x)
        return self.head(self.norm(self.block(self.patches(x))).mean(dim=1))


BRANCH_TYPES: dict[str, type[TokenBranch]] = {
    "mlp": MLPBranch,
    "cnn_ignore": CNNIgnoreBranch,
    "cnn_add": CNNAddBranch,
    "cnn_project": CNNProjectBranch,
    "vit": ViTBranch,
    "mixer": MixerBranch,
    "resmlp": ResMLPBranch,
}


def branch_options(kind: str) -> list[str]:
    """The keyword options a branch type takes beyond the token layout (e.g. hidden, drop, conv_dim)."""
    params = list(inspect.signature(_branch_class(kind).__init__).parameters)
    return [p for p in params if p not in ("self", "dim", "grid", "num_prefix_tokens", "num_classes")]


def _branch_class(kind: str) -> type[TokenBranch]:
    if kind not in BRANCH_TYPES:
        raise ValueError(f"unknown exit branch type {kind!r}; valid types: {', '.join(BRANCH_TYPES)}")
    return BRANCH_TYPES[kind]


def create_branch(kind: str, dim: int, grid, num_prefix_tokens: int, num_classes: int, **kw) -> TokenBranch:
    """Build a branch of type ``kind`` (a key of :data:`BRANCH_TYPES`) for the given token layout."""
    cls = _branch_class(kind)
    unknown = sorted(set(kw) - set(branch_options(kind)))
    if unknown:
        raise ValueError(f"exit branch {kind!r} takes no option {', '.join(unknown)}; "
                         f"its options: {', '.join(branch_options(kind))}")
    return cls(dim, grid, num_prefix_tokens, num_classes, **kw)
