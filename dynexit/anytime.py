"""Anytime prediction under a deadline: expected accuracy when inference may be interrupted.

The setting of MSDNet's "anytime classification" (Huang et al., ICLR 2018, section 3) and of the
Multi-Exit ViT paper (Bakhtiarnia et al., "Multi-Exit Vision Transformer for Dynamic Inference", BMVC
2021): on edge devices the computation time available for an image is variable and not known in
advance; the network is interrupted at its deadline and must answer with what it has.

For a deadline ``D`` drawn from a distribution, exit ``k`` (cumulative cost ``c_k``) has finished when
``c_k <= D``. Three policies, each computed exactly from an :class:`~dynexit.table.ExitTable` (an
expectation over the deadline distribution through its survival function ``P(D >= c)``, no Monte
Carlo):

- **anytime**: every image runs until the deadline and answers with the last exit finished;
- **budgeted**: early exit with thresholds (a fitted rule's planned exits): an image stops at its
  planned exit when that exit finishes before the deadline, else it answers with the last exit
  finished before the interruption;
- **oracle**: each image answers right whenever its first correct exit has finished (no policy that
  answers from a finished exit does better).

Before the first exit finishes there is no answer. ``no_answer="wrong"`` (default) counts it as
wrong; ``no_answer="prior"`` answers the most frequent class of ``prior_labels`` (e.g. the
validation labels), which is right for that class's share of images (with ``"wrong"`` they are not read).

Costs are the table's MFLOPs per exit, or any other cumulative per-exit cost in the deadline's unit
(``costs=``, e.g. milliseconds measured on the user's hardware).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

DISTRIBUTIONS = ("fixed", "uniform", "normal", "exponential")


@dataclass(frozen=True)
class Deadline:
    """A deadline distribution: ``kind`` in :data:`DISTRIBUTIONS` and its parameters, in cost units.

    - ``fixed``: ``at``; ``uniform``: ``low`` <= ``high``; ``normal``: ``mean``, ``std`` > 0;
    - ``exponential``: ``mean`` > 0 (deadlines from 0, a memoryless interruption).

    Raises ValueError for an unknown kind, a missing or extra parameter, or a value out of range.
    """
    kind: str
    params: tuple[tuple[str, float], ...]

    @classmethod
    def make(cls, kind: str, **params: float) -> "Deadline":
        need = {"fixed": ("at",), "uniform": ("low", "high"), "normal": ("mean", "std"),
                "exponential": ("mean",)}
        if kind not in need:
            raise ValueError(f"unknown deadline distribution {kind!r}: choose one of {', '.join(DISTRIBUTIONS)}")
        if set(params) != set(need[kind]):
            raise ValueError(f"a {kind} deadline takes {', '.join(need[kind])}; got {', '.join(params) or 'nothing'}")
        values = {}
        for name, value in params.items():
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                number = math.nan
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(number):
                raise ValueError(f"deadline {name} must be a finite number, got {value!r}")
            values[name] = number
        if kind == "uniform" and values["low"] > values["high"]:
            raise ValueError(f"uniform deadline: low {values['low']:g} is above high {values['high']:g}")
        if kind == "normal" and values["std"] <= 0:
            raise ValueError(f"normal deadline: std must be positive, got {values['std']:g} (use 'fixed' for none)")
        if kind == "exponential" and values["mean"] <= 0:
            raise ValueError(f"exponential deadline: mean must be positive, got {values['mean']:g}")
        return cls(kind, tuple(sorted(values.items())))

    def survival(self, costs) -> np.ndarray:
        """``P(D >= c)`` for each cost ``c`` (float64, same shape as ``costs``)."""
        c = np.asarray(costs, dtype=np.float64)
        p = dict(self.params)
        if self.kind == "fixed":
            return (c <= p["at"]).astype(np.float64)
        if self.kind == "uniform":
            if p["high"] == p["low"]:
                return (c <= p["low"]).astype(np.float64)
            return np.clip((p["high"] - c) / (p["high"] - p["low"]), 0.0, 1.0)
        if self.kind == "normal":
            return stats.norm.sf(c, loc=p["mean"], scale=p["std"])
        return np.where(c <= 0, 1.0, np.exp(-np.maximum(c, 0) / p["mean"]))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` deadlines drawn from the distribution (for checks and plots; the accuracies are exact)."""
        rng, p = np.random.default_rng(seed), dict(self.params)
        if self.kind == "fixed":
            return np.full(n, p["at"])
        if self.kind == "uniform":
            return rng.uniform(p["low"], p["high"], n)
        if self.kind == "normal":
            return rng.normal(p["mean"], p["std"], n)
        return rng.exponential(p["mean"], n)

    def describe(self, unit: str = "MFLOPs") -> str:
        p = dict(self.params)
        return {"fixed": lambda: f"fixed at {p['at']:g} {unit}",
                "uniform": lambda: f"uniform between {p['low']:g} and {p['high']:g} {unit}",
                "normal": lambda: f"normal, mean {p['mean']:g} {unit}, std {p['std']:g}",
                "exponential": lambda: f"exponential, mean {p['mean']:g} {unit}"}[self.kind]()


@dataclass(frozen=True)
class DeadlineResult:
    """Expected accuracy under a deadline and how often each exit answers.

    ``answer_share``: (K + 1,) float64 summing to 1: ``[no answer, exit 1, ..., exit K]`` (the
    expected share of images answered by each). ``no_answer``: how an unanswered image was counted.
    """
    policy: str
    accuracy: float
    answer_share: np.ndarray
    no_answer: str


def _exit_probabilities(survival: np.ndarray) -> np.ndarray:
    """``P(the last finished exit is k)`` for k = 0..K-1, and ``P(none finished)`` last: (K + 1,)."""
    nxt = np.append(survival[1:], 0.0)
    return np.append(np.clip(survival - nxt, 0.0, 1.0), 1.0 - survival[0])


def _setup(table, deadline: Deadline, costs, no_answer: str, prior_labels):
    if not hasattr(table, "correct") or not hasattr(table, "costs"):
        raise ValueError(f"table must be a dynexit ExitTable, got {type(table).__name__}")
    try:
        costs = table.costs if costs is None else np.asarray(costs, dtype=np.float64)
    except (TypeError, ValueError):
        costs = np.array([np.nan])
    if costs.shape != (table.num_exits,) or not np.all(np.isfinite(costs)) or np.any(costs <= 0) \
            or np.any(np.diff(costs) < 0):
        raise ValueError(f"costs must be {table.num_exits} finite, positive, non-decreasing cumulative per-exit "
                         f"costs, got {np.asarray(costs).tolist()}")
    if not isinstance(deadline, Deadline):
        raise ValueError(f"deadline must be a dynexit.anytime.Deadline (Deadline.make(kind, ...)), got "
                         f"{type(deadline).__name__}")
    if no_answer == "wrong":
        prior_right = np.zeros(table.num_samples, dtype=bool)
    elif no_answer == "prior":
        prior = np.asarray([] if prior_labels is None else prior_labels)
        if prior.ndim != 1 or prior.size == 0 or not np.issubdtype(prior.dtype, np.integer) \
                or prior.min() < 0 or prior.max() >= table.num_classes:
            raise ValueError(f"no_answer='prior' needs prior_labels: integer class labels in 0..{table.num_classes - 1} "
                             "(e.g. the validation table's labels)")
        majority = np.bincount(prior).argmax()
        prior_right = table.labels == majority
    else:
        raise ValueError(f"no_answer must be 'wrong' or 'prior', got {no_answer!r}")
    return costs, deadline.survival(costs), prior_right


def anytime(table, deadline: Deadline, *, costs=None, no_answer: str = "wrong", prior_labels=None) -> DeadlineResult:
    """Every image answers with the last exit finished before the deadline.

    ``table``: an ExitTable (N images, K exits); ``costs``: (K,) cumulative costs in the deadline's
    unit (default the table's MFLOPs). Raises ValueError for bad costs, deadline or ``no_answer``.
    """
    costs, survival, prior_right = _setup(table, deadline, costs, no_answer, prior_labels)
    probs = _exit_probabilities(survival)                       # exits 0..K-1, then none
    accuracy = float(probs[:-1] @ table.exit_accuracy() + probs[-1] * prior_right.mean())
    return DeadlineResult("anytime", accuracy, np.concatenate([[probs[-1]], probs[:-1]]), no_answer)


def budgeted(table, exits, deadline: Deadline, *, costs=None, no_answer: str = "wrong",
             prior_labels=None) -> DeadlineResult:
    """Early exit at the planned ``exits`` (N,) ints in 0..K-1, interrupted by the deadline.

    An image whose planned exit finishes before the deadline answers there; otherwise it answers with
    the last exit finished before the interruption (none before the first exit). ``exits`` come from
    a fitted rule (e.g. ``solver.evaluate(table).exits``). Raises ValueError as :func:`anytime`, and
    for ``exits`` of the wrong shape or range.
    """
    costs, survival, prior_right = _setup(table, deadline, costs, no_answer, prior_labels)
    exits = np.asarray(exits)
    if exits.shape != (table.num_samples,) or not np.issubdtype(exits.dtype, np.integer) \
            or exits.min(initial=0) < 0 or exits.max(initial=0) >= table.num_exits:
        raise ValueError(f"exits must be {table.num_samples} integers in 0..{table.num_exits - 1}")
    K, probs = table.num_exits, _exit_probabilities(survival)
    # image i answers at exit k < e_i with P(last finished = k), at e_i with P(e_i finished)
    weight = np.where(np.arange(K)[None, :] < exits[:, None], probs[None, :K], 0.0)   # (N, K)
    weight[np.arange(len(exits)), exits] = survival[exits]
    accuracy = float((weight * table.correct).sum(axis=1).mean() + probs[-1] * prior_right.mean())
    return DeadlineResult("budgeted", accuracy, np.concatenate([[probs[-1]], weight.mean(axis=0)]), no_answer)


def oracle(table, deadline: Deadline, *, costs=None, no_answer: str = "wrong", prior_labels=None) -> DeadlineResult:
    """Each image is right when its first correct exit has finished (it answers there).

    Images no exit classifies correctly answer at their last finished exit (and are wrong).
    Raises ValueError as :func:`anytime`.
    """
    costs, survival, prior_right = _setup(table, deadline, costs, no_answer, prior_labels)
    correct = table.correct
    any_right = correct.any(axis=1)
    first = np.where(any_right, correct.argmax(axis=1), table.num_exits - 1)
    probs = _exit_probabilities(survival)
    right = np.where(any_right, survival[first], 0.0)
    # the oracle answers at its first correct exit once finished, else at the last finished one
    weight = np.where(np.arange(table.num_exits)[None, :] < first[:, None], probs[None, :-1], 0.0)
    weight[np.arange(len(first)), first] = survival[first]
    accuracy = float(right.mean() + probs[-1] * prior_right.mean())
    return DeadlineResult("oracle", accuracy, np.concatenate([[probs[-1]], weight.mean(axis=0)]), no_answer)


def compare(table, exits, deadline: Deadline, **kwargs) -> dict[str, DeadlineResult]:
    """The three policies under one deadline: ``{"anytime": ..., "budgeted": ..., "oracle": ...}``."""
    return {"anytime": anytime(table, deadline, **kwargs), "budgeted": budgeted(table, exits, deadline, **kwargs),
            "oracle": oracle(table, deadline, **kwargs)}
