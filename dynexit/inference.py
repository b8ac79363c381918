"""Real early-exit inference: the samples that leave stop being computed.

:func:`early_exit` runs a :class:`~dynexit.models.MultiExitModel` stage by stage. After stage k it
scores exit k with the criterion (on the probabilities of exits 1..k, as the ExitTable path does),
stores the logits of the samples whose score reaches ``thresholds[k]``, and continues with the
rows of the others only (``select_state``). The last exit takes everyone left.

The result equals applying the same thresholds to ``forward(x)`` (the table path); the tests check
it for every family. Per-sample criteria (``random``) are keyed by each sample's position in ``x``
(``rows=``, see :mod:`dynexit.criteria`), so they agree with the table path too.

The loop itself is :func:`staged_exit`, a generator of one :class:`ExitStage` per stage run: what
:func:`early_exit` keeps, and what :func:`dynexit.explain.traced_early_exit` shows step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynexit import criteria
from dynexit.arrays import softmax
from dynexit.models._base import select_state


def check_thresholds(thresholds, num_exits: int) -> np.ndarray:
    """Thresholds (K,) float64 from ``thresholds`` (K,) or (K-1,) (the last exit's -inf appended).

    ValueError for another length or a NaN.
    """
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


def _check_ids(sample_ids, b: int) -> np.ndarray:
    ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (b,) or not np.issubdtype(ids.dtype, np.integer) or (b and ids.min() < 0):
        raise ValueError(f"sample_ids must be {b} non-negative integers (one per image), got shape {ids.shape}, "
                         f"dtype {ids.dtype}")
    return ids


@dataclass
class ExitStage:
    """One stage of :func:`staged_exit`: exit ``k`` computed for the samples still running."""

    k: int                      # the exit (0-based)
    rows: torch.Tensor          # (n,) int64 positions in ``x`` of the samples computed at this stage
    logits: torch.Tensor        # (n, C) exit k's logits of those samples
    probs: np.ndarray | None    # (n, C) float32 their probabilities (None where the exit was not scored)
    scores: np.ndarray | None   # (n,) their exit score at k: the criterion on exits 1..k (None: not scored)
    leave: np.ndarray           # (n,) bool: they leave at exit k (the first exit whose score >= T_k)


@torch.no_grad()
def staged_exit(model, x: torch.Tensor, thresholds, criterion="max_prob", sample_ids=None,
                run_all: bool = False, score_last: bool = False):
    """Yield one :class:`ExitStage` per stage of real early exit of ``x`` (B, C, H, W) through ``model``.

    After stage k the criterion scores exit k on the probabilities of exits 1..k of the samples
    still running; those whose score reaches ``thresholds[k]`` leave (the last exit takes everyone
    left) and the next stage runs on the others only (``select_state``). ``run_all`` keeps computing
    every sample to the last exit (a sample still leaves once, at its first passing exit);
    ``score_last`` also scores the last exit (which the rule never needs). Arguments as
    :func:`early_exit`; ValueError for bad thresholds or sample ids.
    """
    k_total = model.num_exits
    t = check_thresholds(thresholds, k_total)
    score_fn = criteria.get(criterion)
    ids = _check_ids(sample_ids, x.shape[0])
    state = model.init_state(x)
    remaining = torch.arange(x.shape[0])
    left = np.zeros(x.shape[0], dtype=bool)  # with run_all: the samples that already left
    history: list[np.ndarray] = []  # probabilities of the remaining samples at exits 1..k
    for k in range(k_total):
        state, logits = model.forward_stage(k, state)
        last = k == k_total - 1
        probs = scores = None
        if not last or score_last:
            history.append(exit_probabilities(logits))
            probs = history[-1]
            # the sample ids of the images still running: per-sample criteria (`random`) score the
            # sample, not its position in the shrinking batch
            scores = criteria.apply(score_fn, np.stack(history, axis=1), rows=ids[remaining.numpy()])[:, -1]
        leave = np.ones(len(remaining), dtype=bool) if last else scores >= t[k]
        if run_all:
            leave &= ~left[remaining.numpy()]
            left[remaining.numpy()[leave]] = True
        yield ExitStage(k, remaining, logits, probs, scores, leave)
        if run_all:
            continue
        stay = ~leave
        if not stay.any():
            return
        stay_t = torch.from_numpy(stay)
        remaining = remaining[stay_t]
        state = select_state(state, stay_t.to(logits.device))
        history = [h[stay] for h in history]


@torch.no_grad()
def early_exit(model, x: torch.Tensor, thresholds, criterion="max_prob", return_costs: bool = False,
               sample_ids=None):
    """Dynamic inference with real early exit (the samples that leave stop being computed).

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
    samples that ran each stage (K,). ValueError for bad thresholds or sample ids.
    """
    b = x.shape[0]
    out = None
    exits = torch.full((b,), -1, dtype=torch.long)
    ran = np.zeros(model.num_exits, dtype=np.int64)
    for stage in staged_exit(model, x, thresholds, criterion, sample_ids):
        ran[stage.k] = len(stage.rows)
        if out is None:
            out = torch.empty((b, stage.logits.shape[1]), dtype=stage.logits.dtype, device=stage.logits.device)
        if stage.leave.any():
            leave_t = torch.from_numpy(stage.leave)
            rows = stage.rows[leave_t]
            out[rows.to(out.device)] = stage.logits[leave_t.to(stage.logits.device)]
            exits[rows] = stage.k
    if return_costs:
        return out, exits, ran
    return out, exits


def exits_from_logits(logits_per_exit, thresholds, criterion="max_prob") -> tuple[np.ndarray, np.ndarray]:
    """The table path: exits (N,) and chosen logits (N, C) from every exit's logits (list of (N, C)).

    Per-sample criteria see row i as sample i, as :func:`early_exit` sees position i of its batch."""
    stacked = np.stack([lg.detach().float().cpu().numpy() if isinstance(lg, torch.Tensor) else np.asarray(lg)
                        for lg in logits_per_exit], axis=1)
    k_total = stacked.shape[1]
    t = check_thresholds(thresholds, k_total)
    probs = softmax(stacked.astype(np.float64)).astype(np.float32)
    scores = np.asarray(criteria.get(criterion)(probs), dtype=np.float64)
    ready = scores >= t[None, :]
    ready[:, -1] = True
    exits = ready.argmax(axis=1)
    return exits, stacked[np.arange(len(exits)), exits]
