"""Exit rules: what a fitted solver decided, saved as JSON for deployment.

A rule is one threshold per exit plus the exit score they apply to: a criterion name
(``max_prob``, ``entropy``, ...) or the default solver's learned exit score (its per-exit
standardisation and logistic weights, plain numbers). :meth:`ExitRule.apply` runs real early exit
(:func:`dynexit.inference.early_exit`) with it, so a deployment needs the checkpoint and this file.

>>> rule = ExitRule.from_solver(solvers.make("learned", 25.0).fit(val), model="dynperceiver_fmnist")
>>> rule.save("exit_rule.json")
>>> logits, exits = ExitRule.load("exit_rule.json").apply(model, images)

Which model a rule belongs to. Thresholds mean nothing on another network, so :meth:`ExitRule.apply`
checks what the rule's ``meta`` records against the model (:func:`model_identity`) and refuses a
mismatch:

- ``meta["weights_sha256"]``: the SHA-256 of the weights file; checked when the model's is known
  (loaded by :func:`dynexit.zoo.resolve_model` / ``load_model`` or ``load_checkpoint``);
- ``meta["exit_names"]``: must equal ``model.exit_names``;
- ``meta["model"]``: when it is a zoo name, the model must be that zoo model's architecture (or
  loaded as that zoo model); when it is a registered architecture name, the model must be one.
  Any other text (a free label, a file name) is a description and is not checked.

``ExitRule.from_solver(solver, model=model_object)`` records all three from the model itself.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynexit import criteria
from dynexit.solvers.learned import ExitScorer

FORMAT, FORMAT_VERSION = "dynexit.ExitRule", 1


def _encode(t: float):
    return float(t) if math.isfinite(t) else ("inf" if t > 0 else "-inf")  # JSON has no infinity


def _decode(t) -> float:
    if isinstance(t, str) and t in ("inf", "-inf"):
        return float(t)
    try:
        if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
            return float(t)
    except OverflowError:  # an int beyond the float range
        pass
    raise ValueError(f"a threshold must be a finite number, 'inf' or '-inf', got {reprlib.repr(t)}")


def model_identity(model) -> dict:
    """What identifies ``model`` for an exit rule: ``{"model": zoo name or architecture name,
    "arch": architecture name, "weights_sha256": hex str or None (unknown), "exit_names": [str, ...]}``."""
    source = getattr(model, "weights_source", None)
    zoo_name = source.get("zoo") if isinstance(source, dict) else None
    sha = source.get("sha256") if isinstance(source, dict) else None
    if sha is None:
        sha = (getattr(model, "checkpoint_meta", None) or {}).get("weights_sha256")
    arch = getattr(model, "arch_name", None) or type(model).__name__
    return {"model": zoo_name or arch, "arch": arch, "weights_sha256": sha,
            "exit_names": [str(n) for n in getattr(model, "exit_names", [])]}


def _identity_mismatch(meta: dict, model) -> str | None:
    """Why the rule's ``meta`` names another model than ``model``, or None (see the module docstring)."""
    from dynexit import zoo
    from dynexit.models import is_model

    ident = model_identity(model)
    sha = meta.get("weights_sha256")
    if isinstance(sha, str) and ident["weights_sha256"] and sha != ident["weights_sha256"]:
        return (f"the rule was fitted for weights with SHA-256 {sha[:12]}..., the model's weights are "
                f"{ident['weights_sha256'][:12]}...")
    names = meta.get("exit_names")
    if isinstance(names, list) and [str(n) for n in names] != ident["exit_names"]:
        return f"the rule's exits are {names}, the model's {ident['exit_names']}"
    name = meta.get("model")
    if isinstance(name, str):
        source = getattr(model, "weights_source", None)
        if name in zoo.ENTRIES:
            loaded_as = source.get("zoo") if isinstance(source, dict) else None
            if loaded_as not in (None, name) or ident["arch"] != zoo.ENTRIES[name].arch:
                return f"the rule was made for zoo model {name!r}, the model is {ident['model']!r}"
        elif is_model(name) and ident["arch"] != name:
            return f"the rule was made for architecture {name!r}, the model is {ident['arch']!r}"
    return None


@dataclass
class ExitRule:
    """Thresholds (K,) and the exit score they compare against; ``meta`` says where they came from."""

    thresholds: np.ndarray
    criterion: str | ExitScorer
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        """Validate: thresholds (K,) without NaN (+inf: nobody leaves there; -inf: everyone does),
        a known criterion name or a learned score with K exits, a JSON-serialisable dict ``meta``."""
        try:
            thresholds = np.array(self.thresholds, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"thresholds must be numbers, got {reprlib.repr(self.thresholds)}") from None
        if thresholds.ndim != 1 or thresholds.size == 0:
            raise ValueError(f"an exit rule needs one threshold per exit (shape (K,)), got shape {thresholds.shape}")
        if np.isnan(thresholds).any():
            raise ValueError(f"thresholds must not be NaN, got {thresholds.tolist()}")
        thresholds.setflags(write=False)
        self.thresholds = thresholds
        if isinstance(self.criterion, str):
            criteria.get(self.criterion)  # an unknown name fails here, not at deployment
        elif isinstance(self.criterion, ExitScorer):
            if len(self.criterion.models) != thresholds.size:
                raise ValueError(f"the learned exit score has {len(self.criterion.models)} exits but there are "
                                 f"{thresholds.size} thresholds")
        else:
            raise ValueError("the criterion must be a criterion name or a learned exit score, got "
                             f"{type(self.criterion).__name__}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError, RecursionError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from None

    @classmethod
    def from_solver(cls, solver, **meta) -> "ExitRule":
        """The rule of a fitted solver; ``meta`` adds e.g. the model name and the budget.

        ``model=`` may be the model object itself: its identity (:func:`model_identity`: name,
        weights SHA-256, exit names) is recorded, and :meth:`apply` checks it.
        """
        if meta.get("model") is not None and not isinstance(meta["model"], str):
            ident = model_identity(meta.pop("model"))
            meta = {"model": ident["model"], "exit_names": ident["exit_names"],
                    **({"weights_sha256": ident["weights_sha256"]} if ident["weights_sha256"] else {}), **meta}
        if not hasattr(solver, "thresholds_"):
            raise ValueError(f"{type(solver).__name__} is not fitted: call .fit(val_table) first")
        crit = solver.criterion
        if not isinstance(crit, (str, ExitScorer)):
            raise ValueError("only named criteria and the learned exit score can be saved; "
                             f"got {type(crit).__name__}")
        if isinstance(crit, str):
            criteria.get(crit)  # unknown names fail here, not at deployment
        budget = getattr(solver, "budget", None)
        info = {"solver": type(solver).__name__, "budget": None if budget is None else float(budget),
                "expected_cost_on_fit_table": float(solver.expected_cost_),
                "expected_accuracy_on_fit_table": float(solver.expected_accuracy_), **meta}
        return cls(np.asarray(solver.thresholds_, dtype=np.float64), crit, info)

    def to_dict(self) -> dict:
        crit = self.criterion if isinstance(self.criterion, str) else self.criterion.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "thresholds": [_encode(t) for t in self.thresholds], "criterion": crit, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "ExitRule":
        """The rule written by :meth:`to_dict`; ValueError saying which field is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a dynexit exit rule (no format tag {FORMAT!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(f"exit rule format version {reprlib.repr(version)}, this dynexit reads {FORMAT_VERSION}")
        raw = data.get("thresholds")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"an exit rule needs a list of thresholds, one per exit, got {reprlib.repr(raw)}")
        thresholds = np.array([_decode(t) for t in raw], dtype=np.float64)
        crit = data.get("criterion")
        if isinstance(crit, dict):
            crit = ExitScorer.from_dict(crit)
        elif not isinstance(crit, str):
            raise ValueError("the criterion must be a criterion name or a learned exit score object, got "
                             f"{reprlib.repr(crit)}")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"meta must be an object, got {reprlib.repr(meta)}")
        return cls(thresholds, crit, dict(meta or {}))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExitRule":
        """Read a rule written by :meth:`save`; ValueError ``"{file}: {problem}; {what to do}"``."""
        path = Path(path)
        fix = "fit the rule again and save it with ExitRule.from_solver(...).save(path)"
        if not path.exists():
            raise ValueError(f"{path}: no such exit rule file; check the path")
        if not path.is_file():
            raise ValueError(f"{path}: is {'a folder' if path.is_dir() else 'not a regular file'}, not an exit "
                             f"rule file; {fix}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON exit rule ({err}); {fix}") from err
        except RecursionError:
            raise ValueError(f"{path}: not a JSON exit rule (nested too deeply to read); {fix}") from None
        except OSError as err:
            raise ValueError(f"{path}: cannot read the exit rule ({err.strerror or err}); {fix}") from err
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; {fix}") from err

    def apply(self, model, x, return_costs: bool = False, sample_ids=None):
        """Real early exit of ``x`` (B, C, H, W) through ``model`` with this rule (see :func:`dynexit.early_exit`).

        ValueError when the rule was made for another model: another number of exits, or ``meta``
        naming other weights, exits or another model (see the module docstring).
        """
        from dynexit.inference import early_exit

        if len(self.thresholds) != model.num_exits:
            raise ValueError(f"the rule has {len(self.thresholds)} thresholds but the model has {model.num_exits} exits: "
                             "it was fitted for another model")
        problem = _identity_mismatch(self.meta, model)
        if problem:
            raise ValueError(f"this exit rule belongs to another model: {problem}; thresholds only hold for the model "
                             "they were fitted on: fit a rule for this model (or, if it truly is the same network, "
                             "correct rule.meta)")
        return early_exit(model, x, self.thresholds, self.criterion, return_costs=return_costs,
                          sample_ids=sample_ids)
