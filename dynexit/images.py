"""Turn any uploaded image into what a Fashion-MNIST model sees, or say clearly why not.

Fashion-MNIST images are 28 x 28, grayscale, a light object centred on a black background. An
uploaded photo is usually none of these, so :func:`prepare_image` converts it step by step and
records every step as a plain-language note the app shows next to the result:

1. read it with Pillow (header first: refuse non-images, empty or too large files and images of
   more than ``max_pixels`` pixels *before* decoding them, so a decompression bomb never expands);
2. animated GIF / WebP / APNG: the first frame is used (with a note), not rejected;
3. turn it upright (EXIF orientation), then to gray: transparency is composited on white, palette,
   CMYK, YCbCr, LAB and HSV go through RGB, 16-bit and 32-bit integer images are scaled by their
   real range (65535 for 16-bit, not clipped at 255), float images kept when in [0, 1];
4. fit the longest side to 28 pixels (aspect kept) and pad the short side with the image's own
   background colour;
5. polarity: with ``invert="auto"`` a light background (a dark object on white paper) is inverted
   so the object is light on black, as in Fashion-MNIST; the background level is then set to black.

Every refusal is an :class:`ImageRejected` (a ``ValueError``) whose message a user can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000      # 40 megapixels, e.g. a 7,700 x 5,200 photo
MAX_BYTES = 25 * 1024 * 1024  # 25 MB
SIZE = 28
FORMATS = "PNG, JPEG, GIF, BMP, TIFF, WebP"


class ImageRejected(ValueError):
    """The upload cannot be used; the message says why and what to do."""


@dataclass
class PreparedImage:
    """An upload converted for the model, and how."""

    array: np.ndarray            # (SIZE, SIZE) float32 in [0, 1], light object on black
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)   # (width, height) as uploaded
    original_mode: str = ""                   # Pillow mode as uploaded, e.g. "RGBA", "I;16"
    inverted: bool = False

    def tensor(self):
        """The image as the model's input batch (1, 1, SIZE, SIZE)."""
        import torch
        return torch.from_numpy(np.ascontiguousarray(self.array, dtype=np.float32))[None, None]


def _open(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    if not data:
        raise ImageRejected("the file is empty: choose an image file (" + FORMATS + ")")
    if len(data) > max_bytes:
        raise ImageRejected(f"the file is {len(data) / 2**20:.1f} MB; images up to {max_bytes / 2**20:.0f} MB are "
                            "accepted: save a smaller copy (a Fashion-MNIST image is only 28 x 28 pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(f"the image has too many pixels to open safely ({err}); the limit is "
                            f"{max_pixels / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"this file is not an image Pillow can read; upload one of: {FORMATS}") from None
    except OSError as err:
        raise ImageRejected(f"the image could not be read ({err}); upload one of: {FORMATS}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageRejected(f"the image has no pixels ({w} x {h})")
    if w * h > max_pixels:
        raise ImageRejected(f"the image is {w} x {h} = {w * h / 1e6:.1f} megapixels; the limit is "
                            f"{max_pixels / 1e6:.0f} megapixels: save a smaller copy")
    return img


def _load_first_frame(img: Image.Image, notes: list[str]) -> Image.Image:
    frames = getattr(img, "n_frames", 1)
    if getattr(img, "is_animated", False) or frames > 1:
        img.seek(0)
        notes.append(f"animated image ({frames} frames): only the first frame is used")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(f"the image file is damaged or truncated ({err}); save it again and retry") from None
    upright = ImageOps.exif_transpose(img)
    if upright is not None and upright.size != img.size:
        notes.append("turned upright as its EXIF orientation says")
    return upright if upright is not None else img


def _to_gray(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Gray float32 array in [0, 1] at the image's own resolution."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img.convert("I") if mode != "I" else img, dtype=np.float64)
        if mode.startswith("I;16"):
            notes.append("16-bit grayscale: scaled from 0..65535 to 0..1")
            return (a / 65535.0).astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 255:
            notes.append("32-bit integer image with values 0..255: scaled to 0..1")
            return (a / 255.0).astype(np.float32)
        if lo >= 0 and hi <= 65535:
            notes.append("32-bit integer image with values 0..65535 (16-bit data): scaled to 0..1")
            return (a / 65535.0).astype(np.float32)
        notes.append(f"32-bit integer image with values {lo:g}..{hi:g}: stretched to 0..1")
        return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            notes.append("floating-point image: values already in 0..1")
            return a.astype(np.float32)
        notes.append(f"floating-point image with values {lo:g}..{hi:g}: stretched to 0..1")
        return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info) \
        or (mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        notes.append(f"{mode} image with transparency: composited on a white background")
    elif mode == "P":
        img = img.convert("RGB")
        notes.append("palette image: colours looked up")
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK image (print colours): converted to RGB")
    elif mode == "1":
        notes.append("black-and-white (1-bit) image")
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")
        notes.append(f"{mode} image: converted to RGB")
    if img.mode != "L":
        img = img.convert("L")  # ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B
        notes.append("colour converted to gray (luma)")
    if max(img.size) > 8 * SIZE:  # shrink big photos while still 8-bit (area average): float copies stay small
        img.thumbnail((8 * SIZE, 8 * SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _fit(gray: np.ndarray, size: int, notes: list[str], original: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Longest side to ``size`` (aspect kept), padded with the border's median; (array, background)."""
    h, w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (h, w) != (nh, nw):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR  # BOX: area average
        small = np.asarray(Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32)).resize((nw, nh), resample))
    else:
        small = gray
    out = np.full((size, size), background, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.clip(small, 0, 1)
    what = f"resized from {original[0]} x {original[1]} to {nw} x {nh} pixels (aspect ratio kept)"
    if (nh, nw) != (size, size):
        what += f", padded to {size} x {size} with the background colour"
    notes.append(what if tuple(original) != (size, size) else f"already {size} x {size}: not resized")
    return out, background


def prepare_image(data: bytes, invert: bool | str = "auto", size: int = SIZE, max_pixels: int = MAX_PIXELS,
                  max_bytes: int = MAX_BYTES) -> PreparedImage:
    """Convert uploaded bytes to a (size, size) float image in [0, 1], light object on black.

    ``invert``: ``"auto"`` inverts when the background (the median of the border pixels) is light;
    ``True`` / ``False`` force it. Raises :class:`ImageRejected` with a message for the user.
    """
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    notes: list[str] = []
    img = _open(bytes(data), max_pixels, max_bytes)
    fmt, mode, original_size = img.format or "image", img.mode, img.size
    img = _load_first_frame(img, notes)
    upright_size = img.size  # (w, h) after EXIF rotation, before any shrinking
    gray = _to_gray(img, notes)
    arr, background = _fit(gray, size, notes, upright_size)
    do_invert = background > 0.5 if invert == "auto" else bool(invert)
    if do_invert:
        arr, background = 1.0 - arr, 1.0 - background
        notes.append("inverted: the background was light, Fashion-MNIST objects are light on black"
                     if invert == "auto" else "inverted (your choice)")
    elif invert == "auto":
        notes.append("not inverted: the background is already dark, as in Fashion-MNIST")
    if 0.02 < background < 0.5:
        arr = np.clip((arr - background) / (1.0 - background), 0.0, 1.0)
        notes.append(f"background level {background:.2f} set to black (as in Fashion-MNIST)")
    notes.insert(0, f"read a {fmt} image, {original_size[0]} x {original_size[1]} pixels, mode {mode}")
    return PreparedImage(arr.astype(np.float32), notes, original_size, mode, do_invert)
