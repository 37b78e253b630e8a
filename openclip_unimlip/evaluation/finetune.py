"""The fine-tuning kit shared by the downstream tasks (chest X-ray and MedPix classification, VQA):
an OpenCLIP model loaded for fine-tuning at a chosen image size, its image transforms, an image
tower with a linear head, mixed precision as ``open_clip_train`` and one training loop with early
stopping on a validation score.

Uni-Mlip §4.2 fine-tunes "up to 64 epochs with early stopping" at 224 px: :class:`FitConfig`'s and
the CLIs' defaults. Choices the paper leaves open, made here: the early stopping patience (10
epochs; the best epoch's weights are restored) and the augmentation (OpenCLIP's random-resized-crop
at scale 0.9-1, no flips). Each task's own settings (learning rates, batch sizes, heads, metrics)
stay in its module: :mod:`~openclip_unimlip.evaluation.classification`,
:mod:`~openclip_unimlip.evaluation.medpix_classification`, :mod:`~openclip_unimlip.evaluation.vqa`.
"""
import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.utils import to_2tuple
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

DEFAULT_IMAGE_SIZE = 224
DEFAULT_MAX_EPOCHS = 64
DEFAULT_PATIENCE = 10
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
    # OpenCLIP's resize_pos_embed (model.py) for a ViT's grid: bicubic with antialiasing, its default
    cells = F.interpolate(cells, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False)
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
