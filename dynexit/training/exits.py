"""Three ways to train the exits of a multi-exit model.

From Bakhtiarnia, Zhang and Iosifidis, "Multi-Exit Vision Transformer for Dynamic Inference"
(arXiv:2106.15183, 2021), for any :class:`~dynexit.models.MultiExitModel` that says which modules
belong to each exit (``exit_branch(k)``) and to each backbone stage (``backbone_stage(k)``):

- ``"classifier-wise"``: the backbone is trained already and stays frozen (``requires_grad`` off
  *and* eval mode, so BatchNorm statistics and dropout do not move); every intermediate branch is
  trained on its own cross-entropy. The losses are summed, but as the branches share no parameter
  and the backbone gets no gradient, this is the same as training each branch alone. The last exit
  is the backbone's own classifier and stays frozen with it, so the backbone's weights (its
  ``state_dict`` outside the intermediate branches) come out bit-identical.
- ``"end-to-end"``: every parameter, on the weighted sum of all exits' cross-entropy
  (``model.loss_weights()`` unless ``loss_weights`` is given).
- ``"layer-wise"``: one phase per exit. Phase k trains backbone stage k and exit k's branch on exit
  k's cross-entropy, with everything before it frozen (and in eval mode); ``epochs`` is per phase.

>>> history = train_exits(model, train_loader, strategy="classifier-wise", epochs=3, val_loader=val_loader)
>>> history["val_accuracy"]          # per exit, after the last epoch

Under ``torchrun`` (a process group initialised, e.g. by ``torch.distributed.init_process_group``),
``train_exits`` trains data-parallel: every rank starts from rank 0's weights, each step averages
the trained parameters' gradients over the ranks, and validation sums the ranks' counts. Give each
rank its shard: a ``DistributedSampler`` for ``loader`` and
:func:`dynexit.training.distributed.shard_loader` (no padding: every val image counted once) for
``val_loader``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from dynexit.training.distributed import average_gradients, broadcast_module, world
from dynexit.training.loop import evaluate, pick_device
from dynexit.training.losses import multi_exit_loss
from dynexit.training.optim import build_optimizer, train_steps

STRATEGIES = ("classifier-wise", "end-to-end", "layer-wise")


def _phases(model, strategy: str) -> list[tuple[list[nn.Module], list[int]]]:
    """(modules to train, exits whose loss trains them) for each phase of a strategy."""
    k_total = model.num_exits
    if strategy == "end-to-end":
        return [([model], list(range(k_total)))]
    if strategy == "classifier-wise":
        if k_total < 2:
            raise ValueError(f"{model.label()} has a single exit (the backbone's own): nothing to train "
                             "classifier-wise; add intermediate exits first")
        return [([model.exit_branch(k) for k in range(k_total - 1)], list(range(k_total - 1)))]
    return [([m for m in (model.backbone_stage(k), model.exit_branch(k)) if m is not None], [k])
            for k in range(k_total)]


def _trainable(model: nn.Module, parts: list[nn.Module]) -> list[nn.Parameter]:
    """Freeze the model except ``parts``; frozen modules go to eval mode, ``parts`` to train mode."""
    model.eval()
    model.requires_grad_(False)
    params: dict[int, nn.Parameter] = {}
    for part in parts:
        part.train()
        for p in part.parameters():
            p.requires_grad_(True)
            params[id(p)] = p
    return list(params.values())


def train_exits(model, loader, *, strategy: str = "classifier-wise", epochs: int = 1, lr: float = 1e-3,
                weight_decay: float = 0.0, loss_weights=None, device="cpu", max_steps: int | None = None,
                progress: bool = True, val_loader=None, label_smoothing: float = 0.0) -> dict:
    """Train a multi-exit model's exits with one of :data:`STRATEGIES` (see the module docstring).

    Parameters
    ----------
    model : MultiExitModel with ``exit_branch(k)`` (all strategies) and ``backbone_stage(k)``
        (layer-wise); trained in place and left in its original train/eval mode and
        ``requires_grad`` flags.
    loader : batches ``(images float (B, C, H, W) in [0, 1], labels (B,))``
    epochs : epochs per phase (layer-wise has one phase per exit, the others one phase)
    lr, weight_decay : AdamW (one group, every trained parameter decayed), with a cosine decay of the
        learning rate to 0 over each phase's steps (:mod:`dynexit.training.optim`)
    loss_weights : one weight per exit; default ``model.loss_weights()`` for end-to-end and 1.0
        otherwise (each classifier-wise / layer-wise loss reaches its own parameters only)
    max_steps : stop each phase after this many optimiser steps (smoke tests)
    val_loader : if given, per-exit accuracy on it after every epoch (summed over the ranks under torchrun)

    Returns a history dict: ``strategy``, ``exit_names``, ``records`` (one per epoch: ``phase``,
    ``epoch``, ``steps``, ``trained_exits``, ``loss`` {exit name: mean CE}, ``val_accuracy``),
    ``val_accuracy`` (the last one, or None), ``steps`` and ``seconds``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown exit-training strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    k_total = model.num_exits
    if loss_weights is None:
        loss_weights = model.loss_weights() if strategy == "end-to-end" else [1.0] * k_total
    loss_weights = [float(w) for w in loss_weights]
    if len(loss_weights) != k_total:
        raise ValueError(f"loss_weights needs one value per exit ({k_total}), got {len(loss_weights)}")
    device = pick_device(str(device))
    phases = _phases(model, strategy)
    model.to(device)
    broadcast_module(model)  # under torchrun: every rank from rank 0's weights (no-op alone)
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    history = {"strategy": strategy, "exit_names": list(model.exit_names), "records": [], "val_accuracy": None,
               "steps": 0}
    settings = dict(epochs=int(epochs), lr=lr, weight_decay=weight_decay, loss_weights=loss_weights, device=device,
                    max_steps=max_steps, progress=progress, val_loader=val_loader, label_smoothing=label_smoothing)
    t0 = time.time()
    try:
        for phase, (parts, exits) in enumerate(phases):
            _train_phase(model, loader, strategy, (phase, len(phases)), parts, exits, history, **settings)
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    history["seconds"] = time.time() - t0
    return history


def _train_phase(model, loader, strategy: str, phase: tuple[int, int], parts: list[nn.Module], exits: list[int],
                 history: dict, *, epochs: int, lr: float, weight_decay: float, loss_weights: list, device,
                 max_steps: int | None, progress: bool, val_loader, label_smoothing: float) -> None:
    """Train ``parts`` on the loss of ``exits`` (phase ``phase[0]`` of ``phase[1]``): one AdamW with a
    cosine schedule over the phase; appends one record per epoch to ``history``."""
    from tqdm.auto import tqdm

    names = history["exit_names"]
    params = _trainable(model, parts)
    if not params:
        raise ValueError(f"{strategy}: phase {phase[0] + 1} (exits {[names[k] for k in exits]}) "
                         "has no parameters to train")
    total = epochs * len(loader)
    total = min(total, max_steps) if max_steps else total
    optimizer, scheduler = build_optimizer([{"params": params, "weight_decay": weight_decay}], lr, total)
    label = f"{strategy} " + (f"exit {phase[0] + 1}/{phase[1]} " if phase[1] > 1 else "")
    step = 0
    for epoch in range(epochs):
        if step >= total:
            break
        _trainable(model, parts)  # evaluate() below switches the whole model's mode
        stats = {"sums": torch.zeros(len(exits)), "seen": 0}  # summed CE per trained exit, images seen
        bar = tqdm(loader, desc=f"{label}epoch {epoch + 1}/{epochs}", disable=not progress or world()[0] != 0, leave=False,
                   dynamic_ncols=True)

        def loss_fn(x, y):
            outs = model.forward_upto(x, max(exits))
            loss, ces = multi_exit_loss([outs[k] for k in exits], y, [loss_weights[k] for k in exits],
                                        label_smoothing)
            stats["sums"] += torch.tensor(ces) * len(y)
            stats["seen"] += len(y)
            bar.set_postfix(loss="/".join(f"{v:.3f}" for v in (stats["sums"] / stats["seen"]).tolist()))
            return loss

        step = train_steps(bar, loss_fn, optimizer, scheduler, step=step, stop_at=total, device=device,
                           after_backward=lambda: average_gradients(params))
        bar.close()
        record = {"phase": phase[0], "epoch": epoch + 1, "steps": step, "trained_exits": [names[k] for k in exits],
                  "loss": {names[k]: float(s / max(stats["seen"], 1)) for k, s in zip(exits, stats["sums"])},
                  "val_accuracy": None}
        if val_loader is not None:
            record["val_accuracy"] = evaluate(model, val_loader, device, distributed=world()[1] > 1).tolist()
            history["val_accuracy"] = record["val_accuracy"]
        history["records"].append(record)
    history["steps"] += step
