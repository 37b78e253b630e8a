"""End-to-end fine-tuning of a pre-trained image tower for multi-label chest X-ray classification.

Uni-Mlip §4.2: the pre-trained modified ResNet-50 gets a linear layer on its output embedding and
is fine-tuned end to end with binary cross-entropy and Adam, up to 64 epochs with early stopping,
at 224 px with batches of 190 (CheXpert) or 150 (MIMIC-CXR, NIH); the metric is macro ROC AUC.

Choices the paper leaves open, made here: the learning rate (1e-4, no weight decay), the early
stopping criterion (validation macro AUC, patience 10 epochs; the best epoch's weights are
restored for testing) and the augmentation (OpenCLIP's random-resized-crop, no flips).

Data: the label set, the uncertainty mapping per label, the views and the split follow a named
protocol (:mod:`openclip_unimlip.data.cxr_protocols`), by default ``"chexclusion"``, the
protocol of the rows Uni-Mlip's Table 1 compares with; results state the protocol they were
produced under (:attr:`ClassificationResult.protocol`).

AUC convention: a label whose split holds a single class has no ROC AUC; it is reported as
undefined (``None``) and left out of the macro mean (as Huang et al.'s ``compute_AUCs``,
denizlab/MIMICCXR-MultiModal-SelfSupervision eval_utils.py:59-63; CheXclusion divides the sum
by 14 instead, CXP/predictions.py:196, which only differs when a label is undefined). Loading
refuses data whose validation or test split leaves every label undefined.

The model loading, image transforms, linear head and training loop are the fine-tuning kit
shared with MedPix and VQA fine-tuning (:mod:`openclip_unimlip.evaluation.finetune`).
"""
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import RocCurveDisplay, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from openclip_unimlip.data.chest_xray import (
    DEFAULT_PROTOCOL,
    SPLITS,
    CxrDataset,
    CxrSettings,
    CxrSplit,
    UncertainArg,
    read_cxr_split,
    training_subset,
)
from openclip_unimlip.evaluation.finetune import FitConfig, FitHistory, ImageClassifier, autocast, fit, image_transform

DEFAULT_BATCH_SIZES = {"chexpert": 190, "mimic": 150, "nih": 150}
DEFAULT_LR = 1e-4


# ----------------------------------------------------------------------------- metrics


@dataclass
class AucReport:
    macro_auc: float  # mean over the labels with a defined AUC; NaN if there are none
    per_label: dict[str, Optional[float]]  # None: a single class in the split, AUC undefined

    @property
    def undefined_labels(self) -> list[str]:
        return [label for label, auc in self.per_label.items() if auc is None]


def auc_report(targets: np.ndarray, scores: np.ndarray, label_names: Sequence[str]) -> AucReport:
    """Per-label ROC AUC (scikit-learn) and their macro mean, skipping single-class labels."""
    per_label = {
        label: float(roc_auc_score(targets[:, j], scores[:, j])) if len(np.unique(targets[:, j])) == 2 else None
        for j, label in enumerate(label_names)
    }
    defined = [auc for auc in per_label.values() if auc is not None]
    return AucReport(float(np.mean(defined)) if defined else math.nan, per_label)


@torch.no_grad()
def predict_probabilities(
        classifier: nn.Module,
        loader: DataLoader,
        device: torch.device,
        precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """(targets, sigmoid probabilities) over a loader of (images, targets)."""
    classifier.eval()
    targets, scores = [], []
    for images, batch_targets in loader:
        with autocast(device, precision):
            logits = classifier(images.to(device, non_blocking=True))
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(batch_targets)
    return torch.cat(targets).numpy(), torch.cat(scores).numpy()


# ----------------------------------------------------------------------------- data and runs


@dataclass(frozen=True)
class ClassificationData:
    train: CxrSplit  # already reduced to the labelled fraction
    valid: CxrSplit
    test: CxrSplit

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.train.label_names

    @property
    def settings(self) -> Optional[CxrSettings]:
        return self.train.settings


def load_classification_data(
        dataset: str,
        root: Union[str, Path],
        fraction: float = 1.0,
        seed: int = 0,
        labels: Optional[Sequence[str]] = None,
        uncertain: UncertainArg = None,
        frontal_only: Optional[bool] = None,
        limit: Optional[int] = None,
        protocol: str = DEFAULT_PROTOCOL,
) -> ClassificationData:
    """Read and check the three splits under ``protocol``; ``labels``, ``uncertain`` and
    ``frontal_only`` replace its choices; ``limit`` keeps the first images of each (smoke runs)."""
    splits = {
        name: read_cxr_split(dataset, root, name, labels, uncertain, frontal_only, protocol=protocol)
        for name in SPLITS
    }
    splits["train"] = training_subset(splits["train"], fraction, seed)
    if limit is not None:
        splits = {name: split.select(range(min(limit, len(split)))) for name, split in splits.items()}
    for name, split in splits.items():
        if not len(split):
            raise ValueError(f"the {name} split of {dataset} is empty")
    for name in ("valid", "test"):
        targets = splits[name].targets
        if not any(len(np.unique(targets[:, j])) == 2 for j in range(targets.shape[1])):
            raise ValueError(
                f"no label has both positive and negative images in the {name} split of {dataset}, "
                f"so its macro AUC is undefined")
    return ClassificationData(**splits)


@dataclass
class ClassificationResult:
    history: FitHistory
    valid_macro_auc: float
    test: AucReport
    test_targets: np.ndarray
    test_scores: np.ndarray
    protocol: Optional[dict] = None  # CxrSettings.describe() of the data: which protocol produced the numbers

    def summary(self) -> dict:
        """JSON-ready results (undefined AUCs as ``null``)."""
        return {
            "protocol": self.protocol,
            "best_epoch": self.history.best_epoch,
            "epochs_run": len(self.history.epochs),
            "history": [asdict(record) for record in self.history.epochs],
            "valid_macro_auc": self.valid_macro_auc,
            "test_macro_auc": self.test.macro_auc,
            "test_per_label_auc": self.test.per_label,
            "test_undefined_labels": self.test.undefined_labels,
            "test_images": len(self.test_targets),
        }


def fine_tune_classifier(
        classifier: ImageClassifier,
        preprocess_cfg: dict,
        data: ClassificationData,
        batch_size: int,
        lr: float = DEFAULT_LR,
        fit_config: Optional[FitConfig] = None,
        seed: int = 0,
        workers: int = 0,
        device: Union[str, torch.device] = "cpu",
        progress: bool = True,
) -> ClassificationResult:
    """Fine-tune ``classifier`` end to end (BCE with logits, Adam), then test its best epoch."""
    fit_config = fit_config or FitConfig()
    device = torch.device(device)
    classifier.to(device)

    def loader(split: CxrSplit, is_train: bool) -> DataLoader:
        return DataLoader(
            CxrDataset(split, image_transform(preprocess_cfg, is_train)),
            batch_size=batch_size,
            shuffle=is_train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed) if is_train else None,
        )

    valid_loader = loader(data.valid, is_train=False)

    def validate(model: nn.Module) -> float:
        return auc_report(*predict_probabilities(model, valid_loader, device, fit_config.precision),
                          data.label_names).macro_auc

    def bce_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(images).float(), targets)

    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    history = fit(classifier, optimizer, loader(data.train, is_train=True), bce_loss, fit_config, device,
                  validate=validate, progress=progress)
    targets, scores = predict_probabilities(classifier, loader(data.test, is_train=False), device,
                                            fit_config.precision)
    best_valid = history.epochs[history.best_epoch - 1].valid_score
    protocol = data.settings.describe(data.label_names) if data.settings is not None else None
    return ClassificationResult(history, best_valid, auc_report(targets, scores, data.label_names), targets, scores,
                                protocol)


def plot_roc_curves(
        targets: np.ndarray,
        scores: np.ndarray,
        label_names: Sequence[str],
        path: Union[str, Path],
        title: str = "",
) -> None:
    """One ROC curve per label with a defined AUC, written to ``path`` (Agg backend)."""
    figure = Figure(figsize=(7, 7))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for j, label in enumerate(label_names):
        if len(np.unique(targets[:, j])) == 2:
            RocCurveDisplay.from_predictions(targets[:, j], scores[:, j], name=label, ax=axes)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_title(title)
    axes.legend(fontsize="small", loc="lower right")
    figure.savefig(path, dpi=120, bbox_inches="tight")
