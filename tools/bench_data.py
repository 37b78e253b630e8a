"""Throughput of the three-view train pipeline against OpenCLIP's single-view one.

Both read the same webdataset shards through ``open_clip_train.data.get_wds_dataset`` with
OpenCLIP's train transform (shard and sample shuffling, PNG decoding, tokenisation, batching
all included). The three-view pipeline then draws the two strong SimCLR views of every batch
on the device, as the model does in training (``views.StrongViews``), and that time counts.
"""
import statistics
import time
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch

from openclip_unimlip.recipes.unimlip.views import StrongViews

PIPELINES = ("single-view", "three-view")


@dataclass
class PipelineMeasurement:
    pipeline: str
    workers: int
    samples_per_second: List[float]  # one per timed epoch

    @property
    def median(self) -> float:
        return statistics.median(self.samples_per_second)

    @property
    def spread(self) -> float:
        """(max - min) / median over the timed epochs."""
        return (max(self.samples_per_second) - min(self.samples_per_second)) / self.median


def _loader_args(shards: str, num_samples: int, batch_size: int, workers: int) -> Namespace:
    # the fields get_wds_dataset reads for a training split
    return Namespace(
        train_data=shards, train_num_samples=num_samples, train_data_upsampling_factors=None,
        val_data=None, val_num_samples=None, dataset_resampled=False, batch_size=batch_size,
        workers=workers, world_size=1, rank=0, seed=0)


def bench_pipeline(
        shards: str,
        num_samples: int,
        transform: Callable,
        tokenizer: Callable,
        workers: int,
        batch_size: int = 16,
        epochs: int = 3,
        device: str = "cpu",
        strong_views: Optional[StrongViews] = None,
) -> List[float]:
    """Samples per second of each of ``epochs`` timed passes, after one untimed warm-up pass
    (which also starts the workers: they persist across epochs, as in training). Each batch is
    moved to ``device`` and, when given, ``strong_views`` draws its two views there."""
    from open_clip_train.data import get_wds_dataset

    info = get_wds_dataset(_loader_args(shards, num_samples, batch_size, workers), transform,
                           is_train=True, tokenizer=tokenizer)
    rates = []
    for epoch in range(epochs + 1):
        info.set_epoch(epoch)
        begin, seen = time.perf_counter(), 0
        for images, _ in info.dataloader:
            images = images.to(device, non_blocking=True)
            if strong_views is not None:
                strong_views(images)
            seen += len(images)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if epoch > 0:
            rates.append(seen / (time.perf_counter() - begin))
    return rates


def run_data_benchmark(
        shards: str,
        num_samples: int,
        tokenizer: Callable,
        image_size: int = 224,
        workers: Sequence[int] = (0, 2),
        batch_size: int = 16,
        epochs: int = 3,
        device: str = "cpu",
) -> List[PipelineMeasurement]:
    """Every pipeline at every worker count, on the same shards."""
    from open_clip import image_transform

    transform = image_transform(image_size, is_train=True)
    views = {"single-view": None, "three-view": StrongViews(image_size).to(device)}
    return [
        PipelineMeasurement(name, n, bench_pipeline(shards, num_samples, transform, tokenizer, n,
                                                    batch_size, epochs, device, views[name]))
        for n in workers for name in PIPELINES
    ]


def format_data_table(measurements: Sequence[PipelineMeasurement]) -> str:
    """Samples/s per pipeline and worker count, and the three-view cost per sample relative to single-view."""
    single = {m.workers: m.median for m in measurements if m.pipeline == "single-view"}
    lines = [f"{'pipeline':<14}{'workers':>8}{'samples/s':>11}{'spread':>8}{'cost x':>8}"]
    for m in measurements:
        lines.append(f"{m.pipeline:<14}{m.workers:>8}{m.median:>11.1f}{m.spread:>8.0%}"
                     f"{single[m.workers] / m.median:>8.2f}")
    return "\n".join(lines)


def embedded_shards(root: Union[str, Path], num_samples: int, image_size: int = 224,
                    shard_size: int = 100) -> Namespace:
    """Train shards of the embedded dataset (built on first use): ``.pattern`` and ``.num_samples``."""
    from openclip_unimlip.data.embedded import ensure_embedded_dataset

    built = ensure_embedded_dataset(root, num_samples=num_samples, image_size=image_size, shard_size=shard_size,
                                    formats="webdataset")
    return Namespace(pattern=built.train_data, num_samples=built.train_num_samples)
