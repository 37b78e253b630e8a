"""Chest X-ray classification datasets in their official layouts: CheXpert, MIMIC-CXR(-JPG), NIH ChestX-ray14.

Every reader returns one split as a :class:`CxrSplit` (image paths + a multi-hot target matrix) and
checks that every image exists, so that bad inputs fail before any training starts.

Split conventions (``"train"``, ``"valid"``, ``"test"``). Uni-Mlip takes its splits from Huang et
al. (MIDL 2024), whose split files we could not obtain; these are the official splits where they
exist, otherwise close to MGCA:

* CheXpert: ``test`` is the official, expert-labelled ``valid.csv`` (as in MGCA: the test labels
  are not in the public release); ``train``/``valid`` partition ``train.csv`` by patient, ``valid``
  being a seeded random ``valid_fraction`` of the patients (MGCA holds out 5,000 random images).
* MIMIC-CXR: the official ``mimic-cxr-2.0.0-split.csv.gz`` (``validate`` is our ``valid``).
* NIH ChestX-ray14: ``test`` is the official ``test_list.txt``; ``train``/``valid`` partition
  ``train_val_list.txt`` by patient as for CheXpert.

Holding out whole patients keeps one patient's images out of both sides of a split. The holdout
seed is fixed (:data:`HOLDOUT_SEED`), so ``valid`` and ``test`` never change between runs; the
seed of a run only chooses the labelled training subset (:func:`training_subset`).

Label conventions: CheXpert and MIMIC-CXR labels are 1 (positive), 0 (negative), -1 (uncertain)
or blank (not mentioned). Blank becomes 0; uncertain follows the policy of Irvin et al. (2019):
``"u_ones"`` maps it to 1, ``"u_zeros"`` to 0. By default only frontal views (PA/AP) are kept,
as in MGCA. MIMIC-CXR studies without a row in the CheXpert-labeler file carry no labels and
are dropped. NIH ``Finding Labels`` are pipe-separated; ``No Finding`` is an all-zero row.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from torch.utils.data import Dataset

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# The five CheXpert competition labels used by MGCA, GLoRIA and ConVIRT.
CHEXPERT_COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# MIMIC-CXR is labelled by the CheXpert labeler: same 14 observations.
MIMIC_LABELS = CHEXPERT_LABELS
NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
DATASET_LABELS = {"chexpert": CHEXPERT_LABELS, "mimic": MIMIC_LABELS, "nih": NIH_LABELS}
SPLITS = ("train", "valid", "test")
UNCERTAIN_POLICIES = {"u_ones": 1.0, "u_zeros": 0.0}
HOLDOUT_SEED = 0
DEFAULT_VALID_FRACTION = 0.05
FRONTAL_VIEWS = ("PA", "AP")
DICOM_SUFFIXES = (".dcm", ".dicom")

PathLike = Union[str, Path]


@dataclass(frozen=True)
class CxrSplit:
    """One split of a multi-label chest X-ray dataset."""
    image_paths: tuple[Path, ...]
    targets: np.ndarray  # (num_images, num_labels) float32 in {0, 1}
    label_names: tuple[str, ...]
    patient_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.image_paths)

    def select(self, indices: Sequence[int]) -> "CxrSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return CxrSplit(
            image_paths=tuple(self.image_paths[i] for i in indices),
            targets=self.targets[indices],
            label_names=self.label_names,
            patient_ids=tuple(self.patient_ids[i] for i in indices),
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


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def _resolve_labels(labels: Optional[Sequence[str]], available: Sequence[str], source: str) -> tuple[str, ...]:
    if labels is None:
        return tuple(available)
    unknown = [label for label in labels if label not in available]
    if unknown:
        raise ValueError(f"unknown label column(s) {unknown} in {source}; available: {list(available)}")
    if not labels:
        raise ValueError("at least one label is required")
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


def _map_uncertain(values: pd.DataFrame, uncertain: str) -> np.ndarray:
    _check_choice("uncertain-label policy", uncertain, tuple(UNCERTAIN_POLICIES))
    return values.fillna(0.0).replace(-1.0, UNCERTAIN_POLICIES[uncertain]).to_numpy(dtype=np.float32)


def _holdout_mask(patient_ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the images of a seeded random ``fraction`` of the patients, rounded up."""
    patients = np.sort(patient_ids.unique())
    count = math.ceil(fraction * len(patients))
    held_out = np.random.default_rng(HOLDOUT_SEED).choice(patients, size=count, replace=False)
    return patient_ids.isin(held_out).to_numpy()


def _partition_train_valid(frame: pd.DataFrame, split: str, valid_fraction: float) -> pd.DataFrame:
    if split == "test":
        return frame
    held_out = _holdout_mask(frame["patient"], valid_fraction)
    return frame[held_out if split == "valid" else ~held_out]


def _make_split(
        frame: pd.DataFrame,
        targets: np.ndarray,
        label_names: tuple[str, ...],
        check_files: bool,
) -> CxrSplit:
    paths = tuple(frame["path"])
    if check_files:
        _check_images_exist(paths)
    return CxrSplit(paths, targets, label_names, tuple(frame["patient"].astype(str)))


def read_chexpert(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: str = "u_ones",
        frontal_only: bool = True,
        valid_fraction: float = DEFAULT_VALID_FRACTION,
        check_files: bool = True,
) -> CxrSplit:
    """Read CheXpert from ``root`` (the folder holding ``train.csv`` and ``valid.csv``).

    The ``Path`` column starts with the dataset folder name (``CheXpert-v1.0-small/train/...``),
    which is replaced by ``root``, so the folder may be renamed or moved.
    """
    _check_choice("split", split, SPLITS)
    root = Path(root)
    frame = _read_csv(root / ("valid.csv" if split == "test" else "train.csv"))
    label_names = _resolve_labels(labels, [c for c in frame.columns if c in CHEXPERT_LABELS], "CheXpert")
    if frontal_only:
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    relative = frame["Path"].map(lambda p: Path(*Path(p).parts[1:]))
    frame = frame.assign(path=[root / p for p in relative], patient=[p.parts[1] for p in relative])
    frame = _partition_train_valid(frame, split, valid_fraction)
    return _make_split(frame, _map_uncertain(frame[list(label_names)], uncertain), label_names, check_files)


def mimic_image_path(root: Path, subject_id: int, study_id: int, dicom_id: str, suffix: str) -> Path:
    """``files/p1x/p<subject>/s<study>/<dicom_id><suffix>``, the MIMIC-CXR(-JPG) layout."""
    subject = f"p{subject_id}"
    return root / "files" / subject[:3] / subject / f"s{study_id}" / f"{dicom_id}{suffix}"


def read_mimic_cxr(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: str = "u_ones",
        frontal_only: bool = True,
        image_suffix: str = ".jpg",
        check_files: bool = True,
) -> CxrSplit:
    """Read MIMIC-CXR-JPG (``image_suffix=".jpg"``) or MIMIC-CXR DICOMs (``".dcm"``) from ``root``.

    ``root`` holds ``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv.gz`` (PhysioNet's MIMIC-CXR-JPG
    2.0.0 / 2.1.0 files, read gzipped or unpacked to ``.csv``) and the ``files/`` tree.
    """
    _check_choice("split", split, SPLITS)
    root = Path(root)
    chexpert = _read_mimic_table(root, "mimic-cxr-2.0.0-chexpert")
    label_names = _resolve_labels(labels, [c for c in chexpert.columns if c in MIMIC_LABELS], "MIMIC-CXR")
    splits = _read_mimic_table(root, "mimic-cxr-2.0.0-split")
    metadata = _read_mimic_table(root, "mimic-cxr-2.0.0-metadata")
    official_split = "validate" if split == "valid" else split
    frame = splits[splits["split"] == official_split].merge(
        metadata[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
    if frontal_only:
        frame = frame[frame["ViewPosition"].isin(FRONTAL_VIEWS)]
    frame = frame.merge(chexpert, on=["subject_id", "study_id"], how="inner")
    frame = frame.assign(
        path=[mimic_image_path(root, s, t, d, image_suffix)
              for s, t, d in zip(frame["subject_id"], frame["study_id"], frame["dicom_id"], strict=True)],
        patient=frame["subject_id"],
    )
    return _make_split(frame, _map_uncertain(frame[list(label_names)], uncertain), label_names, check_files)


def _nih_image_index(root: Path) -> dict[str, Path]:
    # Images sit in images/ (flattened) or images_001/images/ ... (the official archives).
    return {p.name: p for pattern in ("images/*.png", "images_*/images/*.png") for p in root.glob(pattern)}


def read_nih(
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        valid_fraction: float = DEFAULT_VALID_FRACTION,
        check_files: bool = True,
) -> CxrSplit:
    """Read NIH ChestX-ray14 from ``root`` (``Data_Entry_2017.csv``, the two list files, images)."""
    _check_choice("split", split, SPLITS)
    root = Path(root)
    label_names = _resolve_labels(labels, NIH_LABELS, "NIH ChestX-ray14")
    entries = _read_csv(root / "Data_Entry_2017.csv")
    list_file = root / ("test_list.txt" if split == "test" else "train_val_list.txt")
    if not list_file.is_file():
        raise FileNotFoundError(f"missing dataset file {list_file}")
    names = set(list_file.read_text().split())
    frame = entries[entries["Image Index"].isin(names)]
    image_index = _nih_image_index(root)
    frame = frame.assign(
        path=[image_index.get(name, root / "images" / name) for name in frame["Image Index"]],
        patient=frame["Patient ID"],
    )
    frame = _partition_train_valid(frame, split, valid_fraction)
    findings = frame["Finding Labels"].str.split("|")
    targets = np.array([[label in found for label in label_names] for found in findings], dtype=np.float32)
    return _make_split(frame, targets.reshape(len(frame), len(label_names)), label_names, check_files)


def read_cxr_split(
        dataset: str,
        root: PathLike,
        split: str,
        labels: Optional[Sequence[str]] = None,
        uncertain: str = "u_ones",
        frontal_only: bool = True,
        check_files: bool = True,
) -> CxrSplit:
    """Read one split of ``dataset`` (``"chexpert"``, ``"mimic"`` or ``"nih"``)."""
    _check_choice("dataset", dataset, tuple(DATASET_LABELS))
    if dataset == "nih":  # NIH has frontal views only and no uncertain labels
        return read_nih(root, split, labels, check_files=check_files)
    reader = read_chexpert if dataset == "chexpert" else read_mimic_cxr
    return reader(root, split, labels, uncertain=uncertain, frontal_only=frontal_only, check_files=check_files)


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
    """An RGB image from a PNG/JPEG (8- or 16-bit) or DICOM file."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path)
    with Image.open(path) as image:
        if image.mode.startswith("I"):  # 16-bit grey: RGB conversion would clip at 255
            return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
        return image.convert("RGB")


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
