"""How a timm network is cut into units that run one after the other (the staged path of
:class:`dynexit.models.timm_exits.TimmExitModel`), and where exits can read.

ViTs: patch embedding (``EMBED``), one unit per block, the final norm. CNNs: ``forward_features``
is traced once with forward hooks on the top-level modules (stage lists opened up); the modules it
runs, in order, become the units, and timm's ``feature_info`` names the unit whose output is each
``forward_intermediates`` index (pytorch-image-models >= 1.0, "forward_intermediates() API").
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dynexit.layers.vit_exit_branches import BRANCH_TYPES

CNN_HEADS = ("conv", "linear")
VIT_HEADS = tuple(BRANCH_TYPES)
# top-level containers whose items are the network's stages (opened up by the CNN split)
STAGE_LISTS = ("stages", "layers", "blocks", "features", "body")
EMBED = "<embed>"  # the ViT unit: patch embedding, prefix tokens, position embedding, norm_pre
SUPPORTED = ("timm VisionTransformer (and subclasses such as DeiT), and networks whose forward_features runs a "
             "stem, its stages and a tail module after module: ResNet / ResNeXt / ResNeSt / Res2Net, ResNetV2, "
             "RegNet, ConvNeXt, EfficientNet, MobileNetV3, GhostNet, ReXNet, CSPNet, ByobNet (RepVGG, GerNet, "
             "MobileViTv2), NFNet, VoVNet, DPN, DLA, DenseNet, VGG, Inception-v3, TResNet, HGNetV2, RepViT, "
             "FastViT, EdgeNeXt, EfficientFormer, PVTv2, MetaFormer, Sequencer, Swin, MaxViT / CoAtNet, DaViT, "
             "EfficientViT, MambaOut, ...")


@dataclass
class Split:
    """A network as units run one after the other (module paths, or ``EMBED`` for a ViT).

    ``feature_units[i]`` is the unit whose output is ``forward_intermediates`` index i (None when
    that output is inside a unit); ``head_modules`` are what ``forward_head`` runs (the network's
    own classifier); ``layout`` is the units' output layout (``"NCHW"``, ``"NHWC"`` or ``"NLC"``).
    """

    kind: str
    units: list[str]
    feature_names: list[str]
    feature_units: list[int | None]
    reductions: list[int]
    head_modules: list[str]
    layout: str


class _Tracer:
    """Records which of a set of modules run, in call order, and any that runs inside another."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.calls: list[str] = []
        self.nested: list[tuple[str, str]] = []
        self._active: list[str] = []
        self._handles = []
        for name, m in modules.items():
            self._handles.append(m.register_forward_pre_hook(self._enter(name)))
            self._handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name):
        def hook(module, args):
            if self._active:
                self.nested.append((self._active[-1], name))
            self._active.append(name)
            self.calls.append(name)
        return hook

    def _leave(self, module, args, out):
        self._active.pop()

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls

    def remove(self):
        for h in self._handles:
            h.remove()


def unsupported(net: nn.Module, reason: str) -> ValueError:
    """The ValueError refusing ``net``: why, and which architectures are supported."""
    return ValueError(f"attach_exits cannot split {type(net).__name__}: {reason}. Supported: {SUPPORTED}")


def feature_info(net: nn.Module) -> list[dict]:
    """timm's ``feature_info`` entries of ``net`` (module, reduction, ...); ValueError without that API."""
    info = getattr(net, "feature_info", None)
    info = getattr(info, "info", info)
    if not info or not hasattr(net, "forward_intermediates"):
        raise unsupported(net, "it has no feature_info / forward_intermediates (timm's intermediate-feature API)")
    return [dict(f) for f in info]


def _top_level(net: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The network's direct children, with the stage lists opened into their items."""
    out = {}
    for name, child in net.named_children():
        if name in exclude:
            continue
        if name in STAGE_LISTS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            out.update({f"{name}.{i}": m for i, m in child.named_children()})
        else:
            out[name] = child
    return out


def _trace(net: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module], features_fn):
    """(modules run by features_fn(x), modules run by forward_head), each in call order."""
    tracer = _Tracer(modules)
    try:
        try:
            feats = features_fn(x)
        except Exception as err:  # noqa: BLE001 - report which input was tried
            raise ValueError(f"{type(net).__name__} fails on images of shape {tuple(x.shape[1:])} ({err}); "
                             "pass the in_chans= and input_size= it takes") from err
        feature_calls = tracer.take()
        net.forward_head(feats)
        head_calls = tracer.take()
    finally:
        tracer.remove()
    if tracer.nested:
        outer, inner = tracer.nested[0]
        raise unsupported(net, f"module {inner!r} runs inside {outer!r}, so the two cannot be separated")
    return feature_calls, head_calls


def _vit_split(net: VisionTransformer, x: torch.Tensor) -> Split:
    """Embedding unit, one unit per block, then the final norm; exits read the blocks' tokens."""
    depth = len(net.blocks)
    _, head_calls = _trace(net, x, _top_level(net, exclude=("blocks",)), net.forward_features)
    return Split(kind="vit", units=[EMBED] + [f"blocks.{i}" for i in range(depth)] + ["norm"],
                 feature_names=[f"blocks.{i}" for i in range(depth)], feature_units=list(range(1, depth + 1)),
                 reductions=[int(net.patch_embed.patch_size[0])] * depth,
                 head_modules=head_calls, layout="NLC")


def _cnn_split(net: nn.Module, x: torch.Tensor) -> Split:
    """The top-level modules forward_features runs, in order; exits read the feature_info modules."""
    info = feature_info(net)
    if not hasattr(net, "forward_features") or not hasattr(net, "forward_head"):
        raise unsupported(net, "it has no forward_features / forward_head")
    units, head_calls = _trace(net, x, _top_level(net), net.forward_features)
    repeated = sorted({n for n in units if units.count(n) > 1})
    if repeated:
        raise unsupported(net, f"forward_features runs {repeated[0]!r} more than once")
    if not units:
        raise unsupported(net, "forward_features runs none of its top-level modules")
    names = [f["module"] for f in info]
    return Split(kind="cnn", units=units, feature_names=names,
                 feature_units=[units.index(n) if n in units else None for n in names],
                 reductions=[int(f.get("reduction", 0)) for f in info],
                 head_modules=head_calls, layout=getattr(net, "output_fmt", "NCHW") or "NCHW")


def split_network(net: nn.Module, probe: torch.Tensor) -> Split:
    """The :class:`Split` of ``net`` (eval mode), traced on ``probe``, normalised images (1, C, H, W).

    ValueError (naming the supported architectures) when the network cannot be cut into units.
    """
    return _vit_split(net, probe) if isinstance(net, VisionTransformer) else _cnn_split(net, probe)


def resolve_exits(split: Split, net: nn.Module, at, head) -> tuple[list[int], list[str]]:
    """``(at, head_types)`` sorted by position: the exits asked for, checked against the split.

    ``at``: ``forward_intermediates`` indices (negative ones count from the end; None: the default
    places, see :func:`dynexit.models.timm_exits.attach_exits`); ``head``: one type or one per exit.
    ValueError for an index out of range or inside a module, an unknown head type, a duplicate.
    """
    n = len(split.feature_names)
    usable = [i for i in range(n - 1) if split.feature_units[i] is not None]
    if not usable:
        raise unsupported(net, f"none of its intermediate outputs but the last is the output of a whole module "
                           f"(feature_info: {split.feature_names}), so no exit can be placed")
    if at is None:
        if split.kind == "vit":
            at = list(range(2, n - 1, 3)) or usable[-1:]
        else:  # every stage but the stem (stride <= 2) and the last
            at = [i for i in usable if split.reductions[i] > 2] or usable
    try:
        at = [operator.index(i) for i in at]
    except TypeError:
        raise ValueError(f"at must be a list of forward_intermediates indices (e.g. at=[1, 2, 3]), "
                         f"got {at!r}") from None
    if not at:
        raise ValueError("at is empty: give at least one index for an intermediate exit")
    for i in at:
        j = i + n if i < 0 else i
        if not 0 <= j < n - 1:
            raise ValueError(f"at={at}: index {i} is out of range: {type(net).__name__} has {n} intermediate "
                             f"outputs (forward_intermediates indices 0..{n - 1}), exits go at 0..{n - 2}; index "
                             f"{n - 1} is the final features, which the network's own head classifies (always "
                             "the last exit)")
        if split.feature_units[j] is None:
            raise ValueError(f"at={at}: index {i} is {split.feature_names[j]!r}, an output inside a module of "
                             f"{type(net).__name__}, where the staged network cannot stop; usable: {usable}")
    at = [i + n if i < 0 else i for i in at]
    kinds = VIT_HEADS if split.kind == "vit" else CNN_HEADS
    if isinstance(head, str):
        head = [head] * len(at)
    head = list(head)
    if len(head) != len(at):
        raise ValueError(f"head lists {len(head)} types for {len(at)} exits (at={at}): give one per exit "
                         "or a single one")
    auto = "mlp" if split.kind == "vit" else "conv"
    head = [auto if h == "auto" else h for h in head]
    for h in head:
        if h not in kinds:
            family = "a ViT" if split.kind == "vit" else "a CNN"
            other = (" (conv / linear heads need a CNN)" if split.kind == "vit" and h in CNN_HEADS else
                     " (ViT branch types need a VisionTransformer)" if h in VIT_HEADS else "")
            raise ValueError(f"unknown head type {h!r} for {family}: choose one of auto, {', '.join(kinds)}{other}")
    order = sorted(range(len(at)), key=lambda k: at[k])
    pairs = [(at[k], head[k]) for k in order]
    dup = sorted({p for p in pairs if pairs.count(p) > 1})
    if dup:
        raise ValueError(f"exit at index {dup[0][0]} with head {dup[0][1]!r} is listed twice")
    return [p[0] for p in pairs], [p[1] for p in pairs]

