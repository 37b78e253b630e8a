"""The embedded default dataset: real medical images from PyPI packages, synthetic findings.

Built offline and deterministically from a seed. The base images are real: DICOMs shipped by
``pydicom-data`` (chest and tibia radiographs, a head CT, a shoulder MR, a lymph-node
ultrasound) and ``pydicom`` (a spine CT), an MR brain volume from nibabel's test data and the
fundus photograph of scikit-image, all found through those packages' own APIs. The DICOMs are
the ``*_UNCR`` variants, uncompressed copies of the lossless ones: no JPEG 2000 decoder is
needed and the pixels are the same everywhere. Each sample is a random crop (a slice, for
volumes) of one base image, sometimes mirrored, resized to ``image_size``, with 0-2
procedurally drawn lesions that vary in location (the viewer's left/right, upper/lower
quadrant), size, shape and intensity; the caption names the modality, the body region and
every lesion.

Intensity is on a fixed absolute scale, as Hounsfield units are on CT: the anatomy is mapped
into ``TISSUE_RANGE`` of the 8-bit range, hyper-dense/-intense/-echoic (radiopaque, bright)
lesions are drawn at levels in ``HYPER_RANGE`` above it and hypo- ones in ``HYPO_RANGE``
below it. A lesion's caption word is therefore a statement about its absolute pixel value:
a global brightness or contrast change (colour jitter, per-image standardisation) moves
lesions into the range of normal anatomy and changes what the image shows -- the premise
of Uni-Mlip's argument for keeping BatchNorm's batch statistics.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from openclip_unimlip.data.atomic import write_json_atomic
from openclip_unimlip.data.shards import Row, brace_pattern, normalize_formats, write_dataset

EMBEDDED_VERSION = 1  # bump whenever the generated samples change
MANIFEST_NAME = "manifest.json"

TISSUE_RANGE = (0.15, 0.85)
HYPER_RANGE = (0.90, 0.97)
HYPO_RANGE = (0.03, 0.10)
NOISE_STD = 0.01
_BASE_MAX_SIDE = 512  # base images are kept at most this large; crops are resized from them

_LESION_COUNT_P = (0.2, 0.5, 0.3)  # 0, 1 or 2 findings
_RADIUS = {"small": (0.05, 0.07), "large": (0.10, 0.13)}  # fraction of the image side
_SHAPES = ("round", "oval", "irregular")
_QUADRANTS = (("left", "upper"), ("right", "upper"), ("left", "lower"), ("right", "lower"))
_EXTENT = 1.6  # no shape reaches further than this many radii from its centre
_EDGE_PX = 1.0  # width of the soft lesion border

# (phrase at the start of a caption, phrase inside a sentence)
_MODALITY_PHRASES = {
    "CT": (("CT slice", "a CT slice"), ("Axial CT image", "an axial CT image"),
           ("Non-contrast CT", "a non-contrast CT")),
    "radiograph": (("Radiograph", "a radiograph"), ("X-ray", "an X-ray")),
    "MR": (("MR image", "an MR image"), ("MRI slice", "an MRI slice")),
    "ultrasound": (("Ultrasound image", "an ultrasound image"), ("Sonogram", "a sonogram")),
    "fundus": (("Fundus photograph", "a fundus photograph"), ("Fundus image", "a fundus image")),
}
INTENSITY_WORDS = {
    "CT": {"hyper": "hyperdense", "hypo": "hypodense"},
    "radiograph": {"hyper": "radiopaque", "hypo": "radiolucent"},
    "MR": {"hyper": "hyperintense", "hypo": "hypointense"},
    "ultrasound": {"hyper": "hyperechoic", "hypo": "hypoechoic"},
    "fundus": {"hyper": "bright", "hypo": "dark"},
}
_WITH_FINDINGS = (
    "{Modality} of the {region} showing {findings}.",
    "{Modality} of the {region} demonstrates {findings}.",
    "{Findings} on {modality} of the {region}.",
)
_WITHOUT_FINDINGS = (
    "{Modality} of the {region} showing no focal lesion.",
    "{Modality} of the {region} without focal abnormality.",
    "No focal lesion on {modality} of the {region}.",
)


def _to_unit(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((pixels.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def _percentile_window(pixels: np.ndarray) -> np.ndarray:
    low, high = np.percentile(pixels, (0.5, 99.5))
    return _to_unit(pixels, low, high)


def _shrink(image: np.ndarray) -> np.ndarray:
    scale = _BASE_MAX_SIDE / max(image.shape)
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _dicom(name: str, window: Optional[Tuple[float, float]] = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import pydicom
        from pydicom.data import get_testdata_file
        from pydicom.pixels import apply_modality_lut

        # download=False: the file ships with pydicom or pydicom-data; never go online for it.
        path = get_testdata_file(name, download=False)
        if path is None:
            raise FileNotFoundError(f"{name} not found: the embedded dataset needs `pip install pydicom-data`")
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        if pixels.ndim == 3:  # colour ultrasound: luma
            pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = apply_modality_lut(pixels, ds)
        unit = _to_unit(pixels, *window) if window else _percentile_window(pixels)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            unit = 1.0 - unit
        return _shrink(unit)[None]
    return load


def _nibabel_brain() -> np.ndarray:
    from importlib.resources import as_file, files

    import nibabel

    # The volume ships inside the nibabel package (nibabel/tests/data); found through the package
    # folder, not nibabel.testing, which imports pytest: the default install has no test extra.
    with as_file(files("nibabel") / "tests" / "data" / "example4d.nii.gz") as path:
        volume = np.asanyarray(nibabel.load(path).dataobj)[..., 0]
    axial = np.rot90(volume[:, :, 5:20], k=1, axes=(0, 1))  # anterior up
    return np.ascontiguousarray(np.moveaxis(_percentile_window(axial), -1, 0))


def _fundus() -> np.ndarray:
    from skimage import data

    rgb = data.retina().astype(np.float32)
    return _shrink(_percentile_window(rgb @ np.array([0.299, 0.587, 0.114], np.float32)))[None]


@dataclass(frozen=True)
class _Source:
    name: str
    modality: str
    region: str
    origin: str  # the package file the pixels come from, recorded in each sample's metadata
    load: Callable[[], np.ndarray]  # -> [slices, H, W] float32 in [0, 1]
    roi: Tuple[float, float, float, float]  # top, left, bottom, right: where crops may come from
    mirror: bool  # whether a left-right mirrored view is still plausible


_SOURCES = (
    _Source("chest_xr", "radiograph", "chest", "pydicom-data RG1_UNCR.dcm",
            _dicom("RG1_UNCR.dcm"), (0.05, 0.05, 0.95, 0.95), mirror=False),
    _Source("tibia_xr", "radiograph", "lower leg", "pydicom-data RG3_UNCR.dcm",
            _dicom("RG3_UNCR.dcm"), (0.0, 0.25, 1.0, 0.75), mirror=False),
    _Source("head_ct", "CT", "head", "pydicom-data 693_UNCR.dcm",
            _dicom("693_UNCR.dcm", window=(-60.0, 140.0)), (0.1, 0.15, 0.9, 0.85), mirror=True),
    _Source("spine_ct", "CT", "spine", "pydicom CT_small.dcm",
            _dicom("CT_small.dcm", window=(-200.0, 300.0)), (0.0, 0.0, 1.0, 1.0), mirror=True),
    _Source("shoulder_mr", "MR", "shoulder", "pydicom-data MR2_UNCR.dcm",
            _dicom("MR2_UNCR.dcm"), (0.05, 0.05, 0.95, 0.95), mirror=True),
    _Source("brain_mr", "MR", "brain", "nibabel tests/data/example4d.nii.gz",
            _nibabel_brain, (0.0, 0.0, 1.0, 1.0), mirror=True),
    _Source("node_us", "ultrasound", "lymph node", "pydicom-data US1_UNCR.dcm",
            _dicom("US1_UNCR.dcm"), (0.3, 0.05, 0.72, 0.92), mirror=True),
    _Source("retina_fundus", "fundus", "retina", "scikit-image retina.jpg",
            _fundus, (0.12, 0.12, 0.88, 0.88), mirror=True),
)


@cache
def _base_pixels(name: str) -> np.ndarray:
    return next(source for source in _SOURCES if source.name == name).load()


def _random_view(source: _Source, size: int, rng: np.random.Generator) -> Tuple[np.ndarray, dict]:
    stack = _base_pixels(source.name)
    index = int(rng.integers(len(stack)))
    height, width = stack.shape[1:]
    top, left, bottom, right = (round(f * n) for f, n in zip(source.roi, (height, width, height, width)))
    side = max(8, round(rng.uniform(0.55, 0.9) * min(bottom - top, right - left)))
    y = int(rng.integers(top, bottom - side + 1))
    x = int(rng.integers(left, right - side + 1))
    crop = stack[index, y:y + side, x:x + side]
    mirrored = bool(source.mirror and rng.random() < 0.5)
    if mirrored:
        crop = crop[:, ::-1]
    view = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR))
    # Contrast varies within the tissue range only: it never reaches the lesion levels.
    low, high = TISSUE_RANGE
    view = low + (high - low) * np.clip(view, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    return view, {"slice": index, "crop_xywh": [x, y, side, side], "mirrored": mirrored}


def _lesion_alpha(size: int, center: Tuple[float, float], radius: float, shape: str,
                  rng: np.random.Generator) -> Tuple[np.ndarray, Tuple[slice, slice]]:
    """The lesion's opacity over its bounding box, and that box."""
    reach = _EXTENT * radius + 2 * _EDGE_PX
    y0, y1 = max(0, int(center[1] - reach)), min(size, int(center[1] + reach) + 1)
    x0, x1 = max(0, int(center[0] - reach)), min(size, int(center[0] + reach) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - center[0], yy - center[1]
    angle = rng.uniform(0, np.pi)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if shape == "round":
        rho = np.hypot(u, v) / radius
    elif shape == "oval":
        aspect = rng.uniform(1.35, 1.6)
        rho = np.hypot(u / aspect, v * aspect) / radius
    else:  # irregular: a radius modulated by a few random low harmonics
        theta = np.arctan2(v, u)
        boundary = np.ones_like(theta)
        for k in (2, 3, 5):
            boundary += rng.uniform(0.08, 0.16) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rho = np.hypot(u, v) / (radius * boundary)
    # (1 - rho) * radius is about the distance to the border in pixels: a border ~1 px soft.
    alpha = np.clip((1.0 - rho) * radius / _EDGE_PX + 0.5, 0.0, 1.0)
    return alpha, (slice(y0, y1), slice(x0, x1))


def _place(view: np.ndarray, quadrant: Tuple[str, str], extent: float, placed: List[Tuple[float, float, float]],
           rng: np.random.Generator) -> Tuple[float, float]:
    """A centre in the quadrant, inside the image, clear of earlier lesions and over tissue
    rather than air or bone (the candidate whose surroundings are closest to mid-grey)."""
    size = view.shape[0]
    half = size / 2
    # Distances from the quadrant's outer edges: the lesion stays inside the image and its
    # centre in the quadrant, though its far side may cross the midline.
    low, high = extent + 1, max(extent + 1, half - extent / 2)
    best, best_score = None, None
    for _ in range(8):
        dx, dy = rng.uniform(low, high), rng.uniform(low, high)
        x = dx if quadrant[0] == "left" else size - dx
        y = dy if quadrant[1] == "upper" else size - dy
        if any(np.hypot(x - px, y - py) < extent + pe for px, py, pe in placed):
            continue
        r = max(1, int(extent))
        patch = view[max(0, int(y) - r):int(y) + r + 1, max(0, int(x) - r):int(x) + r + 1]
        score = abs(float(patch.mean()) - sum(TISSUE_RANGE) / 2)
        if best_score is None or score < best_score:
            best, best_score = (x, y), score
    if best is None:  # every candidate overlapped: the quadrant's outer corner region
        best = (low if quadrant[0] == "left" else size - low, low if quadrant[1] == "upper" else size - low)
    return best


def _draw_findings(view: np.ndarray, modality: str, rng: np.random.Generator) -> Tuple[np.ndarray, List[dict]]:
    size = view.shape[0]
    count = int(rng.choice(len(_LESION_COUNT_P), p=_LESION_COUNT_P))
    findings, placed = [], []
    for q in rng.permutation(len(_QUADRANTS))[:count]:
        quadrant = _QUADRANTS[q]
        lesion_size = ("small", "large")[rng.integers(2)]
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        intensity = ("hyper", "hypo")[rng.integers(2)]
        radius = max(2.0, rng.uniform(*_RADIUS[lesion_size]) * size)
        center = _place(view, quadrant, _EXTENT * radius, placed, rng)
        placed.append((*center, _EXTENT * radius))
        level = rng.uniform(*(HYPER_RANGE if intensity == "hyper" else HYPO_RANGE))
        alpha, box = _lesion_alpha(size, center, radius, shape, rng)
        view[box] = view[box] * (1.0 - alpha) + level * alpha
        findings.append({
            "location": f"{quadrant[0]} {quadrant[1]}", "size": lesion_size, "shape": shape,
            "intensity": intensity, "intensity_word": INTENSITY_WORDS[modality][intensity],
            "center_xy": [round(center[0], 2), round(center[1], 2)], "radius": round(radius, 2),
            "level": round(level * 255, 1),
        })
    return view, findings


def _caption(source: _Source, findings: List[dict], rng: np.random.Generator) -> str:
    title, inline = _MODALITY_PHRASES[source.modality][rng.integers(len(_MODALITY_PHRASES[source.modality]))]
    phrases = [f"a {f['size']} {f['shape']} {f['intensity_word']} lesion in the {f['location']} region"
               for f in findings]
    templates = _WITH_FINDINGS if findings else _WITHOUT_FINDINGS
    text = " and ".join(phrases)
    return templates[rng.integers(len(templates))].format(
        Modality=title, modality=inline, region=source.region, findings=text, Findings=text[:1].upper() + text[1:])


def render_sample(index: int, seed: int = 0, image_size: int = 224) -> Tuple[bytes, str, dict]:
    """Sample ``index`` of the embedded dataset: PNG bytes, caption and metadata (the lesions'
    positions, radii and 8-bit levels included). Depends only on its arguments."""
    rng = np.random.default_rng([seed, index])
    source = _SOURCES[rng.integers(len(_SOURCES))]
    view, view_info = _random_view(source, image_size, rng)
    view, findings = _draw_findings(view, source.modality, rng)
    view = view + rng.normal(0.0, NOISE_STD, view.shape)
    pixels = np.clip(np.round(view * 255), 0, 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG", compress_level=1)  # lossless: levels carry meaning
    metadata = {
        "dataset": "unimlip-embedded", "index": index, "source": source.name, "origin": source.origin,
        "modality": source.modality, "region": source.region, "findings": findings, **view_info,
    }
    return png.getvalue(), _caption(source, findings, rng), metadata


def embedded_rows(num_samples: int = 3000, seed: int = 0, image_size: int = 224,
                  progress: bool = False) -> Iterator[Row]:
    """The embedded dataset as rows for :func:`~openclip_unimlip.data.shards.write_dataset`."""
    for index in tqdm(range(num_samples), desc="rendering samples", unit="img", disable=not progress):
        png, caption, metadata = render_sample(index, seed, image_size)
        yield Row(source=f"embedded:{index}", key=f"{metadata['source']}_{index:06d}",
                  image=png, caption=caption, metadata=metadata)


@dataclass(frozen=True)
class EmbeddedDataset:
    """Where a built embedded dataset is: pass ``train_data``/``val_data`` as ``--train-data``/
    ``--val-data`` (``--dataset-type webdataset``) or ``train_csv``/``val_csv`` (``csv``)."""
    root: Path
    train_data: Optional[str]
    val_data: Optional[str]
    train_csv: Optional[Path]
    val_csv: Optional[Path]
    train_num_samples: int
    val_num_samples: int
    manifest: dict
    built: bool  # False when an existing build was reused


def _dataset_info(root: Path, manifest: dict, built: bool) -> EmbeddedDataset:
    splits = manifest["splits"]

    def pattern(name: str) -> Optional[str]:
        shards = splits.get(name, {}).get("shards")
        return brace_pattern(root / name, shards) if shards else None

    def csv(name: str) -> Optional[Path]:
        path = splits.get(name, {}).get("csv")
        return root / path if path else None

    return EmbeddedDataset(
        root=root, train_data=pattern("train"), val_data=pattern("val"), train_csv=csv("train"), val_csv=csv("val"),
        train_num_samples=splits.get("train", {}).get("num_samples", 0),
        val_num_samples=splits.get("val", {}).get("num_samples", 0), manifest=manifest, built=built)


def _is_complete(root: Path, manifest: dict) -> bool:
    for name, split in manifest["splits"].items():
        if any(not (root / name / shard).is_file() for shard in split["shards"]):
            return False
        if split["csv"] and not (root / split["csv"]).is_file():
            return False
    return True


def ensure_embedded_dataset(
        root: Union[str, os.PathLike],
        *,
        num_samples: int = 3000,
        image_size: int = 224,
        seed: int = 0,
        val_fraction: float = 0.1,
        shard_size: int = 500,
        formats: Union[str, Sequence[str]] = "both",
        progress: bool = False,
) -> EmbeddedDataset:
    """Build the embedded dataset in ``root`` unless a complete build with these parameters is
    there already. Writes ``root/{train,val}/*.tar`` (+ ``sizes.json``), ``root/csv/{train,val}.csv``
    and ``root/manifest.json``; an interrupted build resumes where it stopped."""
    root = Path(root)
    params = dict(num_samples=num_samples, image_size=image_size, seed=seed, val_fraction=val_fraction,
                  shard_size=shard_size, formats=list(normalize_formats(formats)))
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        manifest = None
    if manifest and manifest.get("version") == EMBEDDED_VERSION and manifest.get("params") == params \
            and _is_complete(root, manifest):
        return _dataset_info(root, manifest, built=False)

    manifest_path.unlink(missing_ok=True)  # its absence marks a build in progress
    report = write_dataset(
        embedded_rows(num_samples, seed, image_size, progress), root, shard_size=shard_size, seed=seed,
        val_fraction=val_fraction, formats=formats, progress=progress)
    if report.bad_rows:
        raise RuntimeError(f"the embedded dataset produced bad rows: {dict(report.bad_rows)}")
    manifest = {
        "version": EMBEDDED_VERSION,
        "params": params,
        "sources": {source.name: source.origin for source in _SOURCES},
        "intensity_scale": {"tissue": TISSUE_RANGE, "hyper": HYPER_RANGE, "hypo": HYPO_RANGE},
        **report.to_dict(),
    }
    write_json_atomic(manifest_path, manifest)
    return _dataset_info(root, manifest, built=True)
