"""The MultiExitModel contract shared by every model family.

A multi-exit model is a ``torch.nn.Module`` whose computation is split into ``num_exits`` stages.
Stage k continues from the state left by stage k-1 and produces the logits of exit k:

    state = model.init_state(x)                       # checks and normalises the images
    for k in range(model.num_exits):
        state, logits_k = model.forward_stage(k, state)

``state`` is a dict whose values are tensors with the batch on dim 0 (or ``None``, or lists /
tuples of such tensors), so a generic engine (:func:`dynexit.inference.early_exit`) can keep only
the rows of the samples that have not exited yet and continue with them. ``forward(x)`` is the same
loop and returns every exit's logits, shallow to deep.

Images are float tensors in [0, 1], shape (B, in_chans, H, W); normalisation lives inside the
model (``mean`` / ``std`` buffers).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from dynexit.layers.attention_capture import CapturesAttention, recording

State = dict[str, Any]


class MultiExitModel(nn.Module):
    """Base class of all multi-exit models (see the module docstring for the contract).

    Subclasses set ``exit_names`` and implement :meth:`forward_stage`; they may override
    :meth:`init_state` (call ``super()`` first, it validates and normalises) and
    ``default_loss_weights`` (one weight per exit for training).
    """

    exit_names: tuple[str, ...] = ()
    default_loss_weights: tuple[float, ...] | None = None
    # the memory format stage 0 receives (None: as given); set on the copies made by
    # dynexit.models.optimize_for_inference (torch.channels_last)
    memory_format: torch.memory_format | None = None

    def __init__(self, num_classes: int, in_chans: int, input_size: int | tuple[int, int],
                 mean=(0.5,), std=(0.5,)):
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 1:
            mean, std = mean.expand(self.in_chans).clone(), std.expand(self.in_chans).clone()
        if mean.numel() != self.in_chans or std.numel() != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values (one per channel), got {mean.numel()}/{std.numel()}")
        # derived from the config, so not part of the saved weights
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.arch_name: str | None = None  # set by create_model
        self.arch_kwargs: dict = {}
        self._costs_cache: np.ndarray | None = None

    # ------------------------------------------------------------------ contract
    @property
    def num_exits(self) -> int:
        """How many exits (K), the last being the full network."""
        return len(self.exit_names)

    def loss_weights(self) -> list[float]:
        """One training-loss weight per exit (``default_loss_weights``, else 1.0 each)."""
        w = self.default_loss_weights or (1.0,) * self.num_exits
        return [float(v) for v in w]

    def no_weight_decay(self) -> set[str]:
        """Names of parameters kept out of weight decay besides biases and norm weights (which have
        ``ndim <= 1`` and are never decayed): timm's convention, read by the training loop."""
        return set()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem when ``x`` is not a batch this model accepts."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.label()} expects a torch.Tensor of images, got {type(x).__name__}")
        h, w = self.input_size
        want = f"(B, {self.in_chans}, {h}, {w})"
        if x.ndim != 4:
            raise ValueError(f"{self.label()} expects a 4-d batch of images {want}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            hint = ("convert to grayscale (e.g. x.mean(1, keepdim=True))" if self.in_chans == 1
                    else "repeat the gray channel (x.expand(-1, 3, -1, -1))" if x.shape[1] == 1 else "convert the images")
            raise ValueError(f"{self.label()} expects {self.in_chans}-channel images {want}, got {x.shape[1]} "
                             f"channels (shape {tuple(x.shape)}): {hint}")
        if tuple(x.shape[2:]) != (h, w):
            raise ValueError(f"{self.label()} expects images of size {h}x{w} {want}, got "
                             f"{x.shape[2]}x{x.shape[3]}: resize them first (e.g. torch.nn.functional.interpolate)")
        if not torch.is_floating_point(x):
            raise ValueError(f"{self.label()} expects float images in [0, 1], got dtype {x.dtype}: divide uint8 by 255")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel: images (B, C, H, W) in [0, 1] to the network's input."""
        return (x - self.mean) / self.std

    def init_state(self, x: torch.Tensor) -> State:
        """Validate and normalise a batch; the state every stage 0 starts from."""
        self.check_input(x)
        x = self.normalize(x)
        return {"x": x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)}

    def forward_stage(self, k: int, state: State) -> tuple[State, torch.Tensor]:
        """Run stage k on ``state``; returns the new state and the logits of exit k (B, C)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_upto(x, self.num_exits - 1)

    def forward_upto(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Logits of exits 0..``last`` on the staged path; the later stages are not run."""
        last = self._check_exit(last)
        state = self.init_state(x)
        outs = []
        for k in range(last + 1):
            state, logits = self.forward_stage(k, state)
            outs.append(logits)
        return outs

    # ------------------------------------------------------------------ parts, for exit training
    def _check_exit(self, k: int) -> int:
        k = operator.index(k)
        if not 0 <= k < self.num_exits:
            raise ValueError(f"exit index {k} out of range: {self.label()} has exits 0..{self.num_exits - 1}")
        return k

    def exit_branch(self, k: int) -> nn.Module:
        """The modules that belong to exit k alone (its branch / classifier).

        Families that support classifier-wise or layer-wise training (see
        :mod:`dynexit.training.exits`) override this and :meth:`backbone_stage`.
        """
        raise NotImplementedError(f"{self.label()} does not expose its exit branches; "
                                  "train it end to end with dynexit.training.loop")

    def backbone_stage(self, k: int) -> nn.Module | None:
        """The shared (backbone) modules that stage k runs before exit k's branch, or None."""
        raise NotImplementedError(f"{self.label()} does not expose its backbone stages; "
                                  "train it end to end with dynexit.training.loop")

    # ------------------------------------------------------------------ costs
    def exit_costs(self, refresh: bool = False) -> np.ndarray:
        """Cumulative MFLOPs (multiply-adds) per exit for one image, counted on the staged path."""
        if self._costs_cache is None or refresh:
            from dynexit.flops import staged_flops
            self._costs_cache = staged_flops(self)
        return self._costs_cache.copy()

    # ------------------------------------------------------------------ attention
    def attention_layers(self) -> dict[str, CapturesAttention]:
        """The layers whose attention weights can be recorded, by module name."""
        return {name: m for name, m in self.named_modules() if isinstance(m, CapturesAttention)}

    @contextlib.contextmanager
    def capture_attention(self):
        """Record the attention weights of this model's capturable layers during the forward passes
        inside, in the calling thread only.

        >>> with model.capture_attention() as rec:
        ...     model(x)
        >>> rec["x2z3"].weights.shape   # (B, heads, queries, keys); rec["x2z3"].grid == (7, 7)

        Nothing is stored on the model (see :func:`dynexit.layers.attention_capture.recording`):
        another thread running the same model object meanwhile records nothing and keeps the fused
        attention kernels. Captures nest; with two models, each capture records its own model only.
        """
        with recording(self.attention_layers().values()) as rec:
            yield rec

    # ------------------------------------------------------------------ helpers
    def label(self) -> str:
        """The architecture name (or the class name): how messages name this model."""
        return self.arch_name or type(self).__name__

    def config(self) -> dict:
        """Architecture name and constructor kwargs, enough to rebuild this model."""
        return {"arch": self.arch_name, "kwargs": dict(self.arch_kwargs)}

    def extra_repr(self) -> str:
        return f"exits={list(self.exit_names)}, in_chans={self.in_chans}, input_size={self.input_size}"


class ModuleView(nn.Module):
    """Some of a model's modules and parameters gathered in one module (shared, not copied).

    Built on demand by ``exit_branch`` / ``backbone_stage`` and never registered in the model, so
    the model's ``state_dict`` is unchanged; ``.parameters()``, ``.train()``, ``.eval()`` reach
    the real modules.
    """

    def __init__(self, modules, params: dict[str, nn.Parameter] | None = None):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        for name, p in (params or {}).items():
            self.register_parameter(name, p)


def select_state(state, keep: torch.Tensor):
    """Keep the rows ``keep`` (bool mask or index tensor) of every tensor in a state."""
    if isinstance(state, torch.Tensor):
        return state[keep]
    if isinstance(state, dict):
        return {k: select_state(v, keep) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(select_state(v, keep) for v in state)
    return state  # None, ints, strings: not per-sample


def eval_view(model: nn.Module) -> nn.Module:
    """``model`` itself when it and all its submodules are in eval mode; otherwise an eval-mode copy
    of its module structure that shares every parameter and buffer tensor with it (no weight is copied).

    Why not ``model.eval()`` and restore the mode afterwards: the model may be shared with other
    threads (the app's cached resources, a training loop), and switching its mode would change what
    their forward passes compute meanwhile (BatchNorm batch statistics, dropout), and restoring it
    could undo a mode they set. ``torch.func.functional_call`` cannot help either: BatchNorm and
    dropout read ``module.training``, not a parameter. The copy's BatchNorm layers are in eval mode,
    so they read the shared running statistics and never write them. Cost: a Python-level copy of
    the module tree, about 10-200 ms for the zoo models (e.g. ~150 ms for dynperceiver_fmnist's 560
    modules on a loaded 2-core machine, against ~1.5 s for its Integrated Gradients), paid only for a
    model left in train mode.
    """
    if not any(m.training for m in model.modules()):
        return model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared).eval()
