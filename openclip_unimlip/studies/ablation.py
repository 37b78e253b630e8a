"""The ablation benchmark of Uni-Mlip's Tables 3 and 4 (sec. 5.2) at a configurable scale, in
the paper's two-stage protocol.

The paper's rows all start from PMC-CLIP trained 100 epochs with ITC+MLM (converged towers,
converged BatchNorm statistics) and train 100 more epochs each with their own objectives; the
baseline row is PMC-CLIP continued the same way (secs. 4.2, 5.2). Here:

* **stage 1** trains one ITC+MLM baseline (PMC-CLIP's recipe) on the embedded train split with
  ``open_clip_train``'s own per-epoch val retrieval (``--val-data``), so its curve shows whether
  val retrieval has plateaued. Its weights are saved once as a plain state dict under
  ``<out>/stage1-<hash>/``, the hash over every setting that shapes it, and reused by every
  later grid with the same settings.
* **stage 2** continues every row of Tables 3 and 4 from those weights (``--pretrained``), the
  baseline row included (the paper's "PMC-CLIP continued" control), for the same budget, with
  the row's objectives and BatchNorm rule. The rows with views use them from the first stage-2
  epoch (``--unimlip-simclr-start-epoch 0``), so the frozen rows keep stage 1's statistics
  throughout. The seeds vary stage 2 only.

Every run is scored on the same evaluation pairs (the embedded dataset's val split, MedPix's test
split: ``ExperimentData.eval_split``, which the reports name) as trained (the paper's way) and with
the image tower's BatchNorm statistics re-estimated on clean train images (precise BN), and every
row is compared with the baseline by a paired bootstrap over those pairs and seeds
(``studies/statistics.py``). ``from_scratch`` keeps the earlier one-stage protocol (every row
from random weights, the views from ``simclr_start_epoch``) for comparison.

Two rows beyond the paper's (ours): ``untrained``, the model before any training (random image
tower, pretrained MiniLM text tower, drawn under each seed as open_clip_train would) scored the
same way, and ``clip``, plain CLIP (ITC alone) continued from stage 1 like every other row.

``--dataset medpix --data-root <MedPix-2-0 folder>`` runs the grid on MedPix 2.0's real CT/MR
images and captions (``experiment.ensure_medpix_data``: stage 1 and stage 2 on the official train
split without the images VQA-RAD also holds, stage 1's val curve on the dev split, every row
scored on the 200 test images). The stage-2 weights of the rows in ``keep_rows`` (by default on
MedPix the baseline and all five terms, every seed) are kept as plain state dicts under
``<out>/checkpoints/`` and listed in ``ablation.json``: the downstream experiments start from them.

The ITC weight is the paper's 0.5/3 in every row, so rows differ only by the terms they add.
Every (row, seed) run is a cell of the studies' grid (``studies/grid.py``): its record is one JSON
file written as it finishes, so an interrupted grid resumes where it stopped, and a run that fails
stops only itself, with one line under the tables.
"""
import functools
import json
import logging
import math
import shutil
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from openclip_unimlip.data.atomic import write_json_atomic
from openclip_unimlip.evaluation.retrieval import positive_ranks
from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions
from openclip_unimlip.studies.experiment import (
    DataConfig,
    ExperimentData,
    MedpixConfig,
    PretrainConfig,
    RetrievalResult,
    ensure_data,
    evaluate_checkpoint,
    run_pretraining,
)
from openclip_unimlip.studies.grid import Grid, GridRun, read_record, settings_hash
from openclip_unimlip.studies.report import BarSeries, bar_chart, difference_text, markdown_table, save_report
from openclip_unimlip.studies.statistics import paired_difference


@dataclass(frozen=True)
class Row:
    key: str
    terms: Tuple[str, ...]  # the active loss terms, Uni-Mlip's names
    views_fed: bool = False  # the strong views go through the image tower (from the SimCLR start epoch)
    freeze_bn: bool = False
    label: str = ""

    @property
    def trains(self) -> bool:
        return bool(self.terms)

    def options(self, simclr_start_epoch: int) -> UniMlipOptions:
        """The row's Uni-Mlip run options: weight 0 for the terms it leaves out, and its views' rule."""
        if not self.trains:
            raise ValueError(f"row {self.key} does not train")
        if "simclr" in self.terms and not self.views_fed:
            raise ValueError(f"row {self.key}: SimCLR needs its views")
        off = {f"{term}_weight": 0.0 for term in TERMS if term not in self.terms}
        if not self.views_fed:
            return UniMlipOptions(**off)
        return UniMlipOptions(**off, simclr_start_epoch=simclr_start_epoch, feed_views="simclr" not in self.terms,
                              no_bn_freeze=not self.freeze_bn)

    def flags(self, simclr_start_epoch: int) -> List[str]:
        return self.options(simclr_start_epoch).to_argv()


ROWS: Dict[str, Row] = {row.key: row for row in (
    Row("itc_mlm", ("itc", "mlm"), label="ITC + MLM (baseline)"),
    Row("simclr_no_freeze", ("itc", "mlm", "simclr"), views_fed=True, label="+ SimCLR, BN statistics updating"),
    Row("views_no_simclr", ("itc", "mlm"), views_fed=True, label="views fed, SimCLR weight 0, BN updating"),
    Row("simclr_freeze", ("itc", "mlm", "simclr"), views_fed=True, freeze_bn=True, label="+ SimCLR, BN frozen"),
    Row("text_perturbed", ("itc", "mlm", "text_perturbed_itc"), label="+ text-perturbed ITC"),
    Row("image_perturbed", ("itc", "mlm", "image_perturbed_itc"), label="+ image-perturbed ITC"),
    Row("all_five", ("itc", "mlm", "text_perturbed_itc", "image_perturbed_itc", "simclr"), views_fed=True,
        freeze_bn=True, label="all five terms"),
    Row("untrained", (), label="untrained (no training; ours)"),
    Row("clip", ("itc",), label="ITC only (plain CLIP; ours)"),
)}
TABLE3 = ("itc_mlm", "simclr_no_freeze", "views_no_simclr", "simclr_freeze")
TABLE4 = ("itc_mlm", "text_perturbed", "image_perturbed", "simclr_freeze", "all_five")
REFERENCE_ROWS = ("untrained", "clip", "itc_mlm")  # ours: the floor and plain CLIP, beside the baseline
BASELINE = "itc_mlm"
# the order runs go in (per seed): the baseline and the paper's headline comparison first. The
# embedded grid keeps the paper's seven rows (as measured in docs/ablation.md); MedPix runs the
# baseline and all five terms first (the downstream experiments start from them), then the rest.
RUN_ORDER = ("itc_mlm", "simclr_freeze", "simclr_no_freeze", "views_no_simclr", "all_five", "text_perturbed",
             "image_perturbed")
MEDPIX_RUN_ORDER = ("itc_mlm", "all_five", "untrained", "clip", "simclr_freeze", "simclr_no_freeze",
                    "views_no_simclr", "text_perturbed", "image_perturbed")
DEFAULT_ROWS = {"embedded": RUN_ORDER, "medpix": MEDPIX_RUN_ORDER}
# the rows whose stage-2 weights are kept by default (every seed): the downstream initialisations
DEFAULT_KEEP_ROWS = {"embedded": (), "medpix": ("itc_mlm", "all_five")}
# the paper's numbers (ROCO, R@1 %, I2T / T2I), for the side-by-side column
PAPER_R1 = {"itc_mlm": (22.2, 21.7), "simclr_no_freeze": (5.0, 1.0), "views_no_simclr": (4.0, 6.9),
            "simclr_freeze": (25.7, 24.0), "text_perturbed": (23.2, 23.3), "image_perturbed": (23.8, 23.4),
            "all_five": (25.9, 24.5)}

# (short name, direction, metric): what every run is scored by; R@K in %, mean rank in ranks
METRICS = (("i2t_r1", "image_to_text", "R@1"), ("t2i_r1", "text_to_image", "R@1"),
           ("i2t_r10", "image_to_text", "R@10"), ("t2i_r10", "text_to_image", "R@10"),
           ("i2t_mean_rank", "image_to_text", "mean_rank"), ("t2i_mean_rank", "text_to_image", "mean_rank"))
# "as_trained": the checkpoint as it is (the paper's way); "bn_reestimated": precise BN first
EVALUATIONS = ("as_trained", "bn_reestimated")
# Ours: stage 1 counts as plateaued when the last PLATEAU_EPOCHS epochs improved its val mean
# rank (both directions averaged) by less than PLATEAU_TOLERANCE of its value before them.
PLATEAU_EPOCHS = 3
PLATEAU_TOLERANCE = 0.05


@dataclass
class AblationConfig:
    data: Union[DataConfig, MedpixConfig]
    pretrain: PretrainConfig  # stage 2's run, shared by every row; its unimlip_flags are added to each row's
    out: Path
    stage1_epochs: Optional[int] = 10  # None: the one-stage protocol, every row from scratch
    stage1_seed: int = 0
    seeds: Sequence[int] = (0, 1, 2)
    rows: Sequence[str] = RUN_ORDER
    simclr_start_epoch: int = 1  # the views' first epoch in the one-stage protocol only
    eval_num_samples: int = 2000
    keep_checkpoints: bool = False  # an unimlip-tiny checkpoint with its optimizer state is ~0.5 GB
    keep_rows: Sequence[str] = ()  # rows whose stage-2 weights are kept as plain state dicts (<out>/checkpoints)
    extra: Dict[str, object] = field(default_factory=dict)  # recorded as is, e.g. the preset's name

    @property
    def two_stage(self) -> bool:
        return self.stage1_epochs is not None


def run_name(row: str, seed: int) -> str:
    return f"{row}-seed{seed}"


# ----- stage 1: the converged baseline, trained once --------------------------------------
def stage1_pretrain(config: AblationConfig) -> PretrainConfig:
    """PMC-CLIP's recipe: the baseline row's objectives (ITC + MLM), stage 1's epochs and seed."""
    return replace(config.pretrain, epochs=config.stage1_epochs, seed=config.stage1_seed,
                   unimlip_flags=ROWS[BASELINE].flags(0) + list(config.pretrain.unimlip_flags))


def stage1_settings(config: AblationConfig) -> dict:
    return {"data": asdict(config.data), "pretrain": asdict(stage1_pretrain(config))}


def stage1_dir(config: AblationConfig) -> Path:
    """``<out>/stage1-<hash>``: the hash covers the data and every training setting of stage 1,
    so a changed setting trains a new baseline and never reuses a stale one."""
    # 12 characters, as the stage-1 folders of the grids measured so far are named
    return Path(config.out) / f"stage1-{settings_hash(stage1_settings(config))[:12]}"


def val_curve(val_metrics: Sequence[Dict[str, float]]) -> List[Dict[str, float]]:
    """Per epoch of ``open_clip_train``'s val evaluation (results.jsonl): the epoch and, per
    metric of ``METRICS``, its value (R@K in %)."""
    curve = []
    for entry in val_metrics:
        point = {"epoch": int(entry["epoch"])}
        for short, direction, metric in METRICS:
            value = entry[f"{direction}_{metric}"]
            point[short] = 100 * value if metric.startswith("R@") else value
        curve.append(point)
    return curve


def has_plateaued(curve: Sequence[Dict[str, float]], epochs: int = PLATEAU_EPOCHS,
                  tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """Whether the last ``epochs`` epochs lowered the mean rank (both directions averaged) by
    less than ``tolerance`` of its value before them."""
    if len(curve) <= epochs:
        return False
    mean_rank = [(p["i2t_mean_rank"] + p["t2i_mean_rank"]) / 2 for p in curve]
    before = mean_rank[-epochs - 1]
    return before - min(mean_rank[-epochs:]) < tolerance * before


def ensure_stage1(config: AblationConfig, data: ExperimentData) -> dict:
    """The stage-1 baseline: trained now unless ``stage1_dir`` already holds it. Returns its
    record (``checkpoint``: a plain state dict, ``curve``, ``plateaued``, ``train_seconds``)."""
    folder = stage1_dir(config)
    record_path = folder / "stage1.json"
    if record_path.is_file():  # written last: its presence means the checkpoint is complete
        record = json.loads(record_path.read_text())
        record["checkpoint"] = str((folder / "stage1.pt").resolve())  # the folder may have moved
        logging.info("stage 1: reusing %s", record["checkpoint"])
        return record
    if (folder / "logs").exists():  # interrupted before its record
        shutil.rmtree(folder / "logs")
    pretrain = stage1_pretrain(config)
    run = run_pretraining(pretrain, data, folder / "logs", "stage1", with_val=True)
    # a plain state dict: what --pretrained loads, without the optimizer state (2/3 of the file)
    state_dict = torch.load(run.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    checkpoint = folder / "stage1.pt"
    torch.save(state_dict, checkpoint)
    if not config.keep_checkpoints:
        run.checkpoint.unlink()
    curve = val_curve(run.val_metrics)
    record = {"checkpoint": str(checkpoint.resolve()), "settings": stage1_settings(config), "curve": curve,
              "plateaued": has_plateaued(curve), "train_seconds": run.seconds, "num_steps": len(run.steps)}
    write_json_atomic(record_path, record)  # whole or absent: its presence marks stage 1 as done
    if not record["plateaued"]:
        logging.warning("stage 1: val mean rank still fell by %d%% or more over its last %d epochs; "
                        "raise --stage1-epochs for a converged baseline", 100 * PLATEAU_TOLERANCE, PLATEAU_EPOCHS)
    return record


# ----- stage 2 (or the one-stage grid) ---------------------------------------------------------
@dataclass(frozen=True)
class AblationRun:
    """One cell of the grid: a row trained (stage 2) and scored under one seed."""
    row: str
    seed: int


class AblationGrid(Grid[AblationRun]):
    """The (row, seed) runs on the studies' grid (``studies.grid``): each run's record is
    ``<out>/runs/<row>-seed<seed>.json``; a record of other settings (``run_settings``) is stale."""
    progress_label = "ablation runs"

    def __init__(self, config: AblationConfig, data: ExperimentData, stage1: Optional[dict]):
        self.config, self.data, self.stage1 = config, data, stage1

    def cell_path(self, run: AblationRun) -> Path:
        return Path(self.config.out) / "runs" / f"{run_name(run.row, run.seed)}.json"

    def settings(self, run: AblationRun) -> dict:
        return run_settings(self.config)  # the row and the seed are the record's name

    def run_cell(self, run: AblationRun) -> dict:
        return run_one(self.config, self.data, run.row, run.seed, self.stage1)

    def is_complete(self, run: AblationRun, record: dict) -> bool:
        """Scored, with its kept weights when the row's are to be kept."""
        if "evaluations" not in record:
            return False
        keeps = run.row in self.config.keep_rows and ROWS[run.row].trains
        return not keeps or Path(record.get("checkpoint") or "").is_file()

    def describe(self, run: AblationRun) -> str:
        return run_name(run.row, run.seed)

    def summarize(self, record: dict) -> str:
        metrics = record["evaluations"]["as_trained"]["metrics"]
        return (f"I2T R@1 {100 * metrics['image_to_text_R@1']:.1f}%, T2I R@1 {100 * metrics['text_to_image_R@1']:.1f}%"
                f", trained {record['train_seconds']:.0f} s")

    def after_cell(self, run: GridRun) -> None:
        write_outputs(self.config, self.data.eval_split, self.data.description, run.failures)


def run_grid(config: AblationConfig) -> dict:
    """Stage 1 if needed, then train and evaluate every (seed, row), seed-major so that a grid
    cut short still holds complete seeds; the outputs are rewritten after every run. A run that
    fails stops only itself (one line in the tables' Problems). Returns the summary."""
    unknown = [r for r in (*config.rows, *config.keep_rows) if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(ROWS)}")
    out = Path(config.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data = ensure_data(config.data, progress=True)
    with logging_redirect_tqdm():
        stage1 = ensure_stage1(config, data) if config.two_stage else None
    # the grid's bar (runs done / all) above the current run's bar (its steps, from its out.log)
    grid = AblationGrid(config, data, stage1)
    run = grid.run(grid.start([AblationRun(key, seed) for seed in config.seeds for key in config.rows]))
    return write_outputs(config, data.eval_split, data.description, run.failures)


def run_settings(config: AblationConfig) -> dict:
    """What a run starts from and how it trains and is scored, hashed into its record: a record of
    other settings is stale (it is retrained, and left out of the tables)."""
    return {"start": stage1_dir(config).name if config.two_stage else "scratch",
            "pretrain": asdict(config.pretrain),
            "simclr_start_epoch": 0 if config.two_stage else config.simclr_start_epoch,
            "eval_num_samples": config.eval_num_samples}


def _scored(result: RetrievalResult) -> dict:
    ranks = positive_ranks(result.image_features, result.text_features)
    return {"metrics": result.metrics, "ranks": {d: r.tolist() for d, r in ranks.items()}}


def _evaluations(config: AblationConfig, data: ExperimentData, checkpoint: Optional[Path], init_seed: int) -> dict:
    """As trained (the paper's way) and with precise BN, on the evaluation pairs."""
    evaluate = functools.partial(evaluate_checkpoint, config.pretrain.model, checkpoint, data.eval_data,
                                 num_samples=config.eval_num_samples, init_seed=init_seed,
                                 device=config.pretrain.device)
    return {"as_trained": _scored(evaluate()), "bn_reestimated": _scored(evaluate(reestimate_bn_on=data.train_data))}


def run_untrained(config: AblationConfig, data: ExperimentData, seed: int) -> dict:
    """The ``untrained`` row: the initial weights open_clip_train would draw under ``seed``."""
    evaluations = _evaluations(config, data, None, init_seed=seed)
    return {"row": "untrained", "seed": seed, "flags": [], "evaluations": evaluations,
            "num_pairs": len(evaluations["as_trained"]["ranks"]["image_to_text"]), "train_seconds": 0.0,
            "num_steps": 0, "final_losses": {}}


def _keep_weights(checkpoint: Path, path: Path) -> Path:
    """A plain state dict (what ``--pretrained`` and ``create_model(pretrained=...)`` load), without
    the optimizer state."""
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k.removeprefix("module."): v for k, v in state_dict.items()}, path)
    return path.resolve()


def run_one(config: AblationConfig, data: ExperimentData, key: str, seed: int, stage1: Optional[dict]) -> dict:
    row = ROWS[key]
    if not row.trains:
        return run_untrained(config, data, seed)
    start_epoch = 0 if stage1 is not None else config.simclr_start_epoch
    pretrain = replace(config.pretrain, seed=seed,
                       unimlip_flags=row.flags(start_epoch) + list(config.pretrain.unimlip_flags))
    if stage1 is not None:
        pretrain = replace(pretrain, extra_flags=list(pretrain.extra_flags) + ["--pretrained", stage1["checkpoint"]])
    logs = Path(config.out) / "logs"
    name = run_name(key, seed)
    if (logs / name).exists():  # a run interrupted before its record: open_clip_train refuses the name
        shutil.rmtree(logs / name)
    run = run_pretraining(pretrain, data, logs, name, with_val=False)
    evaluations = _evaluations(config, data, run.checkpoint, init_seed=seed)
    kept = (_keep_weights(run.checkpoint, Path(config.out) / "checkpoints" / f"{name}.pt")
            if key in config.keep_rows else None)
    if not config.keep_checkpoints:
        run.checkpoint.unlink()
    last = run.steps[-1]
    return {"row": key, "seed": seed, "flags": pretrain.unimlip_flags + pretrain.extra_flags,
            "evaluations": evaluations, "num_pairs": len(evaluations["as_trained"]["ranks"]["image_to_text"]),
            "train_seconds": run.seconds, "num_steps": len(run.steps),
            "final_losses": {k: v for k, v in last.items() if k.endswith("loss")},
            "checkpoint": str(kept) if kept else None}


def _load_records(config: AblationConfig) -> List[dict]:
    """Every current record under ``<out>/runs``, of the grid's rows and seeds or of earlier ones."""
    origin = settings_hash(run_settings(config))
    records = [read_record(p, origin) for p in sorted((Path(config.out) / "runs").glob("*.json"))]
    return [r for r in records if r is not None and "evaluations" in r]


# ----- statistics and tables ---------------------------------------------------------------
def _value(record: dict, evaluation: str, direction: str, metric: str) -> float:
    value = record["evaluations"][evaluation]["metrics"][f"{direction}_{metric}"]
    return 100 * value if metric.startswith("R@") else value


def summarize(records: Sequence[dict], rows: Sequence[str], num_resamples: int = 4000) -> Dict[str, dict]:
    """Per row and evaluation (``EVALUATIONS``), per metric of ``METRICS``: mean and sample std
    over seeds (``values`` the seeds' own); and ``difference``: the paired bootstrap of the
    row minus the baseline row over their common seeds and the evaluation pairs (``paired_difference``)."""
    summary = {}
    for key in rows:
        runs = sorted((r for r in records if r["row"] == key), key=lambda r: r["seed"])
        if not runs:
            continue
        entry = {"seeds": [r["seed"] for r in runs], "train_seconds": statistics.mean(r["train_seconds"] for r in runs)}
        for evaluation in EVALUATIONS:
            entry[evaluation] = {}
            for short, direction, metric in METRICS:
                values = [_value(r, evaluation, direction, metric) for r in runs]
                entry[evaluation][short] = {"mean": statistics.mean(values), "values": values,
                                            "std": statistics.stdev(values) if len(values) > 1 else math.nan}
        summary[key] = entry
    baseline = {r["seed"]: r for r in records if r["row"] == BASELINE}
    for key, entry in summary.items():
        if key == BASELINE or not baseline:
            continue
        paired = [(r, baseline[r["seed"]]) for r in records if r["row"] == key and r["seed"] in baseline]
        paired.sort(key=lambda pair: pair[0]["seed"])
        if not paired:
            continue
        entry["difference"] = {"seeds": [r["seed"] for r, _ in paired]}
        for evaluation in EVALUATIONS:
            entry["difference"][evaluation] = {
                short: paired_difference([r["evaluations"][evaluation]["ranks"][direction] for r, _ in paired],
                                         [b["evaluations"][evaluation]["ranks"][direction] for _, b in paired],
                                         metric, num_resamples=num_resamples)
                for short, direction, metric in METRICS}
    return summary


def _number(value: float) -> str:
    return f"{value:.1f}"


def _cell(entry: dict, evaluation: str, short: str) -> str:
    value = entry[evaluation][short]
    if math.isnan(value["std"]):
        return _number(value["mean"])
    return f"{_number(value['mean'])} ± {_number(value['std'])}"


def _pair(entry: dict, evaluation: str, metric: str) -> str:
    return f"{_cell(entry, evaluation, 'i2t_' + metric)} / {_cell(entry, evaluation, 't2i_' + metric)}"


def _difference(entry: dict, evaluation: str, short: str) -> str:
    """``+1.2 [-0.3, +2.7]``, bold where the interval excludes 0."""
    if "difference" not in entry:
        return "–"
    d = entry["difference"][evaluation][short]
    return difference_text(d["estimate"], d["low"], d["high"], d["excludes_zero"])


def _paper(key: str) -> str:
    return f"{PAPER_R1[key][0]:.1f} / {PAPER_R1[key][1]:.1f}" if key in PAPER_R1 else "–"


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def format_stage1(stage1: dict) -> str:
    lines = [f"**Stage 1** (ITC + MLM from scratch, {len(stage1['curve'])} epochs, {stage1['num_steps']} steps, "
             f"{stage1['train_seconds'] / 60:.1f} min; val retrieval per epoch from open_clip_train; plateaued: "
             f"{'yes' if stage1['plateaued'] else 'NO'})", ""]
    lines += markdown_table(
        ["epoch", "I2T R@1", "T2I R@1", "I2T R@10", "T2I R@10", "I2T mean rank", "T2I mean rank"],
        [[str(p["epoch"]), *(f"{p[short]:.1f}" for short in ("i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10",
                                                            "i2t_mean_rank", "t2i_mean_rank"))]
         for p in stage1["curve"]])
    return "\n".join(lines)


def _scores(entry: dict, evaluation: str) -> List[str]:
    """R@1, R@10 and mean rank (I2T / T2I), the R@1 differences to the baseline."""
    return [_pair(entry, evaluation, "r1"), _pair(entry, evaluation, "r10"), _pair(entry, evaluation, "mean_rank"),
            _difference(entry, evaluation, "i2t_r1"), _difference(entry, evaluation, "t2i_r1")]


SCORE_COLUMNS = ["R@1 I2T / T2I", "R@10 I2T / T2I", "mean rank I2T / T2I", "Δ I2T R@1 [95 %]", "Δ T2I R@1 [95 %]"]


def format_tables(summary: Dict[str, dict], stage1: Optional[dict] = None, eval_split: str = "val") -> str:
    """Stage 1's curve; Tables 3 and 4 in the paper's layout (R@1 and R@10 in %, mean rank;
    mean ± std over seeds; the paired difference of R@1 to the baseline with its 95 % interval,
    bold where it excludes 0; the paper's R@1); then every metric's difference, both evaluations.
    ``eval_split``: what the scored pairs are called (``ExperimentData.eval_split``)."""
    lines = [format_stage1(stage1), ""] if stage1 is not None else []
    for evaluation, title in (
            ("as_trained", f"as trained (the paper's evaluation), scored on the {eval_split} pairs"),
            ("bn_reestimated", "BatchNorm statistics re-estimated on clean train images (precise BN), scored on "
                               f"the {eval_split} pairs")):
        table3 = []
        for key in (k for k in TABLE3 if k in summary):
            row = ROWS[key]
            objectives = ", ".join(t.upper() if t != "simclr" else "I2I (SimCLR)" for t in row.terms)
            table3.append(["V, Va, Vb" if row.views_fed else "V", objectives, _mark(row.freeze_bn),
                           *_scores(summary[key], evaluation), str(len(summary[key]["seeds"])), _paper(key)])
        lines += [f"**Table 3** (freezing BatchNorm statistics with SimCLR), {title}", "",
                  *markdown_table(["Vision encoder input", "Training objectives", "Freeze BN", *SCORE_COLUMNS,
                                   "seeds", "paper R@1 I2T / T2I"], table3)]
        table4 = [[*(_mark(t in ROWS[key].terms)
                     for t in ("itc", "mlm", "text_perturbed_itc", "image_perturbed_itc", "simclr")),
                   *_scores(summary[key], evaluation), str(len(summary[key]["seeds"])), _paper(key)]
                  for key in TABLE4 if key in summary]
        lines += ["", f"**Table 4** (the training objectives), {title}", "",
                  *markdown_table(["ITC", "MLM", "text-perturbed ITC", "image-perturbed ITC", "I2I (SimCLR, BN frozen)",
                                   *SCORE_COLUMNS, "seeds", "paper R@1 I2T / T2I"], table4), ""]
        references = [key for key in REFERENCE_ROWS if key in summary and (key != BASELINE or len(summary) > 1)]
        if any(key != BASELINE for key in references):
            rows = [[ROWS[key].label, *_scores(summary[key], evaluation),
                     _difference(summary[key], evaluation, "i2t_mean_rank"),
                     _difference(summary[key], evaluation, "t2i_mean_rank"), str(len(summary[key]["seeds"]))]
                    for key in references]
            lines += [f"**Reference rows** (ours: before any training, and plain CLIP continued from stage 1), {title}",
                      "", *markdown_table(["row", *SCORE_COLUMNS, "Δ I2T mean rank [95 %]", "Δ T2I mean rank [95 %]",
                                           "seeds"], rows), ""]
    compared = [key for key in summary if "difference" in summary[key]]
    if compared:
        lines += ["**Row − baseline, every metric**: paired difference over the common seeds and the "
                  f"{eval_split} pairs, 95 % bootstrap interval (pairs and seeds resampled); **bold**: the interval "
                  "excludes 0. R@K in points of %, mean rank in ranks (negative is better).", ""]
        lines += markdown_table(
            ["row", "evaluation", *(f"Δ {'I2T' if d == 'image_to_text' else 'T2I'} {m.replace('_', ' ')}"
                                    for _, d, m in METRICS)],
            [[ROWS[key].label, evaluation.replace("_", " "),
              *(_difference(summary[key], evaluation, s) for s, _, _ in METRICS)]
             for key in compared for evaluation in EVALUATIONS])
    return "\n".join(lines).rstrip() + "\n"


def plot_summary(summary: Dict[str, dict], path: Path) -> Path:
    """R@1 as trained per row and direction: mean ± std over seeds, each seed a dot."""
    keys = list(summary)
    series = []
    for short, label in (("i2t_r1", "I2T R@1"), ("t2i_r1", "T2I R@1")):
        values = [summary[k]["as_trained"][short] for k in keys]
        stds = [float(np.nan_to_num(v["std"])) for v in values]
        series.append(BarSeries(label, [v["mean"] for v in values], (stds, stds), [v["values"] for v in values]))
    return bar_chart(path, [ROWS[k].label for k in keys], series, "R@1 (%) as trained, mean ± std over seeds")


def write_outputs(config: AblationConfig, eval_split: str, data_description: Optional[str] = None,
                  failures: Sequence[dict] = ()) -> dict:
    """``ablation.json`` (settings, stage 1, summary, kept weights, every run, the runs that failed),
    ``ablation.md`` (the tables, under a line on the data when ``data_description`` is given, then
    one line per failed run) and ``ablation.png``. ``eval_split`` names the scored pairs
    (``ExperimentData.eval_split``, the one place that knows which split a dataset scores)."""
    out = Path(config.out)
    records = _load_records(config)
    summary = summarize(records, config.rows)
    stage1_record = stage1_dir(config) / "stage1.json"
    stage1 = json.loads(stage1_record.read_text()) if config.two_stage and stage1_record.is_file() else None
    settings = {"dataset": "medpix" if isinstance(config.data, MedpixConfig) else "embedded",
                "data": asdict(config.data), "pretrain": asdict(config.pretrain), "seeds": list(config.seeds),
                "protocol": "two-stage" if config.two_stage else "from scratch", "stage1_epochs": config.stage1_epochs,
                "stage1_seed": config.stage1_seed,
                "simclr_start_epoch": 0 if config.two_stage else config.simclr_start_epoch,
                "eval_num_samples": config.eval_num_samples, "eval_split": eval_split,
                "data_description": data_description, **config.extra}
    # the kept stage-2 weights, for the downstream experiments: {row: {seed: path}}
    checkpoints: Dict[str, Dict[int, str]] = {}
    for record in records:
        if record.get("checkpoint"):
            checkpoints.setdefault(record["row"], {})[record["seed"]] = record["checkpoint"]
    header = f"Data: {data_description}.\n\n" if data_description else ""
    problems = "".join(f"- {f['row']} seed {f['seed']}: {f['message']}\n" for f in failures)
    markdown = header + format_tables(summary, stage1, eval_split) + (
        f"\n**Problems** (each stopped only its own run)\n\n{problems}" if problems else "")
    save_report(out, "ablation", {"settings": settings, "stage1": stage1, "summary": summary,
                                  "checkpoints": checkpoints, "runs": records, "failures": list(failures)}, markdown)
    if summary:
        plot_summary(summary, out / "ablation.png")
    return summary


# ----- presets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    num_samples: Optional[int]  # the embedded dataset's; None for MedPix (its official splits)
    val_fraction: Optional[float]
    shard_size: int
    stage1_epochs: int
    epochs: int  # every stage-2 run's (every run's with --from-scratch)
    simclr_start_epoch: int  # --from-scratch only
    batch_size: int
    lr: float
    warmup: int
    workers: int
    seeds: Tuple[int, ...]


PRESETS = {
    # 1200 train pairs, batch 64 (19 steps an epoch). Stage 1: 20 epochs (380 steps; 10 did not
    # meet the plateau rule, docs/ablation.md); stage 2: 7 rows x 3 seeds x 2 epochs (38 steps).
    # Measured on an idle 2-core CPU with 10 stage-1 epochs: 5.2 min stage 1, 34.5 min the 21 stage-2 runs.
    "cpu": Preset(num_samples=1500, val_fraction=0.2, shard_size=300, stage1_epochs=20, epochs=2,
                  simclr_start_epoch=1, batch_size=64, lr=1e-3, warmup=10, workers=1, seeds=(0, 1, 2)),
    # a GPU-sized grid: 18k train pairs, batch 256 (70 steps an epoch); stage 1 30 epochs,
    # stage 2 10 epochs a row (the from-scratch grid: 10 epochs, SimCLR from epoch 4)
    "full": Preset(num_samples=20000, val_fraction=0.1, shard_size=1000, stage1_epochs=30, epochs=10,
                   simclr_start_epoch=4, batch_size=256, lr=5e-4, warmup=100, workers=4, seeds=(0, 1, 2)),
    # MedPix 2.0 on 2 CPU cores: 1636 train images (the official train split less the 17 that
    # VQA-RAD also holds), batch 64: 26 steps an epoch. Stage 1: 12 epochs (312 steps, about the
    # 17 x 19 = 323 steps the embedded stage 1 took to plateau; ours). A 20-epoch stage 1 (run
    # 2026-12-03) had a flat dev curve from epoch ~10 and gave stage-2 rows no better test numbers;
    # the 12-epoch one met the plateau rule. Stage 2: 8 trained rows x 3 seeds x 2 epochs (52 steps),
    # plus the untrained row's evaluations. The whole grid, measured here on 2026-12-03 with the
    # machine otherwise nearly idle: 1 h 31 min (stage 1 21.1 min at ~3.2 s a step with its dev
    # passes; a stage-2 run ~2.5 min at ~2.4 s a step with its evaluations).
    "medpix": Preset(num_samples=None, val_fraction=None, shard_size=500, stage1_epochs=12, epochs=2,
                     simclr_start_epoch=1, batch_size=64, lr=1e-3, warmup=10, workers=1, seeds=(0, 1, 2)),
}
