"""Decoding the released datasets' image files (``data.images.load_image``): DICOM as displayed,
16-bit greyscale stretched, alpha composited on black."""
from pathlib import Path

import numpy as np
from PIL import Image

from openclip_unimlip.data.images import load_image

from dicom import write_dicom


def test_dicom_rescale_window_and_monochrome1(tmp_path: Path):
    stored = np.linspace(0, 4000, 20 * 24).reshape(20, 24).round()
    slope, intercept, center, width = 0.5, -100.0, 800.0, 1000.0
    write_dicom(tmp_path / "a.dcm", stored, "MONOCHROME1", (slope, intercept), (center, width))
    # Independent DICOM PS3.3 C.11.2.1.2 LINEAR windowing of the rescaled values, then inversion.
    value = stored * slope + intercept
    displayed = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    expected = 255 - np.round(displayed * 255)
    image = np.asarray(load_image(tmp_path / "a.dcm"))
    assert image.shape == (20, 24, 3)
    assert np.abs(image[..., 0].astype(float) - expected).max() <= 1
    assert image[0, 0, 0] == 255 and image[-1, -1, 0] == 0  # MONOCHROME1: low values are white

    write_dicom(tmp_path / "b.dcm", stored)  # no window: the full range, not inverted
    plain = np.asarray(load_image(tmp_path / "b.dcm"))[..., 0]
    assert plain[0, 0] == 0 and plain[-1, -1] == 255


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path):
    pixels = np.linspace(0, 60000, 20 * 24).reshape(20, 24).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = np.asarray(load_image(tmp_path / "deep.png"))
    assert image.shape == (20, 24, 3) and image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255 and len(np.unique(image)) > 100


def test_sixteen_bit_png_is_stretched_from_its_own_range(tmp_path: Path):
    """A 12-bit radiograph in a 16-bit PNG: every pixel is (v - min) / (max - min) * 255, rounded,
    computed here with numpy on the raw array (not v / 257, which would leave 16 grey levels)."""
    stored = np.random.default_rng(0).integers(100, 4096, size=(20, 24)).astype(np.uint16)
    Image.fromarray(stored).save(tmp_path / "twelve.png")
    assert Image.open(tmp_path / "twelve.png").mode == "I;16"
    raw = stored.astype(np.float64)
    expected = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    image = np.asarray(load_image(tmp_path / "twelve.png"))
    assert image.shape == (20, 24, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


def test_rgba_png_is_composited_on_black_and_other_modes_kept(tmp_path: Path):
    """RGBA: colour * alpha / 255 over black (``data.shards.to_rgb``'s rule; a pixel may differ by
    one level from rounding in Pillow's integer compositing); 8-bit grey and RGB as stored."""
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(20, 24, 4)).astype(np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # one transparent and one opaque pixel at least
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    expected = rgba[..., :3].astype(np.float64) * rgba[..., 3:].astype(np.float64) / 255
    image = np.asarray(load_image(tmp_path / "alpha.png")).astype(np.float64)
    assert np.abs(image - expected).max() <= 1
    np.testing.assert_array_equal(image[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(image[0, 1], rgba[0, 1, :3])
    assert np.abs(image - rgba[..., :3]).max() > 100  # dropping alpha would not pass

    grey = rng.integers(0, 256, size=(20, 24)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "grey.png")), np.repeat(grey[..., None], 3, 2))
    colour = rng.integers(0, 256, size=(20, 24, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "colour.png")), colour)
