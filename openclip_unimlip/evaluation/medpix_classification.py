"""Single-label image classification on MedPix 2.0's own labels: a real stand-in for Uni-Mlip Table 1.

Table 1 fine-tunes the pre-trained image tower with a linear layer on 1 %, 10 % and 100 % of a
chest X-ray training split and reports macro AUC (sec. 4.2). Those datasets are multi-label; the
labels MedPix 2.0 releases with every image are single-label and multi-class, so here (ours):

* **labels**: ``location_category`` (5 classes: Abdomen, Head, Reproductive and Urinary System,
  Spine and Muscles, Thorax; the release's ``Location Category``), ``modality_type`` (CT, MR; its
  ``Type``) and ``plane`` (Axial, Coronal, Sagittal from ``Description.Plane``, ``Transverse``
  read as Axial; the images of any other plane, e.g. ``3D Reconstruction``, are left out of that
  task and counted). The classes are the training split's, sorted.
* **splits**: the release's official case splits: train for training, dev for model selection,
  test for the score.
* **training fractions**: per class, ``max(1, round(fraction x its training images))`` images,
  drawn by a seeded permutation of each class, so every class appears in every subset and, for
  one seed, the 1 % subset lies inside the 10 % one (:func:`stratified_subset`).
* **fine-tuning**: the image tower with a linear layer (``finetune.ImageClassifier``),
  softmax cross-entropy (single-label) instead of the multi-label BCE of
  ``classification.fine_tune_classifier``, Adam, the dev macro AUC selecting the epoch
  (``finetune.fit``'s early stopping). A training epoch draws at least
  ``min_epoch_images`` images (the subset repeated, reshuffled each pass), so that a 17-image
  1 % subset gets optimizer steps, not one step per validation.
* **linear probing**: the frozen tower's output embedding of each image (eval transform),
  standardised on the training subset, scikit-learn's multinomial ``LogisticRegression``, its
  ``C`` chosen on dev from a small grid (the kit shared with chest X-ray probing,
  :mod:`openclip_unimlip.evaluation.linear_probe`).
* **metric**: macro one-vs-rest ROC AUC of the class probabilities: scikit-learn's
  ``roc_auc_score(..., multi_class="ovr", average="macro")`` when every class occurs in the split;
  a class without test images has no AUC and is left out of the mean, as
  ``classification.auc_report`` does for chest X-ray labels.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from openclip_unimlip.data.images import load_image
from openclip_unimlip.data.medpix import MEDPIX_SPLITS, MedpixImage, read_medpix
from openclip_unimlip.evaluation.classification import auc_report
from openclip_unimlip.evaluation.finetune import FitConfig, ImageClassifier, autocast, fit, image_transform
from openclip_unimlip.evaluation.linear_probe import DEFAULT_PROBE_C_GRID, MAX_ITER, select_c

# the labels a task can classify, and what each reads
LABELS: Dict[str, str] = {
    "location_category": "the release's Location Category (5 body regions)",
    "modality_type": "the release's Type (CT or MR)",
    "plane": "Description.Plane: Axial (Transverse read as Axial), Coronal or Sagittal; other planes left out",
}
PLANE_CLASSES = {"Axial": "Axial", "Transverse": "Axial", "Coronal": "Coronal", "Sagittal": "Sagittal"}

PathLike = Union[str, Path]


def label_of(image: MedpixImage, label: str) -> Optional[str]:
    """The class of ``image`` for ``label``; ``None`` when the image has none (left out)."""
    if label not in LABELS:
        raise ValueError(f"unknown MedPix label {label!r}; expected one of {', '.join(LABELS)}")
    if label == "plane":
        return PLANE_CLASSES.get(image.plane)
    return getattr(image, label) or None


@dataclass(frozen=True)
class LabelledSplit:
    """The images of one split that have a class, their class indices and how many were left out."""
    images: tuple[Path, ...]
    targets: np.ndarray  # int64 class index per image
    classes: tuple[str, ...]
    left_out: int

    def __len__(self) -> int:
        return len(self.images)

    def select(self, indices: Sequence[int]) -> "LabelledSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return LabelledSplit(tuple(self.images[i] for i in indices), self.targets[indices], self.classes, self.left_out)

    def class_counts(self) -> Dict[str, int]:
        return {name: int((self.targets == j).sum()) for j, name in enumerate(self.classes)}


def labelled_split(images: Sequence[MedpixImage], label: str, classes: Sequence[str]) -> LabelledSplit:
    """The images of ``images`` whose ``label`` is one of ``classes``, in order."""
    positions = {name: j for j, name in enumerate(classes)}
    kept = [(image.image, positions[value]) for image in images
            if (value := label_of(image, label)) is not None and value in positions]
    return LabelledSplit(tuple(path for path, _ in kept), np.array([j for _, j in kept], dtype=np.int64),
                         tuple(classes), len(images) - len(kept))


@dataclass(frozen=True)
class MedpixClassificationData:
    label: str
    train: LabelledSplit  # the full official training split; subsets are drawn per run
    dev: LabelledSplit
    test: LabelledSplit

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def load_medpix_classification(root: PathLike, label: str, limit: Optional[int] = None) -> MedpixClassificationData:
    """Read and check the three official splits for ``label``; ``limit`` keeps the first images of
    each split (smoke runs). Stops before any training on a missing image or an empty split."""
    if label not in LABELS:
        raise ValueError(f"unknown MedPix label {label!r}; expected one of {', '.join(LABELS)}")
    images = {split: read_medpix(root, split)[:limit] for split in MEDPIX_SPLITS}
    missing = sorted(str(image.image) for split in images.values() for image in split if not image.image.is_file())
    if missing:
        raise FileNotFoundError(f"{len(missing)} MedPix image file(s) missing, e.g. {', '.join(missing[:3])}")
    classes = sorted({value for image in images["train"] if (value := label_of(image, label)) is not None})
    if len(classes) < 2:
        raise ValueError(f"the MedPix training split has {len(classes)} class(es) of {label!r}; at least 2 are needed")
    splits = {split: labelled_split(images[split], label, classes) for split in MEDPIX_SPLITS}
    for split, data in splits.items():
        if not len(data):
            raise ValueError(f"the MedPix {split} split has no image with a {label!r} class")
    return MedpixClassificationData(label, splits["train"], splits["dev"], splits["test"])


def stratified_subset(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a training subset: from each class, ``max(1, round(fraction * count))``
    of its images, the first of a permutation drawn with ``seed`` (one permutation per class, in
    class order, so that for one seed a smaller fraction's subset lies in a larger one's)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == value))
        chosen.append(members[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def macro_ovr_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC of ``probabilities`` ``[N, classes]`` for integer ``targets``;
    classes with no (or only) images in ``targets`` are left out of the mean (NaN if none is left)."""
    one_hot = np.eye(probabilities.shape[1], dtype=np.int64)[targets]
    return auc_report(one_hot, probabilities, [str(j) for j in range(probabilities.shape[1])]).macro_auc


class ImageLabelDataset(Dataset):
    """(image tensor, class index) pairs of a :class:`LabelledSplit`."""

    def __init__(self, split: LabelledSplit, transform: Callable[[Image.Image], torch.Tensor]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_image(self.split.images[index])), torch.tensor(self.split.targets[index])


def _loader(split: LabelledSplit, preprocess_cfg: dict, batch_size: int, workers: int, device: torch.device,
            sampler: Optional[RandomSampler] = None) -> DataLoader:
    return DataLoader(ImageLabelDataset(split, image_transform(preprocess_cfg, is_train=sampler is not None)),
                      batch_size=batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_softmax(model: nn.Module, loader: DataLoader, device: torch.device,
                    precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(class indices, softmax probabilities) over a loader of (images, class indices)."""
    model.eval()
    targets, probabilities = [], []
    for images, batch_targets in loader:
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True))
        probabilities.append(torch.softmax(logits.float(), dim=-1).cpu())
        targets.append(batch_targets)
    return torch.cat(targets).numpy(), torch.cat(probabilities).numpy()


@dataclass(frozen=True)
class FineTuneSettings:
    batch_size: int
    lr: float
    max_epochs: int
    patience: Optional[int]
    min_epoch_images: int  # ours: an epoch draws at least this many images (the subset repeated)
    workers: int = 0
    precision: str = "fp32"


def fine_tune_softmax(
        classifier: ImageClassifier,
        preprocess_cfg: dict,
        train: LabelledSplit,
        dev: LabelledSplit,
        test: LabelledSplit,
        settings: FineTuneSettings,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        progress: bool = False,
) -> dict:
    """Fine-tune ``classifier`` end to end with softmax cross-entropy and Adam, keep the epoch with
    the best dev macro AUC, and return its dev and test macro AUC and the training history."""
    device = torch.device(device)
    classifier.to(device)
    sampler = RandomSampler(range(len(train)), num_samples=max(len(train), settings.min_epoch_images),
                            generator=torch.Generator().manual_seed(seed))
    train_loader = _loader(train, preprocess_cfg, settings.batch_size, settings.workers, device, sampler)
    dev_loader = _loader(dev, preprocess_cfg, settings.batch_size, settings.workers, device)

    def dev_auc(model: nn.Module) -> float:
        score = macro_ovr_auc(*predict_softmax(model, dev_loader, device, settings.precision))
        return -math.inf if math.isnan(score) else score

    def cross_entropy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images).float(), targets)

    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings.lr)
    history = fit(classifier, optimizer, train_loader, cross_entropy,
                  FitConfig(settings.max_epochs, settings.patience, settings.precision), device,
                  validate=dev_auc, progress=progress)
    test_targets, test_probabilities = predict_softmax(
        classifier, _loader(test, preprocess_cfg, settings.batch_size, settings.workers, device), device,
        settings.precision)
    return {
        "valid_macro_auc": history.epochs[history.best_epoch - 1].valid_score,
        "test_macro_auc": macro_ovr_auc(test_targets, test_probabilities),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "train_images": len(train),
        "history": [{"epoch": r.epoch, "train_loss": r.train_loss, "valid_macro_auc": r.valid_score}
                    for r in history.epochs],
    }


def linear_probe(
        train_features: np.ndarray,
        train_targets: np.ndarray,
        dev_features: np.ndarray,
        dev_targets: np.ndarray,
        test_features: np.ndarray,
        test_targets: np.ndarray,
        num_classes: int,
        c_grid: Sequence[float] = DEFAULT_PROBE_C_GRID,
) -> dict:
    """Logistic regression on standardised frozen features, ``C`` chosen by dev macro AUC
    (``linear_probe.select_c``: the smallest ``C`` on a tie); returns the chosen ``C`` and its dev
    and test macro AUC."""
    def fit(c: float):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER))
        model.fit(train_features, train_targets)

        def probabilities(features: np.ndarray) -> np.ndarray:
            # a class the training subset lacks (possible only with --limit) gets probability 0
            full = np.zeros((len(features), num_classes))
            full[:, model.classes_] = model.predict_proba(features)
            return full
        return probabilities

    c, dev_score, predict = select_c(fit, dev_features, lambda p: macro_ovr_auc(dev_targets, p), c_grid)
    return {"C": c, "valid_macro_auc": dev_score, "train_images": len(train_targets),
            "test_macro_auc": macro_ovr_auc(test_targets, predict(test_features))}
