"""Batched, L2-normalised image and text embeddings from any OpenCLIP-style model."""
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openclip_unimlip.evaluation.datasets import ImageSource


class _ImageDataset(Dataset):
    def __init__(self, images: Sequence[ImageSource], preprocess: Callable):
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(self.images[index].open())


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block, the model's previous mode after it."""
    # Evaluation needs eval mode (BatchNorm, dropout), but the caller may be mid-training.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def encode_images(
        model: torch.nn.Module,
        preprocess: Callable,
        images: Sequence[ImageSource],
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        num_workers: int = 0,
) -> torch.Tensor:
    """`[len(images), D]` float32 CPU tensor of `model.encode_image(..., normalize=True)`."""
    loader = DataLoader(_ImageDataset(images, preprocess), batch_size=batch_size, num_workers=num_workers)
    features = []
    with eval_mode(model):
        for batch in tqdm(loader, desc="images", unit="batch"):
            features.append(model.encode_image(batch.to(device), normalize=True).float().cpu())
    return torch.cat(features)


@torch.no_grad()
def encode_texts(
        model: torch.nn.Module,
        tokenizer: Callable,
        texts: Sequence[str],
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """`[len(texts), D]` float32 CPU tensor of `model.encode_text(tokenizer(...), normalize=True)`."""
    features = []
    with eval_mode(model):
        for start in tqdm(range(0, len(texts), batch_size), desc="texts", unit="batch"):
            tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
            features.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(features)


def reestimate_batchnorm_statistics(
        image_tower: torch.nn.Module,
        preprocess: Callable,
        images: Sequence[ImageSource],
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
) -> None:
    """Replace the running statistics of every BatchNorm in ``image_tower`` by their exact
    average over ``images`` ("precise BN", via ``torch.optim.swa_utils.update_bn``). Running
    averages from a short, fast-changing training lag behind its final weights; re-estimating
    them separates what training did to the weights from how stale its statistics are."""
    loader = DataLoader(_ImageDataset(images, preprocess), batch_size=batch_size)
    torch.optim.swa_utils.update_bn(loader, image_tower, device=torch.device(device))
