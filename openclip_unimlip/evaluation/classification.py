"""End-to-end fine-tuning of a pre-trained image tower for multi-label chest X-ray classification.

Uni-Mlip §4.2: the pre-trained modified ResNet-50 gets a linear layer on its output embedding and
is fine-tuned end to end with binary cross-entropy and Adam, up to 64 epochs with early stopping,
at 224 px with batches of 190 (CheXpert) or 150 (MIMIC-CXR, NIH); the metric is macro ROC AUC.

Choices the paper leaves open, made here: the learning rate (1e-4, no weight decay), the early
stopping criterion (validation macro AUC, patience 10 epochs; the best epoch's weights are
restored for testing) and the augmentation (OpenCLIP's random-resized-crop, no flips).

Data: the label set, the uncertainty mapping per label, the views and the split follow a named
protocol (:mod:`openclip_unimlip.evaluation.cxr_protocols`), by default ``"chexclusion"``, the
protocol of the rows Uni-Mlip's Table 1 compares with; results state the protocol they were
produced under (:attr:`ClassificationResult.protocol`).

AUC convention: a label whose split holds a single class has no ROC AUC; it is reported as
undefined (``None``) and left out of the macro mean (as Huang et al.'s ``compute_AUCs``,
denizlab/MIMICCXR-MultiModal-SelfSupervision eval_utils.py:59-63; CheXclusion divides the sum
by 14 instead, CXP/predictions.py:196, which only differs when a label is undefined). Loading
refuses data whose validation or test split leaves every label undefined.

The model and training helpers here (:func:`load_clip_model`, :func:`probe_image_tower`,
:func:`image_transform`, :func:`autocast`, :func:`fit`) are shared with VQA fine-tuning
(:mod:`openclip_unimlip.evaluation.vqa`).
"""
import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from open_clip.modified_resnet import ModifiedResNet
from open_clip.utils import to_2tuple
from sklearn.metrics import RocCurveDisplay, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from openclip_unimlip.evaluation.cxr_datasets import (
    DEFAULT_PROTOCOL,
    SPLITS,
    CxrDataset,
    CxrSettings,
    CxrSplit,
    UncertainArg,
    read_cxr_split,
    training_subset,
)

DEFAULT_BATCH_SIZES = {"chexpert": 190, "mimic": 150, "nih": 150}
DEFAULT_IMAGE_SIZE = 224
DEFAULT_MAX_EPOCHS = 64
DEFAULT_PATIENCE = 10
DEFAULT_LR = 1e-4
PRECISIONS = ("fp32", "amp", "amp_bf16")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model loading


def resize_image_tower(tower: nn.Module, image_size: int) -> None:
    """Let a ModifiedResNet take ``image_size`` inputs.

    Its attention pool holds one position embedding per cell of the final feature grid; they are
    resampled bicubically, as OpenCLIP does for ViT position embeddings.
    """
    if not isinstance(tower, ModifiedResNet):
        raise ValueError(
            f"changing the image size is only supported for ModifiedResNet towers, not {type(tower).__name__}; "
            f"use the model's configured size")
    if image_size % 32:
        raise ValueError(f"a ModifiedResNet needs an image size divisible by 32, got {image_size}")
    old = tower.attnpool.positional_embedding.data
    old_grid, new_grid = math.isqrt(old.shape[0] - 1), image_size // 32
    cells = old[1:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    cells = cells.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)
    tower.attnpool.positional_embedding = nn.Parameter(torch.cat([old[:1], cells]))
    tower.image_size = image_size


def load_clip_model(
        model_name: str,
        pretrained: Optional[str] = None,
        image_size: Optional[int] = None,
        pretrained_text: bool = True,
) -> tuple[nn.Module, dict]:
    """An OpenCLIP model and its preprocess config (``size``, ``mean``, ``std``, ...).

    ``pretrained`` is a checkpoint path (``open_clip_train`` checkpoints included) or an OpenCLIP
    pretrained tag; ``None`` leaves the image tower randomly initialised, and the text tower too
    unless ``pretrained_text`` loads its base (e.g. Hugging Face) weights.
    """
    if ":" not in model_name and model_name not in open_clip.list_models():
        raise ValueError(f"unknown OpenCLIP model {model_name!r}; register its config first")
    if pretrained and Path(pretrained).suffix in _CHECKPOINT_SUFFIXES and not Path(pretrained).is_file():
        raise FileNotFoundError(f"checkpoint {pretrained} not found")
    model = open_clip.create_model(model_name, pretrained=pretrained, pretrained_text=pretrained_text)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if image_size is not None and to_2tuple(image_size) != to_2tuple(preprocess_cfg["size"]):
        resize_image_tower(model.visual, image_size)
        preprocess_cfg["size"] = image_size
    return model, preprocess_cfg


def image_transform(preprocess_cfg: dict, is_train: bool) -> v2.Compose:
    """PIL image -> normalised tensor, at the model's size and with its mean/std."""
    size = preprocess_cfg["size"]
    # OpenCLIP configs say "bicubic", "bilinear" or "random" (bicubic outside its own training).
    bilinear = preprocess_cfg.get("interpolation") == "bilinear"
    interpolation = InterpolationMode.BILINEAR if bilinear else InterpolationMode.BICUBIC
    if is_train:
        # OpenCLIP's training crop; no flips, since left/right carries anatomy (heart, situs).
        geometry = [v2.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=interpolation)]
    else:
        geometry = [v2.Resize(size, interpolation=interpolation), v2.CenterCrop(size)]
    return v2.Compose([
        v2.ToImage(),
        *geometry,
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocess_cfg["mean"], preprocess_cfg["std"]),
    ])


@torch.no_grad()
def probe_image_tower(tower: nn.Module, image_size: Union[int, tuple[int, int]]) -> tuple[int, torch.Size]:
    """(output embedding width, NCHW shape of the last feature map) from one blank image.

    Towers do not agree on an attribute for their width (timm towers have none), and the dry run
    also rejects an unusable image size before any training.
    """
    was_training = tower.training
    tower.eval()
    features = tower.forward_intermediates(torch.zeros(1, 3, *to_2tuple(image_size)), indices=1)
    tower.train(was_training)
    return features["image_features"].shape[-1], features["image_intermediates"][-1].shape


class ImageClassifier(nn.Module):
    """An image tower with a linear layer on its output embedding; returns one logit per label."""

    def __init__(self, tower: nn.Module, embed_dim: int, num_labels: int):
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(embed_dim, num_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(images))


def build_image_classifier(
        model_name: str,
        pretrained: Optional[str],
        num_labels: int,
        image_size: Optional[int] = None,
) -> tuple[ImageClassifier, dict]:
    """The image tower of a pre-trained OpenCLIP model with a new linear head, and its preprocess config."""
    # Only the image tower is kept: base text weights would be loaded for nothing.
    model, preprocess_cfg = load_clip_model(model_name, pretrained, image_size, pretrained_text=False)
    embed_dim, _ = probe_image_tower(model.visual, preprocess_cfg["size"])
    return ImageClassifier(model.visual, embed_dim, num_labels), preprocess_cfg


# ----------------------------------------------------------------------------- training loop


def autocast(device: torch.device, precision: str):
    """Mixed precision as in ``open_clip_train``: ``amp`` is float16, ``amp_bf16`` bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    dtype = {"amp": torch.float16, "amp_bf16": torch.bfloat16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class FitConfig:
    max_epochs: int = DEFAULT_MAX_EPOCHS
    patience: Optional[int] = DEFAULT_PATIENCE  # epochs without validation gain before stopping
    precision: str = "fp32"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_score: Optional[float] = None


@dataclass
class FitHistory:
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: Optional[int] = None  # the epoch whose weights the model holds after fit


def fit(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        loss_fn: Callable[..., torch.Tensor],
        config: FitConfig,
        device: torch.device,
        validate: Optional[Callable[[nn.Module], float]] = None,
        progress: bool = True,
) -> FitHistory:
    """Train for up to ``config.max_epochs``; ``loss_fn(model, *batch)`` returns the batch loss.

    With ``validate`` (higher is better), training stops after ``config.patience`` epochs without
    improvement and the model is left with its best epoch's weights; without it, the last epoch's.
    """
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "amp")
    history = FitHistory()
    best_score, best_state, stale_epochs = -math.inf, None, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        loss_sum, sample_count = 0.0, 0
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", disable=not progress, leave=False):
            batch = [tensor.to(device, non_blocking=True) for tensor in batch]
            with autocast(device, config.precision):
                loss = loss_fn(model, *batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(batch[0])
            sample_count += len(batch[0])
        record = EpochRecord(epoch, loss_sum / sample_count)
        history.epochs.append(record)
        if validate is None:
            history.best_epoch = epoch
            _logger.info("epoch %d: train loss %.4f", epoch, record.train_loss)
            continue
        record.valid_score = validate(model)
        _logger.info("epoch %d: train loss %.4f, validation %.4f", epoch, record.train_loss, record.valid_score)
        if record.valid_score > best_score:
            best_score, stale_epochs, history.best_epoch = record.valid_score, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale_epochs += 1
            if config.patience is not None and stale_epochs >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


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
