"""MedPix 2.0 (CT and MR images with their teaching captions) to webdataset shards / OpenCLIP CSV.

The layout is the one of the release, folder ``MedPix-2-0/`` of the public repository
``CHILab1/MedPix-2.0`` (checked against its files at commit d3bc431)::

    Descriptions.json                     one object per image (all 2,050)
    splitted_dataset/descriptions_{train,dev,test}.jsonl
                                          the same objects, one per line, split by case
    images/<image>.png                    RGB or RGBA

A record reads ``{"Type": "CT"|"MR", "U_id": case, "image": file stem, "Location",
"Location Category", "Description": {"Caption", "Modality", "Plane", "Age", "Sex",
"ACR Codes", "Figure Part"}}``. The official splits are the three ``descriptions_*.jsonl``
files (the release's ``splitted_dataset/README.md``: a case is never divided between splits;
``train_1``/``train_2`` only halve ``train``, ``data_*.jsonl`` hold the cases, not the images).
Either the ``MedPix-2-0`` folder or the repository root holding it can be given.

The caption is the image's own ``Description.Caption``; ``caption_prefix=True`` (ours) starts it
with the modality and plane (``"CT - noncontrast, Axial. <caption>"``). ``dev`` is written as
``val``, the split name every converter here uses. 21 captions (15 train, 6 dev) are the release
template's placeholder :data:`PLACEHOLDER_CAPTION`: the converter reports them as empty captions.

Leaving a downstream test set out of pretraining (``exclude_vqa_rad``, ``exclude_like``): 19
MedPix images are also VQA-RAD images under the same MedPix ``synpic`` id; 9 more are the same
picture under another id or an adjacent slice (an annotated copy, ``MPX1792_synpic24221`` of
VQA-RAD's ``synpic24220``; neighbouring slices of a series), found by perceptual hashes
(``data.near_duplicates``). Ours: every image of a CASE with such a match is left out, since one
case's images are slices and annotations of one study. The images left out are listed, with the
match that excluded their case, in ``excluded.csv``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from openclip_unimlip.data.near_duplicates import hash_images, image_files, near_duplicates
from openclip_unimlip.data.shards import EMPTY_CAPTION, MALFORMED_ROW, BadRow, ConversionReport, Row, write_dataset

PathLike = Union[str, os.PathLike]

MEDPIX_SPLITS = ("train", "dev", "test")
SHARD_SPLITS = {"train": "train", "dev": "val", "test": "test"}  # the names write_dataset's other users use
RELEASE_FOLDER = "MedPix-2-0"  # the release's folder inside the CHILab1/MedPix-2.0 repository
SPLIT_FILE = "splitted_dataset/descriptions_{split}.jsonl"
IMAGE_DIR = "images"
IMAGE_SUFFIX = ".png"
VQA_RAD_IMAGE_DIR = "VQA_RAD Image Folder"  # as openclip_unimlip.data.vqa_releases (which imports torch)
EXCLUDED_NAME = "excluded.csv"
# The MedPix 2.0 images that the VQA-RAD release also holds (17 train, 1 dev, 1 test), as
# vqa_rad_overlap finds them in the two releases named in ../shared/data/README.md (MedPix 2.0 at
# commit d3bc431, VQA-RAD 2018_06_011); tests/data/test_medpix.py checks the list against them.
# Kept here so that pretraining can leave them out for a user who has MedPix but not VQA-RAD.
VQA_RAD_OVERLAP = frozenset({
    "MPX1007_synpic46720", "MPX1229_synpic22020", "MPX1264_synpic32981", "MPX1300_synpic24424",
    "MPX1419_synpic43433", "MPX1429_synpic46943", "MPX1547_synpic21028", "MPX1601_synpic39460",
    "MPX1754_synpic51426", "MPX1788_synpic27142", "MPX1844_synpic20208", "MPX1879_synpic48749",
    "MPX1924_synpic19605", "MPX2028_synpic34054", "MPX2315_synpic16520", "MPX2407_synpic48714",
    "MPX2487_synpic35914", "MPX2500_synpic23571", "MPX2584_synpic19853",
})

# The cases of those 19 images and of the 9 MedPix images that are near-duplicates of a VQA-RAD image
# under another id (data.near_duplicates on the same two releases; tests/data/test_medpix.py
# recomputes the set): 20 cases, 82 train, 4 dev and 6 test images. Pretraining leaves them all out.
VQA_RAD_CASES = frozenset({
    "MPX1007", "MPX1229", "MPX1264", "MPX1300", "MPX1419", "MPX1429", "MPX1547", "MPX1601", "MPX1754",
    "MPX1788", "MPX1792", "MPX1844", "MPX1879", "MPX1924", "MPX2028", "MPX2315", "MPX2407", "MPX2487",
    "MPX2500", "MPX2584",
})
# The release template's caption of an image nobody described (21 records of MedPix 2.0).
PLACEHOLDER_CAPTION = "Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS."

_SYNPIC_ID = re.compile(r"synpic\d+")


@dataclass(frozen=True)
class MedpixImage:
    """One MedPix 2.0 image as the release describes it. ``image`` is where the release puts it
    (it may be missing in a damaged copy); text fields the release leaves null read ``""``."""
    image_id: str  # the file stem, e.g. "MPX1024_synpic40275"
    case_id: str  # U_id, e.g. "MPX1024"
    image: Path
    caption: str
    modality_type: str  # "CT"|"MR"
    location: str
    location_category: str
    plane: str
    modality: str


def release_dir(root: PathLike) -> Path:
    """The release folder under ``root`` (itself or its ``MedPix-2-0``), or one clear error."""
    root = Path(root)
    for candidate in (root, root / RELEASE_FOLDER):
        if all((candidate / SPLIT_FILE.format(split=split)).is_file() for split in MEDPIX_SPLITS) \
                and (candidate / IMAGE_DIR).is_dir():
            return candidate
    expected = ", ".join([SPLIT_FILE.format(split=s) for s in MEDPIX_SPLITS] + [IMAGE_DIR + "/"])
    raise ValueError(f"{root} is not the MedPix 2.0 release: expected {expected} in it or in its "
                     f"{RELEASE_FOLDER}/ folder (the public GitHub repository CHILab1/MedPix-2.0)")


def _check_split(split: str) -> None:
    if split not in MEDPIX_SPLITS:
        raise ValueError(f"unknown MedPix split {split!r}; expected one of {MEDPIX_SPLITS}")


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _parse(line: str, image_dir: Path) -> Tuple[MedpixImage, dict]:
    """The record of one jsonl line and its metadata; KeyError/TypeError/ValueError when malformed."""
    record = json.loads(line)
    description = record["Description"]
    image_id = _text(record["image"])
    if not image_id:
        raise ValueError("no image name")
    image = MedpixImage(
        image_id=image_id, case_id=_text(record["U_id"]), image=image_dir / f"{image_id}{IMAGE_SUFFIX}",
        caption=description["Caption"] if isinstance(description["Caption"], str) else "",
        modality_type=_text(record["Type"]), location=_text(record.get("Location")),
        location_category=_text(record.get("Location Category")), plane=_text(description.get("Plane")),
        modality=_text(description.get("Modality")),
    )
    metadata = {
        "dataset": "medpix-2.0", "image_id": image.image_id, "case_id": image.case_id,
        "type": image.modality_type, "location": image.location, "location_category": image.location_category,
        "plane": image.plane, "modality": image.modality, "age": description.get("Age"),
        "sex": description.get("Sex"), "acr_codes": description.get("ACR Codes"),
        "figure_part": description.get("Figure Part"),
    }
    return image, metadata


def _split_records(release: Path, split: str) -> Iterator[Union[Tuple[str, MedpixImage, dict], BadRow]]:
    """``(source, image, metadata)`` per line of the split's file, a BadRow for a malformed line."""
    path = release / SPLIT_FILE.format(split=split)
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            source = f"{path.parent.name}/{path.name}:{line_no}"
            try:
                image, metadata = _parse(line, release / IMAGE_DIR)
            except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
                yield BadRow(source, MALFORMED_ROW, f"{type(exc).__name__}: {exc}")
                continue
            yield source, image, {**metadata, "split": split}


def synpic_id(image_id: str) -> Optional[str]:
    """``"synpic40275"`` for ``"MPX1024_synpic40275"`` (MedPix's image id, VQA-RAD's file stem)."""
    match = _SYNPIC_ID.search(image_id)
    return match.group(0) if match else None


def vqa_rad_overlap(medpix_root: PathLike, vqa_rad_root: PathLike) -> Set[str]:
    """MedPix image ids (all splits) whose synpic id names an image of the VQA-RAD release."""
    vqa_rad_ids = set(image_files(vqa_rad_image_dir(vqa_rad_root)))
    release = release_dir(medpix_root)
    return {
        item[1].image_id
        for split in MEDPIX_SPLITS for item in _split_records(release, split)
        if not isinstance(item, BadRow) and synpic_id(item[1].image_id) in vqa_rad_ids
    }


def vqa_rad_image_dir(vqa_rad_root: PathLike) -> Path:
    image_dir = Path(vqa_rad_root) / VQA_RAD_IMAGE_DIR
    if not image_dir.is_dir():
        raise ValueError(f"{vqa_rad_root} is not the VQA-RAD release: no {VQA_RAD_IMAGE_DIR}/ folder in it")
    return image_dir


def _all_images(release: Path) -> List[MedpixImage]:
    return [item[1] for split in MEDPIX_SPLITS for item in _split_records(release, split)
            if not isinstance(item, BadRow)]


def test_set_matches(medpix_root: PathLike, test_image_dirs: Sequence[PathLike], *, workers: int = 0,
                     progress: bool = False) -> Dict[str, str]:
    """MedPix image id -> why it matches an image of ``test_image_dirs`` (folders of a downstream
    test set's images): the same MedPix ``synpic`` id as a file there, or a perceptual
    near-duplicate (``data.near_duplicates``)."""
    release = release_dir(medpix_root)
    images = _all_images(release)
    medpix_hashes = None
    matches: Dict[str, str] = {}
    for folder in test_image_dirs:
        files = image_files(folder)
        if not files:
            raise ValueError(f"{folder} holds no .png/.jpg image to check MedPix against")
        for image in images:
            if synpic_id(image.image_id) in files:
                matches.setdefault(image.image_id, f"same id as {files[synpic_id(image.image_id)]}")
        if medpix_hashes is None:
            medpix_hashes = hash_images({i.image_id: i.image for i in images}, workers, progress, "hashing MedPix")
        test_hashes = hash_images(files, workers, progress, f"hashing {Path(folder).name}")
        for match in near_duplicates(medpix_hashes, test_hashes):
            matches.setdefault(match.kept_id, f"near-duplicate of {files[match.test_id]} (pHash distance "
                                              f"{match.phash_distance}, dHash {match.dhash_distance})")
    return matches


def read_medpix(root: PathLike, split: str, *, exclude_vqa_rad: Optional[PathLike] = None) -> List[MedpixImage]:
    """The images of one official split (``"train"``, ``"dev"``, ``"test"``), in file order.

    ``exclude_vqa_rad`` (the VQA-RAD release folder) drops the images VQA-RAD also holds under
    their own id. Every record is returned as written: a missing image file, an empty or
    placeholder caption is for the caller to handle (:func:`convert_medpix` reports them as bad
    rows); a malformed line is an error.
    """
    _check_split(split)
    release = release_dir(root)
    excluded = vqa_rad_overlap(release, exclude_vqa_rad) if exclude_vqa_rad is not None else set()
    images = []
    for item in _split_records(release, split):
        if isinstance(item, BadRow):
            raise ValueError(f"malformed MedPix record at {item.source}: {item.detail}")
        if item[1].image_id not in excluded:
            images.append(item[1])
    return images


def prefixed_caption(image: MedpixImage) -> str:
    """Ours: ``"<Modality>, <Plane>. <Caption>"``, the parts the release leaves empty left out.
    An empty caption stays empty (a prefix must not turn it into a valid row)."""
    if not image.caption.strip():
        return image.caption
    prefix = ", ".join(part for part in (image.modality or image.modality_type, image.plane) if part)
    return f"{prefix}. {image.caption}" if prefix else image.caption


def medpix_rows(
        root: PathLike,
        splits: Sequence[str] = MEDPIX_SPLITS,
        *,
        caption_prefix: bool = False,
        exclude_cases: Optional[Mapping[str, str]] = None,
        limit: Optional[int] = None,
        excluded_out: Optional[List[Tuple[MedpixImage, str]]] = None,
) -> Iterator[Union[Row, BadRow]]:
    """Rows for :func:`~openclip_unimlip.data.shards.write_dataset`, official split kept.

    ``exclude_cases`` maps case ids to leave out to the reason (each image left out is appended to
    ``excluded_out`` with it, as met); ``limit`` keeps the first records of each split. A caption
    that is the release template's placeholder is a bad row (``empty_caption``)."""
    release = release_dir(root)
    exclude_cases = exclude_cases or {}
    for split in splits:
        _check_split(split)
        kept = 0
        for item in _split_records(release, split):
            if limit is not None and kept >= limit:
                break
            if isinstance(item, BadRow):
                kept += 1
                yield item
                continue
            source, image, metadata = item
            if image.case_id in exclude_cases:
                if excluded_out is not None:
                    excluded_out.append((image, exclude_cases[image.case_id]))
                continue
            kept += 1
            if image.caption.strip() == PLACEHOLDER_CAPTION:
                yield BadRow(source, EMPTY_CAPTION, f"the release template's placeholder {PLACEHOLDER_CAPTION!r}")
                continue
            yield Row(source=source, key=image.image_id, image=image.image,
                      caption=prefixed_caption(image) if caption_prefix else image.caption,
                      metadata=metadata, split=SHARD_SPLITS[split])


def _write_excluded(path: Path, excluded: Sequence[Tuple[MedpixImage, str]]) -> None:
    import pandas as pd

    table = pd.DataFrame([(image.image_id, image.case_id, reason) for image, reason in excluded],
                         columns=["image_id", "case_id", "reason"])
    table.to_csv(path, index=False)


def exclusion_by_case(medpix_root: PathLike, matches: Mapping[str, str]) -> Dict[str, str]:
    """Case id -> reason for every case holding a matched image (``test_set_matches``)."""
    by_id = {image.image_id: image for image in _all_images(release_dir(medpix_root))}
    cases: Dict[str, str] = {}
    for image_id in sorted(matches):
        cases.setdefault(by_id[image_id].case_id, f"case of {image_id}: {matches[image_id]}")
    return cases


def convert_medpix(
        root: PathLike,
        out_dir: PathLike,
        *,
        splits: Sequence[str] = MEDPIX_SPLITS,
        caption_prefix: bool = False,
        exclude_vqa_rad: Optional[PathLike] = None,
        exclude_like: Sequence[PathLike] = (),
        exclude_cases: Sequence[str] = (),
        limit: Optional[int] = None,
        **options,
) -> ConversionReport:
    """Convert MedPix 2.0; ``options`` are :func:`~openclip_unimlip.data.shards.write_dataset`'s.

    Left out, whole cases: every case with an image that the VQA-RAD release at ``exclude_vqa_rad``
    or a folder of test images in ``exclude_like`` also holds (same id or a perceptual
    near-duplicate), and the cases ``exclude_cases`` lists (e.g. ``VQA_RAD_CASES``, for a user
    without VQA-RAD). The images left out are listed with their reason in ``out_dir/excluded.csv``
    (written on every run, empty without exclusion)."""
    release = release_dir(root)
    for split in splits:
        _check_split(split)
    test_dirs = [*([vqa_rad_image_dir(exclude_vqa_rad)] if exclude_vqa_rad is not None else []), *exclude_like]
    matched = test_set_matches(release, test_dirs, workers=options.get("workers", 0),
                               progress=options.get("progress", False)) if test_dirs else {}
    cases = {case: "listed case" for case in exclude_cases}
    cases.update(exclusion_by_case(release, matched))
    excluded: List[Tuple[MedpixImage, str]] = []
    rows = medpix_rows(release, splits, caption_prefix=caption_prefix, exclude_cases=cases, limit=limit,
                       excluded_out=excluded)
    report = write_dataset(rows, out_dir, **options)
    _write_excluded(Path(out_dir) / EXCLUDED_NAME, excluded)
    return report
