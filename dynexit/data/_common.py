"""What every dataset shares: the split names and the error raised when files are missing."""

from __future__ import annotations

SPLITS = ("train", "val", "test")


class DataNotFoundError(ValueError, FileNotFoundError):
    """The dataset files are not where they were looked for (a ValueError, and a FileNotFoundError)."""


def check_split(split: str) -> str:
    """``split`` when it is train, val or test; ValueError naming the choices otherwise."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return split
