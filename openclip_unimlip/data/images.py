"""Decoding the image files of the released datasets into 8-bit RGB, one rule per kind of file
(:func:`load_image`). Every downstream task reads its images through it: the chest X-ray and VQA
datasets (``chest_xray``, ``vqa_releases``), MedPix 2.0 classification and linear probing."""
from pathlib import Path
from typing import Union

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from openclip_unimlip.data.shards import to_rgb

DICOM_SUFFIXES = (".dcm", ".dicom")

PathLike = Union[str, Path]


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = pixels.astype(np.float64)
    low, high = pixels.min(), pixels.max()
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    return np.round(scaled * 255.0).astype(np.uint8)


def read_dicom(path: PathLike) -> Image.Image:
    """A grey-level DICOM as displayed: modality LUT (rescale), VOI LUT / window, MONOCHROME1 inverted.

    The displayed range is stretched to 0-255 per image, since DICOM bit depths vary by scanner.
    """
    dataset = pydicom.dcmread(path)
    pixels = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    pixels = _to_uint8(pixels)
    if dataset.PhotometricInterpretation == "MONOCHROME1":  # low values are white
        pixels = 255 - pixels
    return Image.fromarray(pixels).convert("RGB")


def load_image(path: PathLike) -> Image.Image:
    """An 8-bit RGB image from a DICOM, PNG or JPEG file, one rule per kind:

    * DICOM: :func:`read_dicom` (as displayed, stretched to 0-255 per image).
    * 16-bit (and 32-bit integer) greyscale, PIL modes ``I;16*`` and ``I``: stretched from the
      image's own lowest to highest value to 0-255, as DICOMs (ours: radiograph PNGs hold 10 to 16
      significant bits, so ``data.shards.to_rgb``'s fixed ``v / 257`` would leave a 12-bit image 16
      grey levels, and ``convert("RGB")`` clips at 255).
    * Every other mode: ``data.shards.to_rgb``, the pre-training data's rule: alpha (RGBA, LA, PA)
      and colour-key transparency composited on black (``shards.TRANSPARENT_BACKGROUND``), palettes
      expanded, RGB and 8-bit grey as ``convert("RGB")``. NIH ChestX-ray14 ships a few RGBA PNGs
      (the 10 among the 1,605 images of ``../shared/data`` are fully opaque: compositing changes none).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path)
    with Image.open(path) as image:
        if image.mode.startswith("I"):
            return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
        return to_rgb(image)
