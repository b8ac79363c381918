"""Turn any uploaded image into what a Fashion-MNIST model sees, or say clearly why not.

Fashion-MNIST images are 28 x 28, grayscale, a light object centred on a black background. An
uploaded photo is usually none of these, so :func:`prepare_image` converts it step by step and
records every step as a plain-language note the app shows next to the result:

1. decode it with Pillow, all of it inside one guard (see :func:`_decode`): the header first (refuse
   non-images, empty or too large files and images of more than ``max_pixels`` pixels *before*
   decoding, so a decompression bomb never expands), then the pixels. Whatever a decoder raises on a
   damaged file (``OSError``, ``SyntaxError``, ``IndexError``, ``struct.error``, ``TypeError``, a
   ``ValueError`` for an oversized PNG text chunk, ...) becomes an :class:`ImageRejected`;
2. animated GIF / WebP / APNG: the first frame is used (with a note), not rejected;
3. turn it upright (EXIF orientation), then to gray in [0, 1] by the mode's real range: 8-bit by 255,
   16-bit by 65535 (not clipped at 255), 32-bit integers by their range, floats kept when in [0, 1]
   and stretched otherwise; NaN or infinite pixels are refused;
4. transparency: the transparent part is the background. It is filled with black when the opaque
   object is light and with white when it is dark, so object and background always contrast (step 6
   then makes it light on black either way);
5. fit the longest side to 28 pixels (aspect kept) and pad the short side with the image's own
   background colour;
6. polarity: with ``invert="auto"`` an object darker than its background (a dark object on white
   paper, or on mid-gray) is inverted so the object is light on black, as in Fashion-MNIST; the
   background level is then set to black;
7. a blank or nearly uniform result (nothing to classify) is kept but flagged in
   :attr:`PreparedImage.warnings`, so the app shows a warning next to the meaningless prediction.

Every refusal is an :class:`ImageRejected` (a ``ValueError``) whose message a user can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000      # 40 megapixels, e.g. a 7,700 x 5,200 photo
MAX_BYTES = 25 * 1024 * 1024  # 25 MB
SIZE = 28
WORK_SIZE = 256              # decoded images are shrunk to at most this (area average) before the float steps
MIN_SPREAD = 0.03            # std of the 28 x 28 input below this: blank or nearly uniform (one lit pixel is 0.036)
FORMATS = "PNG, JPEG, GIF, BMP, TIFF, WebP"
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageRejected(ValueError):
    """The upload cannot be used; the message says why and what to do."""


@dataclass
class PreparedImage:
    """An upload converted for the model, and how.

    ``array``: (SIZE, SIZE) float32 in [0, 1], light object on black: exactly the model's input.
    ``preview``: (h, w, 3) uint8 RGB, longest side at most 256: the upload after decoding, scaling
    (16-bit, float) and filling the transparent background, i.e. what the conversion started from.
    ``warnings``: problems that do not stop the model but make its answer meaningless (a blank
    image); each is also in ``notes``.
    """

    array: np.ndarray
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)   # (width, height) as uploaded
    original_mode: str = ""                   # Pillow mode as uploaded, e.g. "RGBA", "I;16"
    inverted: bool = False
    preview: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def tensor(self):
        """The image as the model's input batch (1, 1, SIZE, SIZE)."""
        import torch
        return torch.from_numpy(np.ascontiguousarray(self.array, dtype=np.float32))[None, None]


@dataclass
class _Decoded:
    """Pixels out of Pillow, shrunk to at most WORK_SIZE: gray (h, w), rgb (h, w, 3), alpha (h, w) or None."""

    gray: np.ndarray
    rgb: np.ndarray
    alpha: np.ndarray | None
    fmt: str
    mode: str
    size: tuple[int, int]       # (width, height) as uploaded
    upright: tuple[int, int]    # (width, height) after the EXIF rotation


# ----------------------------------------------------------------------------- decoding (Pillow)

def _decode(data: bytes, max_pixels: int, notes: list[str]) -> _Decoded:
    """Every Pillow step on the uploaded bytes, in one guard.

    Pillow's decoders raise a zoo of exception types on damaged files (found by fuzzing: OSError,
    SyntaxError, EOFError, IndexError, struct.error, TypeError, KeyError, RuntimeError,
    ZeroDivisionError, ValueError, ...), from ``open``, ``seek``, ``load``, the EXIF reader and
    ``convert`` alike. They all mean the same to the user: this file cannot be read. So everything
    that touches the upload runs here, and any ``Exception`` that is not already our own refusal
    becomes one; the original is chained (``from err``) for logs. Our own numeric steps run outside.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            fmt, mode, size = img.format or "image", img.mode, img.size
            w, h = size
            if w < 1 or h < 1:
                raise ImageRejected(f"the image has no pixels ({w} x {h})")
            if w * h > max_pixels:
                raise ImageRejected(f"the image is {w} x {h} = {w * h / 1e6:.1f} megapixels; the limit is "
                                    f"{max_pixels / 1e6:.0f} megapixels: save a smaller copy")
            _first_frame(img, notes)
            img.load()
            img = _upright(img, notes)
            upright = img.size
            gray, rgb, alpha = _pixels(img, notes)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(f"the image has too many pixels to open safely ({err}); the limit is "
                            f"{max_pixels / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"this file is not an image Pillow can read; upload one of: {FORMATS}") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure on untrusted bytes (see the docstring)
        raise ImageRejected(_damaged_message(err)) from err
    return _Decoded(gray, rgb, alpha, fmt, mode, size, upright)


def _exception_name(err: Exception) -> str:
    kind = type(err)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _damaged_message(err: Exception) -> str:
    detail = f"{_exception_name(err)}: {err}" if str(err) else _exception_name(err)
    if len(detail) > 160:
        detail = detail[:157] + "..."
    if isinstance(err, ValueError) and "MAX_TEXT" in str(err):  # PngImagePlugin's limits on text chunks
        return (f"the image carries a text (metadata) chunk larger than is safe to read ({detail}); "
                "save a copy without metadata (e.g. export as a new PNG or JPEG) and upload that")
    return (f"the image file is damaged or truncated, or uses a variant the decoder cannot read ({detail}); "
            "open it in an image viewer, save it again as PNG or JPEG and upload that copy")


def _first_frame(img: Image.Image, notes: list[str]):
    """Seek to the first frame of an animation (noted); a damaged later frame does not refuse the first."""
    try:
        if not getattr(img, "is_animated", False):  # reads the start of the second frame
            return
        frames = f"{img.n_frames} frames"            # walks every frame
    except Exception as err:  # noqa: BLE001 - only later frames are lost; load() still checks the first
        frames = f"its later frames are damaged: {_exception_name(err)}"
    img.seek(0)
    notes.append(f"animated image ({frames}): only the first frame is used")


def _upright(img: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as err:  # noqa: BLE001 - a damaged EXIF block; the pixels themselves are fine
        notes.append(f"its EXIF orientation could not be read ({_exception_name(err)}): used as stored")
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    notes.append("turned upright as its EXIF orientation says")
    return ImageOps.exif_transpose(img)


def _shrink(img: Image.Image) -> Image.Image:
    """Longest side to at most WORK_SIZE by area average (BOX), before any float copy is made."""
    if max(img.size) > WORK_SIZE:
        img = img.copy()
        img.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX)
    return img


def _float_pixels(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Gray in [0, 1] of a 16-bit, 32-bit integer or float image; NaN / inf refused."""
    mode = img.mode
    a = np.asarray(img, dtype=np.float32)  # full resolution (up to MAX_PIXELS): float32 halves the memory
    if mode == "F":
        bad = ~np.isfinite(a)
        if bad.any():
            share = f"{bad.mean():.0%}" if bad.mean() >= 0.005 else f"{int(bad.sum())} of {bad.size}"
            raise ImageRejected(f"{share} of the pixels are NaN or infinite (a floating-point image with "
                                "missing values); fill or remove them and save the image again")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            notes.append("floating-point image: values already in 0..1")
            return a
        notes.append(f"floating-point image with values {lo:g}..{hi:g}: stretched to 0..1")
        # in float64: hi - lo of a float32 image can overflow float32 (e.g. -3.4e38..3.4e38)
        return ((a.astype(np.float64) - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a)
    if mode.startswith("I;16"):
        notes.append("16-bit grayscale: scaled from 0..65535 to 0..1")
        return a / 65535.0
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 255:
        notes.append("32-bit integer image with values 0..255: scaled to 0..1")
        return a / 255.0
    if lo >= 0 and hi <= 65535:
        notes.append("32-bit integer image with values 0..65535 (16-bit data): scaled to 0..1")
        return a / 65535.0
    notes.append(f"32-bit integer image with values {lo:g}..{hi:g}: stretched to 0..1")
    return ((a.astype(np.float64) - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a)


def _pixels(img: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(gray (h, w), rgb (h, w, 3), alpha (h, w) or None), float64 in [0, 1], longest side <= WORK_SIZE."""
    mode = img.mode
    if mode in _INT_MODES or mode == "F":
        gray = _float_pixels(img, notes)  # full resolution: NaN must be seen before averaging hides or spreads it
        small = _shrink(Image.fromarray(gray.astype(np.float32)))
        gray = np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)  # small from here on: float64
        return gray, np.repeat(gray[..., None], 3, axis=2), None
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("RGB")
        notes.append("palette image: colours looked up")
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK image (print colours): converted to RGB")
    elif mode == "1":
        img = img.convert("L")
        notes.append("black-and-white (1-bit) image")
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")
        notes.append(f"{mode} image: converted to RGB")
    img = _shrink(img)  # RGBA is resized premultiplied: transparent pixels' colour does not bleed in
    alpha = None
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"), dtype=np.float64) / 255.0
        img = img.convert("RGB")
    if img.mode == "RGB":
        rgb = np.asarray(img, dtype=np.float64) / 255.0
        gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0  # ITU-R 601-2 luma
        if mode not in ("L", "LA", "1"):
            notes.append("colour converted to gray (luma)")
    else:
        gray = np.asarray(img, dtype=np.float64) / 255.0
        rgb = np.repeat(gray[..., None], 3, axis=2)
    return gray, rgb, alpha


# ----------------------------------------------------------------------------- numeric steps (ours)

def _fill_transparent(d: _Decoded, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Composite on a background that contrasts with the opaque object; (gray, rgb)."""
    if d.alpha is None:
        return d.gray, d.rgb
    alpha = d.alpha
    if alpha.min() >= 1.0:
        notes.append(f"{d.mode} image, fully opaque: the alpha channel is not needed")
        return d.gray, d.rgb
    weight = alpha.sum()
    object_level = float((d.gray * alpha).sum() / weight) if weight > 0 else 0.0
    if weight > 0 and object_level > 0.5:
        fill, what = 0.0, f"black (the object is light, mean {object_level:.2f})"
    else:
        fill, what = 1.0, ("white (nothing is opaque)" if weight == 0 else f"white (the object is dark, mean "
                                                                            f"{object_level:.2f})")
    notes.append(f"{d.mode} image with transparency: the alpha channel is the silhouette, the transparent "
                 f"background filled with {what} so it contrasts with the object")
    gray = d.gray * alpha + fill * (1 - alpha)
    rgb = d.rgb * alpha[..., None] + fill * (1 - alpha[..., None])
    return gray, rgb


def _fit(gray: np.ndarray, size: int, notes: list[str], original: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Longest side to ``size`` (aspect kept), padded with the border's median; (array, background)."""
    h, w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (h, w) != (nh, nw):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR  # BOX: area average
        small = np.asarray(Image.fromarray(gray.astype(np.float32)).resize((nw, nh), resample))
    else:
        small = gray
    out = np.full((size, size), background, dtype=np.float64)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.clip(small, 0, 1)
    what = f"resized from {original[0]} x {original[1]} to {nw} x {nh} pixels (aspect ratio kept)"
    if (nh, nw) != (size, size):
        what += f", padded to {size} x {size} with the background colour"
    notes.append(what if tuple(original) != (size, size) else f"already {size} x {size}: not resized")
    return out, background


def prepare_image(data: bytes, invert: bool | str = "auto", size: int = SIZE, max_pixels: int = MAX_PIXELS,
                  max_bytes: int = MAX_BYTES) -> PreparedImage:
    """Convert uploaded bytes to a (size, size) float32 image in [0, 1], light object on black.

    ``invert``: ``"auto"`` inverts when the image is on average darker than its background (the median
    of the border pixels), i.e. the object is dark (a uniform image: when the background is light);
    ``True`` / ``False`` force it (anything else: ``ValueError``). Raises :class:`ImageRejected` (a
    ``ValueError``) with a message for the user for an empty, oversized, unreadable or damaged file and
    for NaN / infinite pixels; never any other exception for any bytes. A blank or nearly uniform
    result is returned with an entry in ``warnings`` (and ``notes``).
    """
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    data = bytes(data)
    if not data:
        raise ImageRejected("the file is empty: choose an image file (" + FORMATS + ")")
    if len(data) > max_bytes:
        raise ImageRejected(f"the file is {len(data) / 2**20:.1f} MB; images up to {max_bytes / 2**20:.0f} MB are "
                            f"accepted: save a smaller copy (the model takes only {size} x {size} pixels)")
    notes: list[str] = []
    decoded = _decode(data, max_pixels, notes)
    gray, rgb = _fill_transparent(decoded, notes)
    arr, background = _fit(gray, size, notes, decoded.upright)
    if invert == "auto":  # the object is what differs from the background: invert when it is the darker side
        mean = float(arr.mean())
        do_invert = mean < background if abs(mean - background) > 1e-3 else background > 0.5
    else:
        do_invert = bool(invert)
    if do_invert:
        arr, background = 1.0 - arr, 1.0 - background
        notes.append("inverted: the object is darker than its background (the model was trained on light objects on black)"
                     if invert == "auto" else "inverted (your choice)")
    elif invert == "auto":
        notes.append("not inverted: the object is already lighter than its background, as in the training images")
    if 0.02 < background < 0.98:  # a gray background would hide a dark object or dim a light one
        arr = np.clip((arr - background) / (1.0 - background), 0.0, 1.0)
        notes.append(f"background level {background:.2f} set to black (as in the training images)")
    found = []
    spread = float(arr.std())
    if spread < MIN_SPREAD:
        found.append(f"the image is blank or nearly uniform (pixel spread {spread:.3f}, a photo of one object has "
                     "0.2 or more): there is no object for the model to classify, so its answer means nothing; "
                     "upload a photo of one object on a plain background")
    notes.insert(0, f"read a {decoded.fmt} image, {decoded.size[0]} x {decoded.size[1]} pixels, mode {decoded.mode}")
    notes.extend(found)
    if not np.all(np.isfinite(arr)):  # a guard on our own arithmetic: never hand the model NaN / inf
        raise ImageRejected("the image's pixel values could not be converted to numbers in 0..1 (they overflow); "
                            "save it as an 8- or 16-bit PNG or JPEG and upload that")
    preview = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return PreparedImage(arr.astype(np.float32), notes, decoded.size, decoded.mode, do_invert, preview, found)
