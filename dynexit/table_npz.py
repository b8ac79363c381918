"""Reading an ExitTable ``.npz`` safely: every array's header is checked before its data is read.

Used by :meth:`dynexit.table.ExitTable.load` (which adds the path to every message); never unpickles.
Float32 logits stored uncompressed are memory-mapped after a CRC-32 check; others are converted to
float32 chunk by chunk while read.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from dynexit import arrays
from dynexit.arrays import row_chunks

_REQUIRED_KEYS = ("logits", "labels", "costs", "exit_names", "index", "meta")
# what each stored array must be: allowed dtype kinds and number of dimensions
_STORED = {"logits": ("f", 3), "labels": ("iu", 1), "costs": ("f", 1), "exit_names": ("U", 1),
           "index": ("iu", 1), "meta": ("U", 0)}
FIX = "rebuild the table (dynexit.tables) or restore the file"


def max_abs(arr: np.ndarray) -> float:
    """max |arr| of (N, ...) float logits, a row chunk at a time (no full-size temporary)."""
    row = int(np.prod(arr.shape[1:]))
    return max(float(np.abs(arr[rows]).max()) for rows in row_chunks(len(arr), row))


class TableFileError(Exception):
    """A problem found in a table file, worded for the user (``load`` adds the path)."""


def describe(err: Exception) -> str:
    """A library error in a few words, never numpy's advice to load with allow_pickle."""
    text = " ".join(str(err).split()) or type(err).__name__
    if "pickle" in text:
        return "it holds pickled Python objects, which dynexit never loads"
    return f"{type(err).__name__}: {text[:300]}"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a table file, each header checked (dtype, rank, size) before its data is read."""
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        members = set(zf.namelist())
        missing = [k for k in _REQUIRED_KEYS if f"{k}.npy" not in members]
        if missing:
            raise TableFileError(f"not a dynexit ExitTable (missing arrays: {', '.join(missing)})")
        for key, (kinds, ndim) in _STORED.items():
            info = zf.getinfo(f"{key}.npy")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                if dtype.hasobject or dtype.kind not in kinds or len(shape) != ndim:
                    what = "Python objects" if dtype.hasobject else f"dtype {dtype}"
                    raise TableFileError(f"array {key!r} holds {what} with {len(shape)} dimensions; an "
                                          f"ExitTable stores it as {ndim}-dimensional {_KIND_NAMES[kinds]}")
                # the header must not promise more data than the member holds (no huge allocations)
                if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                    raise TableFileError(f"array {key!r}: its header says shape {shape} of {dtype}, more than "
                                          "the file holds (damaged header)")
            mapped = _map_float32(path, zf, info) if key == "logits" else None
            if mapped is not None:
                arrays[key] = mapped
                continue
            with zf.open(info) as f:  # read_array wants the member from its start
                if key == "logits":
                    arrays[key] = _read_as_float32(f)
                else:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def _map_float32(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A read-only memory map of a member stored uncompressed as C-order little-endian float32
    (``save(compress=False)``), its CRC-32 checked like zipfile's; None for any other member.

    Nothing is copied or converted, so such a table loads in the time of one pass over its bytes
    (CRC, then the constructor's NaN check). The map reads the file as it is on disk: ``save``
    replaces files (a new inode), which leaves a mapped table intact.
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        header_size = f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype != np.dtype("<f4") or fortran_order or header_size + 4 * count != info.file_size or count == 0:
        return None
    with open(path, "rb") as raw:  # the data starts after the member's local header, name and extra field
        raw.seek(info.header_offset)
        local = raw.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header of {info.filename!r}")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        raw.seek(start)
        crc = zlib.crc32(raw.read(header_size))
    data = np.memmap(path, dtype=np.float32, mode="r", offset=start + header_size, shape=(count,))
    for rows in row_chunks(count, 1):
        crc = zlib.crc32(data[rows], crc)
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")  # zipfile's own words
    return data.reshape(shape)


def _read_as_float32(f) -> np.ndarray:
    """The float array of an open ``.npy`` member as float32, converted chunk by chunk while it is read
    (a float16 file never exists in memory twice, a float64 one never at full size). Out-of-range
    float64 values become inf, which the constructor reports."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.float32)
    step = max(1, arrays.CHUNK_VALUES // 2)
    with np.errstate(over="ignore"):
        for start in range(0, count, step):
            n = min(step, count - start)
            data = f.read(n * dtype.itemsize)
            if len(data) != n * dtype.itemsize:
                raise ValueError(f"EOF: reading array data, expected {n * dtype.itemsize} bytes got {len(data)}")
            out[start:start + n] = np.frombuffer(data, dtype=dtype)
    f.read(1)  # reach the end of the member, so that zipfile checks its CRC-32
    return out.reshape(shape[::-1]).transpose() if fortran_order else out.reshape(shape)


_KIND_NAMES = {"f": "floats", "iu": "integers", "U": "strings"}
