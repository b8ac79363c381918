"""Multi-Exit Vision Transformer (DESIGN 3.3).

Bakhtiarnia, Zhang and Iosifidis, "Multi-Exit Vision Transformer for Dynamic Inference"
(arXiv:2106.15183, 2021): a timm ``VisionTransformer`` with early-exit branches after chosen blocks,
of seven types (:mod:`dynexit.layers.vit_exit_branches`), mixed freely; the backbone's own head
(final norm, class token, linear) is always the last exit. Train it end to end (``dynexit train``),
or train the branches on a frozen backbone classifier-wise or layer-wise
(:func:`dynexit.training.exits.train_exits`); pick branch types and positions with
:mod:`dynexit.training.branch_study`.

Staged form: stage k runs the blocks after exit k-1's block up to exit k's block (the patch
embedding too in stage 0), then exit k's branch; the state carries the tokens. Several branches may
sit on the same block: the later ones then run no block, only their branch.

>>> model = create_model("mevit_fmnist", exits=[[1, "cnn_add"], [3, "vit"], [4, "mlp"]])
>>> model.exit_names   # ('block1_cnn_add', 'block3_vit', 'block4_mlp', 'head'); blocks are 0-based
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from dynexit.layers.vit_attention import make_attention_capturable
from dynexit.layers.vit_embed import embed_parts, embed_tokens
from dynexit.layers.vit_exit_branches import BRANCH_TYPES, create_branch
from dynexit.models._registry import register_model
from dynexit.models._base import ModuleView, MultiExitModel
from dynexit.models._defaults import default_normalisation


def parse_exits(exits, depth: int) -> list[tuple[int, str, dict]]:
    """Validate ``[[block, type], ...]`` (or ``[block, type, {options}]``); sorted by block, stable."""
    parsed = []
    for e in exits or ():
        if not isinstance(e, (list, tuple)) or len(e) not in (2, 3) or (len(e) == 3 and not isinstance(e[2], dict)):
            raise ValueError(f"each exit is [block, type] or [block, type, {{options}}], got {e!r}")
        try:
            block = operator.index(e[0])
        except TypeError:
            raise ValueError(f"exit block index must be an integer, got {e[0]!r} in {e!r}") from None
        if not 0 <= block < depth:
            raise ValueError(f"exit block index {block} out of range: this ViT has {depth} blocks, numbered "
                             f"0..{depth - 1} (an exit at block i reads block i's output)")
        if e[1] not in BRANCH_TYPES:
            raise ValueError(f"unknown exit branch type {e[1]!r}; valid types: {', '.join(BRANCH_TYPES)}")
        parsed.append((block, str(e[1]), dict(e[2]) if len(e) == 3 else {}))
    parsed.sort(key=lambda t: t[0])
    seen = [(b, k) for b, k, _ in parsed]
    dup = sorted({s for s in seen if seen.count(s) > 1})
    if dup:
        raise ValueError(f"exit {list(dup[0])} is listed twice; each (block, type) pair may appear once")
    return parsed


class MultiExitViT(MultiExitModel):
    """A timm VisionTransformer with exit branches after chosen blocks.

    Parameters
    ----------
    img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio : the ViT
    exits : ``[[block, type], ...]`` (0-based block index, a key of ``BRANCH_TYPES``), optionally
        ``[block, type, {options}]`` with branch options (``hidden``, ``drop``, ``conv_dim``, ...);
        types may be mixed and blocks shared. The head is always added as the last exit.
    branch_hidden, branch_drop : the branches' MLP width (default ``embed_dim``) and dropout
    class_token : with ``False`` the head and branches pool the mean token (``cnn_add`` /
        ``cnn_project`` then refuse to build)
    loss_weights : per exit; default 1.0 for every branch and 2.0 for the head
    **vit_kwargs : more timm ``VisionTransformer`` options (``qk_norm``, ``reg_tokens``, ...)
    """

    def __init__(self, img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                 mlp_ratio=4.0, exits=(), branch_hidden: int | None = None, branch_drop: float = 0.0,
                 class_token: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, mean=None, std=None, loss_weights=None, **vit_kwargs):
        if mean is None:
            mean, std = default_normalisation(in_chans)
        super().__init__(num_classes, in_chans, img_size, mean, std)
        if not class_token and vit_kwargs.get("reg_tokens"):
            raise ValueError("register tokens without a class token are not supported: the exit branches would "
                             "read a register as the class token; keep class_token=True or drop reg_tokens")
        vit_kwargs.setdefault("global_pool", "token" if class_token else "avg")
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                     num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                     mlp_ratio=mlp_ratio, class_token=class_token, drop_rate=drop_rate,
                                     drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate, **vit_kwargs)
        self.grid = tuple(int(g) for g in self.vit.patch_embed.grid_size)
        self.num_prefix_tokens = int(self.vit.num_prefix_tokens)
        self.exits = parse_exits(exits, depth)
        branches = []
        for block, kind, options in self.exits:
            defaults = {"hidden": branch_hidden, "drop": branch_drop}
            if kind == "vit":
                defaults.update(num_heads=num_heads, mlp_ratio=mlp_ratio)
            branches.append(create_branch(kind, embed_dim, self.grid, self.num_prefix_tokens, num_classes,
                                          **{**defaults, **options}))
        self.branches = nn.ModuleList(branches)
        # stage k runs blocks segments[k], then exit k's branch (or the head for the last stage)
        ends = [block for block, _, _ in self.exits] + [depth - 1]
        starts = [0] + [e + 1 for e in ends[:-1]]
        self.segments = [tuple(range(s, e + 1)) for s, e in zip(starts, ends)]
        self.exit_names = tuple([f"block{b}_{kind}" for b, kind, _ in self.exits] + ["head"])
        self.default_loss_weights = tuple(loss_weights) if loss_weights else (1.0,) * len(self.exits) + (2.0,)
        if len(self.default_loss_weights) != self.num_exits:
            raise ValueError(f"loss_weights needs {self.num_exits} values (one per exit), "
                             f"got {len(self.default_loss_weights)}")
        for k, seg in enumerate(self.segments):
            for i in seg:
                make_attention_capturable(self.vit.blocks[i], self.grid, self.num_prefix_tokens, stage=k, first_index=i)
        for k, (branch, name) in enumerate(zip(self.branches, self.exit_names)):
            if any(isinstance(m, Attention) for m in branch.modules()):  # ViT-EE
                make_attention_capturable(branch, self.grid, self.num_prefix_tokens, name=f"{name}_attn", stage=k)
        # everything needed to rebuild the same backbone with other exits (see with_exits)
        self.init_kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                                embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                exits=[[b, k, o] if o else [b, k] for b, k, o in self.exits],
                                branch_hidden=branch_hidden, branch_drop=branch_drop, class_token=class_token,
                                drop_rate=drop_rate, drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate,
                                mean=mean, std=std, **vit_kwargs)

    # ------------------------------------------------------------------ staged forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, prefix tokens and position embedding: (B, C, H, W) -> (B, N, D)."""
        return embed_tokens(self.vit, x)

    def forward_stage(self, k, state):
        x = state["x"]
        if k == 0:
            x = self.embed(x)
        for i in self.segments[k]:
            x = self.vit.blocks[i](x)
        if k < len(self.branches):
            return {"x": x}, self.branches[k](x)
        return {"x": x}, self.vit.forward_head(self.vit.norm(x))

    # ------------------------------------------------------------------ parts, for exit training
    def exit_branch(self, k: int) -> nn.Module:
        """Exit k's branch; for the last exit, the backbone's head (fc_norm + linear)."""
        k = self._check_exit(k)
        if k < len(self.branches):
            return self.branches[k]
        v = self.vit
        return ModuleView([m for m in (getattr(v, "attn_pool", None), v.fc_norm, v.head) if m is not None])

    def backbone_stage(self, k: int) -> nn.Module | None:
        """The blocks stage k runs (with the embedding for k = 0 and the final norm for the last); None if none."""
        k = self._check_exit(k)
        v = self.vit
        modules = [v.blocks[i] for i in self.segments[k]]
        params = {}
        if k == 0:
            embed_modules, params = embed_parts(v)
            modules = embed_modules + modules
        if k == self.num_exits - 1:
            modules.append(v.norm)
        return ModuleView(modules, params) if (modules or params) else None

    # ------------------------------------------------------------------ variants and costs
    def with_exits(self, exits) -> "MultiExitViT":
        """The same backbone (weights copied) with other exit branches (freshly initialised)."""
        kwargs = {**self.init_kwargs, "exits": [list(e) for e in exits]}
        model = MultiExitViT(**kwargs).to(next(self.parameters()).device)
        model.vit.load_state_dict(self.vit.state_dict())
        if self.arch_name:
            model.arch_name = self.arch_name
            model.arch_kwargs = {**self.arch_kwargs, "exits": kwargs["exits"]}
        return model

    def solo_exit_costs(self) -> np.ndarray:
        """MFLOPs per exit as if it were the only early exit: the backbone up to its block plus its branch.

        ``exit_costs()`` counts every earlier branch too (they run on the early-exit path); this is
        the cost to compare candidate branches by (the branch study).
        """
        from dynexit.flops import module_mflops, stage_flops

        per_stage = stage_flops(self)
        tokens = torch.zeros(1, self.num_prefix_tokens + self.grid[0] * self.grid[1], self.vit.embed_dim,
                             device=next(self.parameters()).device)
        own = np.array([module_mflops(b, tokens) for b in self.branches] + [0.0])
        backbone = np.cumsum(per_stage - own)  # the head's cost stays in the last stage
        return backbone + own


# ---------------------------------------------------------------------- entrypoints

@register_model
def mevit_tiny(**kwargs) -> MultiExitViT:
    """A very small Multi-Exit ViT for tests: 28x28 gray, 7x7 tokens, dim 32, 3 blocks, 2 exits + head."""
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=2,
               exits=[[0, "cnn_add"], [1, "vit"]])
    return MultiExitViT(**{**cfg, **kwargs})


@register_model
def mevit_fmnist(**kwargs) -> MultiExitViT:
    """Multi-Exit ViT for Fashion-MNIST: 28x28 gray, patch 4 (7x7 tokens), dim 64, 6 blocks, 4 heads.

    Exits after blocks 1, 2, 3, 4 (0-based) and the head.
    """
    cfg = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4,
               mlp_ratio=4.0, branch_drop=0.1, exits=[[1, "cnn_add"], [2, "vit"], [3, "mlp"], [4, "mlp"]])
    return MultiExitViT(**{**cfg, **kwargs})


@register_model
def mevit_small_patch16_224(**kwargs) -> MultiExitViT:
    """ViT-S/16 (ImageNet size, 224x224 RGB, 1000 classes) with exits after blocks 3, 5, 7, 9 and the head."""
    cfg = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12, num_heads=6,
               exits=[[3, "cnn_add"], [5, "vit"], [7, "vit"], [9, "mlp"]])
    return MultiExitViT(**{**cfg, **kwargs})
