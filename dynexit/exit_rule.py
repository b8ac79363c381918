"""Exit rules: what a fitted solver decided, saved as JSON for deployment.

A rule is one threshold per exit plus the exit score they apply to: a criterion name
(``max_prob``, ``entropy``, ...) or the default solver's learned exit score (its per-exit
standardisation and logistic weights, plain numbers). :meth:`ExitRule.apply` runs real early exit
(:func:`dynexit.inference.early_exit`) with it, so a deployment needs the checkpoint and this file.

>>> rule = ExitRule.from_solver(solvers.make("learned", 25.0).fit(val), model="dynperceiver_fmnist")
>>> rule.save("exit_rule.json")
>>> logits, exits = ExitRule.load("exit_rule.json").apply(model, images)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynexit import criteria
from dynexit.solvers.learned import ExitScorer

FORMAT, FORMAT_VERSION = "dynexit.ExitRule", 1


def _encode(t: float):
    return float(t) if math.isfinite(t) else ("inf" if t > 0 else "-inf")  # JSON has no infinity


def _decode(t) -> float:
    if t in ("inf", "-inf"):
        return float(t)
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    raise ValueError(f"a threshold must be a finite number, 'inf' or '-inf', got {t!r}")


@dataclass
class ExitRule:
    """Thresholds (K,) and the exit score they compare against; ``meta`` says where they came from."""

    thresholds: np.ndarray
    criterion: str | ExitScorer
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_solver(cls, solver, **meta) -> "ExitRule":
        """The rule of a fitted solver; ``meta`` adds e.g. the model name and the budget."""
        if not hasattr(solver, "thresholds_"):
            raise ValueError(f"{type(solver).__name__} is not fitted: call .fit(val_table) first")
        crit = solver.criterion
        if not isinstance(crit, (str, ExitScorer)):
            raise ValueError("only named criteria and the learned exit score can be saved; "
                             f"got {type(crit).__name__}")
        if isinstance(crit, str):
            criteria.get(crit)  # unknown names fail here, not at deployment
        info = {"solver": type(solver).__name__, "budget": getattr(solver, "budget", None),
                "expected_cost_on_fit_table": float(solver.expected_cost_),
                "expected_accuracy_on_fit_table": float(solver.expected_accuracy_), **meta}
        return cls(np.asarray(solver.thresholds_, dtype=np.float64), crit, info)

    def to_dict(self) -> dict:
        crit = self.criterion if isinstance(self.criterion, str) else self.criterion.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "thresholds": [_encode(t) for t in self.thresholds], "criterion": crit, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "ExitRule":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a dynexit exit rule (no format tag {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"exit rule format version {data.get('format_version')}, this dynexit reads {FORMAT_VERSION}")
        thresholds = np.array([_decode(t) for t in data.get("thresholds") or []], dtype=np.float64)
        if thresholds.size == 0:
            raise ValueError("an exit rule needs one threshold per exit, got none")
        crit = data.get("criterion")
        if isinstance(crit, str):
            criteria.get(crit)  # an unknown name fails here, not at deployment
        else:
            crit = ExitScorer.from_dict(crit)
        if isinstance(crit, ExitScorer) and len(crit.models) != thresholds.size:
            raise ValueError(f"the learned exit score has {len(crit.models)} exits but there are {thresholds.size} thresholds")
        return cls(thresholds, crit, dict(data.get("meta") or {}))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExitRule":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such exit rule file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON exit rule ({err})") from err
        try:
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    def apply(self, model, x, return_costs: bool = False):
        """Real early exit of ``x`` through ``model`` with this rule (see :func:`dynexit.early_exit`)."""
        from dynexit.inference import early_exit

        if len(self.thresholds) != model.num_exits:
            raise ValueError(f"the rule has {len(self.thresholds)} thresholds but the model has {model.num_exits} exits: "
                             "it was fitted for another model")
        return early_exit(model, x, self.thresholds, self.criterion, return_costs=return_costs)
