"""PMC-OA (the PMC-CLIP pre-training set) to webdataset shards / OpenCLIP CSV.

The release (``axiong/pmc_oa``) is ``pmc_oa.jsonl``, one ``{"image": "PMC…_Fig3_4.jpg",
"caption": …}`` object per line (other fields are kept in the sample's ``json``), and
``images.zip``, whose JPEGs sit in a subfolder. Images are matched on their basename, in the
zip or anywhere under an image folder (e.g. the unpacked zip), so either can be given. The
release has no official split: the seed splits it.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, Union

from .shards import MALFORMED_ROW, BadRow, ConversionReport, ImageSource, Row, ZipMember, write_dataset


def _zip_index(archive: Path) -> Dict[str, ImageSource]:
    index: Dict[str, ImageSource] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if not name.endswith("/"):
                index.setdefault(PurePosixPath(name).name, ZipMember(str(archive), name))
    return index


def _folder_index(folder: Path) -> Dict[str, ImageSource]:
    index: Dict[str, ImageSource] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()  # first match in a fixed order, whatever the file system lists first
        for name in sorted(filenames):
            index.setdefault(name, os.path.join(dirpath, name))
    return index


def pmcoa_rows(jsonl: Union[str, os.PathLike], images: Union[str, os.PathLike]) -> Iterator[Union[Row, BadRow]]:
    """Rows of ``pmc_oa.jsonl`` with their images from ``images`` (a folder or ``images.zip``)."""
    jsonl, images = Path(jsonl), Path(images)
    if not jsonl.is_file():
        raise FileNotFoundError(f"no PMC-OA caption file at {jsonl}")
    in_folder = images.is_dir()
    if in_folder:
        index = _folder_index(images)
    elif zipfile.is_zipfile(images):
        index = _zip_index(images)
    else:
        raise FileNotFoundError(f"{images} is neither an image folder nor a zip archive")

    with open(jsonl, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            source = f"{jsonl.name}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(source, MALFORMED_ROW, f"not JSON: {exc}")
                continue
            name = record.get("image") if isinstance(record, dict) else None
            if not isinstance(name, str) or not PurePosixPath(name).name:
                yield BadRow(source, MALFORMED_ROW, "no 'image' file name")
                continue
            basename = PurePosixPath(name).name
            # Where no image matched, a path that does not exist: the shard writer reports it missing.
            image = index.get(basename, images / basename if in_folder else ZipMember(str(images), name))
            caption = record.get("caption")
            yield Row(
                source=source,
                key=PurePosixPath(basename).stem,
                image=image,
                caption=caption if isinstance(caption, str) else None,
                metadata={"dataset": "pmc-oa", **{k: v for k, v in record.items() if k != "caption"}},
            )


def convert_pmcoa(
        jsonl: Union[str, os.PathLike], images: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], **options,
) -> ConversionReport:
    """Convert PMC-OA; ``options`` are :func:`~openclip_unimlip.data.shards.write_dataset`'s."""
    return write_dataset(pmcoa_rows(jsonl, images), out_dir, **options)
