"""What the app can open: every entry of the zoo folder, and the table pairs this session uploaded.

- Folder entries (:mod:`dynexit.zoo.folder`): ``DYNEXIT_ZOO=DIR`` (default ``data/zoo``) lists every
  ``NAME.val.npz`` + ``NAME.test.npz`` pair in DIR, the six zoo models and anyone's own; weights
  (``NAME.safetensors``) are optional. Their ExitTables are shared by all sessions
  (``st.cache_resource``, one object per file version: read-only, so safe across threads).
- Uploads: a val / test pair uploaded in the sidebar is validated once and kept in this session's
  state only (other users never see it), named ``upload:<sha256 prefix>``; results derived from it
  are cached by that content hash like a file's by its version.

Class names and images come from the test table (``meta["class_names"]``, ``meta["dataset"]`` and
``index``) and the dataset registry, never from a fixed dataset.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from dynexit import zoo
from dynexit.zoo import folder

UPLOADS = "uploaded_tables"  # session key: {name: (label, val table, test table)}, newest last
UPLOAD_PREFIX = "upload:"
MAX_UPLOAD_MB = 100  # per table file; bigger tables go in a folder (DYNEXIT_ZOO=DIR), which is memory-mapped
MAX_UPLOADS = 4  # per session: the oldest is forgotten first


def is_upload(name: str) -> bool:
    """True for a table pair uploaded in this session (no file, no weights)."""
    return name.startswith(UPLOAD_PREFIX)


def _uploads() -> dict:
    return st.session_state.setdefault(UPLOADS, {})


def names() -> list[str]:
    """The entries of the zoo folder (zoo models first), then this session's uploads."""
    return folder.entry_names() + list(_uploads())


def skipped() -> list[str]:
    """The folder's table files that are not part of an entry, and why (the sidebar says so)."""
    return folder.skipped_files()


def label(name: str) -> str:
    """How an entry is shown in the sidebar."""
    if is_upload(name):
        return _uploads()[name][0] if name in _uploads() else name
    return name if folder.has_weights(name) or name in zoo.ENTRIES else f"{name} (tables only)"


def title(name: str) -> str:
    """The entry's name in sentences: its file stem, or an upload's file name (no "(tables only)")."""
    return label(name) if is_upload(name) else name


def has_weights(name: str) -> bool:
    """Whether the entry has a model to run (attention maps, attributions, your own image)."""
    return not is_upload(name) and folder.has_weights(name)


def version(name: str) -> tuple:
    """Part of the key of everything cached about ``name``: the folder and its files' modification
    times (a rebuilt file is read again without a restart), or an upload's content hash."""
    if is_upload(name):
        return ("upload", name)
    files = [folder.table_path(name, s) for s in folder.SPLITS] + [folder.weights_path(name)]
    return (str(zoo.zoo_dir()), *(folder.modified_ns(f) for f in files))


@st.cache_resource(show_spinner="Loading the ExitTables ...", max_entries=32)
def _pair(name: str, version: tuple):
    val, test = folder.load_table(name, "val"), folder.load_table(name, "test")
    folder.check_pair(val, test, name)  # thresholds fitted on val only mean something on test of the same model
    return val, test


def table(name: str, split: str = "test"):
    """The ExitTable of ``name`` on ``split`` in its own cost unit. ValueError naming the file and the
    problem (a damaged file) or saying the upload is gone (a session older than the server)."""
    if is_upload(name):
        if name not in _uploads():
            raise ValueError(f"the uploaded tables {name} are no longer in this session; upload them again")
        return _uploads()[name][1 if split == "val" else 2]
    return _pair(name, version(name))[0 if split == "val" else 1]


# ----------------------------------------------------------------------------- uploads

def _read_upload(data: bytes, what: str):
    from dynexit.table import ExitTable
    from dynexit.table_npz import FIX

    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"{what} is {len(data) / 2**20:.0f} MB, over the {MAX_UPLOAD_MB} MB upload limit: put the "
                         "pair in a folder and start the app with DYNEXIT_ZOO=FOLDER (README: \"The app\")")
    with tempfile.TemporaryDirectory() as tmp:  # ExitTable.load reads a path (and checks it fully)
        path = Path(tmp) / "table.npz"
        path.write_bytes(data)
        try:
            table = ExitTable.load(path)
        except ValueError as err:
            text = str(err).removeprefix(f"{path}: ").replace(FIX, "save it with ExitTable.save (or `dynexit table`)")
            raise ValueError(f"{what}: {text}") from None
        # a memory map of a file about to be deleted stays valid on POSIX, but a copy keeps it simple
        if isinstance(table.logits, np.memmap):
            table = ExitTable(np.array(table.logits), table.labels, table.costs, table.exit_names, table.index,
                              table.meta)
    return table


def add_upload(val_file, test_file) -> str:
    """Validate an uploaded pair (Streamlit UploadedFile objects, or anything with ``name`` and
    ``getvalue()``) and keep it in this session; returns its entry name.

    ValueError naming the file and the problem: over :data:`MAX_UPLOAD_MB`, not an ExitTable, damaged,
    or val and test not of one model (:func:`dynexit.zoo.folder.check_pair`).
    """
    val = _read_upload(val_file.getvalue(), f"val table {val_file.name!r}")
    test = _read_upload(test_file.getvalue(), f"test table {test_file.name!r}")
    folder.check_pair(val, test)
    digest = hashlib.sha256(val.fingerprint.encode() + test.fingerprint.encode()).hexdigest()[:16]
    name = UPLOAD_PREFIX + digest
    stem = Path(test_file.name).name.removesuffix(".npz").removesuffix(".test")
    store = _uploads()
    store.pop(name, None)
    taken = {entry[0] for entry in store.values()}
    label = next(f"{stem} (uploaded{'' if i == 1 else f' {i}'})" for i in range(1, len(taken) + 2)
                 if f"{stem} (uploaded{'' if i == 1 else f' {i}'})" not in taken)
    store[name] = (label, val, test)
    while len(store) > MAX_UPLOADS:
        store.pop(next(iter(store)))
    return name


# ----------------------------------------------------------------------------- classes and images

def class_names(name: str) -> list[str]:
    """The entry's class names (C,): recorded in its test table, or its dataset's, or ``class i``."""
    return folder.class_names(table(name, "test"))


def short_names(name: str) -> list[str]:
    """Class names cut to 8 characters, for gallery captions and bar labels."""
    return [c if len(c) <= 8 else c[:7] + "." for c in class_names(name)]


@st.cache_resource(show_spinner="Loading the images ...", max_entries=4)
def _split_images(dataset: str, root: str | None, split: str, size: tuple | None):
    """The images of a dataset split, read-only: an array (N, H, W) or (N, H, W, 3) in [0, 1] for
    datasets held in memory, else a lazy torch Dataset (ImageFolder, torchvision files)."""
    from dynexit.data import get_dataset

    spec = get_dataset(dataset, root)
    if spec.reader is not None:
        x, _ = spec.load(split)
        x = x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)
        x.setflags(write=False)
        return x
    return spec.torch_dataset(split, image_size=size) if spec.resizable else spec.torch_dataset(split)


def _source(name: str):
    test = table(name, "test")
    spec = folder.dataset_spec(test)
    if spec is None:
        return None
    size = tuple(test.meta["input_size"][1:]) if isinstance(test.meta.get("input_size"), list) else None
    return _split_images(spec.name, spec.root, str(test.meta.get("split", "test")), size)


def images_problem(name: str) -> str | None:
    """None when the entry's test images can be shown, else why not (in words, for a caption)."""
    test = table(name, "test")
    problem = folder.dataset_problem(test)
    if problem:
        return f"{problem}, so only scores are shown"
    try:
        src = _source(name)
    except (ValueError, OSError) as err:  # DataNotFoundError is an OSError / ValueError with the root
        return f"the images of {test.meta['dataset']} are not on this machine ({err})"
    if len(test) and int(test.index.max()) >= len(src):
        return f"the table's image indices go past the {len(src):,} images of {test.meta['dataset']}"
    return None


def images(name: str, rows) -> np.ndarray | None:
    """Float images in [0, 1], (n, H, W) gray or (n, H, W, 3) RGB, of the given test-table rows;
    None when they cannot be shown (:func:`images_problem` says why)."""
    if images_problem(name):
        return None
    src, index = _source(name), table(name, "test").index[np.asarray(rows, dtype=np.int64)]
    if isinstance(src, np.ndarray):
        return src[index]
    items = [src[int(i)][0].numpy() for i in index]
    out = np.stack(items) if items else np.zeros((0, 1, 1, 1), np.float32)
    return out[:, 0] if out.shape[1] == 1 else np.moveaxis(out, 1, -1)


def image(name: str, row: int) -> np.ndarray | None:
    """One test image (H, W) or (H, W, 3) in [0, 1], None when it cannot be shown."""
    out = images(name, [row])
    return None if out is None else out[0]


def model_input(img: np.ndarray) -> np.ndarray:
    """A shown image as the model takes it: (H, W) gray as it is, (H, W, 3) RGB as (3, H, W)."""
    return img if img.ndim == 2 else np.moveaxis(img, -1, 0)


def enlarge(img: np.ndarray, px: int = 168) -> np.ndarray:
    """``img`` upscaled by an integer factor (nearest neighbour: pixels stay visible) to about ``px`` pixels."""
    f = max(1, px // max(img.shape[:2]))
    return img.repeat(f, axis=0).repeat(f, axis=1)
