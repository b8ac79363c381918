"""The optimiser, its weight-decay groups and the learning-rate schedule every training loop uses,
and the optimiser step loop they share (:func:`train_steps`).

- AdamW (Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019);
- weight decay follows timm's rule (``timm.optim.param_groups_weight_decay``): none for parameters
  with ``ndim <= 1`` (biases, norm weights) and for the names the model lists in its
  ``no_weight_decay()`` (learned tokens, position offsets), as timm models declare them;
- the learning rate warms up linearly, then follows a cosine decay to a floor, per optimiser step
  (Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
  without restarts; Goyal et al., "Accurate, Large Minibatch SGD", 2017, for the warm-up).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn


def lr_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``: linear warm-up to ``base``
    over ``warmup`` steps, then cosine decay to ``minimum`` at ``total`` (held there after it)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * min(1.0, progress)))


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """:func:`lr_at` as a torch scheduler: call ``step()`` after every optimiser step.

    ``total_steps`` is the schedule's length (optimiser steps), ``warmup_steps`` its warm-up,
    ``min_lr`` the floor; each group's starting ``lr`` is its ``base``. The rate is computed in closed
    form, so :meth:`jump_to` (resume) lands on exactly the rate an uninterrupted run had.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0):
        self.total_steps, self.warmup_steps, self.min_lr = int(total_steps), int(warmup_steps), float(min_lr)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        """The rate of each param group at step ``last_epoch`` (the next optimiser step)."""
        return [lr_at(self.last_epoch, self.total_steps, self.warmup_steps, base, self.min_lr)
                for base in self.base_lrs]

    def jump_to(self, step: int) -> None:
        """Set every group's rate to that of optimiser step ``step`` (resuming a run)."""
        self.last_epoch = int(step)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW param groups ``[decayed, not decayed]`` of all of ``model``'s parameters (timm's rule).

    Not decayed: ``ndim <= 1`` (biases, norm weights) and the names in ``model.no_weight_decay()``
    when the model defines it. ``weight_decay`` is the decoupled decay coefficient of the first group.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(param_groups: list[dict], lr: float, total_steps: int, warmup_steps: int = 0,
                    min_lr: float = 0.0) -> tuple[torch.optim.AdamW, WarmupCosineLR]:
    """``(AdamW over param_groups at base rate lr, its warm-up + cosine schedule)``.

    ``param_groups``: torch param groups, each with its ``weight_decay`` (see
    :func:`weight_decay_groups`); ``total_steps`` / ``warmup_steps``: optimiser steps; ``min_lr``:
    the rate at the end of the schedule.
    """
    optimizer = torch.optim.AdamW(param_groups, lr=lr)
    return optimizer, WarmupCosineLR(optimizer, max(1, int(total_steps)), warmup_steps, min_lr)


def train_steps(batches: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler, *, step: int,
                stop_at: int, device, clip_grad: float | None = None, clip_params=None,
                after_step: Callable[[int], None] | None = None, after_backward: Callable[[], None] | None = None) -> int:
    """Optimiser steps over ``batches`` until step ``stop_at``; returns the step count reached.

    ``batches`` yields ``(images (B, C, H, W), labels (B,))``, moved to ``device``; ``loss_fn(x, y)``
    returns the scalar loss (and keeps whatever running statistics it wants). Each step: backward,
    ``after_backward()`` (e.g. averaging the gradients over DDP ranks), gradient-norm clipping of ``clip_params`` to ``clip_grad`` when given, ``optimizer.step()``,
    ``scheduler.step()``, then ``after_step(step)`` (an EMA update). FloatingPointError when the loss
    is not finite.
    """
    for x, y in batches:
        if step >= stop_at:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {step}: lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(clip_params, clip_grad)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(step)
        step += 1
    return step
