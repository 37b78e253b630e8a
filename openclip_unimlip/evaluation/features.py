"""Batched, L2-normalised image and text embeddings from any OpenCLIP-style model."""
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openclip_unimlip.data.stored import StoredImage


class _ImageDataset(Dataset):
    def __init__(self, images: Sequence[StoredImage], preprocess: Callable):
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
        images: Sequence[StoredImage],
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


class _PooledMoments:
    """Count, per-channel mean and sum of squared deviations of everything one BatchNorm receives,
    merged batch by batch in float64 (Chan, Golub & LeVeque's pairwise update): the statistics of
    all samples together, whatever the batch sizes."""

    def __init__(self) -> None:
        self.batches, self.count = 0, 0
        self.mean = self.squared_deviations = None

    def __call__(self, layer: torch.nn.Module, args: tuple) -> None:  # a forward pre-hook
        values = args[0].detach().transpose(0, 1).reshape(layer.num_features, -1).double()  # [C, N·spatial]
        count = values.shape[1]
        mean = values.mean(dim=1)
        squared_deviations = (values - mean[:, None]).square().sum(dim=1)
        if self.count == 0:
            self.mean, self.squared_deviations = mean, squared_deviations
        else:
            total = self.count + count
            delta = mean - self.mean
            self.mean = self.mean + delta * (count / total)
            between = delta.square() * (self.count * count / total)
            self.squared_deviations = self.squared_deviations + squared_deviations + between
        self.batches += 1
        self.count += count


@torch.no_grad()
def reestimate_batchnorm_statistics(
        image_tower: torch.nn.Module,
        preprocess: Callable,
        images: Sequence[StoredImage],
        batch_size: int,
        device: Union[str, torch.device] = "cpu",
) -> None:
    """Replace the running statistics of every BatchNorm in ``image_tower`` that ``images`` reach
    by those of everything it receives over them ("precise BN"): running mean = the mean over all
    samples (and positions), running variance = their unbiased variance, within- and between-batch
    parts together, so a short last batch weighs by its size. As in precise BN (Wu & Johnson 2021)
    and ``torch.optim.swa_utils.update_bn``, the BatchNorm layers run in train mode (here the rest
    of the tower in eval mode: no dropout), so a deeper layer receives what the layers before it
    give when they normalise with each batch's own statistics; only the first layer's input is
    independent of ``batch_size``, which the caller therefore chooses (no default). Running
    averages from a short, fast-changing training lag behind its final weights; re-estimating
    them separates what training did to the weights from how stale its statistics are."""
    if not images:
        raise ValueError("re-estimating BatchNorm statistics needs at least one image")
    layers = [m for m in image_tower.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = {m: m.training for m in image_tower.modules()}
    moments = {layer: _PooledMoments() for layer in layers}
    hooks = [layer.register_forward_pre_hook(moments[layer]) for layer in layers]
    image_tower.eval()
    for layer in layers:
        layer.train()
    loader = DataLoader(_ImageDataset(images, preprocess), batch_size=batch_size)
    try:
        for batch in tqdm(loader, desc="BatchNorm statistics", unit="batch"):
            image_tower(batch.to(device))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    for layer, seen in moments.items():
        if seen.count == 0:
            continue  # not on the path of the images: left as it was
        layer.running_mean.copy_(seen.mean)
        layer.running_var.copy_(seen.squared_deviations / (seen.count - 1))  # unbiased, as BatchNorm
        layer.num_batches_tracked.fill_(seen.batches)
