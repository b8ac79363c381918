"""Real early-exit inference: the samples that leave stop being computed.

:func:`early_exit` runs a :class:`~dynexit.models.MultiExitModel` stage by stage. After stage k it
scores exit k with the criterion (on the probabilities of exits 1..k, as the ExitTable path does),
stores the logits of the samples whose score reaches ``thresholds[k]``, and continues with the
rows of the others only (``select_state``). The last exit takes everyone left.

The result equals applying the same thresholds to ``forward(x)`` (the table path); the tests check
it for every family. Per-sample criteria (``random``) are keyed by each sample's position in ``x``
(``rows=``, see :mod:`dynexit.criteria`), so they agree with the table path too.
"""

from __future__ import annotations

import numpy as np
import torch

from dynexit import criteria
from dynexit.models._base import select_state
from dynexit.table import softmax


def _check_thresholds(thresholds, num_exits: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.shape != (num_exits,) and t.shape != (num_exits - 1,):
        raise ValueError(f"thresholds must have one value per exit ({num_exits}; the last may be omitted), got {t.shape[0]}")
    if t.shape[0] == num_exits - 1:
        t = np.append(t, -np.inf)
    if np.isnan(t).any():
        raise ValueError("thresholds contain NaN")
    return t


def exit_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax probabilities as the ExitTable computes them (float64 softmax, stored as float32)."""
    return softmax(logits.detach().float().cpu().numpy().astype(np.float64)).astype(np.float32)


@torch.no_grad()
def early_exit(model, x: torch.Tensor, thresholds, criterion="max_prob", return_costs: bool = False,
               sample_ids=None):
    """Dynamic inference with real early exit.

    Parameters
    ----------
    model : MultiExitModel (put it in eval mode first for deterministic BatchNorm/dropout)
    x : images (B, C, H, W), float in [0, 1]
    thresholds : (K,) array; a sample leaves at the first exit k with score >= thresholds[k]; the
        last exit always takes the rest (its threshold is ignored and may be omitted)
    criterion : a name of :mod:`dynexit.criteria` or a callable ``probs (N, k, C) -> scores (N, k)``
    sample_ids : (B,) non-negative ints, each image's row in the table it belongs to (default
        ``0..B-1``). Only criteria keyed by sample (``random``) read them: pass the table rows when a
        split is run in batches, so that every batch scores its images as the table path does.

    Returns ``(logits (B, C), exits (B,) int64 0-based)``; with ``return_costs`` also the number of
    samples that ran each stage (K,).
    """
    k_total = model.num_exits
    t = _check_thresholds(thresholds, k_total)
    score_fn = criteria.get(criterion)
    b = x.shape[0]
    ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (b,) or not np.issubdtype(ids.dtype, np.integer) or (b and ids.min() < 0):
        raise ValueError(f"sample_ids must be {b} non-negative integers (one per image), got shape {ids.shape}, "
                         f"dtype {ids.dtype}")
    state = model.init_state(x)
    out = None
    exits = torch.full((b,), -1, dtype=torch.long)
    remaining = torch.arange(b)
    history: list[np.ndarray] = []  # probabilities of the remaining samples at exits 1..k
    ran = np.zeros(k_total, dtype=np.int64)
    for k in range(k_total):
        ran[k] = len(remaining)
        state, logits = model.forward_stage(k, state)
        if out is None:
            out = torch.empty((b, logits.shape[1]), dtype=logits.dtype, device=logits.device)
        if k == k_total - 1:
            leave = np.ones(len(remaining), dtype=bool)
        else:
            history.append(exit_probabilities(logits))
            # the sample ids of the images still running: per-sample criteria (`random`) score the sample,
            # not its position in the shrinking batch
            scores = criteria.apply(score_fn, np.stack(history, axis=1), rows=ids[remaining.numpy()])[:, -1]
            leave = scores >= t[k]
        leave_t = torch.from_numpy(leave)
        if leave.any():
            rows = remaining[leave_t]
            out[rows.to(out.device)] = logits[leave_t.to(logits.device)]
            exits[rows] = k
        if leave.all():
            break
        stay = ~leave
        stay_t = torch.from_numpy(stay)
        remaining = remaining[stay_t]
        state = select_state(state, stay_t.to(logits.device))
        history = [h[stay] for h in history]
    if return_costs:
        return out, exits, ran
    return out, exits


def exits_from_logits(logits_per_exit, thresholds, criterion="max_prob") -> tuple[np.ndarray, np.ndarray]:
    """The table path: exits (N,) and chosen logits (N, C) from every exit's logits (list of (N, C)).

    Per-sample criteria see row i as sample i, as :func:`early_exit` sees position i of its batch."""
    stacked = np.stack([lg.detach().float().cpu().numpy() if isinstance(lg, torch.Tensor) else np.asarray(lg)
                        for lg in logits_per_exit], axis=1)
    k_total = stacked.shape[1]
    t = _check_thresholds(thresholds, k_total)
    probs = softmax(stacked.astype(np.float64)).astype(np.float32)
    scores = np.asarray(criteria.get(criterion)(probs), dtype=np.float64)
    ready = scores >= t[None, :]
    ready[:, -1] = True
    exits = ready.argmax(axis=1)
    return exits, stacked[np.arange(len(exits)), exits]
