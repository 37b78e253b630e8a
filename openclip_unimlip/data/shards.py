"""Writing image-caption pairs as webdataset shards and as OpenCLIP CSV, resumably.

Every converter turns its input into :class:`Row` objects (or :class:`BadRow` for input it
cannot even parse) and hands them to :func:`write_dataset`, which

1. checks every row with :func:`check_rows` (caption present, image present and decodable) and
   drops byte-identical images after their first occurrence, listing every rejected row with its
   reason in ``bad_rows.csv`` -- nothing is dropped silently. The benchmark's retrieval task reads
   the ROCO and MedPix releases through the same function, so its pairs are the rows a conversion keeps;
2. orders the kept samples by a hash of ``(seed, key)`` and splits them: rows that carry an
   official split keep it, the others go to ``val`` (the first ``val_fraction``) or ``train``;
3. writes ``OUT/<split>/00000.tar ...`` with ``sizes.json`` (what ``open_clip_train`` reads for
   the training-set size) and/or ``OUT/csv/<split>.csv`` (tab-separated ``filepath``/``title``,
   OpenCLIP's ``--dataset-type csv`` defaults) with the images as files in ``OUT/csv/images``.

Images are stored as they came (JPEG, and RGB or 8-bit greyscale PNG) when that decodes to the
right picture under ``PIL.Image.convert("RGB")``, which OpenCLIP's ``pilrgb`` decoder, its CSV
reader and the evaluation readers all apply. Everything else is re-encoded as an RGB PNG by
:func:`to_rgb`: ``convert("RGB")`` would drop an alpha channel without compositing and clip
16-bit greyscale at 255, turning most of such an image white. ``image_size`` (optional) also
downscales every image so that its short side is that many pixels, as OpenCLIP's own resize does.

Which sample lands in which shard depends only on the rows and the seed, and every shard is
written under a temporary name and renamed when complete. A run that was interrupted (or
re-run with different settings) can therefore be started again: shards that are complete and
match the current plan (a digest per shard kept in ``plan.json``) are skipped, everything else
is rewritten, so no shard is ever duplicated or half-written. Each run checks the inputs
again, so the bad-row report is always complete.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from openclip_unimlip.data.atomic import TMP_SUFFIX, atomic_path, write_bytes_atomic, write_json_atomic

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # part of every shard digest: bump when the sample layout changes (2: to_rgb)

MALFORMED_ROW = "malformed_row"
EMPTY_CAPTION = "empty_caption"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
DUPLICATE_IMAGE = "duplicate_image"
DUPLICATE_PAIR = "duplicate_pair"
BAD_ROW_REASONS = (MALFORMED_ROW, EMPTY_CAPTION, MISSING_IMAGE, UNREADABLE_IMAGE, DUPLICATE_IMAGE, DUPLICATE_PAIR)

FORMATS = ("webdataset", "csv", "both")
REPORT_NAME = "bad_rows.csv"
SUMMARY_NAME = "conversion.json"
PLAN_NAME = "plan.json"
SIZES_NAME = "sizes.json"
CSV_DIR = "csv"

_SHARD_NAME = re.compile(r"\d{5,}\.tar")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY_LEN = 80  # keeps member names well inside the USTAR name limit that TarWriter uses
_STORED_FORMATS = {"JPEG": "jpg", "PNG": "png"}  # anything else is re-encoded as PNG
# PNG modes that convert("RGB") decodes faithfully; any other PNG (alpha, palette, 16-bit) is re-encoded.
_STORED_PNG_MODES = ("RGB", "L")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Ours: transparency is composited on black. CT and MR backgrounds (air) are black, so a
# transparent border joins the image's own background; white would add a bright frame the model
# could key on. (All 288 RGBA images of MedPix 2.0 are fully opaque: the choice changes none of them.)
TRANSPARENT_BACKGROUND = (0, 0, 0)


@dataclass(frozen=True)
class ZipMember:
    """An image stored inside a zip archive."""
    archive: str
    name: str


# A converter's image as it found it: bytes in memory, a file path or a member of a zip archive
# (``read_image_bytes`` reads each kind). Not ``data.stored.StoredImage``: that one points
# into a dataset already written (a whole file or a byte range of an uncompressed tar) and is
# decoded lazily, while a RowImage is read once, here, to be checked and copied into the shards.
RowImage = Union[bytes, str, os.PathLike, ZipMember]


@dataclass
class Row:
    """One image-caption pair as a converter read it, before any check.

    ``source`` says where the row came from (``file:line``) for the bad-row report; ``key``
    becomes the sample key (made webdataset-safe and unique); ``split`` pins an official
    split (``train``/``val``/``test``), None lets the seed decide.
    """
    source: str
    key: str
    image: RowImage
    caption: Optional[str]
    metadata: dict = field(default_factory=dict)
    split: Optional[str] = None


@dataclass(frozen=True)
class BadRow:
    """An input row that was rejected, and why (one of ``BAD_ROW_REASONS``)."""
    source: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageCheck:
    """What reading and decoding one image found: ``reason`` (one of ``BAD_ROW_REASONS``) when it
    is missing or does not decode, else the SHA-1 of its bytes (the duplicate rule's identity),
    its format and mode."""
    reason: Optional[str] = None
    detail: str = ""
    sha1: str = ""
    image_format: str = ""
    image_mode: str = ""
    transparency: bool = False  # a tRNS colour key (palette or greyscale PNG)


@dataclass(frozen=True)
class CheckedRow:
    """A row that passed :func:`check_rows`: its caption with whitespace collapsed, its image's check."""
    row: Row
    caption: str
    image: ImageCheck


@dataclass(frozen=True)
class RowCheck:
    """The outcome of :func:`check_rows`: the rows kept and the rows rejected, each in input order."""
    kept: List[CheckedRow]
    bad_rows: List[BadRow]
    rows_read: int

    @property
    def left_out(self) -> Dict[str, int]:
        """Rejected rows per reason, in ``BAD_ROW_REASONS`` order; reasons without any are omitted."""
        counts = Counter(bad.reason for bad in self.bad_rows)
        return {reason: counts[reason] for reason in BAD_ROW_REASONS if counts[reason]}


@dataclass(frozen=True)
class _Entry:
    key: str
    source: str
    image: RowImage
    caption: str
    metadata: dict
    sha1: str
    image_format: str
    split: Optional[str]
    keep_bytes: bool  # the source bytes go into the shard unchanged, else to_rgb (+ resize) as PNG
    image_size: Optional[int]

    @property
    def ext(self) -> str:
        return _STORED_FORMATS[self.image_format] if self.keep_bytes else "png"


@dataclass
class SplitOutput:
    """What was written for one split."""
    name: str
    num_samples: int
    shard_dir: Optional[Path] = None
    shards: List[str] = field(default_factory=list)
    csv: Optional[Path] = None

    @property
    def shard_pattern(self) -> Optional[str]:
        """The shards as one brace-expandable string, usable as ``--train-data``/``--val-data``."""
        return brace_pattern(self.shard_dir, self.shards) if self.shards else None


@dataclass
class ConversionReport:
    """The outcome of :func:`write_dataset`; ``summary()`` is what the converters print."""
    out_dir: Path
    rows_read: int
    bad_rows: Counter
    splits: Dict[str, SplitOutput]
    shards_written: int
    shards_skipped: int
    report_path: Path

    @property
    def num_kept(self) -> int:
        return sum(split.num_samples for split in self.splits.values())

    def summary(self) -> str:
        lines = [f"{self.rows_read} rows read, {self.num_kept} kept, {sum(self.bad_rows.values())} rejected"]
        lines += [f"  {reason}: {self.bad_rows[reason]}" for reason in BAD_ROW_REASONS]
        for split in self.splits.values():
            where = [x for x in (split.shard_pattern, split.csv and str(split.csv)) if x]
            lines.append(f"  {split.name}: {split.num_samples} samples -> {', '.join(where)}")
        lines.append(f"shards written: {self.shards_written}, already complete: {self.shards_skipped}")
        lines.append(f"bad-row report: {self.report_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready, with paths relative to ``out_dir`` so the folder can be moved."""
        return {
            "rows_read": self.rows_read,
            "num_kept": self.num_kept,
            "bad_rows": dict(sorted(self.bad_rows.items())),
            "splits": {
                name: {
                    "num_samples": split.num_samples,
                    "shards": split.shards,
                    "csv": split.csv.relative_to(self.out_dir).as_posix() if split.csv else None,
                }
                for name, split in self.splits.items()
            },
        }


def brace_pattern(directory: Union[str, os.PathLike], shard_names: Sequence[str]) -> str:
    """``DIR/{00000..00005}.tar`` for consecutively numbered shards, as OpenCLIP expects."""
    stems = [Path(name).stem for name in shard_names]
    if len(stems) == 1:
        return str(Path(directory) / shard_names[0])
    return str(Path(directory) / f"{{{stems[0]}..{stems[-1]}}}.tar")


def normalize_caption(caption: Optional[str]) -> str:
    """Collapse all whitespace: captions end up on one line of a tab-separated file."""
    return " ".join(caption.split()) if isinstance(caption, str) else ""


def read_image_bytes(image: RowImage) -> bytes:
    """The encoded bytes of an image given as bytes, a file path or a zip member."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, ZipMember):
        return _open_zip(image.archive, os.getpid()).read(image.name)
    return Path(image).read_bytes()


@lru_cache(maxsize=8)
def _open_zip(path: str, pid: int) -> zipfile.ZipFile:
    # Keyed on the pid: a ZipFile inherited through fork would share its file offset with the
    # parent's, and reading the central directory of a large archive once per image is too slow.
    return zipfile.ZipFile(path)


def _check_image(image: RowImage) -> ImageCheck:
    try:
        data = read_image_bytes(image)
    except FileNotFoundError as exc:
        return ImageCheck(MISSING_IMAGE, str(exc))
    except KeyError as exc:  # no such member in the zip
        return ImageCheck(MISSING_IMAGE, str(exc.args[0]))
    except OSError as exc:
        return ImageCheck(UNREADABLE_IMAGE, f"{type(exc).__name__}: {exc}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            image_format = img.format
            image_mode, transparency = img.mode, "transparency" in img.info
            if image_format == "JPEG":
                # Decoding at 1/8 scale still reads every scan (so truncation is caught) at a
                # fraction of the cost of a full decode.
                img.draft(img.mode, (1, 1))
            img.load()
    except UnidentifiedImageError:
        return ImageCheck(UNREADABLE_IMAGE, "not an image format Pillow can read")
    except Exception as exc:  # Pillow signals a broken file with many exception types
        return ImageCheck(UNREADABLE_IMAGE, f"{type(exc).__name__}: {exc}")
    return ImageCheck(sha1=hashlib.sha1(data).hexdigest(), image_format=image_format, image_mode=image_mode,
                      transparency=transparency)


def _keeps_bytes(check: ImageCheck, image_size: Optional[int]) -> bool:
    if image_size is not None or check.image_format not in _STORED_FORMATS:
        return False
    if check.image_format == "JPEG":  # re-encoding would lose quality; convert("RGB") reads L, RGB and CMYK
        return True
    return check.image_mode in _STORED_PNG_MODES and not check.transparency


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: alpha and colour-key transparency composited on black
    (``TRANSPARENT_BACKGROUND``), 16-bit (and 32-bit integer) greyscale scaled from its full range
    (v / 257, rounded), palettes expanded; RGB and greyscale otherwise as ``convert("RGB")``."""
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(levels / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def downscale(image: Image.Image, image_size: int) -> Image.Image:
    """Short side to ``image_size`` (bicubic with antialiasing, as OpenCLIP's ``Resize``);
    never upscales (the training pipeline does that itself)."""
    if min(image.size) <= image_size:
        return image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, [image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def _check_images(images: List[RowImage], workers: int, progress: bool) -> List[ImageCheck]:
    bar = dict(total=len(images), desc="checking images", unit="img", disable=not progress)
    if workers <= 1:
        return [_check_image(image) for image in tqdm(images, **bar)]
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(_check_image, images, chunksize=64), **bar))


def _unique_key(key: str, taken: set) -> str:
    # webdataset splits a member name at the first dot of its basename, so keys carry no dots.
    base = _KEY_UNSAFE.sub("_", key).strip("_")[:_MAX_KEY_LEN] or "sample"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate)
    return candidate


def check_rows(rows: Iterable[Union[Row, BadRow]], workers: int = 1, progress: bool = False) -> RowCheck:
    """The converters' row check, shared with the benchmark's retrieval task. In this order:

    * a :class:`BadRow` from the reader stays as it is (``malformed_row``);
    * a caption that is empty after collapsing whitespace: ``empty_caption``;
    * an image that is not there (``missing_image``) or does not decode (``unreadable_image``):
      every scan of a JPEG is read, so a truncated download is caught;
    * an image whose bytes (SHA-1) equal those of an earlier kept row's: ``duplicate_pair`` when
      the caption is the same as that row's, else ``duplicate_image``. The first row of an image
      is kept (ours): one image twice in a retrieval gallery (or in a training batch, as its own
      negative) would make one of two identical images a wrong answer.

    ``workers`` > 1 decodes the images in that many processes; ``progress`` shows a bar.
    """
    bad: List[Tuple[int, BadRow]] = []
    candidates: List[Tuple[int, Row, str]] = []
    rows_read = 0
    for index, row in enumerate(rows):
        rows_read += 1
        if isinstance(row, BadRow):
            bad.append((index, row))
            continue
        caption = normalize_caption(row.caption)
        if caption:
            candidates.append((index, row, caption))
        else:
            bad.append((index, BadRow(row.source, EMPTY_CAPTION, "caption is empty or missing")))

    checks = _check_images([row.image for _, row, _ in candidates], workers, progress)
    first_seen: Dict[str, Tuple[str, str]] = {}  # image sha1 -> (source, caption) of its first row
    kept = []
    for (index, row, caption), check in zip(candidates, checks):
        if check.reason:
            bad.append((index, BadRow(row.source, check.reason, check.detail)))
            continue
        if check.sha1 in first_seen:
            first_source, first_caption = first_seen[check.sha1]
            reason = DUPLICATE_PAIR if caption == first_caption else DUPLICATE_IMAGE
            bad.append((index, BadRow(row.source, reason, f"same image as {first_source}")))
            continue
        first_seen[check.sha1] = (row.source, caption)
        kept.append(CheckedRow(row, caption, check))
    bad.sort(key=lambda item: item[0])
    return RowCheck(kept, [row for _, row in bad], rows_read)


def _entries(kept: Sequence[CheckedRow], image_size: Optional[int]) -> List[_Entry]:
    """The kept rows as shard samples: unique webdataset-safe keys, and how each image is stored."""
    taken_keys: set = set()
    return [_Entry(
        key=_unique_key(checked.row.key, taken_keys), source=checked.row.source, image=checked.row.image,
        caption=checked.caption, metadata=checked.row.metadata, sha1=checked.image.sha1,
        image_format=checked.image.image_format, split=checked.row.split,
        keep_bytes=_keeps_bytes(checked.image, image_size), image_size=image_size,
    ) for checked in kept]


def _assign_splits(entries: List[_Entry], seed: int, val_fraction: float) -> Dict[str, List[_Entry]]:
    # A hash of (seed, key) rather than a PRNG shuffle: stable across Python/NumPy versions, and a
    # sample keeps its place relative to the others when rows are added or removed.
    ordered = sorted(entries, key=lambda e: hashlib.sha256(f"{seed}:{e.key}".encode()).digest())
    free = [e for e in ordered if e.split is None]
    num_val = round(len(free) * val_fraction)
    splits: Dict[str, List[_Entry]] = {"train": free[num_val:], "val": free[:num_val]}
    for entry in ordered:
        if entry.split is not None:
            splits.setdefault(entry.split, []).append(entry)
    return {name: split for name, split in splits.items() if split}


def _image_payload(entry: _Entry) -> bytes:
    data = read_image_bytes(entry.image)
    if hashlib.sha1(data).hexdigest() != entry.sha1:
        raise RuntimeError(f"{entry.source}: the image changed while the conversion was running")
    if entry.keep_bytes:
        return data
    with Image.open(io.BytesIO(data)) as img:
        rgb = to_rgb(img)
    if entry.image_size is not None:
        rgb = downscale(rgb, entry.image_size)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


def _metadata_bytes(entry: _Entry) -> bytes:
    return json.dumps(entry.metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _shard_digest(entries: Sequence[_Entry]) -> str:
    digest = hashlib.sha1(f"format {FORMAT_VERSION}".encode())
    for e in entries:
        digest.update(json.dumps([e.key, e.sha1, e.ext, e.caption, e.keep_bytes, e.image_size],
                                 ensure_ascii=False).encode("utf-8"))
        digest.update(_metadata_bytes(e))
    return digest.hexdigest()


def _write_shard(path: Path, entries: Sequence[_Entry]) -> None:
    # webdataset's TarWriter rather than its ShardWriter: ShardWriter decides shard boundaries
    # as it goes and writes straight to the final names, so an interrupted run leaves a
    # half-written shard under a valid name and a re-run cannot skip the finished ones. Here the
    # plan fixes every shard's content up front, TarWriter writes one shard into a temporary
    # file and the rename publishes it only when complete. Imported lazily: webdataset imports torch.
    from webdataset import TarWriter

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # encoder=False: the bytes are stored as given; a fixed mtime makes re-runs byte-identical.
        with TarWriter(f, encoder=False, mtime=0.0) as sink:
            for entry in entries:
                sink.write({
                    "__key__": entry.key,
                    entry.ext: _image_payload(entry),
                    "txt": entry.caption.encode("utf-8"),
                    "json": _metadata_bytes(entry),
                })
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_webdataset_split(
        split_dir: Path, shards: List[List[_Entry]], progress: bool,
) -> Tuple[List[str], int, int]:
    split_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.tar" for i in range(len(shards))]
    digests = {name: _shard_digest(entries) for name, entries in zip(names, shards)}
    previous = _read_json(split_dir / PLAN_NAME).get("shards", {})
    complete = {name for name in names if (split_dir / name).is_file() and previous.get(name) == digests[name]}

    # Invariant: every shard on disk matches plan.json, and sizes.json exists only when all do.
    # So stale shards go before the new plan is written, and sizes.json goes until the end.
    if complete != set(names):
        (split_dir / SIZES_NAME).unlink(missing_ok=True)
    for path in split_dir.iterdir():
        stale_shard = _SHARD_NAME.fullmatch(path.name) and path.name not in complete
        if stale_shard or path.name.endswith(TMP_SUFFIX):
            path.unlink()
    write_json_atomic(split_dir / PLAN_NAME, {"format_version": FORMAT_VERSION, "shards": digests})

    todo = [(name, entries) for name, entries in zip(names, shards) if name not in complete]
    for name, entries in tqdm(todo, desc=f"writing {split_dir.name} shards", unit="shard", disable=not progress):
        _write_shard(split_dir / name, entries)
    write_json_atomic(split_dir / SIZES_NAME, {name: len(entries) for name, entries in zip(names, shards)})
    return names, len(todo), len(complete)


def _csv_image_name(entry: _Entry) -> str:
    # Content-addressed (source and how it is stored), so an existing file is always the right one
    # and a re-run can skip it.
    variant = "" if entry.keep_bytes else f"-rgb{entry.image_size or ''}"
    return f"{entry.key}-{entry.sha1[:16]}{variant}.{entry.ext}"


def _write_csv_split(csv_dir: Path, name: str, entries: List[_Entry], progress: bool) -> Path:
    import pandas as pd

    image_dir = csv_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in tqdm(entries, desc=f"writing {name} csv images", unit="img", disable=not progress):
        path = image_dir / _csv_image_name(entry)
        if not path.is_file():
            write_bytes_atomic(path, _image_payload(entry))
        paths.append(str(path.resolve()))  # OpenCLIP opens the paths as given, from any cwd
    table = csv_dir / f"{name}.csv"
    with atomic_path(table) as tmp:
        pd.DataFrame({"filepath": paths, "title": [e.caption for e in entries]}).to_csv(tmp, sep="\t", index=False)
    return table


def _remove_unlisted_csv_images(csv_dir: Path, splits: Dict[str, List[_Entry]]) -> None:
    listed = {_csv_image_name(e) for entries in splits.values() for e in entries}
    for path in (csv_dir / "images").iterdir():
        if path.name not in listed:
            path.unlink()


def _write_report(path: Path, bad_rows: List[BadRow]) -> None:
    import pandas as pd

    table = pd.DataFrame([(b.reason, b.source, b.detail) for b in bad_rows], columns=["reason", "source", "detail"])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def normalize_formats(formats: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``"both"`` -> ``("csv", "webdataset")``; validates the names."""
    names = [formats] if isinstance(formats, str) else list(formats)
    if "both" in names:
        names = ["webdataset", "csv"]
    unknown = set(names) - {"webdataset", "csv"}
    if unknown or not names:
        raise ValueError(f"formats must be chosen from {FORMATS}, got {formats!r}")
    return tuple(sorted(set(names)))


def write_dataset(
        rows: Iterable[Union[Row, BadRow]],
        out_dir: Union[str, os.PathLike],
        *,
        shard_size: int = 1000,
        seed: int = 0,
        val_fraction: float = 0.1,
        formats: Union[str, Sequence[str]] = "webdataset",
        workers: int = 1,
        progress: bool = False,
        image_size: Optional[int] = None,
) -> ConversionReport:
    """Check, split and write ``rows`` into ``out_dir`` (see the module docstring for the layout).

    Resumable: re-running with the same rows and settings skips every complete shard; with
    other settings, shards that no longer match are replaced. ``workers`` > 1 checks images in
    that many processes. ``image_size`` downscales every image to that short side (RGB PNG).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    formats = normalize_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    checked = check_rows(rows, workers, progress)
    report_path = out_dir / REPORT_NAME
    _write_report(report_path, checked.bad_rows)
    splits = _assign_splits(_entries(checked.kept, image_size), seed, val_fraction)

    outputs = {name: SplitOutput(name, len(split)) for name, split in splits.items()}
    written = skipped = 0
    if "webdataset" in formats:
        for name, split in splits.items():
            shards = [split[i:i + shard_size] for i in range(0, len(split), shard_size)]
            outputs[name].shard_dir = out_dir / name
            outputs[name].shards, n_written, n_skipped = _write_webdataset_split(out_dir / name, shards, progress)
            written, skipped = written + n_written, skipped + n_skipped
    if "csv" in formats:
        csv_dir = out_dir / CSV_DIR
        for name, split in splits.items():
            outputs[name].csv = _write_csv_split(csv_dir, name, split, progress)
        _remove_unlisted_csv_images(csv_dir, splits)

    report = ConversionReport(
        out_dir=out_dir, rows_read=checked.rows_read, bad_rows=Counter(b.reason for b in checked.bad_rows),
        splits=outputs, shards_written=written, shards_skipped=skipped, report_path=report_path,
    )
    params = dict(shard_size=shard_size, seed=seed, val_fraction=val_fraction, formats=list(formats),
                  image_size=image_size)
    write_json_atomic(out_dir / SUMMARY_NAME, {"params": params, "format_version": FORMAT_VERSION, **report.to_dict()})
    _logger.info("%s", report.summary())
    return report


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The output options every converter script shares."""
    group = parser.add_argument_group("output")
    group.add_argument("--out", type=Path, required=True, help="output folder")
    group.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset shard")
    group.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of the train/val split")
    group.add_argument("--val-fraction", type=float, default=0.1,
                       help="fraction of the samples without an official split that go to val")
    group.add_argument("--format", choices=FORMATS, default="webdataset", help="what to write")
    group.add_argument("--workers", type=int, default=1, help="processes that check the images")
    group.add_argument("--image-size", type=int, default=None,
                       help="downscale every image so that its short side is this many pixels (RGB PNG); "
                            "default: keep the source pixels")


def output_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`write_dataset` from :func:`add_output_arguments`' options."""
    return dict(shard_size=args.shard_size, seed=args.seed, val_fraction=args.val_fraction,
                formats=args.format, workers=args.workers, progress=True, image_size=args.image_size)
