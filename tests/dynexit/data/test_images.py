"""prepare_image on the everyday cases: an 8-bit PNG, a 16-bit PNG, an RGBA image, damaged files."""

import io

import numpy as np
import pytest
from PIL import Image

from dynexit.data.images import SIZE, ImageRejected, prepare_image


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _light_object(dtype=np.uint8, value=200, shape=(40, 30)) -> np.ndarray:
    a = np.zeros(shape, dtype)
    a[10:30, 8:22] = value
    return a


def test_an_8bit_png_becomes_a_28x28_float_input():
    p = prepare_image(_png(_light_object()))
    assert p.array.shape == (SIZE, SIZE) and p.array.dtype == np.float32
    assert p.array.min() == 0.0 and p.array.max() == pytest.approx(200 / 255)
    assert p.original_size == (30, 40) and p.original_mode == "L" and not p.inverted
    assert p.preview.shape == (40, 30, 3) and p.preview.dtype == np.uint8
    assert p.notes[0] == "read a PNG image, 30 x 40 pixels, mode L" and p.warnings == []
    assert tuple(p.tensor().shape) == (1, 1, SIZE, SIZE)


def test_a_16bit_png_is_scaled_by_its_own_range():
    p = prepare_image(_png(_light_object(np.uint16, 60000, (40, 40))))
    assert p.original_mode.startswith("I;16")
    assert 0.85 < p.array.max() <= 60000 / 65535 + 1e-6  # not clipped at 255, not saturated
    assert p.preview.max() < 255
    assert any("16-bit" in n and "65535" in n for n in p.notes)


def test_an_rgba_dark_object_on_transparency_comes_out_light_on_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (30, 30, 30, 255)
    p = prepare_image(_png(rgba))
    assert p.original_mode == "RGBA" and p.inverted
    assert p.array[0, 0] == 0.0 and p.array[SIZE // 2, SIZE // 2] > 0.8
    assert any("transparent background filled with white" in n for n in p.notes)


@pytest.mark.parametrize("data, message", [
    (_png(_light_object())[:60], "damaged or truncated"),
    (b"hello world", "not an image Pillow can read"),
    (b"", "the file is empty"),
])
def test_damaged_files_are_rejected_with_a_message(data, message):
    with pytest.raises(ImageRejected, match=message) as err:
        prepare_image(data)
    assert isinstance(err.value, ValueError) and "PNG" in str(err.value)  # says what to upload instead
