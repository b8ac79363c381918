"""Model registry: timm-style ``register_model`` entrypoints, ``create_model``, ``list_models``.

>>> from dynexit.models import create_model, list_models
>>> list_models("*fmnist*")
>>> model = create_model("dynperceiver_fmnist")
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from dynexit.models._base import MultiExitModel, select_state

_REGISTRY: dict[str, Callable[..., MultiExitModel]] = {}


def register_model(fn: Callable[..., MultiExitModel]) -> Callable[..., MultiExitModel]:
    """Register an entrypoint under its function name."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    return name in _REGISTRY


def create_model(name: str, **kwargs) -> MultiExitModel:
    """Build a registered model; the name and kwargs are remembered for checkpoints."""
    if name not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; see dynexit.models.list_models()")
    model = _REGISTRY[name](**kwargs)
    model.arch_name = name
    model.arch_kwargs = dict(kwargs)
    return model


# import the families so their entrypoints register
from dynexit.models import multiexit_cnn  # noqa: E402,F401
from dynexit.models import dynamic_perceiver  # noqa: E402,F401
from dynexit.models import multiexit_vit  # noqa: E402,F401
from dynexit.models import dynamic_vit  # noqa: E402,F401
from dynexit.models import timm_exits  # noqa: E402,F401

__all__ = ["MultiExitModel", "create_model", "list_models", "register_model", "is_model", "select_state"]
