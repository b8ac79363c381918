"""The JSON sidecar of a checkpoint (``NAME.json`` next to ``NAME.safetensors``): its format and checks.

Read without torch, so the catalogue (:func:`dynexit.zoo.info`) and a request's budget check can
read a sidecar before any model library loads. Every problem is a ValueError
``"{file}: {problem}; {what to do}"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
from pathlib import Path

FORMAT = "dynexit.checkpoint"
FORMAT_VERSION = 1
# what to do about a damaged checkpoint file: the end of every refusal
FIX = ("restore the file from where it came from, or rebuild the model and save it again with "
       "dynexit.io.checkpoint.save_checkpoint")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar of a weights file: ``NAME.safetensors`` -> ``NAME.json``."""
    return Path(path).with_suffix(".json")


def require_file(path: Path, what: str) -> None:
    """ValueError unless ``path`` is an existing regular file."""
    if not path.exists():
        raise ValueError(f"{path}: no such {what}; check the path")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ValueError(f"{path}: is {kind}, not a {what}; {FIX}")


def _is_int(x) -> bool:
    """An int that is not a bool (JSON true must not count as 1)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite_number(x) -> bool:
    """A finite int or float that is not a bool."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond the float range
        return False


def short(value) -> str:
    """A bounded repr for error messages (a damaged field can be huge)."""
    return reprlib.repr(value)


def sidecar_problem(meta: dict) -> str | None:
    """The first problem of a parsed sidecar's fields (types and values), or None."""
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        return f"'arch' must be a registry name (a non-empty string), got {short(meta.get('arch'))}"
    if not isinstance(meta.get("kwargs"), dict):
        return f"'kwargs' must be a JSON object, got {type(meta.get('kwargs')).__name__}"
    for key in ("num_exits", "num_classes", "in_chans"):
        if key in meta and not (_is_int(meta[key]) and meta[key] >= 1):
            return f"{key!r} must be a positive integer, got {short(meta[key])}"
    k = meta.get("num_exits")
    if "exit_names" in meta:
        names = meta["exit_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return f"'exit_names' must be a list of strings, got {short(names)}"
        if k is not None and len(names) != k:
            return f"'exit_names' has {len(names)} entries but num_exits is {k}"
    if "input_size" in meta:
        size = meta["input_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size)):
            return f"'input_size' must be [height, width] in positive pixels, got {short(size)}"
    if meta.get("costs_mflops") is not None:
        costs = meta["costs_mflops"]
        if not isinstance(costs, list) or not costs or not all(_is_finite_number(c) and c > 0 for c in costs):
            return f"'costs_mflops' must be a list of finite positive MFLOPs, got {short(costs)}"
        if k is not None and len(costs) != k:
            return f"'costs_mflops' has {len(costs)} entries but num_exits is {k}"
        if any(b < a for a, b in zip(costs, costs[1:])):
            return f"'costs_mflops' must be cumulative (non-decreasing along the exits), got {short(costs)}"
    if meta.get("val_accuracy") is not None:
        acc = meta["val_accuracy"]
        if not isinstance(acc, list) or not all(_is_finite_number(a) and 0 <= a <= 1 for a in acc):
            return f"'val_accuracy' must be a list of accuracies in [0, 1], got {short(acc)}"
        if k is not None and len(acc) != k:
            return f"'val_accuracy' has {len(acc)} entries but num_exits is {k}"
    if "training_data" in meta:
        problem = _training_data_problem(meta["training_data"], meta.get("num_classes"))
        if problem:
            return problem
    if "recipe" in meta and not isinstance(meta["recipe"], dict):
        return f"'recipe' must be a JSON object, got {type(meta['recipe']).__name__}"
    for key in ("costs_counted_with", "dynexit_version", "created", "weights_storage"):
        if key in meta and not isinstance(meta[key], str):
            return f"{key!r} must be a string, got {short(meta[key])}"
    if meta.get("git_commit") is not None and not isinstance(meta["git_commit"], str):
        return f"'git_commit' must be a string or null, got {short(meta['git_commit'])}"
    if "weights_sha256" in meta and not (isinstance(meta["weights_sha256"], str)
                                         and re.fullmatch(r"[0-9a-f]{64}", meta["weights_sha256"])):
        return f"'weights_sha256' must be 64 lowercase hex digits, got {short(meta['weights_sha256'])}"
    return None


def _training_data_problem(record, num_classes) -> str | None:
    """The problem of a ``training_data`` record (see :func:`training_data_record`), or None."""
    if not isinstance(record, dict):
        return f"'training_data' must be a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("dataset"), str) or not record["dataset"]:
        return f"'training_data.dataset' must be a dataset name (a non-empty string), got {short(record.get('dataset'))}"
    names = record.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"'training_data.class_names' must be a non-empty list of strings, got {short(names)}"
    if num_classes is not None and len(names) != num_classes:
        return f"'training_data.class_names' has {len(names)} entries but num_classes is {num_classes}"
    if "split_rule" in record and not isinstance(record["split_rule"], str):
        return f"'training_data.split_rule' must be a string, got {short(record['split_rule'])}"
    return None


def training_data_record(dataset: str, class_names, split_rule: str = "") -> dict:
    """The sidecar's ``training_data``: what a model was trained on (written by ``dynexit train``).

    ``dataset``: the registry name (:func:`dynexit.data.get_dataset`, e.g. ``digits``,
    ``imagefolder:PATH``); ``class_names``: one per label, in label order (an ImageFolder tree numbers
    its sorted folder names); ``split_rule``: how train / val were formed. Tables and resumed runs
    compare their dataset's class names with these (:func:`class_names_mismatch`).
    """
    return {"dataset": str(dataset), "class_names": [str(c) for c in class_names], "split_rule": str(split_rule)}


def class_names_mismatch(trained: dict, dataset: str, class_names) -> str | None:
    """Why data ``dataset`` with ``class_names`` (label order) cannot be scored by a model whose
    ``training_data`` record is ``trained``, or None when its labels mean the same classes.

    Only the class names and their order count (a copy of a tree elsewhere, or the same classes
    under another dataset name, is fine). The text names both lists and the first difference.
    """
    ours, theirs = list(trained["class_names"]), [str(c) for c in class_names]
    if ours == theirs:
        return None
    if len(ours) != len(theirs):
        diff = f"{len(ours)} classes vs {len(theirs)}"
    else:
        k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        diff = f"label {k} is {ours[k]!r} in training, {theirs[k]!r} here"
    return (f"the model was trained on {trained['dataset']} with classes {short(ours)} but {dataset} has classes "
            f"{short(theirs)} ({diff})")


def read_sidecar(path: str | os.PathLike) -> dict:
    """The validated JSON sidecar of a checkpoint (``path`` may be the .safetensors or the .json).

    Checks the format tag and version and the type and value of every field the loaders use
    (``arch``, ``kwargs``, ``num_exits``, ``exit_names``, ``num_classes``, ``in_chans``,
    ``input_size``, ``costs_mflops``, ``val_accuracy``, ``recipe``, ``training_data``, ``weights_sha256``, ...).
    ValueError ``"{file}: {problem}; {what to do}"`` for anything else.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not side.exists():
        raise ValueError(f"{path}: no JSON sidecar {side.name} next to the weights; a dynexit checkpoint is "
                         "NAME.safetensors + NAME.json written by dynexit.io.checkpoint.save_checkpoint")
    require_file(side, "checkpoint sidecar (JSON)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{side}: corrupt checkpoint sidecar (not valid JSON: {err}); {FIX}") from err
    except RecursionError:
        raise ValueError(f"{side}: corrupt checkpoint sidecar (JSON nested too deeply to read); {FIX}") from None
    except OSError as err:
        raise ValueError(f"{side}: cannot read the checkpoint sidecar ({err.strerror or err}); {FIX}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{side}: not a dynexit checkpoint sidecar (no format tag {FORMAT!r}); a dynexit "
                         "checkpoint is written by dynexit.io.checkpoint.save_checkpoint")
    version = meta.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        hint = "upgrade dynexit" if _is_int(version) and version > FORMAT_VERSION else FIX
        raise ValueError(f"{side}: checkpoint format version {short(version)}, this dynexit reads {FORMAT_VERSION}; {hint}")
    missing = [k for k in ("arch", "kwargs") if k not in meta]
    if missing:
        raise ValueError(f"{side}: corrupt checkpoint sidecar (missing {', '.join(missing)}); {FIX}")
    problem = sidecar_problem(meta)
    if problem:
        raise ValueError(f"{side}: corrupt checkpoint sidecar ({problem}); {FIX}")
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    """Full SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
