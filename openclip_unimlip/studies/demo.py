"""The one-command demo: build the embedded dataset, measure val retrieval of the untrained
``unimlip-tiny``, pretrain it with all five Uni-Mlip terms through ``open_clip_train`` for a
few minutes, measure again, and write a report folder (``report.md``, plots, ``results.json``).
``--dataset medpix --data-root <MedPix-2-0 folder>`` does the same on MedPix 2.0's real CT/MR
images and captions (retrieval on its 200 test images; see ``experiment.ensure_medpix_data``).

The default setting is sized for 2 CPU cores (58 steps of 64 pairs: about five minutes when the
cores are free; see docs/demo.md for measured times). Following the paper's recipe, SimCLR and
frozen BatchNorm statistics start after the first epoch. MedPix has its own defaults
(:data:`MEDPIX_PRETRAIN`): real captions need about ten epochs before retrieval plateaus.
"""
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from openclip_unimlip.evaluation.retrieval import DIRECTIONS, RECALL_KS, format_retrieval_table, retrieve_top_k
from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions
from openclip_unimlip.studies.experiment import (
    DataConfig,
    ExperimentData,
    MedpixConfig,
    PretrainConfig,
    PretrainRun,
    RetrievalResult,
    ensure_data,
    evaluate_checkpoint,
    mean_r1,
    run_pretraining,
)

# the defaults of scripts/demo.py on a CPU; see docs/demo.md for how they were chosen
CPU_PRETRAIN = dict(epochs=2, batch_size=64, lr=1e-3, warmup=10, workers=1, simclr_start_epoch=1)
# Ours, for --dataset medpix: 2 epochs (48 steps) left test R@10 at 7.5 / 9.0 % against 5 % chance.
# The MedPix ablation's ITC + MLM stage 1 (runs of 2026-12-05, 1,556 train images, batch 64) reached
# dev R@10 6.3 / 7.3 % after 1 epoch, 15.7 / 17.3 after 5 and 22.0 / 22.0 after 12 (chance 5.2 %),
# at 80-105 s an epoch on the idle machine; SimCLR steps cost about 1.7x. So: a 5-epoch CLIP phase
# (3x chance on dev), then SimCLR with frozen BatchNorm statistics for 2 epochs, as the ablation's
# stage 2 after its stage 1: about 12-14 minutes on 2 cores (estimated from those rates).
MEDPIX_PRETRAIN = dict(CPU_PRETRAIN, epochs=7, simclr_start_epoch=5)
NUM_TEXT_QUERIES = 4
NUM_IMAGE_QUERIES = 4


@dataclass
class DemoConfig:
    data: Union[DataConfig, MedpixConfig]
    pretrain: PretrainConfig
    out: Path
    eval_num_samples: int = 2000  # the paper's protocol; the whole val split when smaller
    simclr_start_epoch: int = 1

    def unimlip_options(self) -> UniMlipOptions:
        if self.simclr_start_epoch >= self.pretrain.epochs:
            return UniMlipOptions(simclr_weight=0.0)  # a run too short for the second phase
        return UniMlipOptions(simclr_start_epoch=self.simclr_start_epoch)


@dataclass
class DemoResult:
    report: Path
    before: RetrievalResult
    after: RetrievalResult
    run: PretrainRun


def _evaluate(config: DemoConfig, eval_data: str, checkpoint) -> RetrievalResult:
    return evaluate_checkpoint(config.pretrain.model, checkpoint, eval_data, num_samples=config.eval_num_samples,
                               init_seed=config.pretrain.seed, device=config.pretrain.device)


def run_demo(config: DemoConfig) -> DemoResult:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_data(config.data, progress=True)
    logging.info("data: %s", data.description)
    logging.info("evaluating the untrained model on %d %s pairs", data.eval_num_samples, data.eval_split)
    before = _evaluate(config, data.eval_data, None)
    pretrain = replace(config.pretrain, unimlip_flags=config.unimlip_options().to_argv())
    logging.info("pretraining %s for %d epoch(s) on %d pairs", pretrain.model, pretrain.epochs, data.train_num_samples)
    run = run_pretraining(pretrain, data, out / "logs", "pretrain")
    after = _evaluate(config, data.eval_data, run.checkpoint)

    plots = {
        "losses": plot_losses(run.steps, out / "losses.png"),
        "recall": plot_recall(before, after, out / "recall.png", data.eval_split),
        "retrieval_examples": plot_retrieval_examples(after, out / "retrieval_examples.png"),
    }
    results = {
        "dataset": data.name, "data": asdict(config.data), "data_description": data.description,
        "train_data": data.train_data, "val_data": data.val_data,
        "train_num_samples": data.train_num_samples, "val_num_samples": data.val_num_samples,
        "eval_data": data.eval_data, "eval_num_samples": data.eval_num_samples, "eval_split": data.eval_split,
        "pretrain": asdict(pretrain), "train_seconds": run.seconds, "num_steps": len(run.steps),
        "checkpoint": str(run.checkpoint), "before": before.summary(), "after": after.summary(),
        "openclip_val_metrics": run.val_metrics,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = out / "report.md"
    report.write_text(render_report(config, pretrain, data, run, before, after, plots, out))
    return DemoResult(report=report, before=before, after=after, run=run)


# ----- plots --------------------------------------------------------------------------------
def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_losses(steps: Sequence[Dict[str, float]], path: Path) -> Path:
    """One panel per logged loss term (weighted, as optimised) and the total, over steps."""
    names = [f"{t}_loss" for t in TERMS if any(f"{t}_loss" in s for s in steps)] + ["loss"]
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(3.8 * columns, 2.8 * rows))
    for index, name in enumerate(names):
        axis = figure.add_subplot(rows, columns, index + 1)
        points = [(s["step"], s[name]) for s in steps if name in s]
        axis.plot(*zip(*points), lw=1)
        axis.set_title("total (weighted sum)" if name == "loss" else name.removesuffix("_loss"), fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_recall(before: RetrievalResult, after: RetrievalResult, path: Path, split: str = "val") -> Path:
    figure = Figure(figsize=(9, 3.4))
    width = 0.38
    for index, direction in enumerate(DIRECTIONS):
        axis = figure.add_subplot(1, 2, index + 1)
        x = np.arange(len(RECALL_KS))
        for offset, (label, result) in zip((-width / 2, width / 2), (("untrained", before), ("pretrained", after))):
            values = [100 * result.metrics[f"{direction}_R@{k}"] for k in RECALL_KS]
            bars = axis.bar(x + offset, values, width, label=label)
            axis.bar_label(bars, fmt="%.1f", fontsize=8)
        chance = [100 * after.chance[k] for k in RECALL_KS]
        axis.scatter(x, chance, marker="_", s=600, color="black", label="chance", zorder=3)
        axis.set_xticks(x, [f"R@{k}" for k in RECALL_KS])
        axis.set_ylabel("%")
        axis.set_title(f"{direction.replace('_', '-')} ({len(after.pairs)} {split} pairs)", fontsize=10)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _distinct_queries(captions: Sequence[str], count: int) -> List[int]:
    """Indices spread over the set whose captions differ, so the examples are not near-copies."""
    chosen, seen = [], set()
    for index in np.linspace(0, len(captions) - 1, 4 * count).astype(int):
        if captions[index] not in seen:
            chosen.append(int(index))
            seen.add(captions[index])
        if len(chosen) == count:
            break
    return chosen


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_retrieval_examples(result: RetrievalResult, path: Path, top_images: int = 5, top_captions: int = 3) -> Path:
    """Text queries with their top images (the query's own image framed green), then image
    queries with their top captions (the image's own caption marked)."""
    captions = [p.caption for p in result.pairs]
    text_queries = _distinct_queries(captions, NUM_TEXT_QUERIES)
    image_queries = _distinct_queries(captions[::-1], NUM_IMAGE_QUERIES)
    image_queries = [len(captions) - 1 - i for i in image_queries]
    images_for_text = retrieve_top_k(result.text_features[text_queries], result.image_features, top_images)
    captions_for_image = retrieve_top_k(result.image_features[image_queries], result.text_features, top_captions)

    rows = len(text_queries) + len(image_queries)
    figure = Figure(figsize=(2.0 * (top_images + 1), 2.1 * rows))
    grid = figure.add_gridspec(rows, top_images + 1)
    for row, (query, hits) in enumerate(zip(text_queries, images_for_text.tolist())):
        label = figure.add_subplot(grid[row, 0])
        label.axis("off")
        label.text(0, 0.5, _wrap(f"text query: {captions[query]}", 28), fontsize=7, va="center")
        for column, hit in enumerate(hits):
            axis = figure.add_subplot(grid[row, column + 1])
            axis.imshow(result.pairs[hit].image.open())
            axis.set_xticks([])
            axis.set_yticks([])
            correct = hit == query
            for spine in axis.spines.values():
                spine.set_color("tab:green" if correct else "lightgray")
                spine.set_linewidth(3 if correct else 1)
            axis.set_title(f"#{column + 1}" + (" (its image)" if correct else ""), fontsize=7)
    for offset, (query, hits) in enumerate(zip(image_queries, captions_for_image.tolist())):
        row = len(text_queries) + offset
        axis = figure.add_subplot(grid[row, 0])
        axis.imshow(result.pairs[query].image.open())
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title("image query", fontsize=7)
        text = figure.add_subplot(grid[row, 1:])
        text.axis("off")
        lines = [f"true: {captions[query]}", ""]
        lines += [f"#{rank + 1}{' [its caption]' if hit == query else ''}: {captions[hit]}"
                  for rank, hit in enumerate(hits)]
        text.text(0, 0.5, "\n".join(_wrap(line, 110) for line in lines), fontsize=7.5, va="center")
    figure.tight_layout()
    return _save(figure, path)


# ----- report -------------------------------------------------------------------------------
def _recall_rows(before: RetrievalResult, after: RetrievalResult) -> List[str]:
    rows = ["| direction | K | chance | untrained | pretrained |", "|---|---|---|---|---|"]
    for direction in DIRECTIONS:
        for k in RECALL_KS:
            key = f"{direction}_R@{k}"
            rows.append(f"| {direction.replace('_', '-')} | R@{k} | {100 * after.chance[k]:.1f} | "
                        f"{100 * before.metrics[key]:.1f} | **{100 * after.metrics[key]:.1f}** |")
    return rows


# why R@1 has a ceiling below 100, per dataset
_SHARED_CAPTIONS = {
    "embedded": "val captions are templated, so several pairs can share a caption and R@1 has a ceiling below 100.",
    "medpix": "several test images of one case share their case's caption, so R@1 has a ceiling below 100.",
}
_DATASET_TITLES = {"embedded": "the embedded dataset", "medpix": "MedPix 2.0 (real CT/MR images and captions)"}


def render_report(config: DemoConfig, pretrain: PretrainConfig, data: ExperimentData, run: PretrainRun,
                  before: RetrievalResult, after: RetrievalResult, plots: Dict[str, Path], out: Path) -> str:
    def rel(path: Path) -> str:
        return str(Path(path).relative_to(out)) if Path(path).is_relative_to(out) else str(path)

    first, last = run.steps[0], run.steps[-1]
    terms = [t for t in TERMS if f"{t}_loss" in last]
    def first_value(term: str) -> str:  # SimCLR starts after the first epoch: no first-step value
        return f"{first[f'{term}_loss']:.3f}" if f"{term}_loss" in first else "–"

    loss_rows = [f"| {t} | {first_value(t)} | {last[f'{t}_loss']:.3f} |" for t in terms]
    gain = mean_r1(after.metrics) / max(mean_r1(before.metrics), 1e-12)
    lines = [
        f"# Uni-Mlip demo: pretraining `{pretrain.model}` on {_DATASET_TITLES[data.name]}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')}. Retrieval on {len(after.pairs)} held-out {data.eval_split} "
        "image-caption "
        f"pairs, before and after {len(run.steps)} training steps ({run.seconds / 60:.1f} min of "
        f"`open_clip_train` on `{pretrain.device}`).",
        "",
        "## Retrieval (%)",
        "",
        *_recall_rows(before, after),
        "",
        f"Mean of image-to-text and text-to-image R@1: {100 * mean_r1(before.metrics):.1f} untrained, "
        f"**{100 * mean_r1(after.metrics):.1f}** pretrained, chance {100 * after.chance[1]:.1f} "
        f"({mean_r1(after.metrics) / after.chance[1]:.1f}x chance; {gain:.1f}x the untrained model). "
        "The untrained model has the pretrained MiniLM text tower but a random image tower; "
        + _SHARED_CAPTIONS[data.name],
        "",
        f"![recall]({rel(plots['recall'])})",
        "",
        "## Loss terms (weighted, as optimised)",
        "",
        "| term | first step | last step |",
        "|---|---|---|",
        *loss_rows,
        f"| total | {first['loss']:.3f} | {last['loss']:.3f} |",
        "",
        f"![losses]({rel(plots['losses'])})",
        "",
        "## What the model retrieves",
        "",
        f"![retrieval examples]({rel(plots['retrieval_examples'])})",
        "",
        "## Settings",
        "",
        f"- data: {data.description}",
        f"- model `{pretrain.model}`, {pretrain.epochs} epoch(s), batch {pretrain.batch_size}, lr {pretrain.lr}, "
        f"warmup {pretrain.warmup}, weight decay {pretrain.wd}, precision {pretrain.precision}, "
        f"{pretrain.workers} data worker(s), seed {pretrain.seed}",
        f"- Uni-Mlip flags: `{' '.join(pretrain.unimlip_flags) or '(paper defaults)'}`",
        f"- command: see `{rel(run.run_dir / 'command.txt')}`",
        "",
        "## Where things are",
        "",
        f"- training log: `{rel(run.run_dir / 'out.log')}`, hyper-parameters `{rel(run.run_dir / 'params.txt')}`",
        f"- checkpoint: `{rel(run.checkpoint)}`",
        "- all numbers: `results.json` (OpenCLIP's own per-epoch val metrics under `openclip_val_metrics`)",
        "",
        "Untrained:",
        "```",
        format_retrieval_table(before.metrics),
        "```",
        "Pretrained:",
        "```",
        format_retrieval_table(after.metrics),
        "```",
        "",
    ]
    return "\n".join(lines)
