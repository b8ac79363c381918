"""The ``dynexit`` CLI's one error protocol and its argument types.

A problem with what the user asked for is a :class:`UsageError` (a ValueError), raised by
:class:`Parser` for argparse's own errors and by the commands; :func:`dynexit.cli.run` prints it,
and any other ValueError or OSError, as one stderr line ``dynexit CMD: error: ...`` and exits 2.
Each ``*_arg`` type checks one value as argparse reads it, so a bad one is refused before any model
or data loads.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


class UsageError(ValueError):
    """A problem with what the user asked for: printed as one line, exit 2.

    ``prog`` is the command it belongs to (``dynexit bench``); :func:`run` fills it in.
    """

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """Exact option names only (``--data`` is not ``--data-root``), and errors as UsageError."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message, self.prog)


# ----------------------------------------------------------------------------- argument types
# Each checks one value as argparse reads it, so a bad one is refused before anything loads.

def budget_arg(text: str) -> float:
    """A budget: a positive, finite number of MFLOPs per image."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (a budget is MFLOPs per image)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"a budget is a positive, finite number of MFLOPs per image, got {text!r}")
    return value


def comma_items(text: str, what: str) -> list[str]:
    """The items of a comma-separated list, stripped; every item must be there (``1,,2``, ``256,`` and
    ``''`` are errors: a stray comma is a typo, not a value to drop)."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} (an empty item)")
    return items


_INFINITIES = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def _finite_float(item: str, text: str, what: str) -> float:
    try:
        value = float(item)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} ({item!r} is not a number)") from None
    if not math.isfinite(value):  # nan, or a number beyond the float range such as 1e999
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r} ({item!r} is not a finite number)")
    return value


def floats_arg(text: str) -> list[float]:
    """Comma-separated finite numbers (e.g. loss weights ``1,0.5,1``); no empty items, no nan or inf."""
    return [_finite_float(item, text, "finite numbers") for item in comma_items(text, "finite numbers")]


def thresholds_arg(text: str) -> list[float]:
    """Comma-separated thresholds: finite numbers, or the words ``inf`` (nobody leaves there) and ``-inf``
    (everyone does). Infinity must be written as a word: ``1e999`` (which float() rounds to inf) and
    ``nan`` are errors, and so are empty items."""
    what = "numbers (or the words inf and -inf)"
    return [_INFINITIES[item.lower()] if item.lower() in _INFINITIES else _finite_float(item, text, what)
            for item in comma_items(text, what)]


def costs_arg(text: str) -> list[float]:
    """Comma-separated cumulative per-exit costs: positive, finite, non-decreasing (e.g. ``1.5,4,9.2``)."""
    values = [_finite_float(item, text, "positive costs") for item in comma_items(text, "positive costs")]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"costs must be positive, got {text!r}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"costs are cumulative (exit k's includes everything before it), so they "
                                         f"must not decrease along the exits, got {text!r}")
    return values


def positive_int_arg(text: str) -> int:
    """An integer of at least 1 (a batch size, a count of images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float_arg(text: str) -> float:
    """A positive, finite number (e.g. ``--epochs 0.5``: half an epoch)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def positive_ints_arg(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. batch sizes ``256,1``; no empty items."""
    items = comma_items(text, "positive integers")
    try:
        return [positive_int_arg(item) for item in items]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def output_file(suffix: str = ".json"):
    """The argparse type of a file to write, e.g. ``output_file(".npz")``: not empty, not a folder, and
    its folder exists (nothing is created silently); errors suggest a ``result{suffix}`` name."""
    from dynexit.bench import check_output_path

    def check(text: str) -> str:
        try:
            check_output_path(text, suffix)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    check.__name__ = f"{suffix.lstrip('.')} output file"
    return check


output_file_arg = output_file(".json")


def directory_arg(text: str) -> str:
    """An existing folder (what it must hold is checked by the command, before it loads anything)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")
    return str(path)


def existing_file_arg(text: str) -> str:
    """An existing regular file (its content is checked by the command)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: {'a folder, not a file' if path.exists() else 'no such file'}")
    return str(path)


def data_arg(text: str) -> tuple[str, str | None]:
    """``--data NAME[:ROOT]`` -> ``(dataset name, root or None)``: :func:`dynexit.data.parse_data`, the
    one parser of that string, with its ValueError as argparse's error."""
    from dynexit.data import parse_data

    try:
        return parse_data(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def json_object_arg(text: str) -> dict:
    """A JSON object, e.g. model kwargs ``{"drop_rate": 0.1}``; nesting too deep to parse is an error too."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r} ({err.msg})") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}... (nested too deeply)") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}")
    return value
