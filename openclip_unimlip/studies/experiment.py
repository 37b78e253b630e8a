"""One Uni-Mlip experiment end to end: data, a pretraining run through ``open_clip_train``, its
loss curves, and retrieval before/after. Shared by the demo (``demo.py``) and the ablation
benchmark (``ablation.py``), so both measure exactly the same way.

Two datasets: the embedded one (built on the fly; retrieval on its val split) and MedPix 2.0
(``--dataset medpix``, real CT/MR images with their captions, converted into a cache folder:
pretraining on the official train split minus the 17 train images VQA-RAD also holds, ours,
open_clip_train's per-epoch val on the dev split, retrieval on the 200 test images).

Training runs in a subprocess (``python -m open_clip_train.main``) exactly as a user would
launch it: the plugin's patches, OpenCLIP's data pipeline,
scheduler, logging and checkpointing are all the real ones.
"""
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from openclip_unimlip.data.embedded import ensure_embedded_dataset
from openclip_unimlip.data.stored import ImageTextPair, load_pairs, sample_pairs
from openclip_unimlip.evaluation.features import reestimate_batchnorm_statistics
from openclip_unimlip.evaluation.retrieval import encode_pairs, retrieval_metrics
from openclip_unimlip.studies.pretraining.progress import follow_training, parse_train_log

PathLike = Union[str, os.PathLike]
DATASETS = ("embedded", "medpix")


@dataclass
class DataConfig:
    """The embedded dataset (see ``openclip_unimlip.data.embedded``)."""
    root: str
    num_samples: int = 2000
    image_size: int = 96  # unimlip-tiny's input size: no resizing in the pipeline
    seed: int = 0
    val_fraction: float = 0.1
    shard_size: int = 500


@dataclass
class MedpixConfig:
    """MedPix 2.0 from its release folder ``release``, converted into the cache folder ``root``
    with every image downscaled to ``image_size`` on its short side (the model's input size, so
    the CPU pipeline does not decode 256 px images to crop 96 px ones)."""
    root: str
    release: str
    image_size: int = 96
    shard_size: int = 500


@dataclass(frozen=True)
class ExperimentData:
    """An experiment's shards (brace patterns for open_clip_train) and their sizes: ``train`` to
    pretrain on (and to re-estimate BatchNorm statistics on), ``val`` for open_clip_train's own
    per-epoch retrieval, ``eval`` for the retrieval the demo and the ablation report."""
    name: str  # one of DATASETS
    train_data: str
    train_num_samples: int
    val_data: str
    val_num_samples: int
    eval_data: str
    eval_num_samples: int
    eval_split: str  # how the reports call the evaluation pairs: "val" or "test"
    description: str  # one line for the reports


@dataclass
class PretrainConfig:
    """One ``open_clip_train.main`` run; ``unimlip_flags`` are the ``--unimlip-*`` options."""
    model: str = "unimlip-tiny"
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 10
    wd: float = 0.2
    workers: int = 1
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # OpenCLIP's default amp is bf16 autocast: very slow on CPU
    unimlip_flags: List[str] = field(default_factory=list)
    extra_flags: List[str] = field(default_factory=list)


@dataclass
class PretrainRun:
    name: str
    run_dir: Path
    checkpoint: Path
    seconds: float
    steps: List[Dict[str, float]]  # see ``parse_train_log``
    val_metrics: List[Dict[str, float]]  # OpenCLIP's own per-epoch val metrics (results.jsonl)


@dataclass
class RetrievalResult:
    metrics: Dict[str, float]  # ``retrieval_metrics`` keys, fractions
    chance: Dict[int, float]  # R@K of a random ranking, per K
    pairs: List[ImageTextPair]
    image_features: torch.Tensor
    text_features: torch.Tensor

    def summary(self) -> dict:
        return {"num_pairs": len(self.pairs), "metrics": self.metrics,
                "chance": {f"R@{k}": v for k, v in self.chance.items()}}


def ensure_data(config: Union[DataConfig, MedpixConfig], progress: bool = False) -> ExperimentData:
    """Build (or reuse) the dataset ``config`` names."""
    if isinstance(config, MedpixConfig):
        return ensure_medpix_data(config, progress)
    data = ensure_embedded_dataset(config.root, num_samples=config.num_samples, image_size=config.image_size,
                                   seed=config.seed, val_fraction=config.val_fraction,
                                   shard_size=config.shard_size, formats="webdataset",
                                   progress=progress)
    return ExperimentData(
        name="embedded", train_data=data.train_data, train_num_samples=data.train_num_samples,
        val_data=data.val_data, val_num_samples=data.val_num_samples, eval_data=data.val_data,
        eval_num_samples=data.val_num_samples, eval_split="val",
        description=f"embedded dataset in `{config.root}`: {config.num_samples} pairs ({data.train_num_samples} "
                    f"train, {data.val_num_samples} val), {config.image_size} px, seed {config.seed}")


def check_medpix_root(data_root: Optional[Path]) -> None:
    """ValueError, before anything starts, for a missing ``--data-root`` or a folder that is not the
    MedPix 2.0 release (the demo's and the ablation's ``--dataset medpix``; their commands turn it
    into one parser error)."""
    from openclip_unimlip.data.medpix import release_dir

    if data_root is None:
        raise ValueError("--dataset medpix needs --data-root: the MedPix-2-0 folder of the "
                         "CHILab1/MedPix-2.0 repository")
    release_dir(data_root)


def ensure_medpix_data(config: MedpixConfig, progress: bool = False,
                       train_limit: Optional[int] = None) -> ExperimentData:
    """MedPix 2.0 converted into ``config.root`` (resumable: complete shards are reused):
    ``pretrain/train/`` the official train split without the cases of ``VQA_RAD_CASES`` (ours: a model
    pretrained here can then be evaluated on VQA-RAD without having seen its images, their copies or
    their neighbouring slices), ``eval/val/`` the dev split
    and ``eval/test/`` the test split, complete; ``train_limit`` keeps only the first train images
    (whole cases, file order: quick runs and tests). Raises ValueError for a folder that is not the release."""
    from openclip_unimlip.data.medpix import EXCLUDED_NAME, VQA_RAD_CASES, convert_medpix, release_dir

    release = release_dir(config.release)
    root = Path(config.root)
    options = dict(shard_size=config.shard_size, image_size=config.image_size, progress=progress)
    train = convert_medpix(release, root / "pretrain", splits=("train",), exclude_cases=sorted(VQA_RAD_CASES),
                           limit=train_limit, **options)
    evaluation = convert_medpix(release, root / "eval", splits=("dev", "test"), **options)
    for report in (train, evaluation):
        if report.bad_rows:
            logging.warning("MedPix: %d bad rows left out, listed in %s", sum(report.bad_rows.values()),
                            report.report_path)
    excluded = sum(1 for line in (root / "pretrain" / EXCLUDED_NAME).read_text().splitlines()[1:] if line)
    val, test = evaluation.splits["val"], evaluation.splits["test"]
    return ExperimentData(
        name="medpix", train_data=train.splits["train"].shard_pattern,
        train_num_samples=train.splits["train"].num_samples, val_data=val.shard_pattern,
        val_num_samples=val.num_samples, eval_data=test.shard_pattern, eval_num_samples=test.num_samples,
        eval_split="test",
        description=f"MedPix 2.0 (`{release}`, converted into `{root}` at {config.image_size} px): pretraining on the "
                    f"official train split, {train.splits['train'].num_samples} images ({excluded} images of the "
                    f"{len(VQA_RAD_CASES)} cases with a VQA-RAD image left out, ours), open_clip_train's val on "
                    f"the {val.num_samples} dev images, retrieval on the {test.num_samples} test images with their "
                    "real captions")


def num_shards(pattern: str) -> int:
    import braceexpand

    return len(list(braceexpand.braceexpand(pattern)))


def pretrain_command(config: PretrainConfig, data: ExperimentData, logs: PathLike, name: str,
                     with_val: bool = True) -> List[str]:
    if config.workers > num_shards(data.train_data):
        # webdataset gives each worker whole shards: a worker without one yields nothing
        raise ValueError(f"--workers {config.workers} exceeds the {num_shards(data.train_data)} train shards")
    args = [sys.executable, "-m", "open_clip_train.main",
        "--model", config.model, "--dataset-type", "webdataset",
        "--train-data", data.train_data, "--train-num-samples", str(data.train_num_samples),
        "--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--lr", str(config.lr),
        "--warmup", str(config.warmup), "--wd", str(config.wd), "--workers", str(config.workers),
        "--seed", str(config.seed), "--device", config.device, "--precision", config.precision,
        "--logs", str(logs), "--name", name, "--log-every-n-steps", "1",
        "--save-frequency", "0",  # the final epoch is saved regardless
    ]
    if with_val:
        args += ["--val-data", data.val_data, "--val-num-samples", str(data.val_num_samples)]
    return args + list(config.unimlip_flags) + list(config.extra_flags)


def training_env() -> Dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer would fork-warn in data workers
    return env


def _read_val_metrics(run_dir: Path) -> List[Dict[str, float]]:
    results = run_dir / "checkpoints" / "results.jsonl"
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def run_pretraining(config: PretrainConfig, data: ExperimentData, logs: PathLike, name: str,
                    with_val: bool = True, progress: bool = True) -> PretrainRun:
    """Train in a subprocess, with a progress bar over its steps read from its out.log unless
    ``progress`` is False; raise with the trainer's console tail if it fails. A run of the same
    name must not exist (open_clip_train would refuse it yet exit 0), so pick a fresh ``name``/``logs``."""
    logs = Path(logs)
    command = pretrain_command(config, data, logs, name, with_val=with_val)
    run_dir = logs / name
    log_path = run_dir / "out.log"
    if log_path.exists():
        raise FileExistsError(f"{run_dir} already holds a training run; pick another name or folder")
    logs.mkdir(parents=True, exist_ok=True)
    logging.info("pretraining: %s", " ".join(command))
    logging.info("training log: %s", log_path)
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as console:  # a file, not a pipe: a full pipe would stall the trainer
        process = subprocess.Popen(command, env=training_env(), stdout=console, stderr=subprocess.STDOUT, text=True)
        try:
            if progress:
                follow_training(process, log_path, config.epochs, desc=name)
            process.wait()
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): do not leave the trainer running
                process.kill()
                process.wait()
        console.seek(0)
        output = console.read()
    seconds = time.monotonic() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    if process.returncode != 0:
        raise RuntimeError(f"pretraining {name!r} failed (exit {process.returncode}):\n{output[-4000:]}")
    checkpoint = run_dir / "checkpoints" / f"epoch_{config.epochs}.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"pretraining {name!r} exited without writing {checkpoint}:\n{output[-4000:]}")
    log_text = log_path.read_text()
    return PretrainRun(name=name, run_dir=run_dir, checkpoint=checkpoint, seconds=seconds,
                       steps=parse_train_log(log_text), val_metrics=_read_val_metrics(run_dir))


def evaluate_checkpoint(model_name: str, checkpoint: Optional[PathLike], data: str, *,
                        num_samples: Optional[int] = 2000, seed: int = 0, init_seed: int = 0,
                        device: str = "cpu", batch_size: int = 64,
                        reestimate_bn_on: Optional[str] = None, reestimate_bn_samples: int = 512) -> RetrievalResult:
    """Retrieval on ``num_samples`` pairs of ``data`` (the evaluation package's protocol), with
    the features kept for showing what is retrieved. ``checkpoint=None`` evaluates the initial
    weights drawn under ``init_seed`` (open_clip_train seeds torch with ``--seed`` before
    building the model, so the same seed gives the run's starting point). ``reestimate_bn_on``
    (a dataset) first re-estimates the image tower's BatchNorm statistics on
    ``reestimate_bn_samples`` of its images, clean (the evaluation transform)."""
    import open_clip

    pairs = sample_pairs(load_pairs(data), num_samples, seed)
    torch.manual_seed(init_seed)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(checkpoint) if checkpoint else None, device=device)
    if reestimate_bn_on is not None:
        calibration = sample_pairs(load_pairs(reestimate_bn_on), reestimate_bn_samples, seed)
        reestimate_batchnorm_statistics(model.visual, preprocess, [p.image for p in calibration],
                                        batch_size=batch_size, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    image_features, text_features = encode_pairs(
        model, preprocess, tokenizer, pairs, batch_size=batch_size, device=device)
    metrics = retrieval_metrics(image_features, text_features)
    chance = {k: min(1.0, k / len(pairs)) for k in (1, 5, 10)}
    return RetrievalResult(metrics=metrics, chance=chance, pairs=pairs,
                           image_features=image_features.cpu(), text_features=text_features.cpu())


def mean_r1(metrics: Dict[str, float]) -> float:
    """Mean of image-to-text and text-to-image R@1: the demo's and the ablation's headline number."""
    return (metrics["image_to_text_R@1"] + metrics["text_to_image_R@1"]) / 2

