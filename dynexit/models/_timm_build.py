"""Building a timm network for exits: the images it takes, and how a checkpoint rebuilds it.

Used by :class:`dynexit.models.timm_exits.TimmExitModel`; timm's ``pretrained_cfg`` (input size,
mean / std, architecture) is the source of the defaults.
"""

from __future__ import annotations

import fnmatch

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn


def first_conv_in_chans(net: nn.Module) -> int | None:
    """Input channels of the network's first Conv2d (None without one)."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def normalisation(net: nn.Module, in_chans: int, mean, std, inferred: bool):
    """``(mean, std)`` per channel in [0, 1] units: the given ones, else the network's pretrained_cfg
    (ImageNet's without one), averaged to one value for 1-channel images. ValueError when only one
    of mean / std is given, or the cfg's channels do not match a multi-channel ``in_chans``."""
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (one value per input channel, or one for all), or neither")
    if mean is not None:
        return tuple(torch.as_tensor(mean).flatten().tolist()), tuple(torch.as_tensor(std).flatten().tolist())
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
    if len(mean) != in_chans:
        if in_chans != 1:
            how = " (inferred from its first convolution; pass in_chans= if wrong)" if inferred else ""
            raise ValueError(f"the network's pretrained_cfg has {len(mean)}-channel mean/std but it takes {in_chans} "
                             f"channels{how}: pass mean= and std= with one value per channel")
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)  # gray images: average of the RGB values
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _is_json_value(v) -> bool:
    """Whether ``v`` is made of JSON values only (so a checkpoint sidecar can record it)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_json_value(i) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json_value(i) for k, i in v.items())
    return False


def input_size_of(net: nn.Module, input_size) -> tuple[int, int]:
    """``(H, W)`` in pixels of the images ``net`` takes: ``input_size`` (an int or a pair) checked
    against a fixed-size network (ViT, Swin), else its built-for size or its pretrained_cfg's.
    ValueError when unknown or when a fixed-size network was built for another size."""
    built_for = getattr(getattr(net, "patch_embed", None), "img_size", None)  # ViT, Swin, ...: fixed size
    if input_size is None:
        if built_for is not None:
            input_size = tuple(built_for)
        else:
            cfg_size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size")
            if cfg_size is None:
                raise ValueError("the network's input size is unknown (no pretrained_cfg): pass input_size=")
            input_size = tuple(cfg_size[-2:])
    input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if built_for is not None and input_size != tuple(built_for) and not getattr(net, "dynamic_img_size", False):
        raise ValueError(f"input_size={input_size}, but the network was built for {tuple(built_for)} images: "
                         "create it with img_size= (or dynamic_img_size=True)")
    return input_size


def rebuild_config(model, timm_name: str | None, timm_kwargs: dict | None, freeze: bool) -> tuple[dict, str | None]:
    """``(kwargs of the timm_exits entrypoint, None)`` or ``({}, why the network cannot be rebuilt)``.

    ``model``: a built TimmExitModel; ``timm_name`` / ``timm_kwargs``: how timm creates its network
    (inferred from ``pretrained_cfg["architecture"]`` when no name is given, then checked by building
    a twin on the meta device and comparing the state_dict shapes).
    """
    net = model.model
    settings = dict(at=list(model.at), head=list(model.head_types), num_classes=model.num_classes,
                    in_chans=model.in_chans, input_size=list(model.input_size),
                    mean=[float(v) for v in model.mean.flatten()], std=[float(v) for v in model.std.flatten()],
                    freeze=bool(freeze))
    timm_kwargs = dict(timm_kwargs or {})
    if not _is_json_value(timm_kwargs):
        return {}, (f"its timm kwargs {timm_kwargs} are not all JSON values (numbers, strings, lists); "
                    "pass them by name (e.g. act_layer='gelu')")
    if timm_name is not None:
        return dict(timm_name=timm_name, timm_kwargs=timm_kwargs, **settings), None
    arch = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not arch or not timm.is_model(arch):
        return {}, ("the network was not built by timm.create_model (no pretrained_cfg['architecture']); "
                    "build it with timm.create_model(name, **kwargs), or attach exits by name: "
                    "attach_exits(name, ..., **kwargs)")
    if model.is_vit:
        timm_kwargs.setdefault("img_size", list(net.patch_embed.img_size))
    build = dict(timm_kwargs, num_classes=model.num_classes, in_chans=model.in_chans)
    twin, err = None, None
    for device in ("meta", "cpu"):  # meta builds no weights; some timm constructors need real tensors
        try:
            with torch.device(device):
                twin = timm.create_model(arch, pretrained=False, **build)
            break
        except Exception as e:  # noqa: BLE001 - any failure means "cannot rebuild"
            err = e
    if twin is None:
        return {}, f"timm.create_model({arch!r}, **{build}) fails ({err})"
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    other = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    if type(twin) is not type(net) or own != other:
        diff = sorted(set(own.items()) ^ set(other.items()))[:1]
        return {}, (f"timm.create_model({arch!r}, **{build}) builds a different network "
                    f"(e.g. {diff[0][0] if diff else type(twin).__name__}); pass the timm kwargs the network was "
                    "built with to attach_exits (e.g. attach_exits(net, embed_dim=192, depth=6))")
    return dict(timm_name=arch, timm_kwargs=timm_kwargs, **settings), None


def create_timm(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, **kwargs)``, with clear errors: ValueError for
    an unknown name (similar names listed), RuntimeError when only the pretrained weights fail."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = fnmatch.filter(timm.list_models(), f"*{str(name).split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint}; see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        try:  # is it the weights, or the arguments?
            timm.create_model(name, pretrained=False, **kwargs)
        except Exception:
            raise err from None
        raise RuntimeError(f"could not download or load the pretrained weights of timm model {name!r} ({err}). "
                           "Pass pretrained=False (random weights, e.g. offline), or load the weights yourself and "
                           "pass the model: attach_exits(timm.create_model(name, pretrained_cfg_overlay="
                           "dict(file='weights.safetensors')), ...)") from err
