"""Checkpoints: safetensors weights plus a JSON sidecar (never pickle).

``NAME.safetensors`` holds the state dict; ``NAME.json`` next to it holds the architecture name
and kwargs (enough to rebuild the model through the registry), the exit names, per-exit costs
(MFLOPs) and validation accuracies, the training recipe, the git commit and the dynexit version.

>>> save_checkpoint(model, "runs/dp/model.safetensors", val_accuracy=[...], recipe={...})
>>> model = load_checkpoint("runs/dp/model.safetensors")

Every problem is a ValueError that names it and says what to do.
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

FORMAT = "dynexit.checkpoint"
FORMAT_VERSION = 1


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


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
    tmp_w = path.with_name(path.name + ".tmp")
    save_file(weights, str(tmp_w), metadata={"format": FORMAT, "arch": config["arch"]})
    tmp_j = sidecar_path(path).with_name(sidecar_path(path).name + ".tmp")
    tmp_j.write_text(json.dumps(side, indent=2))
    os.replace(tmp_w, path)
    os.replace(tmp_j, sidecar_path(path))
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """The validated JSON sidecar of a checkpoint (``path`` may be the .safetensors or the .json)."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.exists():
        raise ValueError(f"{path}: no JSON sidecar {side.name} next to the weights; a dynexit checkpoint is "
                         "NAME.safetensors + NAME.json written by dynexit.checkpoint.save_checkpoint")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{side}: corrupt checkpoint sidecar (not valid JSON: {err}); restore it from the "
                         "original checkpoint or re-save the model") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{side}: not a dynexit checkpoint sidecar (no format tag {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{side}: checkpoint format version {meta.get('format_version')}, this dynexit reads "
                         f"{FORMAT_VERSION}; upgrade dynexit")
    missing = [k for k in ("arch", "kwargs") if k not in meta]
    if missing or not isinstance(meta.get("kwargs"), dict) or not isinstance(meta.get("arch"), str):
        raise ValueError(f"{side}: corrupt checkpoint sidecar (missing or malformed {', '.join(missing) or 'arch/kwargs'})")
    return meta


def _check_safetensors(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or n > path.stat().st_size:
        hint = " (it looks like a pickled torch.save file: dynexit never loads pickles)" if head[:2] in (b"PK", b"\x80\x02") else ""
        raise ValueError(f"{path}: not a safetensors file{hint}; convert the weights with "
                         "safetensors.torch.save_file(model.state_dict(), path)")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with a clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({err})") from err


def load_weights(model, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load a checkpoint's weights into an existing model; returns the sidecar.

    ValueError when the checkpoint belongs to another architecture or its keys / shapes differ.
    """
    path = Path(path)
    meta = read_sidecar(path)
    name = getattr(model, "arch_name", None)
    if name and (meta["arch"] != name or _jsonable(meta["kwargs"]) != _jsonable(model.arch_kwargs)):
        raise ValueError(f"{path}: checkpoint of architecture {meta['arch']!r} with kwargs {meta['kwargs']}, "
                         f"but the model is {name!r} with kwargs {model.arch_kwargs}; build the model with "
                         "dynexit.checkpoint.load_checkpoint(path) instead")
    weights = read_weights(path)
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
    model.load_state_dict(weights, strict=strict)
    return meta


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", eval: bool = True):
    """Rebuild a model from a checkpoint (architecture from the sidecar, weights from safetensors).

    The model comes back in eval mode (``eval=False`` keeps train mode), with ``model.checkpoint_meta``
    holding the sidecar.
    """
    from dynexit.models import create_model, is_model

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    _check_safetensors(path)
    meta = read_sidecar(path)
    if not is_model(meta["arch"]):
        raise ValueError(f"{path}: checkpoint architecture {meta['arch']!r} is not registered in this dynexit; "
                         "upgrade dynexit or import the module that registers it")
    try:
        model = create_model(meta["arch"], **meta["kwargs"])
    except TypeError as err:
        raise ValueError(f"{path}: the sidecar's kwargs do not fit architecture {meta['arch']!r} ({err})") from err
    load_weights(model, path)
    if meta.get("costs_mflops"):
        model._costs_cache = np.asarray(meta["costs_mflops"], dtype=np.float64)
    model.checkpoint_meta = meta
    model.to(map_location)
    return model.eval() if eval else model


def resolve_model(name_or_path: str, **kwargs):
    """A registry name (untrained model) or a checkpoint path (trained model)."""
    from dynexit.models import create_model, is_model

    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json") or p.exists():
        return load_checkpoint(p)
    if is_model(name_or_path):
        return create_model(name_or_path, **kwargs).eval()
    raise ValueError(f"{name_or_path!r} is neither a registered model (see `dynexit.models.list_models()`) nor a "
                     "checkpoint file (.safetensors with its .json sidecar)")
