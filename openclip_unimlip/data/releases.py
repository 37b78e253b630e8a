"""Finding the medical downstream datasets under one data root, each in its released layout.

Every dataset has folder names it is looked for under (compared case-insensitively with ``-``,
``_``, ``.`` and spaces ignored, so ``MedPix-2-0``, ``medpix-2.0`` and ``MedPix 2.0`` are one name)
and a layout check taken from its reader. A dataset with no such folder is *skipped*; a folder
with the right name but the wrong contents is *bad*, with one message saying what is missing.

Per dataset, the folders looked for and the layout checked (and the reader it comes from):

* ROCO: ``roco``, ``roco-dataset``; ``[data/]test/radiology/captions.txt`` (``data.roco``).
* MedPix 2.0: ``medpix-2.0``, ``MedPix-2-0``, ``medpix``; ``splitted_dataset/descriptions_*.jsonl`` +
  ``images/``, itself or in ``MedPix-2-0/`` (``data.medpix.release_dir``).
* CheXpert: ``CheXpert-v1.0-small``, ``CheXpert-v1.0``, ``chexpert``; ``train.csv``, ``valid.csv``
  (``data.chest_xray``).
* MIMIC-CXR-JPG: ``mimic-cxr-jpg``, ``mimic-cxr``, ``mimic`` (or a version folder such as ``2.0.0`` in
  it); ``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz]`` + ``files/``.
* NIH ChestX-ray14: ``ChestX-ray14``, ``nih-chestxray14``, ``nih``, ``CXR8``, ``ChestX-ray8``;
  ``Data_Entry_2017_v2020.csv`` (current release; read when both are there) or ``Data_Entry_2017.csv``
  (older), ``train_val_list.txt``, ``test_list.txt`` (checked when read), ``images/`` or
  ``images_0NN/images/`` (``data.chest_xray.read_nih``).
* VQA-RAD: ``vqa-rad``, ``VQA_RAD``; ``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``
  (``data.vqa_releases``).
* SLAKE: ``slake``, ``Slake1.0``; ``train.json``, ``validate.json``, ``test.json``, ``imgs/``.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from openclip_unimlip.data.chest_xray import nih_entry_file
from openclip_unimlip.data.medpix import release_dir
from openclip_unimlip.data.vqa_releases import SLAKE_FILES, VQA_RAD_IMAGE_DIR, VQA_RAD_JSON


def _need(folder: Path, relative: Sequence[str], what: str) -> None:
    missing = [name for name in relative if not (folder / name).exists()]
    if missing:
        raise ValueError(f"{folder} is not the {what} release: {', '.join(missing)} missing")


def _roco(folder: Path) -> Path:
    data = folder / "data" if (folder / "data").is_dir() else folder
    _need(data, ["test/radiology/captions.txt"], "ROCO (razorx89/roco-dataset)")
    return folder


def _medpix(folder: Path) -> Path:
    return release_dir(folder)


def _chexpert(folder: Path) -> Path:
    _need(folder, ["train.csv", "valid.csv"], "CheXpert")
    return folder


MIMIC_TABLES = ("mimic-cxr-2.0.0-chexpert", "mimic-cxr-2.0.0-split", "mimic-cxr-2.0.0-metadata")


def _mimic(folder: Path) -> Path:
    # PhysioNet's download nests the release in a version folder (mimic-cxr-jpg/2.0.0/): the newest one wins.
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+(\.\d+)*", p.name)),
                      key=lambda p: tuple(int(part) for part in p.name.split(".")), reverse=True)
    for candidate in (folder, *versions):
        if all((candidate / f"{t}.csv.gz").is_file() or (candidate / f"{t}.csv").is_file() for t in MIMIC_TABLES) \
                and (candidate / "files").is_dir():
            return candidate
    tables = ", ".join(t + ".csv.gz" for t in MIMIC_TABLES)
    raise ValueError(f"{folder} is not the MIMIC-CXR-JPG release: expected {tables}"
                     " and files/ in it or in a version folder such as 2.0.0/")


def _nih(folder: Path) -> Path:
    try:
        nih_entry_file(folder)
    except FileNotFoundError as error:
        raise ValueError(f"{folder} is not the NIH ChestX-ray14 release: {error}") from None
    return folder


def _vqa_rad(folder: Path) -> Path:
    _need(folder, [VQA_RAD_JSON, VQA_RAD_IMAGE_DIR], "VQA-RAD")
    return folder


def _slake(folder: Path) -> Path:
    _need(folder, [*SLAKE_FILES.values(), "imgs"], "SLAKE")
    return folder


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the key tasks and results use
    title: str
    folders: Tuple[str, ...]  # folder names looked for under the data root
    locate: Callable[[Path], Path]  # the release folder inside a candidate, or ValueError
    tasks: Tuple[str, ...]  # task kinds run on it: retrieval, classification, vqa


DATASETS: Dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("roco", "ROCO", ("roco", "roco-dataset"), _roco, ("retrieval",)),
    DatasetSpec("medpix", "MedPix 2.0", ("medpix-2.0", "MedPix-2-0", "medpix"), _medpix,
                ("retrieval", "classification")),
    DatasetSpec("chexpert", "CheXpert", ("CheXpert-v1.0-small", "CheXpert-v1.0", "chexpert"), _chexpert,
                ("classification",)),
    DatasetSpec("mimic", "MIMIC-CXR-JPG", ("mimic-cxr-jpg", "mimic-cxr", "mimic"), _mimic, ("classification",)),
    DatasetSpec("nih", "NIH ChestX-ray14", ("ChestX-ray14", "nih-chestxray14", "nih", "CXR8", "ChestX-ray8"), _nih,
                ("classification",)),
    DatasetSpec("vqa-rad", "VQA-RAD", ("vqa-rad", "VQA_RAD"), _vqa_rad, ("vqa",)),
    DatasetSpec("slake", "SLAKE", ("slake", "Slake1.0"), _slake, ("vqa",)),
)}


def folder_key(name: str) -> str:
    """A folder name without case, ``-``, ``_``, ``.`` and spaces."""
    return re.sub(r"[-_. ]", "", name).lower()


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    status: str  # "found", "skipped" (no folder) or "bad" (a folder, wrong contents)
    path: Optional[Path] = None  # the release folder when found, the folder tried when bad
    message: str = ""

    @property
    def title(self) -> str:
        return DATASETS[self.name].title


def find_dataset(root: Path, spec: DatasetSpec) -> DatasetStatus:
    """Where ``spec``'s release sits under ``root``: the first candidate folder (sorted) whose layout
    checks; bad with the first candidate's message when none does; skipped when there is none."""
    wanted = {folder_key(name) for name in spec.folders}
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and folder_key(p.name) in wanted)
    problems = []
    for candidate in candidates:
        try:
            return DatasetStatus(spec.name, "found", spec.locate(candidate))
        except ValueError as error:
            problems.append((candidate, str(error)))
    if problems:
        return DatasetStatus(spec.name, "bad", problems[0][0], problems[0][1])
    return DatasetStatus(spec.name, "skipped", message=f"no folder named {' or '.join(spec.folders)} under {root}")


def find_datasets(root: Path, names: Optional[Sequence[str]] = None) -> List[DatasetStatus]:
    """The status of every dataset (or of ``names``), in :data:`DATASETS` order."""
    if not root.is_dir():
        raise FileNotFoundError(f"the data root {root} is not a folder")
    return [find_dataset(root, spec) for spec in DATASETS.values() if names is None or spec.name in names]
