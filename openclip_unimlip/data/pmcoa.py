"""PMC-OA (the PMC-CLIP pre-training set) to webdataset shards / OpenCLIP CSV.

Both layouts of the release (``axiong/pmc_oa`` on the Hugging Face hub) are read:

* today's: ``pmc_oa.jsonl`` (or ``pmc_oa_beta.jsonl``), one ``{"image": "PMC…_Fig3_4.jpg",
  "caption": …}`` object per line, no official split: the seed splits it;
* the first release's (the splits PMC-CLIP trained and tested on): ``train.jsonl``,
  ``valid.jsonl`` and ``test.jsonl``, rows ``{"image", "caption", "pmcid", "url_name"}``; their
  split is kept (``valid`` -> ``val``).

Either layout comes with ``images.zip``, whose JPEGs sit in a subfolder. Images are matched on
their basename, in the zip or anywhere under an image folder (e.g. the unpacked zip), so either
can be given. Fields other than the caption are kept in the sample's ``json``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from openclip_unimlip.data.shards import (
    MALFORMED_ROW,
    BadRow,
    ConversionReport,
    Row,
    RowImage,
    ZipMember,
    write_dataset,
)

PathLike = Union[str, os.PathLike]
# the first release's caption files and the split each one is
OFFICIAL_SPLIT_FILES = {"train.jsonl": "train", "valid.jsonl": "val", "test.jsonl": "test"}
SINGLE_FILE = "pmc_oa.jsonl"


def pmcoa_caption_files(jsonl: Union[PathLike, Sequence[PathLike]]) -> List[Tuple[Path, Optional[str]]]:
    """The caption files to read, each with the official split it carries (None: none).

    ``jsonl`` is a caption file, several of them, or the release folder. A file named
    ``train.jsonl``, ``valid.jsonl`` or ``test.jsonl`` carries that split; a folder holding any
    of them is read as the first release, otherwise as today's ``pmc_oa.jsonl``.
    """
    paths = [Path(jsonl)] if isinstance(jsonl, (str, os.PathLike)) else [Path(p) for p in jsonl]
    if not paths:
        raise ValueError("no PMC-OA caption file given: pass pmc_oa.jsonl, the first release's "
                         "train/valid/test.jsonl, or the release folder")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        official = [folder / name for name in OFFICIAL_SPLIT_FILES if (folder / name).is_file()]
        if official and (folder / SINGLE_FILE).is_file():
            raise ValueError(f"{folder} holds both PMC-OA layouts ({', '.join(p.name for p in official)} and "
                             f"{SINGLE_FILE}); pass the caption files to read instead of the folder")
        paths = official or [folder / SINGLE_FILE]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no PMC-OA caption file at {', '.join(missing)}")
    return [(p, OFFICIAL_SPLIT_FILES.get(p.name)) for p in paths]


def _zip_index(archive: Path) -> Dict[str, RowImage]:
    index: Dict[str, RowImage] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if not name.endswith("/"):
                index.setdefault(PurePosixPath(name).name, ZipMember(str(archive), name))
    return index


def _folder_index(folder: Path) -> Dict[str, RowImage]:
    index: Dict[str, RowImage] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()  # first match in a fixed order, whatever the file system lists first
        for name in sorted(filenames):
            index.setdefault(name, os.path.join(dirpath, name))
    return index


def _check_image_source(images: Path) -> None:
    if not (images.is_dir() or zipfile.is_zipfile(images)):
        raise FileNotFoundError(f"{images} is neither an image folder nor a zip archive")


def pmcoa_rows(jsonl: Union[PathLike, Sequence[PathLike]], images: PathLike) -> Iterator[Union[Row, BadRow]]:
    """Rows of the caption files (see :func:`pmcoa_caption_files`) with their images from
    ``images`` (a folder or ``images.zip``)."""
    caption_files, images = pmcoa_caption_files(jsonl), Path(images)
    _check_image_source(images)
    in_folder = images.is_dir()
    index = _folder_index(images) if in_folder else _zip_index(images)
    for path, split in caption_files:
        with open(path, encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                source = f"{path.name}:{line_no}"
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
                    split=split,
                )


def convert_pmcoa(
        jsonl: Union[PathLike, Sequence[PathLike]], images: PathLike, out_dir: PathLike, **options,
) -> ConversionReport:
    """Convert PMC-OA; ``options`` are :func:`~openclip_unimlip.data.shards.write_dataset`'s."""
    pmcoa_caption_files(jsonl)  # bad paths fail here, before the output folder is made
    _check_image_source(Path(images))
    return write_dataset(pmcoa_rows(jsonl, images), out_dir, **options)
