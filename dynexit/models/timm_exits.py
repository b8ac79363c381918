"""Exits on any timm model (DESIGN 3.5): bring your own trained network, attach early exits.

The path for a user with a trained (or pretrained) timm network:

1. ``model = attach_exits(net_or_name, at=[...])``: classifiers on chosen intermediate outputs;
   the network's own head is always the last exit. Positions use the indices of timm's
   ``forward_intermediates(indices=...)`` (pytorch-image-models >= 1.0, "forward_intermediates()
   API"): block indices for a ViT, feature levels (``feature_info``) for a CNN.
2. ``train_exits(model, loader, strategy="classifier-wise")`` (:mod:`dynexit.training.exits`):
   the network stays frozen (bit-identical weights and BatchNorm statistics), only the new exits
   learn.
3. ExitTables of the exits' logits and costs (:func:`dynexit.tables.model_logits`,
   :class:`dynexit.ExitTable`), a threshold solver fitted for a compute budget
   (:mod:`dynexit.solvers`), then real early exit (:func:`dynexit.early_exit`).

>>> import timm, dynexit
>>> from dynexit.training.exits import train_exits
>>> net = timm.create_model("resnet50", pretrained=True)      # or your own fine-tuned network
>>> model = dynexit.attach_exits(net)                         # exits after layer1-3, then the head
>>> train_exits(model, train_loader, strategy="classifier-wise", epochs=3, val_loader=val_loader)
>>> model.exit_names, model.exit_costs()                      # ('layer1_conv', ..., 'head'), MFLOPs
>>> logits, exits = dynexit.early_exit(model.eval(), images, thresholds)

How the network is split. Early exit must really skip the later stages, so the network is not run
through ``forward_intermediates`` at every stage; it is cut into the modules it runs one after the
other and stage k runs only its share:

- ViT (timm ``VisionTransformer`` and subclasses such as DeiT): patch embedding, prefix tokens,
  position embedding and ``norm_pre``, then ``blocks[i:j]`` per stage; the final ``norm`` and
  ``forward_head`` in the last stage. Exits read the tokens ``(B, prefix + h*w, dim)``; their
  types are the Multi-Exit ViT branches (:mod:`dynexit.layers.vit_exit_branches`).
- CNNs: ``forward_features`` is traced once with forward hooks on the network's top-level
  modules, the stage list (``stages``, ``layers``, ``blocks``, ``features`` or ``body``) opened into
  its stages; the modules it runs, in order, become the units of the split, and ``feature_info``
  names the module whose output is each ``forward_intermediates`` index. Exits are ``"conv"``
  (:class:`~dynexit.layers.ConvExitHead`) or ``"linear"`` (global average pool + linear).

Every model is checked when it is built: the staged final exit must equal the network's own
``forward`` and the features the exits read must equal ``forward_intermediates`` at the chosen
indices, otherwise the architecture is refused with a ValueError naming what is supported.

Checkpoints: a model built from a timm name, or from an instance that timm can rebuild from its
``pretrained_cfg["architecture"]`` and the recorded kwargs, is saved and rebuilt through the
registry entrypoint :func:`timm_exits` (``create_model("timm_exits", timm_name=..., ...)``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dynexit.layers.exit_heads import ConvExitHead
from dynexit.layers.pool_linear_head import PoolLinearHead
from dynexit.layers.vit_attention import make_attention_capturable
from dynexit.layers.vit_embed import embed_parts, embed_tokens
from dynexit.layers.vit_exit_branches import create_branch
from dynexit.models._base import ModuleView, MultiExitModel
from dynexit.models._registry import create_model, register_model
from dynexit.models._timm_build import (create_timm, first_conv_in_chans, input_size_of, normalisation,
                                        rebuild_config)
from dynexit.models._timm_split import EMBED, feature_info, resolve_exits, split_network, unsupported

class TimmExitModel(MultiExitModel):
    """A timm network run stage by stage, with exit heads on chosen intermediate outputs.

    Build it with :func:`attach_exits`. ``self.model`` is the timm network (its ``state_dict``
    keys start with ``model.``), ``self.exit_heads`` the attached heads; the network's own head is
    the last exit. See the module docstring for how the network is split.

    Parameters
    ----------
    net : the timm network (a ``VisionTransformer`` or a supported CNN), used in place
    at : ``forward_intermediates`` indices that get an exit (default: every stage but the stem and
        the last for a CNN, every third block for a ViT); the last index is the network's final
        features, classified by its own head
    head : ``"auto"``, one head type for all exits, or one per exit: ``"conv"`` / ``"linear"`` on
        a CNN, a :data:`~dynexit.layers.vit_exit_branches.BRANCH_TYPES` key on a ViT
    input_size, in_chans, mean, std : the images the model takes (float in [0, 1]) and the
        normalisation inside it (default: the network's ``pretrained_cfg``)
    freeze : turn off ``requires_grad`` of the network. While no parameter of the network needs a
        gradient it also stays in eval mode (BatchNorm statistics and dropout fixed) when the
        model is put in train mode.
    timm_name, timm_kwargs : how timm rebuilds the network (``timm.create_model(timm_name,
        **timm_kwargs)``), for checkpoints; inferred from ``pretrained_cfg`` when not given

    Attributes: ``at`` and ``head_types`` (sorted, one per intermediate exit), ``split`` (the units
    and where the exits read), ``stage_units`` (the units each stage runs), ``config_kwargs`` (the
    :func:`timm_exits` kwargs that rebuild the model) or ``rebuild_error`` (why timm cannot).
    """

    def __init__(self, net: nn.Module, at: Sequence[int] | None = None, head="auto",
                 input_size: int | Sequence[int] | None = None, in_chans: int | None = None, mean=None, std=None,
                 freeze: bool = True, timm_name: str | None = None, timm_kwargs: dict | None = None):
        is_vit = isinstance(net, VisionTransformer)
        if not is_vit:
            feature_info(net)  # refuses networks without timm's intermediate-feature API
        found_chans = int(net.patch_embed.proj.in_channels) if is_vit else first_conv_in_chans(net)
        if is_vit and in_chans is not None and int(in_chans) != found_chans:
            raise ValueError(f"in_chans={in_chans}, but the network takes {found_chans}-channel images")
        inferred = in_chans is None
        in_chans = int(in_chans if in_chans is not None else found_chans or 3)
        input_size = input_size_of(net, input_size)
        mean, std = normalisation(net, in_chans, mean, std, inferred)
        num_classes = int(getattr(net, "num_classes", 0) or 0)
        if num_classes < 1:
            raise ValueError(f"the network has no classifier (num_classes={num_classes}); its own head is the last "
                             "exit: create it with num_classes=N")
        super().__init__(num_classes, in_chans, input_size, mean, std)
        self.model = net
        self.is_vit = is_vit
        device = next(net.parameters()).device
        self.to(device)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                probe = self.normalize(torch.rand(1, in_chans, *self.input_size, generator=g).to(device))
                self.split = split_network(net, probe)
                self.at, self.head_types = resolve_exits(self.split, net, at, head)
                shapes = self._unit_shapes(probe)
            self.exit_heads = nn.ModuleList([self._make_head(kind, shapes[self.split.feature_units[i]])
                                             for i, kind in zip(self.at, self.head_types)]).to(device)
            # stage k runs the units after exit k-1's output up to exit k's; the last stage runs the rest
            ends = [self.split.feature_units[i] + 1 for i in self.at] + [len(self.split.units)]
            self.stage_units = [self.split.units[s:e] for s, e in zip([0] + ends[:-1], ends)]
            # named as in the Multi-Exit ViT family for ViTs (block2_mlp), by the timm module for CNNs (layer1_conv)
            places = [f"block{i}" if is_vit else self.split.feature_names[i] for i in self.at]
            self.exit_names = tuple([f"{p}_{kind}" for p, kind in zip(places, self.head_types)] + ["head"])
            if is_vit:
                self._make_vit_attention_capturable()
            self.check_split()
        finally:
            net.train(was_training)
        if freeze:
            net.requires_grad_(False)
        self.train(self.training)
        self.config_kwargs, self.rebuild_error = rebuild_config(self, timm_name, timm_kwargs, freeze)
        if self.rebuild_error is None:
            self.arch_name, self.arch_kwargs = "timm_exits", dict(self.config_kwargs)

    # ------------------------------------------------------------------ construction
    def _unit_shapes(self, x: torch.Tensor) -> list[tuple]:
        shapes = []
        for unit in self.split.units:
            try:
                x = self._run_unit(unit, x)
            except Exception as err:  # noqa: BLE001 - any failure: forward_features does more than this
                raise unsupported(self.model, f"its modules cannot run one after the other ({unit!r} fails: "
                                   f"{err}); forward_features reshapes between them") from err
            if not isinstance(x, torch.Tensor):
                raise unsupported(self.model, f"its module {unit!r} returns a {type(x).__name__}, not a tensor")
            shapes.append(tuple(x.shape[1:]))
        return shapes

    def _make_head(self, kind: str, shape: tuple) -> nn.Module:
        net, c = self.model, self.num_classes
        if self.split.kind == "vit":
            options = {"num_heads": net.blocks[0].attn.num_heads} if kind == "vit" else {}
            return create_branch(kind, net.embed_dim, net.patch_embed.grid_size, net.num_prefix_tokens, c, **options)
        if len(shape) != 3:
            raise unsupported(net, f"its stages output tokens {shape}, not (C, H, W) feature maps (of the token "
                               "networks, VisionTransformer is supported)")
        chans, size = (shape[2], shape[0]) if self.split.layout == "NHWC" else (shape[0], shape[1])
        if kind == "linear":
            return PoolLinearHead(chans, c)
        return ConvExitHead(chans, c, width=min(max(chans, 64), 256), spatial=size)

    def _make_vit_attention_capturable(self):
        net = self.model
        grid, prefix = tuple(net.patch_embed.grid_size), int(net.num_prefix_tokens)
        for k, units in enumerate(self.stage_units):
            for unit in units:
                if unit.startswith("blocks."):
                    i = int(unit.split(".")[1])
                    make_attention_capturable(net.blocks[i], grid, prefix, stage=k, first_index=i)
        for k, (head, kind) in enumerate(zip(self.exit_heads, self.head_types)):
            if kind == "vit":
                make_attention_capturable(head, grid, prefix, name=f"{self.exit_names[k]}_attn", stage=k)

    # ------------------------------------------------------------------ staged forward
    def _run_unit(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        if unit == EMBED:
            return embed_tokens(self.model, x)
        return self.model.get_submodule(unit)(x)

    def forward_stage(self, k, state):
        x = state["x"]
        for unit in self.stage_units[k]:
            x = self._run_unit(unit, x)
        if k < len(self.exit_heads):
            return {"x": x}, self.exit_heads[k](self._exit_input(x))
        return {"x": x}, self.model.forward_head(x)

    def _exit_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.split.layout == "NHWC" else x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the intermediate exits read, on the staged path: one tensor per exit.

        CNN: feature maps (B, C, H, W), as ``forward_intermediates`` returns them; ViT: tokens
        (B, prefix + h*w, dim), prefix tokens first.
        """
        state, out = self.init_state(x), []
        for k in range(len(self.exit_heads)):
            for unit in self.stage_units[k]:
                state["x"] = self._run_unit(unit, state["x"])
            out.append(self._exit_input(state["x"]))
        return out

    @torch.no_grad()
    def check_split(self, x: torch.Tensor | None = None, rtol: float = 1e-4, atol: float = 1e-5) -> None:
        """ValueError unless the staged path reproduces the network (run once when the model is built).

        The last exit must equal ``self.model(x)`` and the features the exits read must equal
        ``forward_intermediates`` at ``self.at`` (eval mode, random images by default).
        """
        net, was = self.model, self.training
        self.eval()
        try:
            if x is None:
                g = torch.Generator().manual_seed(1)
                x = torch.rand(2, self.in_chans, *self.input_size, generator=g).to(self.mean.device)
            ref = net(self.normalize(x))
            final = self(x)[-1]
            if final.shape != ref.shape or not torch.allclose(final, ref, rtol=rtol, atol=atol):
                raise unsupported(net, "running its modules in the order forward_features calls them does not "
                                   "reproduce its forward (it computes something between them)")
            indices = sorted(set(self.at))
            if self.split.kind == "vit":
                prefix = bool(net.num_prefix_tokens)
                inter = net.forward_intermediates(self.normalize(x), indices=indices, output_fmt="NLC",
                                                  return_prefix_tokens=prefix, intermediates_only=True)
                inter = [torch.cat([p, t], dim=1) for t, p in inter] if prefix else inter
            else:
                inter = net.forward_intermediates(self.normalize(x), indices=indices, intermediates_only=True)
            ref_at = dict(zip(indices, inter))
            for i, feats in zip(self.at, self.features(x)):
                want = ref_at[i]
                if feats.shape != want.shape or not torch.allclose(feats, want, rtol=rtol, atol=atol):
                    raise unsupported(net, f"the output of {self.split.feature_names[i]!r} on the staged path differs "
                                       f"from forward_intermediates index {i}")
        finally:
            self.train(was)

    # ------------------------------------------------------------------ parts, for exit training
    def exit_branch(self, k: int) -> nn.Module:
        """Exit k's head; for the last exit, the network's own classifier (what ``forward_head`` runs)."""
        k = self._check_exit(k)
        if k < len(self.exit_heads):
            return self.exit_heads[k]
        return ModuleView([self.model.get_submodule(n) for n in self.split.head_modules])

    def backbone_stage(self, k: int) -> nn.Module | None:
        """The network's modules stage k runs (with the ViT's prefix tokens and position embedding in
        stage 0); None when the stage runs none (two exits on the same output)."""
        k = self._check_exit(k)
        modules, params = [], {}
        for unit in self.stage_units[k]:
            if unit == EMBED:
                embed_modules, params = embed_parts(self.model)
                modules += embed_modules
            else:
                modules.append(self.model.get_submodule(unit))
        return ModuleView(modules, params) if (modules or params) else None

    def train(self, mode: bool = True):
        """Train mode for the exits; the network follows unless none of its parameters needs a gradient."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict:
        """Registry name and kwargs that rebuild this model; ValueError saying why when timm cannot."""
        if self.rebuild_error is not None:
            raise ValueError(f"cannot save these exits for rebuilding: {self.rebuild_error}")
        # the resolved settings, never `pretrained`: a checkpoint brings its own weights
        return {"arch": "timm_exits", "kwargs": dict(self.config_kwargs)}

    def extra_repr(self) -> str:
        return f"{type(self.model).__name__}, at={self.at}, heads={self.head_types}, " + super().extra_repr()


# ---------------------------------------------------------------------- building

@register_model
def timm_exits(timm_name: str, at: Sequence[int] | None = None, head="auto", num_classes: int | None = None,
               in_chans: int | None = None, input_size=None, mean=None, std=None, freeze: bool = True,
               timm_kwargs: dict | None = None, pretrained: bool = False) -> TimmExitModel:
    """Exits on the timm network ``timm.create_model(timm_name, **timm_kwargs)`` (see :func:`attach_exits`)."""
    kwargs = dict(timm_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if in_chans is not None:
        kwargs["in_chans"] = int(in_chans)
    net = create_timm(timm_name, pretrained, **kwargs)
    trained_classes = (getattr(net, "pretrained_cfg", None) or {}).get("num_classes")
    if pretrained and num_classes is not None and trained_classes and int(num_classes) != trained_classes:
        warnings.warn(f"{timm_name}'s pretrained weights classify {trained_classes} classes, so its own head (the last "
                      f"exit) is new for num_classes={num_classes}: fine-tune the network before classifier-wise "
                      "exit training, which keeps the head frozen", stacklevel=3)
    return TimmExitModel(net, at=at, head=head, input_size=input_size, in_chans=in_chans, mean=mean, std=std,
                         freeze=freeze, timm_name=timm_name, timm_kwargs=timm_kwargs)


def attach_exits(model_or_name, at: Sequence[int] | None = None, head="auto", num_classes: int | None = None,
                 in_chans: int | None = None, input_size=None, pretrained: bool = False, mean=None, std=None,
                 freeze: bool = True, **timm_kwargs) -> TimmExitModel:
    """Attach early exits to a timm network (an instance, used in place, or a timm model name).

    Parameters
    ----------
    model_or_name : a timm model (e.g. your fine-tuned network) or a timm name, created with
        ``timm.create_model(name, pretrained=pretrained, num_classes=..., in_chans=..., **timm_kwargs)``
    at : ``forward_intermediates`` indices that get an exit: block indices for a ViT, feature levels
        (``feature_info``) for a CNN; default every stage but the stem and the last (CNN), every
        third block (ViT). The network's own head is always the last exit.
    head : ``"auto"`` (``"conv"`` on a CNN, ``"mlp"`` on a ViT), one type for all exits, or a list
        with one per exit: ``"conv"`` (two conv-BN-ReLU, pool, linear) or ``"linear"`` (pool, linear)
        on a CNN; a Multi-Exit ViT branch (``mlp``, ``cnn_ignore``, ``cnn_add``, ``cnn_project``,
        ``vit``, ``mixer``, ``resmlp``) on a ViT
    num_classes, in_chans : passed to timm for a name; must match the network for an instance
    input_size : image size the model takes (default: the network's ``pretrained_cfg``)
    pretrained : download timm's weights (a name only)
    mean, std : normalisation inside the model; inputs are float images in [0, 1] (default: the
        network's ``pretrained_cfg``)
    freeze : turn off the network's gradients, for classifier-wise exit training
    **timm_kwargs : for a name, more ``timm.create_model`` options; for an instance, the options it
        was built with, so a checkpoint can rebuild it (e.g. ``img_size=28, embed_dim=32``)
    """
    if isinstance(model_or_name, str):
        model = create_model("timm_exits", timm_name=model_or_name, at=at, head=head, num_classes=num_classes,
                             in_chans=in_chans, input_size=input_size, mean=mean, std=std, freeze=freeze,
                             timm_kwargs=timm_kwargs, pretrained=pretrained)
        model.arch_kwargs = dict(model.config_kwargs)  # resolved settings; no `pretrained`: checkpoints have weights
        return model
    if not isinstance(model_or_name, nn.Module):
        raise ValueError(f"attach_exits takes a timm model or a timm model name, got {type(model_or_name).__name__}")
    net = model_or_name
    if pretrained:
        raise ValueError("pretrained=True downloads weights for a model name; this network already has its weights")
    if num_classes is not None and int(num_classes) != getattr(net, "num_classes", None):
        raise ValueError(f"num_classes={num_classes}, but the network classifies {getattr(net, 'num_classes', None)} "
                         f"classes; its head is the last exit: call net.reset_classifier({num_classes}) and train "
                         "it first")
    return TimmExitModel(net, at=at, head=head, input_size=input_size, in_chans=in_chans, mean=mean, std=std,
                         freeze=freeze, timm_kwargs=timm_kwargs)
