"""The ablation benchmark of Uni-Mlip's Tables 3 and 4 (sec. 5.2) at a configurable scale.

Every row is one set of ``--unimlip-*`` flags (a weight of 0 switches a term off) trained
with the same data, epochs, batch and lr through ``experiment.run_pretraining``, for several
seeds, and scored by val retrieval R@1 (``experiment.evaluate_checkpoint``). Rows that use
the SimCLR views follow the paper's recipe: a first phase without them, then from
``simclr_start_epoch`` on the views (and, unless the row says otherwise, frozen BatchNorm
statistics). The ITC weight is the paper's 0.5/3 in every row, so rows differ only by the
terms they add.

Finished runs are recorded one JSON file each, so an interrupted grid resumes where it stopped.
"""
import functools
import json
import logging
import math
import shutil
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data.embedded import EmbeddedDataset
from .experiment import (DataConfig, PretrainConfig, ensure_data, evaluate_checkpoint,
                         run_pretraining)

_OFF = {"image_perturbed_itc": "--unimlip-image-perturbed-itc-weight", "text_perturbed_itc":
        "--unimlip-text-perturbed-itc-weight", "simclr": "--unimlip-simclr-weight"}


@dataclass(frozen=True)
class Row:
    key: str
    terms: Tuple[str, ...]  # the active loss terms, Uni-Mlip's names
    views_fed: bool = False  # the strong views go through the image tower (from the SimCLR start epoch)
    freeze_bn: bool = False
    label: str = ""

    def flags(self, simclr_start_epoch: int) -> List[str]:
        flags = [item for term, flag in _OFF.items() if term not in self.terms for item in (flag, "0")]
        if "simclr" in self.terms and not self.views_fed:
            raise ValueError(f"row {self.key}: SimCLR needs its views")
        if self.views_fed:
            flags += ["--unimlip-simclr-start-epoch", str(simclr_start_epoch)]
            if "simclr" not in self.terms:
                flags.append("--unimlip-feed-views")
            if not self.freeze_bn:
                flags.append("--unimlip-no-bn-freeze")
        return flags


ROWS: Dict[str, Row] = {row.key: row for row in (
    Row("itc_mlm", ("itc", "mlm"), label="ITC + MLM (baseline)"),
    Row("simclr_no_freeze", ("itc", "mlm", "simclr"), views_fed=True, label="+ SimCLR, BN statistics updating"),
    Row("views_no_simclr", ("itc", "mlm"), views_fed=True, label="views fed, SimCLR weight 0, BN updating"),
    Row("simclr_freeze", ("itc", "mlm", "simclr"), views_fed=True, freeze_bn=True, label="+ SimCLR, BN frozen"),
    Row("text_perturbed", ("itc", "mlm", "text_perturbed_itc"), label="+ text-perturbed ITC"),
    Row("image_perturbed", ("itc", "mlm", "image_perturbed_itc"), label="+ image-perturbed ITC"),
    Row("all_five", ("itc", "mlm", "text_perturbed_itc", "image_perturbed_itc", "simclr"), views_fed=True,
        freeze_bn=True, label="all five terms"),
)}
TABLE3 = ("itc_mlm", "simclr_no_freeze", "views_no_simclr", "simclr_freeze")
TABLE4 = ("itc_mlm", "text_perturbed", "image_perturbed", "simclr_freeze", "all_five")
BASELINE = "itc_mlm"
# the order runs go in (per seed): the baseline and the paper's headline comparison first
RUN_ORDER = ("itc_mlm", "simclr_freeze", "simclr_no_freeze", "views_no_simclr", "all_five", "text_perturbed",
             "image_perturbed")
# the paper's numbers (ROCO, R@1 %, I2T / T2I), for the side-by-side column
PAPER_R1 = {"itc_mlm": (22.2, 21.7), "simclr_no_freeze": (5.0, 1.0), "views_no_simclr": (4.0, 6.9),
            "simclr_freeze": (25.7, 24.0), "text_perturbed": (23.2, 23.3), "image_perturbed": (23.8, 23.4),
            "all_five": (25.9, 24.5)}


@dataclass
class AblationConfig:
    data: DataConfig
    pretrain: PretrainConfig  # shared by every row; its unimlip_flags are added to each row's
    out: Path
    seeds: Sequence[int] = (0, 1)
    rows: Sequence[str] = RUN_ORDER
    simclr_start_epoch: int = 1
    eval_num_samples: int = 2000
    keep_checkpoints: bool = False  # an unimlip-tiny checkpoint with its optimizer state is ~0.5 GB
    extra: Dict[str, object] = field(default_factory=dict)  # recorded as is, e.g. the preset's name


def run_name(row: str, seed: int) -> str:
    return f"{row}-seed{seed}"


def run_grid(config: AblationConfig) -> dict:
    """Train and evaluate every (seed, row), seed-major so that a grid cut short still holds
    complete seeds; the outputs are rewritten after every run. Returns the summary."""
    unknown = [r for r in config.rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(ROWS)}")
    out = Path(config.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data = ensure_data(config.data, progress=True)
    for seed in config.seeds:
        for key in config.rows:
            record = out / "runs" / f"{run_name(key, seed)}.json"
            if record.is_file():
                continue
            result = run_one(config, data, key, seed)
            record.write_text(json.dumps(result, indent=2))
            logging.info("%s: I2T R@1 %.1f%%, T2I R@1 %.1f%% (%.0f s)", run_name(key, seed),
                         100 * result["metrics"]["image_to_text_R@1"], 100 * result["metrics"]["text_to_image_R@1"],
                         result["train_seconds"])
            write_outputs(config)
    return write_outputs(config)


def run_one(config: AblationConfig, data: EmbeddedDataset, key: str, seed: int) -> dict:
    row = ROWS[key]
    pretrain = replace(config.pretrain, seed=seed,
                       unimlip_flags=row.flags(config.simclr_start_epoch) + list(config.pretrain.unimlip_flags))
    logs = Path(config.out) / "logs"
    name = run_name(key, seed)
    if (logs / name).exists():  # a run interrupted before its record: open_clip_train refuses the name
        shutil.rmtree(logs / name)
    run = run_pretraining(pretrain, data, logs, name, with_val=False)
    evaluate = functools.partial(evaluate_checkpoint, pretrain.model, run.checkpoint, data.val_data,
                                 num_samples=config.eval_num_samples, device=pretrain.device)
    result = evaluate()
    reestimated = evaluate(reestimate_bn_on=data.train_data)
    if not config.keep_checkpoints:
        run.checkpoint.unlink()
    last = run.steps[-1]
    return {"row": key, "seed": seed, "flags": pretrain.unimlip_flags, "metrics": result.metrics,
            "metrics_bn_reestimated": reestimated.metrics,
            "num_pairs": len(result.pairs), "train_seconds": run.seconds, "num_steps": len(run.steps),
            "final_losses": {k: v for k, v in last.items() if k.endswith("loss")}}


def _load_records(out: Path) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def summarize(records: Sequence[dict], rows: Sequence[str]) -> Dict[str, dict]:
    """Per row: I2T and T2I R@1 (%) (and R@10, ``*_r10``) mean and sample std over seeds, the
    seeds, and the gain of the R@1 means over the baseline row."""
    summary = {}
    for key in rows:
        runs = [r for r in records if r["row"] == key]
        if not runs:
            continue
        entry = {"seeds": sorted(r["seed"] for r in runs), "train_seconds": statistics.mean(r["train_seconds"] for r in runs)}
        for short, metrics, metric in (
                ("i2t", "metrics", "image_to_text_R@1"), ("t2i", "metrics", "text_to_image_R@1"),
                ("i2t_r10", "metrics", "image_to_text_R@10"), ("t2i_r10", "metrics", "text_to_image_R@10"),
                ("i2t_bn", "metrics_bn_reestimated", "image_to_text_R@1"),
                ("t2i_bn", "metrics_bn_reestimated", "text_to_image_R@1")):
            if not all(metrics in r for r in runs):  # records written before that evaluation existed
                continue
            values = [100 * r[metrics][metric] for r in runs]
            entry[short] = {"mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else math.nan, "values": values}
        summary[key] = entry
    if BASELINE in summary:
        for entry in summary.values():
            entry["gain"] = {d: entry[d]["mean"] - summary[BASELINE][d]["mean"]
                             for d in ("i2t", "t2i", "i2t_bn", "t2i_bn") if d in entry and d in summary[BASELINE]}
    return summary


def _cell(entry: dict, direction: str) -> str:
    value = entry[direction]
    if math.isnan(value["std"]):
        return f"{value['mean']:.1f}"
    return f"{value['mean']:.1f} ± {value['std']:.1f}"


def _gain(entry: dict, suffix: str = "") -> str:
    gain = entry.get("gain", {})
    if f"i2t{suffix}" not in gain:
        return "–"
    return f"{gain[f'i2t{suffix}']:+.1f} / {gain[f't2i{suffix}']:+.1f}"


def _r10(entry: dict) -> str:
    return f"{entry['i2t_r10']['mean']:.1f} / {entry['t2i_r10']['mean']:.1f}"


def _paper(key: str) -> str:
    return f"{PAPER_R1[key][0]:.1f} / {PAPER_R1[key][1]:.1f}"


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def format_tables(summary: Dict[str, dict]) -> str:
    """Tables 3 and 4 in the paper's layout, R@1 in %, mean ± std over seeds; R@10 (mean) and
    the paper's R@1 beside them."""
    lines = ["**Table 3** (freezing BatchNorm statistics with SimCLR)", "",
             "| Vision encoder input | Training objectives | Freeze BN | I2T R@1 | T2I R@1 | Gain (I2T / T2I) | seeds | "
             "R@10 I2T / T2I | paper R@1 I2T / T2I |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in TABLE3:
        if key not in summary:
            continue
        row, entry = ROWS[key], summary[key]
        objectives = ", ".join(t.upper() if t != "simclr" else "I2I (SimCLR)" for t in row.terms)
        lines.append(f"| {'V, Va, Vb' if row.views_fed else 'V'} | {objectives} | {_mark(row.freeze_bn)} | "
                     f"{_cell(entry, 'i2t')} | {_cell(entry, 't2i')} | {_gain(entry)} | {len(entry['seeds'])} | "
                     f"{_r10(entry)} | {_paper(key)} |")
    lines += ["", "**Table 4** (the training objectives)", "",
              "| ITC | MLM | text-perturbed ITC | image-perturbed ITC | I2I (SimCLR, BN frozen) | I2T R@1 | T2I R@1 | "
              "Gain (I2T / T2I) | seeds | R@10 I2T / T2I | paper R@1 I2T / T2I |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in TABLE4:
        if key not in summary:
            continue
        row, entry = ROWS[key], summary[key]
        marks = " | ".join(_mark(t in row.terms) for t in ("itc", "mlm", "text_perturbed_itc", "image_perturbed_itc", "simclr"))
        lines.append(f"| {marks} | {_cell(entry, 'i2t')} | {_cell(entry, 't2i')} | {_gain(entry)} | "
                     f"{len(entry['seeds'])} | {_r10(entry)} | {_paper(key)} |")
    reestimated = [key for key in summary if "i2t_bn" in summary[key]]
    if reestimated:
        lines += ["", "**The same checkpoints with BatchNorm statistics re-estimated** on clean train images "
                  "before evaluation (precise BN; separates the weights from how stale the running statistics are)", "",
                  "| row | I2T R@1 | T2I R@1 | Gain (I2T / T2I) | as trained: I2T / T2I R@1 |", "|---|---|---|---|---|"]
        for key in reestimated:
            entry = summary[key]
            lines.append(f"| {ROWS[key].label} | {_cell(entry, 'i2t_bn')} | {_cell(entry, 't2i_bn')} | "
                         f"{_gain(entry, '_bn')} | {entry['i2t']['mean']:.1f} / {entry['t2i']['mean']:.1f} |")
    return "\n".join(lines)


def plot_summary(summary: Dict[str, dict], path: Path) -> Path:
    keys = list(summary)
    figure = Figure(figsize=(1.3 * len(keys) + 2, 3.8))
    axis = figure.add_subplot(1, 1, 1)
    x = np.arange(len(keys))
    for offset, direction, label in ((-0.2, "i2t", "I2T R@1"), (0.2, "t2i", "T2I R@1")):
        means = [summary[k][direction]["mean"] for k in keys]
        stds = [np.nan_to_num(summary[k][direction]["std"]) for k in keys]
        axis.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
        for position, key in zip(x + offset, keys):  # the seeds themselves: few, so show them
            values = summary[key][direction]["values"]
            axis.scatter([position] * len(values), values, s=8, color="black", zorder=3)
    axis.set_xticks(x, [ROWS[k].label.replace(", ", ",\n") for k in keys], fontsize=7, rotation=20, ha="right")
    axis.set_ylabel("R@1 (%), mean ± std over seeds")
    axis.legend(fontsize=8)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_outputs(config: AblationConfig) -> dict:
    out = Path(config.out)
    records = _load_records(out)
    summary = summarize(records, config.rows)
    settings = {"data": asdict(config.data), "pretrain": asdict(config.pretrain), "seeds": list(config.seeds),
                "simclr_start_epoch": config.simclr_start_epoch, "eval_num_samples": config.eval_num_samples,
                **config.extra}
    (out / "ablation.json").write_text(json.dumps({"settings": settings, "summary": summary, "runs": records},
                                                  indent=2))
    (out / "ablation.md").write_text(format_tables(summary) + "\n")
    if summary:
        plot_summary(summary, out / "ablation.png")
    return summary


# ----- presets and command line -------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    num_samples: int
    val_fraction: float
    shard_size: int
    epochs: int
    simclr_start_epoch: int
    batch_size: int
    lr: float
    warmup: int
    workers: int
    seeds: Tuple[int, ...]


PRESETS = {
    # 7 distinct rows x 2 seeds x 38 steps of 64 on 1200 pairs: about 50 min on 2 idle cores
    # (about 5 s a step plus 40 s of start-up and evaluation per run; see docs/ablation.md).
    "cpu": Preset(num_samples=1500, val_fraction=0.2, shard_size=300, epochs=2, simclr_start_epoch=1,
                  batch_size=64, lr=1e-3, warmup=10, workers=1, seeds=(0, 1)),
    # a GPU-sized grid: 18k train pairs, 10 epochs (SimCLR from epoch 4), 3 seeds
    "full": Preset(num_samples=20000, val_fraction=0.1, shard_size=1000, epochs=10, simclr_start_epoch=4,
                   batch_size=256, lr=5e-4, warmup=100, workers=4, seeds=(0, 1, 2)),
}


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the GPU-sized grid instead of the CPU one")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/ablation-<preset>)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="embedded dataset folder (default: data/ablation-<preset>); built if missing")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, help="rows to run, in this order (default: all, baseline and SimCLR rows first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--num-samples", type=int, default=None, help="override the preset's dataset size")
    parser.add_argument("--simclr-start-epoch", type=int, default=None, help="override the preset's")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--model", default="unimlip-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default: fp32 on CPU, amp on CUDA")
    parser.add_argument("--keep-checkpoints", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args) -> AblationConfig:
    name = "full" if args.full else "cpu"
    preset = PRESETS[name]
    overrides = {k: getattr(args, k) for k in ("epochs", "num_samples", "simclr_start_epoch", "batch_size")
                 if getattr(args, k) is not None}
    if args.seeds is not None:
        overrides["seeds"] = tuple(args.seeds)
    preset = replace(preset, **overrides)
    data = DataConfig(root=str(args.data_root or Path("data") / f"ablation-{name}"), num_samples=preset.num_samples,
                      val_fraction=preset.val_fraction, shard_size=preset.shard_size)
    pretrain = PretrainConfig(
        model=args.model, epochs=preset.epochs, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
        workers=preset.workers, device=args.device, precision=args.precision or ("fp32" if args.device == "cpu" else "amp"))
    return AblationConfig(data=data, pretrain=pretrain, out=args.out or Path("runs") / f"ablation-{name}",
                          seeds=preset.seeds, rows=tuple(args.rows or RUN_ORDER), simclr_start_epoch=preset.simclr_start_epoch,
                          keep_checkpoints=args.keep_checkpoints, extra={"preset": name, **asdict(preset)})


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = config_from_args(args)
    summary = run_grid(config)
    print(format_tables(summary))
    print(f"results: {Path(config.out).resolve() / 'ablation.md'}")
    return summary
