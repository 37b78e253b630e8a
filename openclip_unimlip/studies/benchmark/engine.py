"""The benchmark: OpenCLIP models evaluated on every medical downstream task found, in the paper's
layout (Fig. 2, Table 1, Table 2), with the paper's reported numbers beside. The command
``unimlip-benchmark`` (``commands/benchmark.py``) reads the options below and runs it:

    unimlip-benchmark --model unimlip-rn50 --pretrained ckpt.pt --model hf-hub:org/biomedclip \\
        --data-root /data --out results/benchmark --device cuda --precision amp

* **Models**: ``--model NAME [--pretrained CKPT] [--label TEXT]``, repeatable; each is one row of
  every table. ``NAME`` is anything OpenCLIP's factory takes (``hf-hub:...``, ``local-dir:...``,
  stock names, our configs; ``--model-config`` registers more); ``--pretrained`` a checkpoint path
  (``open_clip_train`` checkpoints and plain state dicts work), an OpenCLIP tag, or ``random``
  (every weight drawn from the cell's seed, the text tower's too; without ``--pretrained`` a
  Hugging Face text tower starts from its base weights, where pretraining starts); ``{seed}`` in
  the path gives downstream seed k the weights of pretraining seed k (e.g. the MedPix ablation's
  ``checkpoints/all_five-seed{seed}.pt``), so the intervals cover the pretraining's seeds too.
* **Reference**: ``--reference LABEL`` adds to every table each other row's paired per-seed
  differences to that row, with t-intervals (``studies/statistics.py``): the same seed gives every
  row the same training subset, data order and new-layer initialisation.
* **Datasets**: every dataset found under ``--data-root`` in its released layout
  (``data.releases``: ROCO, MedPix 2.0, CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14, VQA-RAD,
  SLAKE). A missing one is listed as skipped; one whose folder does not hold its release is bad.
* **Tasks** (``tasks``, each wrapping the single-task evaluation): retrieval on ROCO and
  MedPix 2.0 test pairs; classification fine-tuning and linear probing on the chest X-ray sets
  (Table 1; NIH split by its own list files, ``tasks.DATASET_PROTOCOLS``) and on MedPix 2.0's
  location labels (a stand-in in Table 1's layout; ``--set medpix.label=...`` picks another label);
  VQA fine-tuning on VQA-RAD and SLAKE (Table 2).
* **Presets**: ``paper`` (2000 drawn retrieval pairs, sec. 4.2; classification fine-tuning at
  1/10/100 % under the default ``chexclusion`` protocol, 224 px, the paper's batch sizes, up to 64
  epochs with early stopping; VQA at the paper's learning rates with ``vqa.py``'s schedule), ``cpu``
  (ours: every real dataset on a 2-core machine with ``unimlip-tiny``, see :data:`CPU`) and ``ci``
  (tiny sizes, ours: a minute on a CPU for small models). ``--set FIELD=VALUE`` changes one
  setting of the preset (:func:`preset_with`), e.g. ``vqa.epochs=1``.
* **Cells**: one (model, task, fraction, seed) each, on the studies' grid (``studies/grid.py``):
  written to ``<out>/cells/<row>/`` as soon as it finishes, with a hash of everything that shaped
  it; a re-run skips finished cells and re-runs stale ones. A bad dataset or a model that does not
  load stops only its own cells; a cell that fails stops the rest of its (model, task) with one
  message in the report.
* **Outputs**: ``<out>/benchmark.md`` and ``benchmark.json`` (rewritten after every cell),
  ``<out>/plots/`` (retrieval recall bars, VQA accuracy by question type).
* ``--plan`` reads the datasets, lists the cells with an estimate of their time and runs nothing.
"""
import json
import logging
import math
import re
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from openclip_unimlip.data.cxr_protocols import DEFAULT_PROTOCOL
from openclip_unimlip.data.releases import DatasetStatus, find_datasets
from openclip_unimlip.evaluation import classification, finetune, reported, vqa
from openclip_unimlip.evaluation.medpix_classification import FineTuneSettings
from openclip_unimlip.studies.benchmark import tables
from openclip_unimlip.studies.benchmark.tasks import (
    ChestXrayRecipe,
    MedpixRecipe,
    ModelRow,
    Preset,
    RetrievalRecipe,
    RetrievalTask,
    Runtime,
    Task,
    VqaRecipe,
    tasks_for,
    vqa_unsupported_reason,
)
from openclip_unimlip.studies.grid import Grid, GridRun, one_line
from openclip_unimlip.studies.report import save_report

_logger = logging.getLogger(__name__)

# The paper's settings where it gives them (sec. 4.2), the single-task scripts' defaults elsewhere.
PAPER = Preset(
    name="paper",
    retrieval=RetrievalRecipe(num_samples=2000),  # "we randomly select 2000 test image-text pairs"
    chest_xray=ChestXrayRecipe(
        image_size=224,  # "Input images are resized to 224x224"
        batch_sizes=dict(classification.DEFAULT_BATCH_SIZES),  # 190 CheXpert, 150 MIMIC and NIH
        lr=classification.DEFAULT_LR,  # ours (the paper names Adam, not its rate)
        max_epochs=finetune.DEFAULT_MAX_EPOCHS,  # "up to 64 epochs with early stopping"
        patience=finetune.DEFAULT_PATIENCE,  # ours
        protocol=DEFAULT_PROTOCOL),  # chexclusion: the protocol of Table 1's comparison rows
    # ours: batches of 150, up to 64 epochs with patience 10, at least 1,500 images an epoch (the
    # settings of the retired real-data downstream command's "full" preset), at the paper's 224 px
    medpix=MedpixRecipe(FineTuneSettings(batch_size=150, lr=1e-4, max_epochs=64, patience=10, min_epoch_images=1500),
                        image_size=224),
    vqa=VqaRecipe(batch_size=vqa.DEFAULT_BATCH_SIZE, epochs=vqa.DEFAULT_EPOCHS,  # ours (vqa.py): 32, 50
                  encoder_lr=vqa.DEFAULT_ENCODER_LR, fusion_lr=vqa.DEFAULT_FUSION_LR,  # the paper's 5e-5, 5e-4
                  image_size=finetune.DEFAULT_IMAGE_SIZE,  # scripts/finetune_vqa.py's 224
                  patience=finetune.DEFAULT_PATIENCE),  # SLAKE's validation (finetune_vqa.py)
    limit=None, seeds=(0, 1, 2), fractions=(0.01, 0.1, 1.0), workers=4)

# Ours: every split cut to its first 32 images or questions, one epoch, the model's own image size.
CI = Preset(
    name="ci",
    retrieval=RetrievalRecipe(num_samples=100),
    chest_xray=replace(PAPER.chest_xray, image_size=None, batch_sizes={d: 16 for d in PAPER.chest_xray.batch_sizes},
                       max_epochs=1, patience=None),
    medpix=MedpixRecipe(FineTuneSettings(batch_size=16, lr=1e-4, max_epochs=1, patience=None, min_epoch_images=16),
                        image_size=None),
    vqa=replace(PAPER.vqa, batch_size=16, epochs=1, image_size=None, patience=None),
    limit=32, seeds=(0, 1), fractions=(0.1, 1.0), workers=0)

# Ours: every real dataset on a 2-core CPU with unimlip-tiny (its own 96 px), each task learning
# beyond its chance or prior row. Retrieval keeps the paper's 2,000-pair draw. Chest X-ray: 2
# epochs of batches of 32, no early stopping (NIH's fine-tune and probe at 1/10/100 %: about 8 min
# a model and seed on the loaded machine, helper-measured 2026-12-05). MedPix classification:
# batches of 32, up to 4 epochs with patience 2, at least 320 images an epoch (docs/real-data.md).
# VQA: the frozen text tower with cached question states and images transformed once at 64 px
# (evaluation/vqa.py's CPU options), 10 epochs on the
# standard 3,064-question split: a random-init unimlip-tiny reached 50.6 % overall on the 451 test
# questions against 41.9 % for the same model with the image blanked (seed 0, 2026-12-05).
CPU = Preset(
    name="cpu",
    retrieval=RetrievalRecipe(num_samples=2000),
    chest_xray=replace(PAPER.chest_xray, image_size=None, batch_sizes={d: 32 for d in PAPER.chest_xray.batch_sizes},
                       max_epochs=2, patience=None),
    medpix=MedpixRecipe(FineTuneSettings(batch_size=32, lr=1e-4, max_epochs=4, patience=2, min_epoch_images=320),
                        image_size=None),
    vqa=replace(PAPER.vqa, batch_size=32, epochs=10, image_size=64, patience=None, freeze_text=True, augment=False),
    limit=None, seeds=(0, 1, 2), fractions=(0.01, 0.1, 1.0), workers=1)

PRESETS = {preset.name: preset for preset in (PAPER, CI, CPU)}
# The time estimate's prior before any cell of a (model, task kind) has finished: seconds per work
# unit (one 224 px image through a training step of an RN50-sized tower, data loading included).
# Ours and rough; the cells' own recorded times replace it as soon as there are some.
PRIOR_SECONDS_PER_UNIT = {"cpu": 0.25, "cuda": 0.004}


@dataclass
class BenchmarkConfig:
    rows: List[ModelRow]
    data_root: Path
    out: Path
    preset: Preset
    runtime: Runtime = field(default_factory=Runtime)
    datasets: Optional[Sequence[str]] = None  # None: every dataset found
    tasks: Optional[Sequence[str]] = None  # task kinds (retrieval, classification, linear-probe, vqa); None: all
    reference: Optional[str] = None  # a row's label: every other row's paired per-seed differences to it
    pretraining_note: str = ""  # what the rows' weights were pretrained on, for the report's header


def preset_with(preset: Preset, assignments: Sequence[str]) -> Preset:
    """``preset`` with ``FIELD=VALUE`` assignments (``--set``), a dotted path into the preset, e.g.
    ``vqa.epochs=1``, ``medpix.finetune.max_epochs=2``, ``vqa.image_size=none``. A value is read as
    its field's type: a number, ``true``/``false``, ``none`` where the field may be None, a
    comma-separated tuple of numbers. Raises ValueError naming the bad assignment."""
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE")
        preset = _assigned(preset, path.split("."), text, assignment)
    return preset


def _assigned(obj, path: List[str], text: str, assignment: str):
    hints = typing.get_type_hints(type(obj))
    if path[0] not in hints:
        raise ValueError(f"--set {assignment!r}: {type(obj).__name__} has no field {path[0]!r} "
                         f"(fields: {', '.join(hints)})")
    if len(path) > 1:
        value = _assigned(getattr(obj, path[0]), path[1:], text, assignment)
    else:
        value = _parsed(hints[path[0]], text, assignment)
    return replace(obj, **{path[0]: value})


def _parsed(hint, text: str, assignment: str):
    options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    if text.lower() == "none" and type(None) in options:
        return None
    kind = next(option for option in options if option is not type(None))
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--set {assignment!r}: expected true or false")
        return text.lower() == "true"
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--set {assignment!r}: expected {kind.__name__}") from None
    if kind is tuple:
        return tuple(float(item) for item in text.split(","))
    raise ValueError(f"--set {assignment!r}: this field cannot be set from the command line")


# ----------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    row: str  # the row's label
    task: str  # Task.name, e.g. "classification-medpix"
    fraction: Optional[float]  # None for tasks without training fractions
    seed: int

    @property
    def key(self) -> str:
        fraction = "all" if self.fraction is None else f"{100 * self.fraction:g}pct"
        return f"{self.task}__{fraction}__seed{self.seed}"


def row_folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


@dataclass
class TaskState:
    task: Task
    dataset: DatasetStatus
    status: str = "ready"  # or "failed": the dataset could not be read
    message: str = ""
    data: object = None
    describe: Optional[dict] = None
    chance: Optional[dict] = None


class Benchmark(Grid[Cell]):
    """The datasets read, the rows checked and the cells planned for one configuration; its cells
    run on the studies' grid (``studies.grid``)."""
    progress_label = "benchmark cells"

    def __init__(self, config: BenchmarkConfig):
        self.config = config
        self.progress = config.runtime.progress
        self.datasets = find_datasets(config.data_root, config.datasets)
        self.tasks: Dict[str, TaskState] = {}
        for dataset in self.datasets:
            if dataset.status != "found":
                continue
            for task in tasks_for(dataset.name):
                if config.tasks is None or task_kind(task.name) in config.tasks:
                    self.tasks[task.name] = self._load(task, dataset)
        self.row_status = {row.label: {"status": "ok", "message": "", "vqa_unsupported": vqa_unsupported_by_config(row)}
                           for row in config.rows}
        found = {dataset.name: dataset.path for dataset in self.datasets if dataset.status == "found"}
        self.overlap = vqa_rad_overlap_note(found["medpix"], found["vqa-rad"]) if {"medpix", "vqa-rad"} <= set(
            found) else ""

    def _load(self, task: Task, dataset: DatasetStatus) -> TaskState:
        state = TaskState(task, dataset)
        try:
            state.data = task.load(dataset.path, self.config.preset, self.config.runtime)
            state.describe = task.describe(state.data)
            state.chance = task.chance(state.data, self.config.preset)
        except Exception as error:  # noqa: BLE001 - a bad dataset stops only its own cells
            state.status, state.message = "failed", f"{dataset.title} could not be read: {one_line(error)}"
            _logger.error("%s", state.message)
        return state

    def check_rows(self) -> None:
        """Load every row's model once: one that does not load stops its cells with one message."""
        import open_clip

        for row in self.config.rows:
            status = self.row_status[row.label]
            try:
                first = row.for_seed(self.config.preset.seeds[0])
                model = open_clip.create_model(row.model, pretrained=first.weights,
                                               pretrained_text=first.pretrained_text)
            except Exception as error:  # noqa: BLE001 - a failed model stops only its own cells
                status.update(status="failed", message=f"the model could not be loaded: {one_line(error)}")
                _logger.error("%s: %s", row.label, status["message"])
                continue
            status["vqa_unsupported"] = vqa_unsupported_reason(model)
            del model

    # ------------------------------------------------------------------------- planning
    def cells(self) -> List[Cell]:
        """Seed-major, so that a run cut short holds whole seeds."""
        preset = self.config.preset
        return [Cell(row.label, name, fraction, seed)
                for seed in preset.seeds for row in self.config.rows
                for name, state in self.tasks.items() if state.status == "ready"
                for fraction in (preset.fractions if state.task.uses_fractions else (None,))]

    def row(self, label: str) -> ModelRow:
        return next(row for row in self.config.rows if row.label == label)

    def settings(self, cell: Cell) -> dict:
        """Everything that shapes the cell's numbers (not the device, the workers nor the output folder)."""
        state = self.tasks[cell.task]
        return {"row": self.row(cell.row).for_seed(cell.seed).identity(), "task": cell.task,
                "recipe": state.task.recipe(self.config.preset), "data": str(Path(state.dataset.path).resolve()),
                "read": state.describe,  # what was read: a changed reader or release re-runs the cells
                "limit": self.config.preset.limit, "precision": self.config.runtime.precision}

    def cell_path(self, cell: Cell) -> Path:
        return self.config.out / "cells" / row_folder(cell.row) / f"{cell.key}.json"

    def blocked(self, cell: Cell) -> Optional[str]:
        """Why the cell cannot run (its row failed to load, VQA does not apply), or None."""
        status = self.row_status[cell.row]
        if status["status"] != "ok":
            return "stopped"
        if cell.task.startswith("vqa-") and status["vqa_unsupported"]:
            return "n/a"
        return None

    def failure_group(self, cell: Cell) -> tuple:
        return cell.row, cell.task  # a failing cell stops the rest of its (model, task)

    def units(self, cell: Cell) -> float:
        state = self.tasks[cell.task]
        return state.task.units(state.data, self.config.preset, cell.fraction)

    def rate_keys(self, cell: Cell) -> Sequence[tuple]:
        """The row's own finished cells of the same task kind, else those of the same model name
        (same architecture)."""
        kind, model = cell.task.split("-", 1)[0], self.row(cell.row).model
        return [(("row", cell.row, kind), "measured on its finished cells"),
                (("model", model, kind), f"measured on finished cells of {model}")]

    def describe(self, cell: Cell) -> str:
        return f"{cell.row} / {cell.key}"

    def summarize(self, record: dict) -> str:
        return ", ".join(f"{k} {100 * v:.1f}" if v is not None and not math.isnan(v) else f"{k} n/a"
                         for k, v in record["metrics"].items())

    def after_cell(self, run: GridRun) -> None:
        if self.config.runtime.device.startswith("cuda"):
            torch.cuda.empty_cache()
        write_report(self, run)

    # ------------------------------------------------------------------------- running
    def run_cell(self, cell: Cell) -> dict:
        state = self.tasks[cell.task]
        row = self.row(cell.row).for_seed(cell.seed)
        result = state.task.run(row, state.data, self.config.preset, cell.fraction, cell.seed, self.config.runtime)
        return {**asdict(cell), "model": row.model, "pretrained": row.pretrained, "preset": self.config.preset.name,
                "device": self.config.runtime.device, **result}


TASK_KINDS = ("retrieval", "classification", "linear-probe", "vqa")


def task_kind(task_name: str) -> str:
    """``linear-probe-nih`` -> ``linear-probe``; ``vqa-question-only-vqa-rad`` -> ``vqa``."""
    return next(kind for kind in TASK_KINDS if task_name.startswith(kind + "-"))


def vqa_unsupported_by_config(row: ModelRow) -> Optional[str]:
    """From the model config alone (for ``--plan``): a config whose text tower is OpenCLIP's own
    transformer cannot take the paper's VQA recipe. Names without a local config (``hf-hub:``,
    ``local-dir:``) are checked when the model is loaded."""
    import open_clip

    config = open_clip.get_model_config(row.model) if ":" not in row.model else None
    if config is None or config.get("text_cfg", {}).get("hf_model_name"):
        return None
    return ("not applicable: the paper's VQA recipe appends learnable tokens to a Hugging Face text transformer; "
            "this model's text tower is OpenCLIP's own transformer")


def vqa_rad_overlap_note(medpix_root: Path, vqa_rad_root: Path) -> str:
    """What the two releases share, for the report (the images both hold, per MedPix split)."""
    from openclip_unimlip.data.medpix import MEDPIX_SPLITS, read_medpix, vqa_rad_overlap

    overlap = vqa_rad_overlap(medpix_root, vqa_rad_root)
    per_split = {split: sum(image.image_id in overlap for image in read_medpix(medpix_root, split))
                 for split in MEDPIX_SPLITS}
    return (f"{len(overlap)} MedPix 2.0 images are also VQA-RAD images ("
            + ", ".join(f"{n} {split}" for split, n in per_split.items())
            + "): a checkpoint evaluated on VQA-RAD should come from pretraining that leaves them out "
            "(`VQA_RAD_OVERLAP`, `--exclude-vqa-rad`); this report cannot check what a checkpoint was trained on.")


# ----------------------------------------------------------------------------- report
def build_report(bench: Benchmark, records: Sequence[dict], failures: Sequence[dict], counts: dict) -> dict:
    config = bench.config
    report = {
        "settings": {"preset": config.preset.name, "seeds": list(config.preset.seeds),
                     "fractions": list(config.preset.fractions), "data_root": str(config.data_root),
                     "device": config.runtime.device, "precision": config.runtime.precision,
                     "recipes": asdict(config.preset), "interval": tables.INTERVAL_NOTE,
                     "reference": config.reference, "pretraining_note": config.pretraining_note},
        "overlap": bench.overlap,
        "datasets": [{"name": d.name, "title": d.title, "status": d.status, "path": str(d.path) if d.path else None,
                      "message": d.message, "tasks": [t.name for t in tasks_for(d.name)]} for d in bench.datasets],
        "tasks": {name: {"status": s.status, "message": s.message, "describe": s.describe, "chance": s.chance,
                         **({"pairs_per_draw": s.task.pairs_per_draw(s.data, config.preset)}
                            if isinstance(s.task, RetrievalTask) and s.status == "ready" else {})}
                  for name, s in bench.tasks.items()},
        "rows": [{"label": row.label, "model": row.model, "pretrained": row.pretrained,
                  **bench.row_status[row.label]} for row in config.rows],
        "cells": counts,
        "results": tables.summarize(records),
        "failures": list(failures),
        "reported": reported.as_json(),
    }
    report["tables"] = tables.build_tables(report)
    return report


def cell_counts(run: GridRun) -> dict:
    """The report's cell counts: a cell is stopped when its row did not load or an earlier cell of its
    (model, task) failed, not applicable when VQA does not apply to its model."""
    counts = run.counts()
    blocked = counts.pop("blocked")
    counts["stopped"] = blocked.get("stopped", 0) + counts.pop("stopped_after_failure")
    counts["not_applicable"] = blocked.get("n/a", 0)
    return counts


def write_report(bench: Benchmark, run: GridRun, plots: bool = False) -> dict:
    report = build_report(bench, run.done(), run.failures, cell_counts(run))
    out = bench.config.out
    written = tables.write_plots(report, out / "plots") if plots else {}
    save_report(out, "benchmark", report, tables.format_markdown(report, written))
    return report


# ----------------------------------------------------------------------------- the run and the plan
def run_benchmark(config: BenchmarkConfig) -> dict:
    """Run every cell not yet finished, writing each as it finishes; returns the report."""
    config.out.mkdir(parents=True, exist_ok=True)
    bench = Benchmark(config)
    bench.check_rows()
    run = bench.start(bench.cells())
    write_report(bench, run)
    try:
        bench.run(run)
    finally:
        final = write_report(bench, run, plots=True)
    return final


def plan(config: BenchmarkConfig) -> dict:
    """The cells, their state and an estimate of the time left; reads the datasets, runs nothing."""
    bench = Benchmark(config)
    run = bench.start(bench.cells())
    cells, records, todo = run.cells, run.records, run.todo()
    device = "cuda" if config.runtime.device.startswith("cuda") else "cpu"
    seconds, sources = bench.estimate_seconds(run, todo, (PRIOR_SECONDS_PER_UNIT[device],
                                                          f"prior for {device} (rough, ours)"))
    lines = [f"Benchmark plan: preset {config.preset.name}, {len(config.rows)} model(s), seeds "
             f"{', '.join(map(str, config.preset.seeds))}, data root {config.data_root}", "", "Datasets:"]
    for dataset in bench.datasets:
        detail = dataset.message or str(dataset.path)
        lines.append(f"  {dataset.title:<18} {dataset.status:<8} {detail}")
        for task in tasks_for(dataset.name):
            state = bench.tasks.get(task.name)
            if state is not None:
                described = "ready " + json.dumps(state.describe) if state.status == "ready" else state.message
                lines.append(f"    {task.name:<24} {described}")
    lines += ["", f"{'model':<28} {'task':<24} {'fraction':>8} {'seed':>4}  state"]
    for cell in cells:
        state = "done" if records[cell] is not None else bench.blocked(cell) or "to run"
        fraction = "all" if cell.fraction is None else f"{100 * cell.fraction:g} %"
        lines.append(f"{cell.row:<28} {cell.task:<24} {fraction:>8} {cell.seed:>4}  {state}")
    done = sum(record is not None for record in records.values())
    lines += ["", f"{len(cells)} cells: {done} done, {len(todo)} to run, "
                  f"{sum(bench.blocked(c) == 'n/a' for c in cells)} not applicable.",
              f"Estimated time to run: {seconds / 3600:.1f} h ({seconds / 60:.0f} min) on {config.runtime.device}; "
              "fine-tuning counted at its maximum epochs (early stopping only shortens it). Rates: "
              + ("; ".join(f"{row} {kind}: {source}" for (_, row, kind), source in sorted(sources.items()))
                 or "none needed")]
    print("\n".join(lines))
    return {"cells": [{**asdict(c), "state": "done" if records[c] is not None else bench.blocked(c) or "to run"}
                      for c in cells], "seconds": seconds}
