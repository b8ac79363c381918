"""Attention capture: layers that can hand their attention weights to a recorder.

A layer mixing in :class:`CapturesAttention` calls ``self.record_attention(weights, grid)`` with
weights ``(B, heads, queries, keys)``; inside a :func:`recording` context (what
``MultiExitModel.capture_attention`` opens) that names the layer, the detached weights are
appended to the context's recorder, otherwise nothing is kept (no cost on the normal path).

Thread safety: a model object may be shared by several threads (the app's cached resources,
DESIGN 6), so no recorder is ever stored on a module. The active recordings live in a
:class:`contextvars.ContextVar`: each thread (and each asyncio task) sees only the recordings it
opened itself, so a capture in one thread never records, nor slows down, another thread's forward
passes on the same modules.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch


@dataclass
class AttentionMap:
    """One attention matrix captured during a forward pass.

    ``weights`` (B, heads, queries, keys), rows sum to 1. ``grid`` is the (h, w) of the spatial
    axis, and ``grid_axis`` says which axis it is: ``"keys"`` for x2z (latent tokens query a
    pooled feature map) and ``"queries"`` for z2x (every pixel queries the latent); ``"both"`` for
    ViT self-attention, whose queries and keys are ``num_prefix_tokens`` class / distillation
    tokens followed by the patch tokens of the grid.
    """

    name: str
    kind: str
    stage: int
    weights: torch.Tensor
    grid: tuple[int, int] | None
    grid_axis: str | None
    num_prefix_tokens: int = 0

    def spatial(self, reduce: str = "mean") -> torch.Tensor:
        """Attention over the grid as (B, h, w), averaged over heads.

        x2z: averaged over the latent queries; z2x: averaged (or max) over the latent keys;
        ViT self-attention: the class token's attention to the patches (its row, prefix keys
        dropped), or the mean patch row when the model has no class token.
        """
        if self.grid is None:
            raise ValueError(f"attention {self.name!r} has no spatial grid")
        w = self.weights.mean(dim=1)  # (B, Q, K)
        if self.grid_axis == "both":
            p = self.num_prefix_tokens
            w = w[:, 0, p:] if p else w.mean(dim=1)
            return w.reshape(w.shape[0], *self.grid)
        w = w.mean(dim=1) if self.grid_axis == "keys" else (w.mean(dim=2) if reduce == "mean" else w.max(dim=2).values)
        return w.reshape(w.shape[0], *self.grid)


@dataclass
class AttentionRecorder:
    """Collects :class:`AttentionMap` objects in execution order."""

    maps: list[AttentionMap] = field(default_factory=list)

    def __iter__(self):
        return iter(self.maps)

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.maps[key]
        for m in self.maps:
            if m.name == key:
                return m
        raise KeyError(f"no attention named {key!r}; captured: {', '.join(self.names()) or 'none'}")

    def names(self) -> list[str]:
        """The names of the captured maps, in capture order."""
        return [m.name for m in self.maps]

    def clear(self):
        """Forget every captured map."""
        self.maps.clear()


@dataclass(frozen=True, eq=False)
class _Recording:
    layer_ids: frozenset[int]  # id() of the recorded layers; ``layers`` keeps them alive meanwhile
    layers: tuple
    recorder: AttentionRecorder


# The recordings open in this thread / task, outermost first. A new thread starts with an empty
# context, so it sees none of them (on builds where threads inherit the starting thread's context,
# Python >= 3.14 free-threaded, a thread started inside a recording joins it).
_ACTIVE: contextvars.ContextVar[tuple[_Recording, ...]] = contextvars.ContextVar("dynexit_attention_recordings",
                                                                                 default=())


@contextlib.contextmanager
def recording(layers: Iterable["CapturesAttention"], recorder: AttentionRecorder | None = None
              ) -> Iterator[AttentionRecorder]:
    """Record the attention of ``layers`` during the forward passes run inside, in this thread only.

    Yields the recorder (a new :class:`AttentionRecorder` unless one is given). Only the layers
    named here record, and only when called from the thread / asyncio task that opened the context;
    the same layers called meanwhile from another thread run their normal (fused) path. Nested
    recordings each get every map of their own layers (an outer capture also sees what an inner
    one recorded); they may be closed in any order.
    """
    layers = tuple(layers)
    for m in layers:
        if not isinstance(m, CapturesAttention):
            raise ValueError(f"recording() takes attention layers that mix in CapturesAttention, got {type(m).__name__}")
    rec = AttentionRecorder() if recorder is None else recorder
    entry = _Recording(frozenset(id(m) for m in layers), layers, rec)
    _ACTIVE.set(_ACTIVE.get() + (entry,))
    try:
        yield rec
    finally:
        # remove this entry only (not a token reset), so out-of-order exits keep the others open
        _ACTIVE.set(tuple(e for e in _ACTIVE.get() if e is not entry))


def _recorders_for(layer) -> list[AttentionRecorder]:
    active = _ACTIVE.get()
    if not active:  # the normal path: one ContextVar read
        return []
    key = id(layer)
    return [e.recorder for e in active if key in e.layer_ids]


class CapturesAttention:
    """Mixin for modules whose attention weights can be captured (see :func:`recording`).

    The module itself holds only static naming info (``attn_name``, ``attn_kind``, ...), never
    per-call state, so one instance can serve several threads at once.
    """

    attn_name: str = "attention"
    attn_kind: str = "attention"
    attn_stage: int = 0
    attn_grid_axis: str | None = None
    attn_num_prefix_tokens: int = 0

    def set_attention_info(self, name: str, kind: str, stage: int, grid_axis: str | None,
                           num_prefix_tokens: int = 0):
        """Name this layer's maps: ``name``, its ``kind`` (x2z, z2x, vit, ...), ``stage`` (1-based),
        which axis is the spatial grid (``"keys"`` / ``"queries"`` / None) and the prefix tokens to skip."""
        self.attn_name, self.attn_kind, self.attn_stage, self.attn_grid_axis = name, kind, stage, grid_axis
        self.attn_num_prefix_tokens = int(num_prefix_tokens)

    @property
    def capturing(self) -> bool:
        """Whether a recording in the calling thread / task covers this layer."""
        return bool(_recorders_for(self))

    def record_attention(self, weights: torch.Tensor, grid=None):
        """Append ``weights`` (B, heads, queries, keys), detached, to every recording of this layer
        open in the calling thread; a no-op outside one."""
        recorders = _recorders_for(self)
        if not recorders:
            return
        amap = AttentionMap(self.attn_name, self.attn_kind, self.attn_stage, weights.detach(),
                            None if grid is None else (int(grid[0]), int(grid[1])), self.attn_grid_axis,
                            self.attn_num_prefix_tokens)
        for rec in recorders:
            rec.maps.append(amap)


def attention_rollout(maps: list[AttentionMap], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020) through consecutive ViT self-attention maps.

    Each layer's head-averaged attention is mixed with the identity (the residual path),
    renormalised, and the layers are multiplied in order. Returns (B, h, w): how much the class
    token (or, without one, the average patch) at the last layer draws on each input patch.
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one self-attention map")
    first = maps[0]
    if first.grid_axis != "both" or first.grid is None:
        raise ValueError(f"attention_rollout needs ViT self-attention maps (grid_axis 'both'), got {first.name!r}")
    shape = first.weights.shape
    for m in maps[1:]:
        if m.weights.shape != shape or m.grid != first.grid:
            raise ValueError(f"attention_rollout: {m.name!r} has shape {tuple(m.weights.shape)}, "
                             f"{first.name!r} has {tuple(shape)}; roll out one token grid at a time")
    n = shape[-1]
    eye = torch.eye(n, dtype=first.weights.dtype, device=first.weights.device)
    joint = eye.expand(shape[0], n, n)
    for m in maps:
        a = residual * m.weights.mean(dim=1) + (1.0 - residual) * eye
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a @ joint
    p = first.num_prefix_tokens
    row = joint[:, 0, p:] if p else joint.mean(dim=1)
    return row.reshape(row.shape[0], *first.grid)
