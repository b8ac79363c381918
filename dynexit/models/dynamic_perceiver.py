"""Dynamic Perceiver (DESIGN 3.1).

Han, Han, Pu, Wang, Song, Chen and Huang, "Dynamic Perceiver for Efficient Visual Recognition",
ICCV 2023. The feature extraction (a CNN taken from timm, run stage by stage) is decoupled from the
early classification, which happens in a latent branch:

- latent code: ``num_latents`` learnable tokens of the width of the CNN stem;
- per stage k: cross-attention **x2z** (latent queries; keys/values = the stage's input feature map
  after a 7x7 depthwise-conv residual, average-pooled to a ``pool_size`` grid, plus a learnable key
  position offset), then ``sa_depths[k]`` self-attention blocks (timm ViT blocks);
- between stages: the latent halves its tokens (token mixer over the token axis) and widens to the
  next stage's CNN width (LayerNorm + Linear); cross-attention **z2x** (every pixel queries the
  latent, residual into the feature map) feeds the latent back into the CNN;
- exits: latent after stage 3 -> exit 1; latent after stage 4 (+ embedding of exit 1's logits) ->
  exit 2; the CNN's own head -> exit 3; the fusion of the pooled CNN features (after a final z2x),
  the pooled latent and an embedding of exit 2's logits (concat -> BatchNorm -> Linear) -> exit 4.

Inference order (the staged form): latent stage 3 -> exit 1 -> CNN stage 3 -> latent stage 4 ->
exit 2 -> CNN stage 4 -> CNN exit -> fusion exit. Training loss weights: latent exits 0.5, CNN and
fusion exits 1.0 (plus self-distillation, in :mod:`dynexit.training.loop`).
"""

from __future__ import annotations

import torch
from torch import nn

from dynexit.layers.cross_attention import CrossAttention
from dynexit.layers.exit_heads import LatentExitHead, LogitsEmbedding
from dynexit.layers.latent_blocks import LatentSelfAttention
from dynexit.layers.token_mixer import LatentTransition
from dynexit.models._registry import register_model
from dynexit.models._backbones import build_backbone, stage_shapes
from dynexit.models._base import MultiExitModel
from dynexit.models._defaults import FMNIST_BACKBONE, default_normalisation


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


class DynamicPerceiver(MultiExitModel):
    """Dynamic Perceiver on a timm backbone; exits ``latent3, latent4, cnn, fusion``.

    Parameters
    ----------
    backbone : timm ResNet / RegNet / MobileNetV3 name, or a preset such as ``resnet18_half``
    num_latents : latent tokens at stage 1 (halved at every stage; must be divisible by 8)
    sa_depths, sa_heads : self-attention blocks and heads of the latent at each of the 4 stages
    sa_mlp_ratio : MLP width of the latent blocks
    pool_size : x2z key grid (the feature map is average-pooled to at most pool_size x pool_size)
    with_x2z, with_z2x, with_dwc, with_last_ca, with_isc : the paper's ablation switches
    small_input : stem without max-pool, first conv of stride ``stem_stride`` (default: input_size < 64)
    """

    exit_names = ("latent_stage3", "latent_stage4", "cnn_head", "fusion")
    default_loss_weights = (0.5, 0.5, 1.0, 1.0)

    def __init__(self, backbone: str = "resnet18_half", num_classes: int = 10, in_chans: int = 1,
                 input_size: int = 28, num_latents: int = 32, sa_depths=(2, 2, 6, 2), sa_heads=(1, 2, 4, 8),
                 sa_mlp_ratio: float = 4.0, pool_size: int = 7, with_x2z: bool = True, with_z2x: bool = True,
                 with_dwc: bool = True, with_last_ca: bool = True, with_isc: bool = True,
                 small_input: bool | None = None, stem_stride: int = 1, pretrained: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, mean=None, std=None):
        if mean is None:
            mean, std = default_normalisation(in_chans)
        super().__init__(num_classes, in_chans, input_size, mean, std)
        if num_latents % 8:
            raise ValueError(f"num_latents must be divisible by 8 (it halves three times), got {num_latents}")
        if len(sa_depths) != 4 or len(sa_heads) != 4:
            raise ValueError("sa_depths and sa_heads need one value per stage (4)")
        small_input = (self.input_size[0] < 64) if small_input is None else small_input
        self.cnn = build_backbone(backbone, in_chans, num_classes, pretrained=pretrained, small_input=small_input, stem_stride=stem_stride,
                                  drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        shapes = stage_shapes(self.cnn, in_chans, self.input_size)
        # latent width at stage k = channels of the CNN feature map entering stage k
        dims = [shapes[k][0] for k in range(4)]
        tokens = [num_latents // 2 ** k for k in range(4)]
        for k in range(4):
            if dims[k] % sa_heads[k]:
                raise ValueError(f"latent width {dims[k]} at stage {k + 1} is not divisible by {sa_heads[k]} heads")
        self.dims, self.tokens = dims, tokens
        self.with_x2z, self.with_z2x, self.with_dwc = with_x2z, with_z2x, with_dwc
        self.with_last_ca, self.with_isc = with_last_ca, with_isc

        self.latent = nn.Parameter(torch.empty(tokens[0], dims[0]))
        with torch.no_grad():
            self.latent.normal_(0.0, 0.02).clamp_(-2.0, 2.0)

        grids = [(min(pool_size, shapes[k][1]), min(pool_size, shapes[k][2])) for k in range(4)]
        self.grids = grids
        self.pools = nn.ModuleList([nn.AdaptiveAvgPool2d(g) for g in grids])
        x2z_stages = range(4) if with_x2z else range(1)
        self.dwc = nn.ModuleDict({
            str(k): nn.Conv2d(dims[k], dims[k], 7, padding=3, groups=dims[k]) for k in x2z_stages if with_dwc})
        self.x2z = nn.ModuleDict({
            str(k): CrossAttention(dims[k], dims[k], num_heads=1, mlp_ratio=1.0, num_keys=grids[k][0] * grids[k][1])
            for k in x2z_stages})
        self.z2x = nn.ModuleDict({
            str(k): CrossAttention(dims[k], dims[k], num_heads=1, qk_dim=max(1, dims[k] // 8),
                                   v_dim=max(1, dims[k] // 8), mlp_ratio=1.0)
            for k in range(1, 4)}) if with_z2x else nn.ModuleDict()
        dpr = torch.linspace(0, drop_path_rate, sum(sa_depths)).tolist()
        starts = [sum(sa_depths[:k]) for k in range(4)]
        self.self_attn = nn.ModuleList([
            LatentSelfAttention(dims[k], sa_depths[k], sa_heads[k], sa_mlp_ratio,
                                drop_path=dpr[starts[k]:starts[k] + sa_depths[k]]) for k in range(4)])
        self.transitions = nn.ModuleList([
            LatentTransition(tokens[k], tokens[k + 1], dims[k], dims[k + 1]) for k in range(3)])
        out_chs = shapes[4][0]
        self.last_z2x = (CrossAttention(out_chs, dims[3], num_heads=1, qk_dim=max(1, out_chs // 8),
                                        v_dim=max(1, out_chs // 8), mlp_ratio=1.0) if with_last_ca else None)
        self._build_exits(dims, num_classes, with_isc)
        self._name_attention()

    def _build_exits(self, dims: list[int], num_classes: int, with_isc: bool) -> None:
        """The two latent exits, the logits embedding (isc) and the fusion exit (built last: the
        order of construction fixes the seeded initial weights)."""
        self.exit1 = LatentExitHead(dims[2], num_classes)
        self.exit2 = LatentExitHead(dims[3], num_classes, prev_classes=num_classes if with_isc else None,
                                    embed_dim=dims[3])
        fuse = self.cnn.num_features + dims[3] + (dims[3] if with_isc else 0)
        self.fusion_embed = LogitsEmbedding(num_classes, dims[3]) if with_isc else None
        self.fusion = nn.Sequential(nn.BatchNorm1d(fuse), nn.Linear(fuse, num_classes))

    def _name_attention(self) -> None:
        """Name every cross-attention for the attention recorder (x2z1..4, z2x2..4, z2x_last)."""
        names = [f"x2z{k + 1}" for k in range(4)] + [f"z2x{k + 1}" for k in range(1, 4)]
        for k, m in self.x2z.items():
            m.set_attention_info(f"x2z{int(k) + 1}", "x2z", int(k) + 1, "keys")
        for k, m in self.z2x.items():
            m.set_attention_info(f"z2x{int(k) + 1}", "z2x", int(k) + 1, "queries")
        if self.last_z2x is not None:
            self.last_z2x.set_attention_info("z2x_last", "z2x", 5, "queries")
        self.attention_names = names + (["z2x_last"] if self.last_z2x is not None else [])

    # ------------------------------------------------------------------ pieces
    def _x2z(self, k: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        key = str(k)
        if key not in self.x2z:
            return z
        if key in self.dwc:  # the 7x7 depthwise conv with its residual (already inside after optimize_for_inference)
            kv = self.dwc[key](x) if getattr(self.dwc[key], "includes_identity", False) else self.dwc[key](x) + x
        else:
            kv = x
        kv = self.pools[k](kv)
        return self.x2z[key](z, _tokens(kv), grid=kv.shape[-2:])

    def _z2x(self, layer, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = layer(_tokens(x), z, grid=(h, w))
        return out.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def _latent_stage(self, k: int, x: torch.Tensor, z: torch.Tensor):
        """Latent stage k (0-based) on the feature map x entering CNN stage k."""
        if k > 0:
            z = self.transitions[k - 1](z)
            if self.with_z2x:
                x = self._z2x(self.z2x[str(k)], x, z)
        z = self._x2z(k, x, z)
        return x, self.self_attn[k](z)

    def no_weight_decay(self) -> set[str]:
        """The learned latent tokens and the x2z key position offsets are not decayed (like the
        latent array and position embeddings of Perceiver / ViT training recipes)."""
        return {"latent"} | {f"x2z.{k}.key_pos" for k, m in self.x2z.items() if m.key_pos is not None}

    # ------------------------------------------------------------------ staged form
    def forward_stage(self, k, state):
        if k == 0:
            x = self.cnn.stem(state["x"])
            z = self.latent.unsqueeze(0).expand(x.shape[0], -1, -1)
            for s in range(3):
                x, z = self._latent_stage(s, x, z)
                if s < 2:
                    x = self.cnn.stages[s](x)
            y = self.exit1(z)
            return {"x": x, "z": z, "y": y}, y
        if k == 1:
            x = self.cnn.stages[2](state["x"])
            x, z = self._latent_stage(3, x, state["z"])
            y = self.exit2(z, state["y"] if self.with_isc else None)
            return {"x": x, "z": z, "y": y}, y
        if k == 2:
            x = self.cnn.stages[3](state["x"])
            return {**state, "x": x}, self.cnn.forward_head(x)
        if k == 3:
            x, z = state["x"], state["z"]
            if self.last_z2x is not None:
                x = self._z2x(self.last_z2x, x, z)
            parts = [self.cnn.head(x), z.mean(dim=1)]
            if self.fusion_embed is not None:
                parts.append(self.fusion_embed(state["y"]))
            return {"x": x, "z": z}, self.fusion(torch.cat(parts, dim=1))
        raise IndexError(f"stage {k} out of range for {self.num_exits} exits")


@register_model
def dynperceiver(**kwargs) -> DynamicPerceiver:
    """Dynamic Perceiver on any supported timm backbone (``backbone=``; default the Fashion-MNIST backbone)."""
    return DynamicPerceiver(**(kwargs if "backbone" in kwargs else {**FMNIST_BACKBONE, **kwargs}))


@register_model
def dynperceiver_fmnist(**kwargs) -> DynamicPerceiver:
    """28x28 grayscale: half-width ResNet-18 (see models._defaults.FMNIST_BACKBONE), 32 latent tokens, SA 2-2-6-2."""
    cfg = dict(FMNIST_BACKBONE, num_classes=10, in_chans=1, input_size=28, num_latents=32,
               sa_depths=(2, 2, 6, 2), sa_heads=(1, 2, 4, 8))
    return DynamicPerceiver(**{**cfg, **kwargs})


@register_model
def dynperceiver_tiny(**kwargs) -> DynamicPerceiver:
    """A very small config for tests and demos (28x28 grayscale, one SA block per stage)."""
    cfg = dict(backbone="resnet10_quarter", num_classes=10, in_chans=1, input_size=28, num_latents=16,
               sa_depths=(1, 1, 1, 1), sa_heads=(1, 1, 2, 2), sa_mlp_ratio=2.0)
    return DynamicPerceiver(**{**cfg, **kwargs})


def _imagenet(backbone: str, num_latents: int, depths=(1, 1, 1, 1)):
    def make(**kwargs):
        cfg = dict(backbone=backbone, num_classes=1000, in_chans=3, input_size=224, num_latents=num_latents,
                   sa_depths=tuple(3 * d if i < 2 else (9 * d if i == 2 else 3 * d) for i, d in enumerate(depths)))
        return DynamicPerceiver(**{**cfg, **kwargs})
    return make


# ImageNet-size configs following the paper's "t<num_latents>" naming (SA depths 3-3-9-3)
for _bb, _t in [("resnet18", 128), ("resnet50", 128), ("resnet50", 256), ("regnety_004", 128), ("regnety_008", 128),
                ("regnety_016", 128), ("mobilenetv3_large_100", 128), ("mobilenetv3_large_075", 128)]:
    _fn = _imagenet(_bb, _t)
    _fn.__name__ = f"dynperceiver_{_bb}_t{_t}"
    _fn.__doc__ = f"Dynamic Perceiver on timm {_bb} with {_t} latent tokens, for 224x224 RGB (ImageNet)."
    register_model(_fn)
