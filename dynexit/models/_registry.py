"""The model registry (timm style): ``register_model`` entrypoints, ``create_model``, ``list_models``.

A module of its own so that the families, which register their entrypoints here, never import the
package ``__init__`` that imports them (no import cycle).
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from dynexit.models._base import MultiExitModel

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
    """Whether ``name`` is a registered model entrypoint."""
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
