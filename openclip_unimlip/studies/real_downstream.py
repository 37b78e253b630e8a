"""Downstream on real data: Uni-Mlip Table 2 on the VQA-RAD release and a Table 1 stand-in on
MedPix 2.0's own labels, for several named initialisations, several seeds, 95 % intervals.

* **VQA-RAD (Table 2's layout)**: ``evaluation.vqa.fine_tune_vqa`` on the release's 1,797
  training questions (``freeform`` + ``para``: the ``no-frames`` training set), open, closed and
  overall exact-match accuracy on its 451 test questions (``test_freeform`` + ``test_para``). The answer classes are the
  training split's distinct answers; a test answer never seen in training stays in the test set
  and counts as wrong. No validation split: the last epoch is tested (``vqa.py``).
* **MedPix 2.0 classification (Table 1's layout)**: fine-tuning and linear probing on 1 %, 10 %
  and 100 % of the official train split, model selection on dev, macro one-vs-rest AUC on test
  (``evaluation.medpix_classification``, whose docstring gives the labels and choices).

An initialisation is ``random`` (every weight random: the model config only), ``text-base``
(ours: the image tower random, the text tower at its base Hugging Face weights, where the
pretraining starts) or ``NAME=CHECKPOINT`` (an ``open_clip_train`` checkpoint or a plain state
dict of the same model, e.g. the ablation's ``stage1.pt``); ``{seed}`` in ``CHECKPOINT`` (e.g.
the MedPix ablation's ``checkpoints/all_five-seed{seed}.pt``) gives downstream seed k the weights
of pretraining seed k, so that the intervals also cover the pretraining's seeds. The same seed
gives every initialisation the same training subset, data order and new-layer initialisation, so
differences to a ``--reference`` initialisation are paired by seed.

Every (task, mode, fraction, initialisation, seed) is one cell, written to ``<out>/cells/`` as
soon as it finishes, with a hash of everything that shaped it: a re-run skips finished cells
and re-runs stale ones. ``<out>/downstream.json`` and ``<out>/downstream.md`` are rewritten
after every cell. Intervals: a 95 % Student t-interval over seeds (ours, ``studies/statistics.py``).
"""
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from openclip_unimlip.evaluation.finetune import FitConfig, build_image_classifier
from openclip_unimlip.evaluation.linear_probe import DEFAULT_PROBE_C_GRID, image_features
from openclip_unimlip.evaluation.medpix_classification import (
    LABELS,
    FineTuneSettings,
    MedpixClassificationData,
    fine_tune_softmax,
    linear_probe,
    load_medpix_classification,
    stratified_subset,
)
from openclip_unimlip.evaluation.vqa import (
    VqaData,
    build_vqa_model,
    fine_tune_vqa,
    load_vqa_data,
    majority_answer_accuracy,
)
from openclip_unimlip.studies.statistics import paired_t_interval, t_interval

TASKS = ("vqa-rad", "medpix")
MODES = ("finetune", "linear-probe")
MODE_NAMES = {"finetune": "fine-tune", "linear-probe": "linear probe"}
FRACTIONS = (0.01, 0.1, 1.0)
VQA_METRICS = ("open", "closed", "overall")
RESERVED_INITS = {
    "random": "every weight random (the model config only)",
    "text-base": "image tower random, text tower at its base Hugging Face weights (ours: where pretraining starts)",
}
_INIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------- initialisations
SEED_FIELD = "{seed}"


@dataclass(frozen=True)
class Init:
    name: str
    checkpoint: Optional[Path] = None  # None: random weights (and the text base with text_base); may hold {seed}
    text_base: bool = False

    @property
    def per_seed(self) -> bool:
        return self.checkpoint is not None and SEED_FIELD in str(self.checkpoint)

    def checkpoint_for(self, seed: int) -> Optional[Path]:
        if self.checkpoint is None:
            return None
        return Path(str(self.checkpoint).replace(SEED_FIELD, str(seed)))

    def describe(self) -> str:
        return str(self.checkpoint) if self.checkpoint else RESERVED_INITS[self.name]

    def identity(self, seed: int) -> dict:
        """What seed ``seed``'s weights are: a changed checkpoint file makes its cells stale."""
        if self.checkpoint is None:
            return {"random": True, "text_base": self.text_base}
        checkpoint = self.checkpoint_for(seed)
        stat = checkpoint.stat()
        return {"checkpoint": str(checkpoint.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def parse_init(spec: str, seeds: Sequence[int] = (0,)) -> Init:
    """``random``, ``text-base`` or ``NAME=CHECKPOINT``, whose file (for every seed of ``seeds``
    when the path holds ``{seed}``) must exist."""
    if spec in RESERVED_INITS:
        return Init(spec, text_base=spec == "text-base")
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"unknown initialisation {spec!r}: expected 'random', 'text-base' or NAME=CHECKPOINT")
    if not _INIT_NAME.match(name) or name in RESERVED_INITS:
        raise ValueError(f"initialisation name {name!r} must be letters, digits, '.', '_' or '-' and not one of "
                         f"{', '.join(RESERVED_INITS)}")
    init = Init(name, Path(path).expanduser())
    for seed in seeds if init.per_seed else seeds[:1]:
        if not init.checkpoint_for(seed).is_file():
            raise FileNotFoundError(f"checkpoint of initialisation {name!r} not found: {init.checkpoint_for(seed)}")
    return init


# ----------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class VqaSettings:
    batch_size: int
    epochs: int
    encoder_lr: float = 5e-5  # Uni-Mlip sec. 4.2
    fusion_lr: float = 5e-4  # Uni-Mlip sec. 4.2
    image_size: Optional[int] = None  # None: the model's own
    map_tokens: bool = True
    workers: int = 0


@dataclass(frozen=True)
class ClassificationSettings:
    finetune: FineTuneSettings
    image_size: Optional[int] = None
    probe_c_grid: tuple = DEFAULT_PROBE_C_GRID
    feature_batch_size: int = 64


# Ours unless marked: "cpu" sized for unimlip-tiny (96 px) on 2 cores (docs/real-data.md gives the
# measured step times), "full" for a GPU run at the paper's VQA schedule.
PRESETS: Dict[str, tuple] = {
    "cpu": (VqaSettings(batch_size=32, epochs=1, workers=1),
            ClassificationSettings(FineTuneSettings(batch_size=32, lr=1e-4, max_epochs=4, patience=2,
                                                    min_epoch_images=320, workers=1))),
    "full": (VqaSettings(batch_size=32, epochs=50, workers=4),  # vqa.py's defaults (50 epochs, batches of 32)
             ClassificationSettings(FineTuneSettings(batch_size=150, lr=1e-4, max_epochs=64, patience=10,
                                                     min_epoch_images=1500, workers=4))),
}


@dataclass
class DownstreamConfig:
    model: str
    inits: Sequence[Init]
    out: Path
    vqa_rad_root: Optional[Path] = None
    medpix_root: Optional[Path] = None
    tasks: Sequence[str] = TASKS
    labels: Sequence[str] = ("location_category",)
    modes: Sequence[str] = MODES
    fractions: Sequence[float] = FRACTIONS
    seeds: Sequence[int] = (0, 1, 2)
    preset: str = "cpu"
    vqa: VqaSettings = field(default_factory=lambda: PRESETS["cpu"][0])
    classification: ClassificationSettings = field(default_factory=lambda: PRESETS["cpu"][1])
    limit: Optional[int] = None
    device: str = "cpu"
    precision: str = "fp32"
    reference: Optional[str] = None
    pretraining_note: str = ""
    progress: bool = True


# ----------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    task: str  # "vqa-rad" or "medpix-<label>"
    mode: str
    fraction: float
    init: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}__{self.mode}__{fraction_name(self.fraction)}__{self.init}__seed{self.seed}"


def fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}pct"


def plan_cells(config: DownstreamConfig) -> List[Cell]:
    """Seed-major, so that a run cut short holds complete seeds; within a seed VQA first, then per
    label the linear probes (cheap) before the fine-tunes."""
    cells = []
    for seed in config.seeds:
        for init in config.inits:
            if "vqa-rad" in config.tasks:
                cells.append(Cell("vqa-rad", "finetune", 1.0, init.name, seed))
        for label in config.labels if "medpix" in config.tasks else ():
            for mode in sorted(config.modes, key=MODES[::-1].index):  # linear probe first
                cells += [Cell(f"medpix-{label}", mode, fraction, init.name, seed)
                          for fraction in config.fractions for init in config.inits]
    return cells


def cell_origin(config: DownstreamConfig, cell: Cell) -> str:
    """A hash of everything that shapes the cell's result (not the device, the data-loader workers
    nor the output folder)."""
    init = next(i for i in config.inits if i.name == cell.init)
    classification = config.classification
    if cell.task == "vqa-rad":
        task = asdict(config.vqa)
    elif cell.mode == "finetune":
        task = {"image_size": classification.image_size, **asdict(classification.finetune)}
    else:
        task = {"image_size": classification.image_size, "probe_c_grid": list(classification.probe_c_grid)}
    task.pop("workers", None)
    settings = {"model": config.model, "init": init.identity(cell.seed), "limit": config.limit,
                "precision": config.precision, "task": task}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cell_path(config: DownstreamConfig, cell: Cell) -> Path:
    return Path(config.out) / "cells" / f"{cell.key}.json"


def load_cell(config: DownstreamConfig, cell: Cell) -> Optional[dict]:
    """The cell's finished record, or None if it has none or a stale one (other settings)."""
    path = cell_path(config, cell)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("origin") == cell_origin(config, cell) and "metrics" in record else None


# ----------------------------------------------------------------------------- running cells
class Runner:
    """Holds the data read once and the linear probes' features, and runs one cell at a time."""

    def __init__(self, config: DownstreamConfig, vqa_data: Optional[VqaData],
                 medpix: Dict[str, MedpixClassificationData]):
        self.config = config
        self.vqa_data = vqa_data
        self.medpix = medpix
        self.inits = {init.name: init for init in config.inits}
        self._features: Dict[tuple, dict] = {}

    def run(self, cell: Cell) -> dict:
        init = self.inits[cell.init]
        torch.manual_seed(cell.seed)  # the new layers' (and a random init's) weights
        start = time.perf_counter()
        if cell.task == "vqa-rad":
            result = self._vqa(init, cell.seed)
        elif cell.mode == "finetune":
            result = self._finetune(init, cell)
        else:
            result = self._linear_probe(init, cell)
        return {**asdict(cell), "origin": cell_origin(self.config, cell), "seconds": time.perf_counter() - start,
                **result}

    @staticmethod
    def _pretrained(init: Init, seed: int) -> Optional[str]:
        checkpoint = init.checkpoint_for(seed)
        return str(checkpoint) if checkpoint else None

    def _vqa(self, init: Init, seed: int) -> dict:
        settings, config = self.config.vqa, self.config
        model, preprocess_cfg, tokenizer = build_vqa_model(
            config.model, self._pretrained(init, seed), len(self.vqa_data.answers), settings.image_size,
            use_map_tokens=settings.map_tokens, pretrained_text=init.text_base)
        result = fine_tune_vqa(model, preprocess_cfg, tokenizer, self.vqa_data, batch_size=settings.batch_size,
                               encoder_lr=settings.encoder_lr, fusion_lr=settings.fusion_lr,
                               fit_config=FitConfig(settings.epochs, None, config.precision), seed=seed,
                               workers=settings.workers, device=config.device, progress=config.progress)
        summary = result.summary()
        return {"metrics": {name: getattr(result.test, name) for name in VQA_METRICS},
                "details": {key: summary[key] for key in ("epochs_run", "history", "test", "test_unseen_answers")}}

    def _finetune(self, init: Init, cell: Cell) -> dict:
        data = self.medpix[cell.task.removeprefix("medpix-")]
        settings = replace(self.config.classification.finetune, precision=self.config.precision)
        classifier, preprocess_cfg = build_image_classifier(
            self.config.model, self._pretrained(init, cell.seed), len(data.classes),
            self.config.classification.image_size)
        train = data.train.select(stratified_subset(data.train.targets, cell.fraction, cell.seed))
        details = fine_tune_softmax(classifier, preprocess_cfg, train, data.dev, data.test, settings, cell.seed,
                                    self.config.device, self.config.progress)
        return {"metrics": {"macro_auc": details["test_macro_auc"]}, "details": details}

    def _linear_probe(self, init: Init, cell: Cell) -> dict:
        label = cell.task.removeprefix("medpix-")
        data = self.medpix[label]
        features = self._split_features(init, label, cell.seed)
        subset = stratified_subset(data.train.targets, cell.fraction, cell.seed)
        details = linear_probe(features["train"][subset], data.train.targets[subset], features["dev"],
                               data.dev.targets, features["test"], data.test.targets, len(data.classes),
                               self.config.classification.probe_c_grid)
        return {"metrics": {"macro_auc": details["test_macro_auc"]}, "details": details}

    def _split_features(self, init: Init, label: str, seed: int) -> dict:
        """The frozen tower's features of every split, once per initialisation (and per seed for a
        random one, whose weights the seed draws, or one with a checkpoint per seed)."""
        key = (init.name, label, seed if init.checkpoint is None or init.per_seed else None)
        if key not in self._features:
            data, settings = self.medpix[label], self.config.classification
            classifier, preprocess_cfg = build_image_classifier(
                self.config.model, self._pretrained(init, seed), len(data.classes), settings.image_size)
            self._features[key] = {
                split: image_features(classifier.tower, preprocess_cfg, getattr(data, split).images,
                                      settings.feature_batch_size, self.config.device)
                for split in ("train", "dev", "test")}
        return self._features[key]


# ----------------------------------------------------------------------------- summary
def summarize(config: DownstreamConfig, records: Sequence[dict]) -> dict:
    """Per (task, mode, fraction, init): each metric's per-seed values and t-interval; and per
    non-reference init its paired difference to ``config.reference``."""
    groups: Dict[tuple, Dict[int, dict]] = {}
    for record in records:
        key = (record["task"], record["mode"], record["fraction"], record["init"])
        groups.setdefault(key, {})[record["seed"]] = record["metrics"]
    summary = []
    for (task, mode, fraction, init), by_seed in groups.items():
        seeds = sorted(by_seed)
        entry = {"task": task, "mode": mode, "fraction": fraction, "init": init, "seeds": seeds, "metrics": {}}
        for metric in by_seed[seeds[0]]:
            values = [by_seed[s][metric] for s in seeds]
            defined = [v for v in values if v is not None and not math.isnan(v)]
            entry["metrics"][metric] = {"values": values, **(t_interval(defined) if defined else {"n": 0})}
            reference = groups.get((task, mode, fraction, config.reference))
            if reference is not None and init != config.reference:
                common = [s for s in seeds if s in reference and _defined(by_seed[s][metric])
                          and _defined(reference[s][metric])]
                if common:
                    entry["metrics"][metric]["difference_to_reference"] = {
                        "seeds": common, **paired_t_interval([by_seed[s][metric] for s in common],
                                                             [reference[s][metric] for s in common])}
        summary.append(entry)
    return {"groups": summary}


def _defined(value: Optional[float]) -> bool:
    return value is not None and not math.isnan(value)


def _percent(interval: dict) -> str:
    """``61.2 [58.0, 64.4]`` (in %), the mean alone with one seed, ``n/a`` with none."""
    if not interval.get("n"):
        return "n/a"
    if interval["low"] is None:
        return f"{100 * interval['mean']:.1f}"
    return f"{100 * interval['mean']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def _signed(interval: dict) -> str:
    if interval["low"] is None:
        return f"{100 * interval['mean']:+.1f}"
    text = f"{100 * interval['mean']:+.1f} [{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]"
    return f"**{text}**" if interval["excludes_zero"] else text


def _find(summary: dict, task: str, mode: str, fraction: float, init: str) -> Optional[dict]:
    return next((g for g in summary["groups"] if (g["task"], g["mode"], g["fraction"], g["init"])
                 == (task, mode, fraction, init)), None)


def format_markdown(config: DownstreamConfig, report: dict) -> str:
    summary, datasets = report["summary"], report["datasets"]
    seeds = ", ".join(map(str, config.seeds))
    lines = [
        "# Downstream on real data", "",
        f"Model `{config.model}`, preset `{config.preset}`, seeds {seeds}; every cell: mean over seeds "
        "[95 % Student t-interval over seeds, ours], in %. The paper's numbers are on other datasets "
        "(MIMIC-CXR, CheXpert, NIH; VQA-RAD's 3,515-question copy) and are not comparable.", "",
        "Initialisations:", "",
        *[f"- `{init.name}`: {init.describe()}" for init in config.inits], "",
        f"Pretraining: {config.pretraining_note or 'not stated (--pretraining-note)'}", "",
    ]
    if report.get("overlap"):
        lines += [report["overlap"], ""]
    if "vqa-rad" in config.tasks:
        vqa = datasets["vqa-rad"]
        chance = report["chance"]["vqa-rad"]
        lines += [
            f"## Table 2 layout: VQA-RAD ({vqa['test_questions']} official test questions: "
            f"{vqa['test_open']} open, {vqa['test_closed']} closed)", "",
            f"Fine-tuned on {vqa['train_questions']} training questions, {vqa['answers']} answer classes (the training "
            f"split's answers). {vqa['test_unseen']} test answers never occur in training "
            f"({vqa['test_unseen_open']} open, {vqa['test_unseen_closed']} closed): they count as wrong.", "",
            "| initialisation | Open | Closed | Overall | seeds |", "|---|---|---|---|---|",
        ]
        for init in config.inits:
            group = _find(summary, "vqa-rad", "finetune", 1.0, init.name)
            cells = [_percent(group["metrics"][m]) if group else "pending" for m in VQA_METRICS]
            lines.append(f"| {init.name} | {' | '.join(cells)} | {len(group['seeds']) if group else 0} |")
        lines.append("| chance: the training split's most common answer per type | "
                     + " | ".join(f"{100 * chance[m]:.1f}" if chance[m] is not None else "n/a" for m in VQA_METRICS)
                     + " | - |")
        lines += [""] + _difference_lines(config, summary, "vqa-rad", [("finetune", 1.0)], VQA_METRICS)
    for label in config.labels if "medpix" in config.tasks else ():
        task, data = f"medpix-{label}", datasets[f"medpix-{label}"]
        lines += [
            f"## Table 1 layout: MedPix 2.0 `{label}`, macro one-vs-rest AUC on test", "",
            f"{LABELS[label]}. Classes: {', '.join(data['classes'])}. Images: train {data['train']}, "
            f"dev {data['dev']}, test {data['test']} ({data['left_out']} left out without a class). Training "
            f"images per fraction (stratified, seed {config.seeds[0]}): "
            + ", ".join(f"{fraction_name(f)} {n}" for f, n in data["subset_sizes"].items()) + ".", "",
            "| initialisation | mode | " + " | ".join(f"{100 * f:g} %" for f in config.fractions) + " |",
            "|---|---|" + "---|" * len(config.fractions),
        ]
        for init in config.inits:
            for mode in config.modes:
                cells = []
                for fraction in config.fractions:
                    group = _find(summary, task, mode, fraction, init.name)
                    cells.append(_percent(group["metrics"]["macro_auc"]) if group else "pending")
                lines.append(f"| {init.name} | {MODE_NAMES[mode]} | {' | '.join(cells)} |")
        lines.append("| chance | | " + " | ".join("50.0" for _ in config.fractions) + " |")
        lines += [""] + _difference_lines(config, summary, task, [(m, f) for m in config.modes
                                                                  for f in config.fractions], ("macro_auc",))
    timing = report["timing"]
    lines += ["## Time", "", f"{timing['cells_done']} of {timing['cells_planned']} cells done; "
              f"{timing['seconds_done'] / 60:.1f} min of recorded cell time. Mean seconds per cell: "
              + (", ".join(f"{k} {v:.0f}" for k, v in timing["mean_seconds"].items()) or "none yet") + ".", ""]
    return "\n".join(lines)


def _difference_lines(config: DownstreamConfig, summary: dict, task: str, columns: Sequence[tuple],
                      metrics: Sequence[str]) -> List[str]:
    if config.reference is None:
        return []
    header = [f"{MODE_NAMES[m]} {100 * f:g} %" if task != "vqa-rad" else None for m, f in columns]
    names = [f"{metric} ({h})" if h else metric for h in header for metric in metrics]
    lines = [f"Difference to `{config.reference}`, paired by seed (points; **bold**: the interval excludes 0):", "",
             "| initialisation | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for init in config.inits:
        if init.name == config.reference:
            continue
        cells = []
        for mode, fraction in columns:
            group = _find(summary, task, mode, fraction, init.name)
            for metric in metrics:
                difference = group["metrics"][metric].get("difference_to_reference") if group else None
                cells.append(_signed(difference) if difference else "pending")
        lines.append(f"| {init.name} | {' | '.join(cells)} |")
    return lines + [""]


# ----------------------------------------------------------------------------- the run
def describe_datasets(config: DownstreamConfig, vqa_data: Optional[VqaData],
                      medpix: Dict[str, MedpixClassificationData]) -> dict:
    datasets = {}
    if vqa_data is not None:
        unseen = [s for s in vqa_data.test if vqa_data.answers.index(s.answer) < 0]
        datasets["vqa-rad"] = {
            "train_questions": len(vqa_data.train), "test_questions": len(vqa_data.test),
            "test_open": sum(not s.is_closed for s in vqa_data.test),
            "test_closed": sum(s.is_closed for s in vqa_data.test),
            "answers": len(vqa_data.answers), "test_unseen": len(unseen),
            "test_unseen_open": sum(not s.is_closed for s in unseen),
            "test_unseen_closed": sum(s.is_closed for s in unseen)}
    for label, data in medpix.items():
        datasets[f"medpix-{label}"] = {
            "classes": list(data.classes), "train": len(data.train), "dev": len(data.dev), "test": len(data.test),
            "left_out": data.train.left_out + data.dev.left_out + data.test.left_out,
            "test_class_counts": data.test.class_counts(),
            "subset_sizes": {f: len(stratified_subset(data.train.targets, f, config.seeds[0]))
                             for f in config.fractions}}
    return datasets


def overlap_note(config: DownstreamConfig) -> str:
    """What the two releases share, for the report's header (only when both are given)."""
    if config.vqa_rad_root is None or config.medpix_root is None:
        return ""
    from openclip_unimlip.data.medpix import MEDPIX_SPLITS, read_medpix, vqa_rad_overlap

    overlap = vqa_rad_overlap(config.medpix_root, config.vqa_rad_root)
    per_split = {split: sum(image.image_id in overlap for image in read_medpix(config.medpix_root, split))
                 for split in MEDPIX_SPLITS}
    return (f"{len(overlap)} MedPix 2.0 images are also VQA-RAD images ("
            + ", ".join(f"{n} {split}" for split, n in per_split.items())
            + "): a checkpoint evaluated on VQA-RAD should come from pretraining that leaves them out "
            "(`VQA_RAD_OVERLAP`, `--exclude-vqa-rad`); this report cannot check what a checkpoint was trained on.")


def write_outputs(config: DownstreamConfig, cells: Sequence[Cell], records: Sequence[dict], datasets: dict,
                  chance: dict, overlap: str) -> dict:
    seconds_by_task: Dict[str, List[float]] = {}
    for record in records:
        seconds_by_task.setdefault(f"{record['task']} {record['mode']}", []).append(record["seconds"])
    report = {
        "settings": {"model": config.model, "preset": config.preset, "seeds": list(config.seeds),
                     "inits": {init.name: init.describe() for init in config.inits},
                     "tasks": list(config.tasks), "labels": list(config.labels), "modes": list(config.modes),
                     "fractions": list(config.fractions), "vqa": asdict(config.vqa),
                     "classification": asdict(config.classification), "limit": config.limit,
                     "device": config.device, "precision": config.precision, "reference": config.reference,
                     "interval": "95 % Student t-interval over seeds (ours)"},
        "pretraining_note": config.pretraining_note, "overlap": overlap,
        "datasets": datasets, "chance": chance,
        "timing": {"cells_planned": len(cells), "cells_done": len(records),
                   "seconds_done": sum(r["seconds"] for r in records),
                   "mean_seconds": {k: float(np.mean(v)) for k, v in seconds_by_task.items()}},
        "summary": summarize(config, records),
        "cells": list(records),
    }
    out = Path(config.out)
    (out / "downstream.json").write_text(json.dumps(report, indent=2))
    (out / "downstream.md").write_text(format_markdown(config, report))
    return report


def load_data(config: DownstreamConfig) -> tuple[Optional[VqaData], Dict[str, MedpixClassificationData]]:
    """Every dataset the run needs, read and checked (FileNotFoundError/ValueError before any training)."""
    vqa_data = None
    if "vqa-rad" in config.tasks:
        vqa_data = load_vqa_data("vqa-rad", config.vqa_rad_root, limit=config.limit, vqa_rad_split="no-frames")
    medpix = {}
    if "medpix" in config.tasks:
        medpix = {label: load_medpix_classification(config.medpix_root, label, config.limit) for label in config.labels}
    return vqa_data, medpix


def run(config: DownstreamConfig, data: Optional[tuple] = None) -> dict:
    """Run every cell not yet finished, rewriting the outputs after each; returns the report.
    ``data`` is :func:`load_data`'s result when the caller has read it already."""
    vqa_data, medpix = data if data is not None else load_data(config)
    Path(config.out, "cells").mkdir(parents=True, exist_ok=True)
    datasets = describe_datasets(config, vqa_data, medpix)
    chance = {}
    if vqa_data is not None:
        majority = majority_answer_accuracy(vqa_data.train, vqa_data.test)
        chance["vqa-rad"] = {m: getattr(majority, m) for m in VQA_METRICS}
    chance.update({f"medpix-{label}": {"macro_auc": 0.5} for label in medpix})
    overlap = overlap_note(config)
    cells = plan_cells(config)
    records = {cell: load_cell(config, cell) for cell in cells}
    todo = [cell for cell, record in records.items() if record is None]
    runner = Runner(config, vqa_data, medpix)

    def done() -> List[dict]:
        return [record for record in records.values() if record is not None]

    write_outputs(config, cells, done(), datasets, chance, overlap)
    with logging_redirect_tqdm(), tqdm(total=len(cells), initial=len(cells) - len(todo), desc="downstream cells",
                                       unit="cell", dynamic_ncols=True, disable=not config.progress) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.key)
            record = runner.run(cell)
            cell_path(config, cell).write_text(json.dumps(record, indent=2))
            records[cell] = record
            logging.info("%s: %s (%.0f s)", cell.key, ", ".join(
                f"{k} {100 * v:.1f}" if v is not None else f"{k} n/a" for k, v in record["metrics"].items()),
                record["seconds"])
            write_outputs(config, cells, done(), datasets, chance, overlap)
            bar.update(1)
    return write_outputs(config, cells, done(), datasets, chance, overlap)
