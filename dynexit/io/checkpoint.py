"""Checkpoints: safetensors weights plus a JSON sidecar (never pickle).

``NAME.safetensors`` holds the state dict; ``NAME.json`` next to it holds the architecture name
and kwargs (enough to rebuild the model through the registry), the exit names, per-exit costs
(MFLOPs) and validation accuracies, the training recipe, the git commit and the dynexit version.

>>> save_checkpoint(model, "runs/dp/model.safetensors", val_accuracy=[...], recipe={...})
>>> model = load_checkpoint("runs/dp/model.safetensors")

Every problem is a ValueError that names it and says what to do. The sidecar's format and checks
live in :mod:`dynexit.io.sidecar` (torch-free); the loader validates both files in one pass.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import torch

from dynexit.io.sidecar import (FIX, FORMAT, FORMAT_VERSION, file_sha256, read_sidecar, require_file, short,
                                sidecar_path, sidecar_problem)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current commit of the source tree (``None`` outside a git checkout)."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _state_dict(model) -> dict[str, torch.Tensor]:
    # safetensors refuses shared / non-contiguous storage: store independent contiguous copies
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(model, path: str | os.PathLike, *, val_accuracy=None, recipe: dict | None = None,
                    extra: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar; returns the weights path.

    ``state_dict`` overrides the weights written (e.g. the EMA copy of the model's weights).
    """
    from safetensors.torch import save_file

    from dynexit import __version__

    config = model.config()  # families that cannot be rebuilt say why here
    if not config.get("arch"):
        raise ValueError("model has no registry name: build it with dynexit.models.create_model(name, ...) "
                         "so the checkpoint can be rebuilt")
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = _state_dict(model) if state_dict is None else {k: v.detach().cpu().contiguous().clone()
                                                             for k, v in state_dict.items()}
    side = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": config["arch"],
        "kwargs": _jsonable(config["kwargs"]),
        "num_exits": model.num_exits,
        "exit_names": list(model.exit_names),
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "input_size": list(model.input_size),
        "costs_mflops": [float(c) for c in model.exit_costs()],
        "costs_counted_with": "torch.utils.flop_counter.FlopCounterMode on the staged path, multiply-adds (total/2)",
        "val_accuracy": None if val_accuracy is None else [float(a) for a in val_accuracy],
        "recipe": _jsonable(recipe or {}),
        "git_commit": git_commit(),
        "dynexit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        side.update(_jsonable(extra))
    problem = sidecar_problem(side)
    if problem:  # never write a checkpoint that load_checkpoint would refuse
        raise ValueError(f"{path}: cannot save this checkpoint: {problem}")
    tmp_w = path.with_name(path.name + ".tmp")
    # the header repeats arch and kwargs, so a damaged sidecar is caught before it builds a model
    save_file(weights, str(tmp_w), metadata={"format": FORMAT, "arch": config["arch"],
                                             "kwargs": json.dumps(side["kwargs"], sort_keys=True)})
    side["weights_sha256"] = file_sha256(tmp_w)  # loaders refuse weights that changed after saving
    tmp_j = sidecar_path(path).with_name(sidecar_path(path).name + ".tmp")
    tmp_j.write_text(json.dumps(side, indent=2))
    os.replace(tmp_w, path)
    os.replace(tmp_j, sidecar_path(path))
    return path


# dtypes a floating parameter may be stored in (the zoo stores float16 and loads into float32)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_safetensors(path: Path) -> None:
    """ValueError unless ``path`` is a regular file that starts like a safetensors file."""
    require_file(path, "checkpoint file")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise ValueError(f"{path}: not a safetensors file (too short); {FIX}")
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or n + 8 > path.stat().st_size:
        hint = " (it looks like a pickled torch.save file: dynexit never loads pickles)" if head[:2] in (b"PK", b"\x80\x02") else ""
        raise ValueError(f"{path}: not a safetensors file{hint}; convert the weights with "
                         "safetensors.torch.save_file(model.state_dict(), path)")


def _read_safetensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header's ``__metadata__`` and every tensor of a safetensors file, parsed once."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), "pt")
    except Exception as err:  # noqa: BLE001 - a foreign parser on untrusted bytes: any failure means damage
        raise ValueError(f"{path}: damaged safetensors header ({type(err).__name__}: {err}); {FIX}") from err
    with handle as f:
        header = dict(f.metadata() or {})
        try:
            return header, {key: f.get_tensor(key) for key in f.keys()}
        except Exception as err:  # noqa: BLE001 - SafetensorError, OverflowError, ...: all mean a damaged file
            raise ValueError(f"{path}: corrupt or truncated safetensors file ({type(err).__name__}: {err}); "
                             f"{FIX}") from err


def _check_header(path: Path, header: dict, meta: dict) -> None:
    """The architecture and kwargs the weights were saved with (their header) are the sidecar's."""
    if "arch" in header and header["arch"] != meta["arch"]:
        raise ValueError(f"{path}: the weights were saved for architecture {header['arch']!r} but the sidecar "
                         f"says {meta['arch']!r}; {FIX}")
    if "kwargs" in header:
        try:
            saved = json.loads(header["kwargs"])
        except (ValueError, RecursionError):
            raise ValueError(f"{path}: damaged safetensors header (its kwargs are not JSON); {FIX}") from None
        if saved != meta["kwargs"]:
            raise ValueError(f"{path}: the weights were saved with kwargs {short(saved)} but the sidecar says "
                             f"{short(meta['kwargs'])}; {FIX}")


def _verified(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The sidecar and the tensors of a checkpoint, each validated once, before any model is built.

    The file starts like a safetensors file, the sidecar is valid (:func:`read_sidecar`), the
    weights have the sidecar's SHA-256, and their header names the sidecar's arch and kwargs, so a
    damaged ``kwargs`` never reaches a constructor when the weights say otherwise.
    """
    _check_safetensors(path)
    meta = read_sidecar(path)
    expected = meta.get("weights_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise ValueError(f"{path}: the weights do not match the SHA-256 recorded in {sidecar_path(path).name} "
                         f"(the file is damaged or was replaced); {FIX}")
    header, tensors = _read_safetensors(path)
    _check_header(path, header, meta)
    return meta, tensors


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (name -> tensor, as stored), with a clear ValueError for anything
    else (not safetensors, a damaged header or data). No dtype checks: see :func:`load_weights`."""
    path = Path(path)
    _check_safetensors(path)
    return _read_safetensors(path)[1]


def _check_tensors(path: Path, weights: dict, own: dict) -> None:
    """Every tensor that goes into a model parameter / buffer has a fitting dtype and finite values."""
    for key, value in weights.items():
        if key not in own:
            continue
        target = own[key]
        if target.dtype.is_floating_point:
            if value.dtype not in _FLOAT_DTYPES:
                raise ValueError(f"{path}: tensor {key} has dtype {value.dtype}, the model needs a floating "
                                 f"point tensor (float16, bfloat16, float32 or float64); {FIX}")
            cast = value.to(target.dtype)  # a float64 beyond the float32 range becomes inf here
            if not bool(torch.isfinite(cast).all()):
                bad = int((~torch.isfinite(cast)).sum())
                raise ValueError(f"{path}: tensor {key} holds {bad} NaN or infinite values "
                                 f"(in the model's {target.dtype}); {FIX}")
        elif target.dtype == torch.bool:
            if value.dtype != torch.bool:
                raise ValueError(f"{path}: tensor {key} has dtype {value.dtype}, the model needs bool; {FIX}")
        elif value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ValueError(f"{path}: tensor {key} has dtype {value.dtype}, the model needs an integer "
                             f"tensor ({target.dtype}); {FIX}")


def load_weights(model, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load a checkpoint's weights into an existing model; returns the sidecar.

    ValueError when the checkpoint belongs to another architecture, its keys / shapes differ, a
    tensor has the wrong dtype (integer, bool or complex where the model has floats) or holds NaN or
    inf, or either file is damaged. The model is left untouched on error.
    """
    path = Path(path)
    return _load_weights(model, path, *_verified(path), strict)


def _load_weights(model, path: Path, meta: dict, weights: dict[str, torch.Tensor], strict: bool) -> dict:
    name = getattr(model, "arch_name", None)
    if name and (meta["arch"] != name or _jsonable(meta["kwargs"]) != _jsonable(model.arch_kwargs)):
        raise ValueError(f"{path}: checkpoint of architecture {meta['arch']!r} with kwargs {short(meta['kwargs'])}, "
                         f"but the model is {name!r} with kwargs {model.arch_kwargs}; build the model with "
                         "dynexit.io.checkpoint.load_checkpoint(path) instead")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if strict and (missing or extra):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:3])})")
        raise ValueError(f"{path}: weights do not match architecture {meta['arch']!r}: {'; '.join(parts)}; "
                         "the file was edited or written by another version of the model")
    bad = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {len(bad)} tensors have the wrong shape (e.g. {k}: file {tuple(weights[k].shape)}, "
                         f"model {tuple(own[k].shape)}); the checkpoint belongs to another configuration")
    _check_tensors(path, weights, own)
    try:
        model.load_state_dict(weights, strict=strict)
    except RuntimeError as err:  # what the checks above missed (e.g. a model's own load hooks)
        raise ValueError(f"{path}: the weights do not load into {meta['arch']!r} ({err}); {FIX}") from err
    return meta


def _check_model_matches_sidecar(path: Path, meta: dict, model) -> None:
    """The sidecar's description of the model (exits, classes, input) agrees with the model built."""
    expected = {"num_exits": model.num_exits, "exit_names": list(model.exit_names),
                "num_classes": model.num_classes, "in_chans": model.in_chans,
                "input_size": list(model.input_size)}
    for key, value in expected.items():
        if key in meta and meta[key] != value:
            raise ValueError(f"{sidecar_path(path)}: corrupt checkpoint sidecar ({key!r} is {short(meta[key])} but "
                             f"the model {meta['arch']!r} it describes has {value!r}); {FIX}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", eval: bool = True):
    """Rebuild a model from a checkpoint (architecture from the sidecar, weights from safetensors).

    The model comes back in eval mode (``eval=False`` keeps train mode), with ``model.checkpoint_meta``
    holding the sidecar. ValueError ``"{file}: {problem}; {what to do}"`` for a missing, damaged or
    inconsistent weights file or sidecar (see :func:`read_sidecar` and :func:`load_weights`).
    """
    from dynexit.models import create_model, is_model

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    meta, weights = _verified(path)
    if not is_model(meta["arch"]):
        raise ValueError(f"{path}: checkpoint architecture {meta['arch']!r} is not registered in this dynexit; "
                         "upgrade dynexit or import the module that registers it")
    try:
        model = create_model(meta["arch"], **meta["kwargs"])
    except Exception as err:  # noqa: BLE001 - kwargs from a file reach arbitrary constructors
        raise ValueError(f"{path}: the sidecar's kwargs do not build architecture {meta['arch']!r} "
                         f"({type(err).__name__}: {err}); {FIX}") from err
    _check_model_matches_sidecar(path, meta, model)
    _load_weights(model, path, meta, weights, strict=True)
    # the sidecar's costs are what every budget is checked against, and the sidecar is not covered by the
    # weights' checksum: they must equal what this code counts for the rebuilt model (a recount is ~0.1 s)
    counted = model.eval().exit_costs(refresh=True)  # counted once here; later calls reuse it
    declared = meta.get("costs_mflops")
    if declared and not np.allclose(declared, counted, rtol=1e-6, atol=0):
        raise ValueError(f"{path}: the sidecar's costs_mflops {short([round(c, 4) for c in declared])} differ from "
                         f"what this model counts ({short([round(float(c), 4) for c in counted])} MFLOPs per exit); "
                         f"{FIX}")
    model.checkpoint_meta = meta
    model.to(map_location)
    return model if eval else model.train()
