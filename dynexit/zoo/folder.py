"""Any folder of models and tables: the shipped zoo's names and every entry laid out like them.

``DYNEXIT_ZOO=DIR make app`` opens DIR through this module. An *entry* NAME of DIR is

- ``DIR/NAME.val.npz`` + ``DIR/NAME.test.npz``: its ExitTables (required; thresholds are fitted on
  val, results measured on test). Made by ``dynexit table`` or ``ExitTable.from_arrays(...).save``.
- ``DIR/NAME.safetensors`` + ``DIR/NAME.json``: its weights (optional; ``dynexit train``). Without
  them the entry is *table-only*: budgets, curves and per-image scores work, attention maps,
  attributions and uploaded images need the weights.
- ``DIR/NAME.bench.json`` (``dynexit bench``), ``DIR/NAME.profile.json`` (``dynexit profile``): optional.

A zoo name (:data:`dynexit.zoo.catalog.ENTRIES`) is opened by the catalogue itself (its damaged-file
messages give the rebuild command); any other name is opened here, with the command that writes
the missing or damaged file. Read-only, like the catalogue: nothing here imports training code.

>>> from dynexit.zoo import folder
>>> folder.entry_names("runs/digits")              # ['digits_cnn', 'my_logits']
>>> folder.load_table("my_logits", "test", "runs/digits")
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from dynexit.zoo import catalog

SPLITS = catalog.SPLITS
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a file stem: no folders, no spaces, no leading dot


def _folder(folder) -> Path:
    return catalog.zoo_dir() if folder is None else Path(folder)


def _is_zoo(name: str, folder) -> bool:
    """A catalogue name opened in the catalogue's own folder (its loaders read ``zoo_dir()``)."""
    return name in catalog.ENTRIES and _folder(folder).resolve() == catalog.zoo_dir().resolve()


def check_name(name: str) -> str:
    """``name`` when it can be an entry (a plain file stem); ValueError saying what is allowed otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".val", ".test")):
        raise ValueError(f"{name!r} is not an entry name: use letters, digits and . _ + - (a file stem, no folders)")
    return name


def table_path(name: str, split: str, folder=None) -> Path:
    """``DIR/NAME.SPLIT.npz``; ValueError for a bad name or a split other than val / test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return _folder(folder) / f"{check_name(name)}.{split}.npz"


def weights_path(name: str, folder=None) -> Path:
    """``DIR/NAME.safetensors`` (its sidecar: ``NAME.json``)."""
    return _folder(folder) / f"{check_name(name)}.safetensors"


def bench_path(name: str, folder=None) -> Path:
    """``DIR/NAME.bench.json``."""
    return _folder(folder) / f"{check_name(name)}.bench.json"


def has_weights(name: str, folder=None) -> bool:
    """True when the entry has a weights file (not a table-only entry)."""
    return weights_path(name, folder).is_file()


def _is_name(stem: str) -> bool:
    try:
        check_name(stem)
    except ValueError:
        return False
    return True


def _scan(root: Path) -> tuple[list[str], list[str]]:
    """(entry names, one line per table file left out and why)."""
    try:
        files = {p.name: p.is_file() for p in root.iterdir() if p.name.endswith(".npz")}
    except OSError:
        return [], []
    found, skipped = set(), []
    for f in sorted(files):
        split = next((s for s in SPLITS if f.endswith(f".{s}.npz")), None)
        if split is None or f.endswith(".partial.npz"):
            continue
        stem = f.removesuffix(f".{split}.npz")
        other = f"{stem}.{'test' if split == 'val' else 'val'}.npz"
        if not _is_name(stem):
            skipped.append(f"{f}: {stem!r} is not an entry name (letters, digits and . _ + -, not ending .val / .test)")
        elif not files[f]:
            skipped.append(f"{f}: not a regular file")
        elif not files.get(other):
            skipped.append(f"{f}: no {other} beside it" if other not in files else f"{f}: {other} is not a regular file")
        else:
            found.add(stem)
    zoo_first = [n for n in catalog.ENTRIES if n in found]
    return zoo_first + sorted(found - set(zoo_first)), skipped


def entry_names(folder=None) -> list[str]:
    """The entries of ``folder`` (default ``zoo_dir()``) whose val and test tables are both there:
    the zoo's names first, in the catalogue's order, then every other name, sorted. An unreadable
    or missing folder has none."""
    return _scan(_folder(folder))[0]


def skipped_files(folder=None) -> list[str]:
    """One line per ``*.val.npz`` / ``*.test.npz`` of ``folder`` that is not part of an entry, and why
    (a name that cannot be an entry, a folder, a table without its pair), for viewers to show."""
    return _scan(_folder(folder))[1]


def _rebuild_hint(name: str, split: str, folder) -> str:
    path = table_path(name, split, folder)
    return (f"write it with `dynexit table --model MODEL --data DATASET --split {split} --out {path}` or "
            "`ExitTable.from_arrays(...).save(...)` (README: \"Your data, your tables\")")


def load_table(name: str, split: str = "test", folder=None):
    """The ExitTable ``DIR/NAME.SPLIT.npz``. ValueError naming the file, what is wrong and what writes it."""
    if _is_zoo(name, folder):
        return catalog.load_table(name, split)
    from dynexit.table import ExitTable

    path = table_path(name, split, folder)
    if not path.exists():
        raise ValueError(f"{path}: missing file ({split} table of {name!r}); {_rebuild_hint(name, split, folder)}")
    return ExitTable.load(path)  # its ValueError names the file and the problem


def check_pair(val, test, name: str = "") -> None:
    """ValueError unless ``val`` and ``test`` are tables of one model: the same exits (names and
    costs), classes and cost unit. Thresholds fitted on one and evaluated on the other mean nothing
    otherwise."""
    what = f" of {name!r}" if name else ""
    if val.fingerprint == test.fingerprint:
        raise ValueError(f"the val and test tables{what} are the same table: thresholds would be fitted on the test "
                         "images and the accuracy shown would be optimistic; give the table of the validation split")
    if val.meta.get("split") == "test" or test.meta.get("split") == "val":
        raise ValueError(f"the tables{what} say they are of the {val.meta.get('split')!r} (as val) and "
                         f"{test.meta.get('split')!r} (as test) splits: swapped? give the val table first")
    problems = []
    if list(val.exit_names) != list(test.exit_names):
        problems.append(f"exits {list(val.exit_names)} (val) vs {list(test.exit_names)} (test)")
    elif not np.allclose(val.costs, test.costs, rtol=1e-6, atol=0):
        problems.append(f"exit costs {np.round(val.costs, 4).tolist()} (val) vs {np.round(test.costs, 4).tolist()} (test)")
    if val.num_classes != test.num_classes:
        problems.append(f"{val.num_classes} classes (val) vs {test.num_classes} (test)")
    if val.cost_unit != test.cost_unit:
        problems.append(f"costs in {val.cost_unit} (val) vs {test.cost_unit} (test)")
    for key in ("dataset", "class_names"):  # compared only when both tables record it
        if key in val.meta and key in test.meta and val.meta[key] != test.meta[key]:
            problems.append(f"{key} {val.meta[key]!r} (val) vs {test.meta[key]!r} (test)")
    if problems:
        raise ValueError(f"the val and test tables{what} are not of one model: {'; '.join(problems)}; build both "
                         "with the same model (`dynexit table --split val` and `--split test`)")


def load_model(name: str, folder=None, device: str = "cpu"):
    """The entry's model in eval mode, ``model.weights_source`` recording the file and its SHA-256.

    ValueError for a table-only entry (no weights) or a missing / damaged checkpoint, naming the file.
    """
    if _is_zoo(name, folder):
        return catalog.load_model(name, device)
    from dynexit.io.checkpoint import load_checkpoint

    path = weights_path(name, folder)
    if not path.is_file():
        raise ValueError(f"{path}: no weights: {name!r} is a table-only entry (its tables are explored without the "
                         "model; attention maps, attributions and your own images need NAME.safetensors + NAME.json)")
    try:
        model = load_checkpoint(path, map_location=device)
        model.weights_source = catalog.weights_record(model, path)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
    return model


def load_bench(name: str, folder=None) -> dict | None:
    """The entry's ``dynexit bench`` result, None when it has none; ValueError for a damaged file."""
    if _is_zoo(name, folder):
        return catalog.load_bench(name)
    path = bench_path(name, folder)
    if not path.exists():
        return None
    try:
        result = catalog.read_json(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: damaged bench result ({err}); rerun `dynexit bench` with --out") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}; rerun `dynexit bench`")
    return result


def describe(test) -> str:
    """One line about an entry from its test table's meta: model, dataset, sizes."""
    meta = test.meta
    model = meta.get("model") or "a model"
    data = f" on {meta['dataset']}" if meta.get("dataset") else ""
    n = test.num_samples
    return (f"{model}{data}: {test.num_exits} exit{'s' * (test.num_exits != 1)}, {test.num_classes} classes, "
            f"{n:,} test image{'s' * (n != 1)} (costs in {test.cost_unit})")


def info(name: str, folder=None) -> dict:
    """What is known about ``name``: ``summary`` (one line), ``files``, ``table_only``; a zoo name
    gives :func:`dynexit.zoo.catalog.info`. ValueError for a damaged table or sidecar."""
    if _is_zoo(name, folder):
        return {**catalog.info(name), "table_only": False}
    test = load_table(name, "test", folder)
    out = {"name": name, "summary": describe(test), "table_only": not has_weights(name, folder),
           "files": {"weights": str(weights_path(name, folder)),
                     **{s: str(table_path(name, s, folder)) for s in SPLITS}, "bench": str(bench_path(name, folder))},
           "exit_names": list(test.exit_names), "test_accuracy": test.exit_accuracy().tolist()}
    if not out["table_only"]:
        from dynexit.io.sidecar import read_sidecar

        side = read_sidecar(weights_path(name, folder))
        out.update(costs_mflops=side.get("costs_mflops"), val_accuracy=side.get("val_accuracy"))
    return out


def modified_ns(path: str | os.PathLike) -> int:
    """The file's modification time in ns, 0 when it is missing (part of viewers' cache keys)."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=16)
def _spec(name: str, root: str | None):
    """``get_dataset(name, root)``, once per process: viewers ask on every rerun, and an ImageFolder tree
    or a torchvision file is scanned to answer. Failures are not cached (the data may appear later)."""
    from dynexit.data import get_dataset

    return get_dataset(name, root)


def _dataset_spec(test):
    """The registry spec of the dataset the table names (``meta["dataset"]``), None when it names
    none or the registry cannot open it here (an ImageFolder tree that is not on this machine)."""
    name, root = test.meta.get("dataset"), test.meta.get("data_root")
    if not isinstance(name, str) or not name:
        return None
    # an ImageFolder name holds its path and takes no root, though the tables record it as data_root
    root = root if isinstance(root, str) and not name.startswith("imagefolder:") else None
    try:
        return _spec(name, root)
    except (ValueError, OSError):
        return None


def class_names(test) -> list[str]:
    """The table's class names (C,): ``meta["class_names"]`` when it holds C strings, else the
    names of the dataset the table names (``meta["dataset"]``), else ``class 0 .. class C-1``."""
    c = test.num_classes
    names = test.meta.get("class_names")
    if isinstance(names, list) and len(names) == c and all(isinstance(n, str) and n for n in names):
        return list(names)
    spec = _dataset_spec(test)
    if spec is not None and spec.num_classes == c:
        return list(spec.class_names)
    return [f"class {i}" for i in range(c)]


def dataset_problem(test) -> str | None:
    """None when :func:`dataset_spec` finds the table's dataset, else why not, in words."""
    name = test.meta.get("dataset")
    if not isinstance(name, str) or not name:
        return "the table does not name its dataset (meta['dataset'])"
    spec = _dataset_spec(test)
    if spec is None:
        return f"the dataset {name!r} is not one this machine can open (see dynexit.data.get_dataset)"
    if spec.num_classes != test.num_classes:
        return f"the table has {test.num_classes} classes, the dataset {name!r} {spec.num_classes}"
    return None


def dataset_spec(test):
    """The dataset the table's rows come from (a :class:`dynexit.data.DatasetSpec`), when the table
    names it and the registry opens it here; None otherwise (then the images cannot be shown)."""
    spec = _dataset_spec(test)
    return spec if spec is not None and spec.num_classes == test.num_classes else None
