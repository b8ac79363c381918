"""The zoo catalogue (read-only): the entries, their files in ``data/zoo``, and the loaders.

Every entry ships four files, all rebuilt by ``dynexit zoo reproduce NAME``
(:mod:`dynexit.zoo.reproduce`, the building side; the recipe below, seed included):

- ``NAME.safetensors`` + ``NAME.json``: the weights (float16 storage) and their sidecar;
- ``NAME.val.npz`` / ``NAME.test.npz``: the ExitTables of those weights on the 5,000 held-out
  training images (thresholds are fitted here) and on the 10,000 test images (results);
- ``NAME.bench.json``: ``dynexit bench`` (measured CPU speed of real early exit) at the budget
  where the model matches its final-exit accuracy on val.

This module opens what the building side made and never imports it (the app and the report stand
on it; ``tests/test_layering.py``).

>>> from dynexit import zoo
>>> zoo.list()
>>> model = zoo.load_model("dynperceiver_fmnist")      # eval mode, float [0, 1] input (B, 1, 28, 28)
>>> table = zoo.load_table("dynperceiver_fmnist", "test")
>>> model = zoo.resolve_model("dvt_fmnist")    # a zoo name, a checkpoint path, or (untrained=True) an architecture
>>> zoo.describe_weights(model.weights_source)  # 'weights: data/zoo/dvt_fmnist.safetensors (sha256 55fdca3fdb05, ...)'
"""

from __future__ import annotations

import builtins
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("val", "test")


def shipped_dir() -> Path:
    """The repository's ``data/zoo``, where the zoo is shipped."""
    return Path(__file__).resolve().parents[2] / "data" / "zoo"


def zoo_dir() -> Path:
    """``$DYNEXIT_ZOO`` (any folder of models and tables, :mod:`dynexit.zoo.folder`) or :func:`shipped_dir`."""
    env = os.environ.get("DYNEXIT_ZOO")
    return Path(env) if env else shipped_dir()


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: what it is and exactly how it was trained."""

    name: str
    arch: str
    summary: str
    recipe: dict = field(default_factory=dict)  # dynexit.training.loop.TrainConfig fields
    pipeline: str = "end-to-end"  # how dynexit.zoo.reproduce builds it (see its PIPELINES)
    study: dict = field(default_factory=dict)  # the branch study's settings (pipeline "branch-study")

    def reproduce_command(self) -> str:
        """The command that rebuilds this entry's files."""
        return f"dynexit zoo reproduce {self.name}"


# One recipe for the three CNNs so the comparison (Dyn-Perceiver paper, Fig. 1) is like for like.
_CNN_RECIPE = {"epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
               "distill_alpha": 0.5, "ema_decay": 0.9998, "augment": True, "seed": 0}
# ViTs trained from scratch on small data want a lower peak rate and a longer warm-up. 15 epochs at
# batch 256 (not the CNNs' 30 at 128): what three ViT trainings fit in one 2-core CPU session.
_VIT_RECIPE = {**_CNN_RECIPE, "epochs": 15, "batch_size": 256, "lr": 1e-3, "warmup_epochs": 2.0}
# Multi-Exit ViT: the backbone is trained alone, every branch type is tried at every block on the
# frozen backbone (classifier-wise), the practical ones are kept (at most 4) and trained again.
_MEVIT_STUDY = {"blocks": [0, 1, 2, 3, 4], "types": ["mlp", "cnn_ignore", "cnn_add", "cnn_project", "vit", "mixer", "resmlp"],
                "study_epochs": 1, "final_epochs": 3, "lr": 1e-3, "max_branches": 4, "min_branches": 2}

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("dynperceiver_fmnist", "dynperceiver_fmnist",
             "Dynamic Perceiver on a half-width ResNet-18: 4 exits in the latent classification branch",
             {"model": "dynperceiver_fmnist", **_CNN_RECIPE}),
    ZooEntry("multiexit_cnn_fmnist", "multiexit_cnn_fmnist",
             "Conventional multi-exit CNN: classifiers on the same backbone's stage outputs",
             {"model": "multiexit_cnn_fmnist", **_CNN_RECIPE}),
    ZooEntry("static_cnn_fmnist", "static_cnn_fmnist",
             "Static reference: the same backbone with its single final classifier",
             {"model": "static_cnn_fmnist", **_CNN_RECIPE}),
    ZooEntry("mevit_fmnist", "mevit_fmnist",
             "Multi-Exit ViT (6 blocks of width 64, 7x7 tokens): branch types chosen by a classifier-wise study",
             {"model": "mevit_fmnist", "model_kwargs": {"exits": []}, **_VIT_RECIPE}, "branch-study", _MEVIT_STUDY),
    ZooEntry("dvt_fmnist", "dvt_fmnist",
             "Dynamic Vision Transformer: a cascade on 4x4, 6x6, 7x7 tokens with feature and relationship reuse",
             {"model": "dvt_fmnist", **_VIT_RECIPE}),
    ZooEntry("dvt_fmnist_noreuse", "dvt_fmnist_noreuse",
             "DVT ablation: the same cascade with neither reuse mechanism",
             {"model": "dvt_fmnist_noreuse", **_VIT_RECIPE}),
]}


def list() -> builtins.list[str]:  # noqa: A001 - the zoo's public API is zoo.list()
    """Names of the zoo models, in the order above."""
    return builtins.list(ENTRIES)


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; ValueError listing the zoo's models for any other name."""
    if name not in ENTRIES:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def weights_path(name: str) -> Path:
    """``zoo_dir()/NAME.safetensors`` (its sidecar is ``NAME.json``); ValueError for an unknown name."""
    return zoo_dir() / f"{get_entry(name).name}.safetensors"


def table_path(name: str, split: str) -> Path:
    """``zoo_dir()/NAME.SPLIT.npz``; ValueError for an unknown name or a split not in :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return zoo_dir() / f"{get_entry(name).name}.{split}.npz"


def bench_path(name: str) -> Path:
    """``zoo_dir()/NAME.bench.json``; ValueError for an unknown name."""
    return zoo_dir() / f"{get_entry(name).name}.bench.json"


def _missing(path: Path, name: str, what: str) -> ValueError:
    return ValueError(f"{path}: missing file ({what} of zoo model {name!r}); rebuild it with "
                      f"`{get_entry(name).reproduce_command()}` (or restore data/zoo from git)")


def _damaged(path: Path, name: str, err: Exception) -> ValueError:
    # the loaders' messages usually start with the path already: say it once
    text = " ".join(str(err).split("\n")) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    text = text.removeprefix(f"{path}: ")
    # a loader's own advice ("...; restore the file or save it again") gives way to the zoo's rebuild command
    text = text.rsplit("; ", 1)[0] if "; " in text else text
    return ValueError(f"{path}: damaged zoo file ({text}); rebuild it with `{get_entry(name).reproduce_command()}` "
                      "(or restore it with `git checkout -- data/zoo`)")


def read_json(path: Path):
    """The JSON value in ``path``. ValueError for text that is not JSON (bad syntax, not UTF-8, nested
    too deeply for the parser: json raises RecursionError there) and OSError for an unreadable file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    # JSONDecodeError and UnicodeDecodeError are ValueErrors already


def available(name: str) -> bool:
    """True when the weights and both tables of ``name`` are on disk."""
    return weights_path(name).is_file() and all(table_path(name, s).is_file() for s in SPLITS)


def load_model(name: str, device: str = "cpu"):
    """The trained model in eval mode; input float images in [0, 1], shape (B, 1, 28, 28).

    ``model.weights_source`` records the file and its SHA-256 (see :func:`weights_record`).
    ValueError naming the file and the rebuild command when the weights are missing or damaged.
    """
    from dynexit.io.checkpoint import load_checkpoint

    path = weights_path(name)
    if not path.exists():
        raise _missing(path, name, "weights")
    try:
        model = load_checkpoint(path, map_location=device)
        # every zoo sidecar records its weights' checksum: one without it could not be verified
        if "weights_sha256" not in model.checkpoint_meta:
            raise ValueError("its sidecar has no weights_sha256, so the weights cannot be verified")
        model.weights_source = weights_record(model, path, zoo=name)
    except (ValueError, OSError) as err:
        raise _damaged(path, name, err) from None
    return model


def load_table(name: str, split: str = "test"):
    """The shipped ExitTable of ``name`` on ``split`` ("val" or "test"): logits (N, K, C), costs in MFLOPs.

    ValueError naming the file and the rebuild command when it is missing or damaged.
    """
    from dynexit.table import ExitTable

    path = table_path(name, split)
    if not path.exists():
        raise _missing(path, name, f"{split} table")
    try:
        return ExitTable.load(path)
    except (ValueError, OSError) as err:
        raise _damaged(path, name, err) from None


def load_bench(name: str) -> dict | None:
    """The shipped ``dynexit bench`` result of ``name`` (see :func:`dynexit.bench.run_bench`), or None
    when there is none. ValueError naming the file and the rebuild command when it is damaged."""
    path = bench_path(name)
    if not path.exists():
        return None
    try:
        result = read_json(path)
        if not isinstance(result, dict):
            raise ValueError(f"expected a JSON object, got {type(result).__name__}")
    except (ValueError, OSError) as err:
        raise _damaged(path, name, err) from None
    return result


def branch_study_path(name: str) -> Path:
    """``zoo_dir()/NAME.branch_study.json``; ValueError for an unknown name."""
    return zoo_dir() / f"{get_entry(name).name}.branch_study.json"


def load_branch_study(name: str) -> dict:
    """The classifier-wise branch study that chose the exits of ``name`` (pipeline "branch-study").

    ``{"rows": [{"block", "type", "accuracy" (val), "mflops", "best_of_block", "practical",
    "selected"}, ...], "exits": the chosen [[block, type], ...], "settings", "seconds"}``.
    """
    entry = get_entry(name)
    if entry.pipeline != "branch-study":
        raise ValueError(f"zoo model {name!r} was trained {entry.pipeline}, without a branch study; "
                         f"models with one: {', '.join(n for n, e in ENTRIES.items() if e.pipeline == 'branch-study')}")
    path = branch_study_path(name)
    if not path.exists():
        raise _missing(path, name, "branch study")
    try:
        study = read_json(path)
        if not isinstance(study, dict) or not isinstance(study.get("rows"), builtins.list):
            raise ValueError("no list of rows")
    except (ValueError, OSError) as err:
        raise _damaged(path, name, err) from None
    return study


def info(name: str) -> dict:
    """What the zoo knows about ``name``: summary, recipe, files, per-exit costs (MFLOPs) and accuracies.

    ValueError for an unknown name or a damaged sidecar or table.
    """
    from dynexit.io.sidecar import read_sidecar

    e = get_entry(name)
    out = {"name": e.name, "arch": e.arch, "summary": e.summary, "recipe": dict(e.recipe),
           "pipeline": e.pipeline, "reproduce": e.reproduce_command(),
           "files": {"weights": str(weights_path(name)), **{s: str(table_path(name, s)) for s in SPLITS},
                     "bench": str(bench_path(name))}}
    if weights_path(name).exists():
        try:
            side = read_sidecar(weights_path(name))
        except (ValueError, OSError) as err:
            raise _damaged(weights_path(name), name, err) from None
        out.update(exit_names=side.get("exit_names"), costs_mflops=side.get("costs_mflops"),
                   val_accuracy=side.get("val_accuracy"), train=side.get("train"), trained_on=side.get("trained_on"))
    if table_path(name, "test").exists():
        out["test_accuracy"] = load_table(name, "test").exit_accuracy().tolist()
    return out


# ----------------------------------------------------------------------------- model names

HASH_CHARS = 12  # the SHA-256 prefix printed next to a weights file
UNTRAINED = "untrained"  # the weights_source of a model built with random weights (untrained=True)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (no home folders in results)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def weights_record(model, path: str | os.PathLike, zoo: str | None = None) -> dict:
    """``{"path", "sha256" (full hex), "zoo" (entry name or None)}`` of the weights file ``model`` was
    loaded from. The sidecar's ``weights_sha256``, which ``load_checkpoint`` has just checked against
    the file, is used as it is; only an older checkpoint without one is hashed here."""
    from dynexit.io.sidecar import file_sha256

    sha = model.checkpoint_meta.get("weights_sha256") or file_sha256(path)
    return {"path": display_path(Path(path)), "sha256": sha, "zoo": zoo}


def describe_weights(source) -> str:
    """One line for the output of every command that runs a model: which weights ran."""
    if source == UNTRAINED:
        return "weights: UNTRAINED (random initialisation, asked for with --untrained / untrained=True)"
    if isinstance(source, dict) and source.get("path"):
        zoo_name = f", zoo model {source['zoo']}" if source.get("zoo") else ""
        return f"weights: {source['path']} (sha256 {source['sha256'][:HASH_CHARS]}{zoo_name})"
    return "weights: a model object given in memory (its file is not known)"


def weights_source(model):
    """What :func:`resolve_model` / :func:`load_model` recorded for ``model``: a dict, "untrained" or None."""
    return getattr(model, "weights_source", None)


def looks_like_path(text: str) -> bool:
    """True when a model name can only mean a file: a weights or sidecar suffix, a folder part, or it exists."""
    return text.endswith((".safetensors", ".json")) or os.sep in text or "/" in text or Path(text).exists()


def _is_registered(name: str) -> bool:
    from dynexit.models import is_model

    return is_model(name)


def resolve_model(name_or_path: str | os.PathLike, *, untrained: bool = False, **kwargs):
    """The model a name stands for, in eval mode, with ``model.weights_source`` saying which weights ran.

    - a zoo model name (``dvt_fmnist``): its shipped weights, ``data/zoo/NAME.safetensors``;
      ValueError with the rebuild command (``dynexit zoo reproduce NAME``) when that file is missing;
    - a checkpoint path (``.safetensors`` with its ``.json`` sidecar): that file;
    - a registered architecture name: only with ``untrained=True`` (random weights, e.g. for smoke
      tests and timing); ``kwargs`` go to ``dynexit.models.create_model``. Without it, ValueError:
      an untrained network is never run by accident.

    ``model.weights_source`` is ``{"path", "sha256", "zoo"}`` for loaded weights, ``"untrained"`` otherwise.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"resolve_model takes a model name or a checkpoint path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if untrained:
        if text in ENTRIES or _is_registered(text):
            from dynexit.models import create_model

            if not _is_registered(text):  # a zoo entry named apart from its architecture
                kwargs = {**ENTRIES[text].recipe.get("model_kwargs", {}), **kwargs}
                text = ENTRIES[text].arch
            model = create_model(text, **kwargs).eval()
            model.weights_source = UNTRAINED
            return model
        raise ValueError(f"untrained=True (--untrained) builds a registered architecture with random weights; "
                         f"{text!r} is not one (see dynexit.models.list_models())")
    if kwargs:
        raise ValueError(f"model kwargs ({', '.join(kwargs)}) only apply to an untrained architecture "
                         "(untrained=True); trained weights come with the configuration they were trained with")
    if text in ENTRIES:
        return load_model(text)
    if looks_like_path(text):
        from dynexit.io.checkpoint import load_checkpoint

        path = Path(text).expanduser()
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        if not path.exists():
            raise ValueError(f"{path}: no such checkpoint file")
        try:
            model = load_checkpoint(path)
            model.weights_source = weights_record(model, path)
        except OSError as err:
            raise ValueError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
        return model
    if _is_registered(text):
        raise ValueError(f"{text!r} is an architecture without trained weights: the zoo has {', '.join(ENTRIES)}; "
                         "give a zoo model, a checkpoint (.safetensors), or add --untrained "
                         "(untrained=True) to run it with random weights")
    raise ValueError(f"{text!r} is not a zoo model ({', '.join(ENTRIES)}), an existing checkpoint file "
                     "(.safetensors with its .json sidecar), nor a registered architecture (dynexit.models.list_models())")


def _valid_costs(costs) -> bool:
    """A non-empty list of finite, positive, non-decreasing real numbers (no bool, no str)."""
    if not isinstance(costs, builtins.list) or not costs:
        return False
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in costs):
        return False
    try:
        values = [float(c) for c in costs]
    except OverflowError:  # an int beyond the float range
        return False
    return all(np.isfinite(v) and v > 0 for v in values) and all(b >= a for a, b in zip(values, values[1:]))


def declared_costs(name_or_path: str | os.PathLike) -> np.ndarray | None:
    """Cumulative per-exit MFLOPs (K,) a zoo model or checkpoint declares in its sidecar, read cheaply.

    For refusing a budget before any model (or torch) is loaded. None when they cannot be trusted
    here: a registry name, a missing or unreadable sidecar, JSON that does not parse (nested too
    deeply included), or ``costs_mflops`` that is not a non-empty list of finite, positive,
    non-decreasing numbers (no bool, no str). The real loader then reads the same file and raises its
    precise ValueError (for a zoo model, the damaged-file error with the rebuild command).
    """
    text = os.fspath(name_or_path)
    if text in ENTRIES:
        side = weights_path(text).with_suffix(".json")
    elif looks_like_path(text):
        side = Path(text).expanduser().with_suffix(".json")
    else:
        return None
    try:
        meta = read_json(side)
    except (OSError, ValueError):
        return None
    costs = meta.get("costs_mflops") if isinstance(meta, dict) else None
    return np.asarray(costs, dtype=np.float64) if _valid_costs(costs) else None
