"""Chest X-ray classification datasets in their official layouts: CheXpert, MIMIC-CXR(-JPG), NIH ChestX-ray14.

Every reader returns one split as a :class:`CxrSplit` (image paths + a multi-hot target matrix +
the settings that produced it) and checks that every image exists, so that bad inputs fail
before any training starts.

What is read follows a named protocol of :mod:`openclip_unimlip.data.cxr_protocols` (label
set, per-label uncertainty mapping, views, split rule), by default ``"chexclusion"``, the one
the comparison rows of Uni-Mlip's Table 1 follow; ``"mgca"`` and ``"all14"`` (this package's
earlier default) are the others. ``labels``, ``uncertain`` and ``frontal_only`` given explicitly
replace the protocol's choice and are recorded as overrides.

Split rules (splits ``"train"``, ``"valid"``, ``"test"``):

* ``"official"``: the release's own test split. CheXpert: the expert-labelled ``valid.csv`` (the
  test labels are not public, as in MGCA); ``train``/``valid`` partition ``train.csv`` by patient,
  ``valid`` being a seeded random ``valid_fraction`` of the patients (MGCA holds out 5,000 random
  images). MIMIC-CXR: the official ``mimic-cxr-2.0.0-split.csv.gz`` (``validate`` is our
  ``valid``). NIH: ``test_list.txt``; ``train``/``valid`` partition ``train_val_list.txt`` as for
  CheXpert.
* ``"patients"`` (CheXclusion): the whole release pooled (CheXpert ``train.csv`` + ``valid.csv``,
  every MIMIC-CXR split, every NIH image) and split by patient, before any view filter: test is
  the patients in CheXclusion's published test list, valid a seeded 10 % of the patients drawn
  from the others, train the rest; where none of the listed patients is in the data, a seeded
  80/10/10 patient split (:func:`cxr_protocols.patient_split`). The split's settings say which
  (``settings.split_note``).

Holding out whole patients keeps one patient's images out of both sides of a split. The holdout
seed is fixed (:data:`HOLDOUT_SEED`), so ``valid`` and ``test`` never change between runs; the
seed of a run only chooses the labelled training subset (:func:`training_subset`).

Label conventions: CheXpert and MIMIC-CXR labels are 1 (positive), 0 (negative), -1 (uncertain)
or blank (not mentioned). Blank becomes 0; uncertain becomes the protocol's target for that label
(U-Ones 1, U-Zeros 0; Irvin et al., 2019). MIMIC-CXR studies without a row in the
CheXpert-labeler file carry no labels and are dropped. NIH ``Finding Labels`` are pipe-separated;
``No Finding`` is an all-zero row.

NIH ChestX-ray14 as released (:func:`read_nih`): the labels file is ``Data_Entry_2017_v2020.csv``
(NIH's current release) or ``Data_Entry_2017.csv`` (the older release and the mirrors made from it,
e.g. Kaggle's ``nih-chest-xrays/data``); when both are present the current one is read
(:func:`nih_entry_file`). The older file ends every line with a comma, an extra unnamed column
that is ignored. Images sit in ``images/`` (NIH's twelve ``images_*.tar.gz`` archives all unpack
there) or in ``images_001/images/`` ... ``images_012/images/`` (one folder per archive, as the
widely used mirrors, e.g. Kaggle's, hold them). ``train_val_list.txt`` and ``test_list.txt`` are NIH's own
patient-disjoint split, read by the ``"official"`` rule.

Images are decoded by :func:`openclip_unimlip.data.images.load_image` (one rule per kind of file).
"""
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from openclip_unimlip.data.cxr_protocols import (  # noqa: F401  (re-exported)
    CHEXPERT_COMPETITION_LABELS,
    CHEXPERT_LABELS,
    DATASET_LABELS,
    DEFAULT_PROTOCOL,
    HOLDOUT_SEED,
    MIMIC_LABELS,
    NIH_LABELS,
    PROTOCOLS,
    UNCERTAIN_POLICIES,
    CxrSettings,
    check_choice,
    map_uncertain,
    patient_split,
    patient_split_mask,
    resolve_settings,
)
from openclip_unimlip.data.images import load_image

SPLITS = ("train", "valid", "test")
DEFAULT_VALID_FRACTION = 0.05
FRONTAL_VIEWS = ("PA", "AP")
# NIH ChestX-ray14's labels file: the current release's name first (read when both are present).
NIH_ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")  # the columns read

PathLike = Union[str, Path]
UncertainArg = Union[None, str, Mapping[str, float]]


@dataclass(frozen=True)
class CxrSplit:
    """One split of a multi-label chest X-ray dataset."""
    image_paths: tuple[Path, ...]
    targets: np.ndarray  # (num_images, num_labels) float32 in {0, 1}
    label_names: tuple[str, ...]
    patient_ids: tuple[str, ...]
    settings: Optional[CxrSettings] = None  # the protocol (and overrides) it was read with, and its split note

    def __len__(self) -> int:
        return len(self.image_paths)

    def select(self, indices: Sequence[int]) -> "CxrSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return CxrSplit(
            image_paths=tuple(self.image_paths[i] for i in indices),
            targets=self.targets[indices],
            label_names=self.label_names,
            patient_ids=tuple(self.patient_ids[i] for i in indices),
            settings=self.settings,
        )


def training_subset(split: CxrSplit, fraction: float, seed: int) -> CxrSplit:
    """The labelled fraction of a training split used for a 1% / 10% / 100% run.

    As in MGCA, the subset is a fixed random sample of images (not patients) drawn with ``seed``.
    Unlike independent draws per fraction, every fraction is a prefix of one seeded permutation,
    so for a given seed the 1% subset is contained in the 10% subset, which is contained in the
    full split. The subset keeps at least one image and its images stay in file order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fraction must be in (0, 1], got {fraction}")
    permutation = np.random.default_rng(seed).permutation(len(split))
    count = max(1, round(fraction * len(split)))
    return split.select(np.sort(permutation[:count]))


def _resolve_labels(labels: Optional[Sequence[str]], available: Sequence[str], source: str) -> tuple[str, ...]:
    if labels is None:
        return tuple(available)
    unknown = [label for label in labels if label not in available]
    if unknown:
        raise ValueError(f"unknown label column(s) {unknown} in {source}; available: {list(available)}")
    return tuple(labels)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"missing dataset file {path}")
    return pd.read_csv(path)


def _read_mimic_table(root: Path, stem: str) -> pd.DataFrame:
    """``<stem>.csv.gz`` as PhysioNet ships it, or ``<stem>.csv`` once unpacked."""
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (root / name).is_file():
            return pd.read_csv(root / name)  # compression inferred from the suffix
    raise FileNotFoundError(f"missing dataset file {root / stem}.csv.gz (or its unpacked .csv)")


def _check_images_exist(paths: Sequence[Path]) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        raise FileNotFoundError(f"{len(missing)} image file(s) missing, e.g. {shown}")


def _check_split_arguments(split: str, settings: CxrSettings, valid_fraction: Optional[float]) -> None:
    check_choice("split", split, SPLITS)
    if valid_fraction is not None and settings.split_rule != "official":
        raise ValueError(
            f"valid_fraction applies to the official split rule only; protocol {settings.protocol!r} "
            f"splits {settings.dataset} by patient")


def _holdout_mask(patient_ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the images of a seeded random ``fraction`` of the patients, rounded up."""
    patients = np.sort(patient_ids.unique())
    count = math.ceil(fraction * len(patients))
    held_out = np.random.default_rng(HOLDOUT_SEED).choice(patients, size=count, replace=False)
    return patient_ids.isin(held_out).to_numpy()


def _partition_train_valid(frame: pd.DataFrame, split: str, valid_fraction: Optional[float]) -> pd.DataFrame:
    """The official rule's train/valid: a patient holdout of the non-test images (the test split is read as is)."""
    if split == "test":
        return frame
    fraction = DEFAULT_VALID_FRACTION if valid_fraction is None else valid_fraction
    held_out = _holdout_mask(frame["patient"], fraction)
    return frame[held_out if split == "valid" else ~held_out]


def _make_split(
        frame: pd.DataFrame,
        targets: np.ndarray,
        label_names: tuple[str, ...],
        settings: CxrSettings,
        check_files: bool,
) -> CxrSplit:
    paths = tuple(frame["path"])
    if check_files:
        _check_images_exist(paths)
    return CxrSplit(paths, targets, label_names, tuple(frame["patient"].astype(str)), settings)


def _read_chexpert(
        root: Path,
        split: str,
        settings: CxrSettings,
        valid_fraction: Optional[float] = None,
        check_files: bool = True,
) -> CxrSplit:
    _check_split_arguments(split, settings, valid_fraction)
    if settings.split_rule == "patients":
        frame = pd.concat([_read_csv(root / "train.csv"), _read_csv(root / "valid.csv")], ignore_index=True)
    else:
        frame = _read_csv(root / ("valid.csv" if split == "test" else "train.csv"))
    label_names = _resolve_labels(settings.labels, [c for c in frame.columns if c in CHEXPERT_LABELS], "CheXpert")
    relative = frame["Path"].map(lambda p: Path(*Path(p).parts[1:]))
    frame = frame.assign(path=[root / p for p in relative], patient=[p.parts[1] for p in relative])
    if settings.split_rule == "patients":
        chosen = patient_split(frame["patient"], split, "chexpert")
        frame, settings = frame[chosen.mask], replace(settings, split_note=chosen.note)
    if settings.frontal_only:
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    if settings.split_rule == "official":
        frame = _partition_train_valid(frame, split, valid_fraction)
    return _make_split(frame, map_uncertain(frame[list(label_names)], settings.uncertain), label_names, settings,
                       check_files)


def read_chexpert(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: UncertainArg = None,
        frontal_only: Optional[bool] = None,
        valid_fraction: Optional[float] = None,
        check_files: bool = True,
        protocol: str = DEFAULT_PROTOCOL,
) -> CxrSplit:
    """Read CheXpert from ``root`` (the folder holding ``train.csv`` and ``valid.csv``).

    ``labels``, ``uncertain`` (a policy name or a per-label mapping) and ``frontal_only`` default
    to ``protocol``'s; ``valid_fraction`` (default 5%) only exists under the official split rule.
    The ``Path`` column starts with the dataset folder name (``CheXpert-v1.0-small/train/...``),
    which is replaced by ``root``, so the folder may be renamed or moved.
    """
    settings = resolve_settings("chexpert", protocol, labels, uncertain, frontal_only)
    return _read_chexpert(Path(root), split, settings, valid_fraction, check_files)


def mimic_image_path(root: Path, subject_id: int, study_id: int, dicom_id: str, suffix: str) -> Path:
    """``files/p1x/p<subject>/s<study>/<dicom_id><suffix>``, the MIMIC-CXR(-JPG) layout."""
    subject = f"p{subject_id}"
    return root / "files" / subject[:3] / subject / f"s{study_id}" / f"{dicom_id}{suffix}"


def _read_mimic_cxr(
        root: Path,
        split: str,
        settings: CxrSettings,
        image_suffix: str = ".jpg",
        check_files: bool = True,
) -> CxrSplit:
    _check_split_arguments(split, settings, None)
    chexpert = _read_mimic_table(root, "mimic-cxr-2.0.0-chexpert")
    label_names = _resolve_labels(settings.labels, [c for c in chexpert.columns if c in MIMIC_LABELS], "MIMIC-CXR")
    splits = _read_mimic_table(root, "mimic-cxr-2.0.0-split")
    if settings.split_rule == "patients":
        chosen = patient_split(splits["subject_id"], split, "mimic")
        frame, settings = splits[chosen.mask], replace(settings, split_note=chosen.note)
    else:
        frame = splits[splits["split"] == ("validate" if split == "valid" else split)]
    metadata = _read_mimic_table(root, "mimic-cxr-2.0.0-metadata")
    frame = frame.merge(metadata[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
    if settings.frontal_only:
        frame = frame[frame["ViewPosition"].isin(FRONTAL_VIEWS)]
    frame = frame.merge(chexpert, on=["subject_id", "study_id"], how="inner")
    frame = frame.assign(
        path=[mimic_image_path(root, s, t, d, image_suffix)
              for s, t, d in zip(frame["subject_id"], frame["study_id"], frame["dicom_id"], strict=True)],
        patient=frame["subject_id"],
    )
    return _make_split(frame, map_uncertain(frame[list(label_names)], settings.uncertain), label_names, settings,
                       check_files)


def read_mimic_cxr(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: UncertainArg = None,
        frontal_only: Optional[bool] = None,
        image_suffix: str = ".jpg",
        check_files: bool = True,
        protocol: str = DEFAULT_PROTOCOL,
) -> CxrSplit:
    """Read MIMIC-CXR-JPG (``image_suffix=".jpg"``) or MIMIC-CXR DICOMs (``".dcm"``) from ``root``.

    ``root`` holds ``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv.gz`` (PhysioNet's MIMIC-CXR-JPG
    2.0.0 / 2.1.0 files, read gzipped or unpacked to ``.csv``) and the ``files/`` tree.
    ``labels``, ``uncertain`` and ``frontal_only`` default to ``protocol``'s.
    """
    settings = resolve_settings("mimic", protocol, labels, uncertain, frontal_only)
    return _read_mimic_cxr(Path(root), split, settings, image_suffix, check_files)


def nih_entry_file(root: PathLike) -> Path:
    """NIH ChestX-ray14's labels file under ``root``: ``Data_Entry_2017_v2020.csv`` (the current
    release) when present, else ``Data_Entry_2017.csv`` (the older one); FileNotFoundError naming
    both when neither is there."""
    for name in NIH_ENTRY_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise FileNotFoundError(f"missing NIH ChestX-ray14 labels file in {root}: expected {NIH_ENTRY_FILES[0]} "
                            f"(the current release) or {NIH_ENTRY_FILES[1]} (the older one)")


def read_nih_entries(root: PathLike) -> pd.DataFrame:
    """The rows of NIH's labels file (:func:`nih_entry_file`), with every column as released."""
    path = nih_entry_file(root)
    # index_col=False: a line ending in a comma (the older file) must not turn the first column into
    # the index; the unnamed column that trailing comma makes is dropped.
    entries = pd.read_csv(path, index_col=False)
    entries = entries.loc[:, ~entries.columns.str.startswith("Unnamed:")]
    missing = [column for column in NIH_COLUMNS if column not in entries.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; NIH's file has {list(NIH_COLUMNS)}")
    return entries


def _nih_image_index(root: Path) -> dict[str, Path]:
    # Images sit in images/ (every archive unpacked into one folder) or images_001/images/ ... (one each).
    return {p.name: p for pattern in ("images/*.png", "images_*/images/*.png") for p in root.glob(pattern)}


def _read_nih(
        root: Path,
        split: str,
        settings: CxrSettings,
        valid_fraction: Optional[float] = None,
        check_files: bool = True,
) -> CxrSplit:
    _check_split_arguments(split, settings, valid_fraction)
    label_names = _resolve_labels(settings.labels, NIH_LABELS, "NIH ChestX-ray14")
    entries = read_nih_entries(root)
    if settings.split_rule == "patients":
        chosen = patient_split(entries["Patient ID"], split, "nih")
        frame, settings = entries[chosen.mask], replace(settings, split_note=chosen.note)
    else:
        list_file = root / ("test_list.txt" if split == "test" else "train_val_list.txt")
        if not list_file.is_file():
            raise FileNotFoundError(f"missing dataset file {list_file}")
        frame = entries[entries["Image Index"].isin(set(list_file.read_text().split()))]
    image_index = _nih_image_index(root)
    frame = frame.assign(
        path=[image_index.get(name, root / "images" / name) for name in frame["Image Index"]],
        patient=frame["Patient ID"],
    )
    if settings.split_rule == "official":
        frame = _partition_train_valid(frame, split, valid_fraction)
    findings = frame["Finding Labels"].str.split("|")
    targets = np.array([[label in found for label in label_names] for found in findings], dtype=np.float32)
    return _make_split(frame, targets.reshape(len(frame), len(label_names)), label_names, settings, check_files)


def read_nih(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        valid_fraction: Optional[float] = None,
        check_files: bool = True,
        protocol: str = DEFAULT_PROTOCOL,
) -> CxrSplit:
    """Read NIH ChestX-ray14 from ``root`` as NIH releases it (module docstring): the labels file
    (``Data_Entry_2017_v2020.csv``, else ``Data_Entry_2017.csv``), ``train_val_list.txt`` and
    ``test_list.txt`` (the ``"official"`` rule: test is ``test_list.txt``, train and valid a patient
    holdout of ``train_val_list.txt``) and the images in ``images/`` or ``images_0NN/images/``."""
    settings = resolve_settings("nih", protocol, labels)
    return _read_nih(Path(root), split, settings, valid_fraction, check_files)


def read_cxr_split(
        dataset: str,
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: UncertainArg = None,
        frontal_only: Optional[bool] = None,
        check_files: bool = True,
        protocol: str = DEFAULT_PROTOCOL,
) -> CxrSplit:
    """Read one split of ``dataset`` (``"chexpert"``, ``"mimic"`` or ``"nih"``) under ``protocol``."""
    settings = resolve_settings(dataset, protocol, labels, uncertain, frontal_only)
    reader = {"chexpert": _read_chexpert, "mimic": _read_mimic_cxr, "nih": _read_nih}[dataset]
    return reader(Path(root), split, settings, check_files=check_files)


class CxrDataset(Dataset):
    """(image tensor, float target vector) pairs of a :class:`CxrSplit`."""

    def __init__(self, split: CxrSplit, transform: Callable[[Image.Image], torch.Tensor]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(load_image(self.split.image_paths[index]))
        return image, torch.from_numpy(self.split.targets[index])
