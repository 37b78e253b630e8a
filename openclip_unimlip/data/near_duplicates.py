"""Perceptual near-duplicates between a pretraining set and a downstream test set.

Matching images by id misses copies under another name: an annotated copy (MedPix
``MPX1792_synpic24221`` is VQA-RAD's ``synpic24220`` with an arrow), the neighbouring slice of a
series, a re-encoded or resized file. Two perceptual hashes from the ImageHash library
(``imagehash.phash``, DCT of a 32x32 greyscale thumbnail; ``imagehash.dhash``, signs of horizontal
gradients of a 9x8 thumbnail; 64 bits each) are computed on the image as the converters decode it
(``shards.to_rgb``, then greyscale). A pair is a near-duplicate when BOTH Hamming distances are at
most :data:`MAX_DISTANCE`.

The threshold is ours, set on the real releases in ``../shared/data``: every MedPix 2.0 / VQA-RAD
pair within 4 on both hashes is the same picture (re-encoded, annotated) or an adjacent slice of
one series; the closest pair of two different pictures, MedPix ``MPX2471_synpic4188`` and ROCO's
``PMC4275821_gr1`` (two axial head CTs of different patients), lies at pHash 6 / dHash 2, and the
slices at pHash 6 of a matched series are left out anyway with their case
(``tests/data/test_medpix.py`` pins both sides of the line).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from openclip_unimlip.data.shards import to_rgb

MAX_DISTANCE = 4  # ours: see the module docstring
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class NearDuplicate:
    """``kept_id`` (of the set checked) looks like ``test_id`` (of the test set)."""
    kept_id: str
    test_id: str
    phash_distance: int
    dhash_distance: int


def image_hashes(path: PathLike) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(pHash bits, dHash bits) of one image file; None when it does not decode."""
    try:
        with Image.open(path) as image:
            grey = to_rgb(image).convert("L")
    except Exception:  # noqa: BLE001 - Pillow signals a broken file with many exception types
        return None
    return imagehash.phash(grey).hash.flatten(), imagehash.dhash(grey).hash.flatten()


def hash_images(paths: Mapping[str, PathLike], workers: int = 0, progress: bool = False,
                desc: str = "hashing images") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """id -> hashes for every image of ``paths`` that decodes (the others are left out)."""
    ids, files = list(paths), [paths[i] for i in paths]
    bar = dict(total=len(files), desc=desc, unit="img", disable=not progress)
    if workers <= 1:
        hashes = [image_hashes(f) for f in tqdm(files, **bar)]
    else:
        with Pool(workers) as pool:
            hashes = list(tqdm(pool.imap(image_hashes, files, chunksize=32), **bar))
    return {i: h for i, h in zip(ids, hashes, strict=True) if h is not None}


def _stack(hashes: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> Tuple[List[str], np.ndarray, np.ndarray]:
    ids = sorted(hashes)
    if not ids:
        return ids, np.zeros((0, 64), bool), np.zeros((0, 64), bool)
    return ids, np.stack([hashes[i][0] for i in ids]), np.stack([hashes[i][1] for i in ids])


def near_duplicates(checked: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                    test: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                    max_distance: int = MAX_DISTANCE) -> List[NearDuplicate]:
    """Every (checked, test) pair within ``max_distance`` on both hashes, sorted by ids."""
    checked_ids, checked_p, checked_d = _stack(checked)
    test_ids, test_p, test_d = _stack(test)
    found = []
    for row, kept_id in enumerate(checked_ids):
        phash = (test_p != checked_p[row]).sum(axis=1)
        dhash = (test_d != checked_d[row]).sum(axis=1)
        for column in np.flatnonzero((phash <= max_distance) & (dhash <= max_distance)):
            found.append(NearDuplicate(kept_id, test_ids[column], int(phash[column]), int(dhash[column])))
    return found


def image_files(folder: PathLike, suffixes: Sequence[str] = (".png", ".jpg", ".jpeg")) -> Dict[str, Path]:
    """stem -> path of the image files directly in ``folder``."""
    return {p.stem: p for p in sorted(Path(folder).iterdir()) if p.is_file() and p.suffix.lower() in suffixes}
