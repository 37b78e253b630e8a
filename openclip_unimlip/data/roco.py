"""ROCO (Radiology Objects in COntext) to webdataset shards / OpenCLIP CSV.

The layout is the one of the release repository ``razorx89/roco-dataset`` (checked against
its files and ``scripts/fetch.py`` at commit a1f0ad6)::

    data/{train,validation,test}/{radiology,non-radiology}/
        captions.txt   ROCO_00020<TAB> Axial computed tomography scan of the pelvis ...
        dlinks.txt     ROCO_00020<TAB>wget -r ftp://…/PMC3970251.tar.gz -P /path/to/Dir<TAB>CRIONM2014-931546.003.jpg
        images/        filled by scripts/fetch.py

``fetch.py`` saves an image as ``images/ROCO_00020.jpg``; before January 2022 it saved it as
``images/<PMC id>_<file name in dlinks.txt>``; both names are looked for. Either the
repository root or its ``data`` folder can be given. By default the official split is kept
(``train``, ``validation`` -> ``val``, ``test``); a ROCO id that appears in ``dlinks.txt``
but not in ``captions.txt`` is reported as an empty caption.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from openclip_unimlip.data.shards import MALFORMED_ROW, BadRow, ConversionReport, Row, write_dataset

ROCO_SPLITS = {"train": "train", "validation": "val", "test": "test"}
ROCO_SUBSETS = ("radiology", "non-radiology")
_Link = Tuple[str, Optional[str], str]  # source line, PMC id, image file name


def _tab_lines(path: Path) -> Iterator[Tuple[str, List[str]]]:
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                fields = line.split("\t")
                yield f"{path.parent.parent.name}/{path.parent.name}/{path.name}:{line_no}", fields


def _pmc_id(wget_command: str) -> Optional[str]:
    archive = next((part for part in wget_command.split() if part.endswith(".tar.gz")), None)
    return Path(archive).name[:-len(".tar.gz")] if archive else None


def _read_dlinks(path: Path) -> Tuple[Dict[str, _Link], list]:
    """ROCO id -> (source, PMC id, image file name), and the lines that could not be parsed."""
    links, bad = {}, []
    if not path.is_file():
        return links, bad
    for source, fields in _tab_lines(path):
        if len(fields) < 3 or not fields[0].strip() or not fields[-1].strip():
            bad.append(BadRow(source, MALFORMED_ROW, "expected ROCO id, download command and file name"))
            continue
        links.setdefault(fields[0].strip(), (source, _pmc_id(fields[1]), fields[-1].strip()))
    return links, bad


def _image_path(image_dir: Path, roco_id: str, link: Optional[_Link]) -> Path:
    candidates = [image_dir / f"{roco_id}.jpg"]
    if link and link[1]:
        candidates.append(image_dir / f"{link[1]}_{link[2]}")
    # None found: the first name, which the shard writer then reports as missing.
    return next((path for path in candidates if path.is_file()), candidates[0])


def _roco_row(source: str, roco_id: str, caption: Optional[str], folder: Path,
              links: Dict[str, _Link], official_split: bool) -> Row:
    split, subset = folder.parent.name, folder.name
    link = links.get(roco_id)
    return Row(
        source=source,
        key=roco_id,
        image=_image_path(folder / "images", roco_id, link),
        caption=caption,
        metadata={"dataset": "roco", "roco_id": roco_id, "split": split, "subset": subset,
                  "pmc_id": link[1] if link else None, "image_name": link[2] if link else None},
        split=ROCO_SPLITS[split] if official_split else None,
    )


def roco_rows(
        root: Union[str, os.PathLike],
        splits: Sequence[str] = tuple(ROCO_SPLITS),
        subsets: Sequence[str] = ("radiology",),
        official_split: bool = True,
) -> Iterator[Union[Row, BadRow]]:
    """Rows of the ROCO release under ``root``; ``official_split=False`` lets the seed split them."""
    root = Path(root)
    data_dir = root / "data" if (root / "data").is_dir() else root
    for split in splits:
        if split not in ROCO_SPLITS:
            raise ValueError(f"unknown ROCO split {split!r}; expected one of {tuple(ROCO_SPLITS)}")
        for subset in subsets:
            folder = data_dir / split / subset
            if not (folder / "captions.txt").is_file():
                raise FileNotFoundError(f"no ROCO captions.txt in {folder}")
            links, bad_links = _read_dlinks(folder / "dlinks.txt")
            yield from bad_links
            seen = set()
            for source, fields in _tab_lines(folder / "captions.txt"):
                if len(fields) < 2 or not fields[0].strip():
                    yield BadRow(source, MALFORMED_ROW, "expected ROCO id<TAB>caption")
                    continue
                roco_id = fields[0].strip()
                seen.add(roco_id)
                yield _roco_row(source, roco_id, "\t".join(fields[1:]), folder, links, official_split)
            for roco_id, (source, _, _) in links.items():
                if roco_id not in seen:
                    yield _roco_row(source, roco_id, None, folder, links, official_split)


def convert_roco(root: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
                 splits: Sequence[str] = tuple(ROCO_SPLITS), subsets: Sequence[str] = ("radiology",),
                 official_split: bool = True, **options) -> ConversionReport:
    """Convert ROCO; ``options`` are :func:`~openclip_unimlip.data.shards.write_dataset`'s."""
    return write_dataset(roco_rows(root, splits, subsets, official_split), out_dir, **options)
