"""The benchmark's tasks: each reads its dataset once and runs one (model, fraction, seed) cell by
calling the single-task evaluation it wraps, with the seeding of that evaluation's own script, so
that a cell's numbers are the standalone evaluation's:

* retrieval (ROCO, MedPix 2.0 test): ``evaluation.retrieval``'s ``sample_pairs``, ``encode_pairs``,
  ``retrieval_metrics``; the numbers of ``scripts/eval_retrieval.py`` (``evaluate_retrieval``) on the
  same pairs in the same order.
* classification (CheXpert, MIMIC-CXR-JPG, NIH): ``evaluation.classification``'s
  ``load_classification_data``, ``fine_tune_classifier``, and ``evaluation.finetune``'s
  ``build_image_classifier``; the numbers of ``scripts/finetune_classification.py``.
* linear probe (CheXpert, MIMIC-CXR-JPG, NIH): ``evaluation.classification.load_classification_data``,
  ``evaluation.finetune.load_clip_model``, ``evaluation.linear_probe.probe_chest_xray``; the numbers of
  ``probe_chest_xray`` on the same data (no script).
* classification and linear probe (MedPix 2.0 stand-in): ``evaluation.medpix_classification``'s
  ``stratified_subset``, ``fine_tune_softmax``, ``linear_probe`` (on ``evaluation.linear_probe``'s
  ``image_features``); the numbers of those functions called on their own.
* VQA (VQA-RAD, SLAKE), and question-only: ``evaluation.vqa``'s ``load_vqa_data``, ``build_vqa_model``,
  ``fine_tune_vqa``; the numbers of ``scripts/finetune_vqa.py`` (question-only: ``--blank-image``).

Every cell seeds torch with its seed before building the model (as those scripts do), so a model
without pretrained weights draws its random towers from the seed.

Retrieval reads the releases directly: ROCO's test split (radiology subset, ``data.roco``), MedPix
2.0's official test split (``data.medpix``), each image's own caption with whitespace collapsed.
Its pairs are the rows the converters' check keeps (``data.shards.check_rows``): a row without a
caption, without an image file, with an image that does not decode or with an earlier row's image is
left out and counted by reason, exactly as a conversion of the same release lists it in ``bad_rows.csv``.
"""
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from openclip_unimlip.data.medpix import medpix_rows
from openclip_unimlip.data.roco import roco_rows
from openclip_unimlip.data.shards import RowCheck, check_rows
from openclip_unimlip.data.stored import ImageTextPair, StoredImage, sample_pairs
from openclip_unimlip.data.vqa_releases import DEFAULT_VQA_RAD_SPLIT
from openclip_unimlip.evaluation.classification import fine_tune_classifier, load_classification_data
from openclip_unimlip.evaluation.finetune import FitConfig, autocast, build_image_classifier, load_clip_model
from openclip_unimlip.evaluation.linear_probe import DEFAULT_PROBE_C_GRID, image_features, probe_chest_xray
from openclip_unimlip.evaluation.medpix_classification import (
    FineTuneSettings,
    fine_tune_softmax,
    linear_probe,
    load_medpix_classification,
    stratified_subset,
)
from openclip_unimlip.evaluation.retrieval import DIRECTIONS, RECALL_KS, encode_pairs, retrieval_metrics
from openclip_unimlip.evaluation.vqa import build_vqa_model, fine_tune_vqa, load_vqa_data, majority_answer_accuracy

RETRIEVAL_METRICS = tuple(f"{d}_R@{k}" for d in DIRECTIONS for k in RECALL_KS)
VQA_METRICS = ("open", "closed", "overall")
# Work units for the time estimate: one image through a training step (forward and backward); an
# evaluation forward pass counts a third of one (ours, rough).
EVAL_UNIT = 1 / 3


# ----------------------------------------------------------------------------- what a preset sets
@dataclass(frozen=True)
class RetrievalRecipe:
    num_samples: Optional[int]  # pairs drawn per cell; None: all
    batch_size: int = 64


# Per dataset, the protocol that replaces ChestXrayRecipe.protocol: NIH ChestX-ray14 is split by NIH's
# own list files ("all14"'s NIH rule), not pooled and re-split by patient as under CheXclusion; why
# (Uni-Mlip sec. 4.2 and its ref. [15]): data/cxr_protocols.py's docstring.
DATASET_PROTOCOLS = {"nih": "all14"}
CXR_MODES = ("fine-tune", "linear-probe")


@dataclass(frozen=True)
class ChestXrayRecipe:
    image_size: Optional[int]  # None: the model's own
    batch_sizes: Mapping[str, int]  # fine-tuning batches, and the linear probe's feature batches
    lr: float
    max_epochs: int
    patience: Optional[int]
    protocol: str  # every dataset's but those in dataset_protocols
    dataset_protocols: Mapping[str, str] = field(default_factory=lambda: dict(DATASET_PROTOCOLS))
    probe_c_grid: tuple = DEFAULT_PROBE_C_GRID  # the linear probe's C values, one chosen on valid

    def protocol_for(self, dataset: str) -> str:
        return self.dataset_protocols.get(dataset, self.protocol)


@dataclass(frozen=True)
class MedpixRecipe:
    finetune: FineTuneSettings
    image_size: Optional[int]
    label: str = "location_category"  # one of evaluation.medpix_classification.LABELS
    probe_c_grid: tuple = DEFAULT_PROBE_C_GRID  # the linear probe's C values, one chosen on dev
    feature_batch_size: int = 64  # the linear probe's feature pass


@dataclass(frozen=True)
class VqaRecipe:
    batch_size: int
    epochs: int
    encoder_lr: float
    fusion_lr: float
    image_size: Optional[int]
    patience: Optional[int]  # SLAKE's validation; VQA-RAD has none
    map_tokens: bool = True
    language: str = "en"  # SLAKE's questions
    vqa_rad_split: str = DEFAULT_VQA_RAD_SPLIT  # VQA-RAD's training set (data/vqa_releases.py)
    freeze_text: bool = False  # ours, for CPU runs: frozen text tower, cached question states (evaluation/vqa.py)
    augment: bool = True  # the random crop of finetune.image_transform; off: each image transformed once


@dataclass(frozen=True)
class Preset:
    name: str
    retrieval: RetrievalRecipe
    chest_xray: ChestXrayRecipe
    medpix: MedpixRecipe
    vqa: VqaRecipe
    limit: Optional[int]  # the first N images / questions of each split (smoke runs)
    seeds: tuple
    fractions: tuple
    workers: int


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"
    precision: str = "fp32"
    workers: int = 0
    progress: bool = True


SEED_FIELD = "{seed}"
# ``--pretrained random``: every weight drawn from the cell's seed, the text tower's too. Without
# weights a model's Hugging Face text tower starts from its base weights, where pretraining starts.
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class ModelRow:
    """One row of the tables: an OpenCLIP model name and its weights."""
    label: str
    model: str
    pretrained: Optional[str] = None  # a checkpoint path, an OpenCLIP pretrained tag or RANDOM_WEIGHTS

    @property
    def weights(self) -> Optional[str]:
        """What OpenCLIP's factory loads: None for a model without weights or with random ones."""
        return None if self.pretrained == RANDOM_WEIGHTS else self.pretrained

    @property
    def pretrained_text(self) -> bool:
        """Whether a model without weights starts its text tower from the tower's base weights."""
        return self.pretrained != RANDOM_WEIGHTS

    def for_seed(self, seed: int) -> "ModelRow":
        """The row as seed ``seed`` runs it: ``{seed}`` in ``pretrained`` becomes the seed, so that
        downstream seed k starts from pretraining seed k (the intervals then cover both)."""
        if not self.pretrained or SEED_FIELD not in self.pretrained:
            return self
        return replace(self, pretrained=self.pretrained.replace(SEED_FIELD, str(seed)))

    def identity(self) -> dict:
        """What the weights are: a changed checkpoint file makes the row's cells stale."""
        identity = {"model": self.model, "pretrained": self.pretrained}
        if self.pretrained and Path(self.pretrained).is_file():
            stat = Path(self.pretrained).stat()
            identity.update(pretrained=str(Path(self.pretrained).resolve()), bytes=stat.st_size,
                            mtime_ns=stat.st_mtime_ns)
        return identity


def _image_scale(image_size: Optional[int]) -> float:
    return ((image_size or 224) / 224) ** 2


# ----------------------------------------------------------------------------- tasks
class Task:
    """One task on one dataset. ``load`` raises FileNotFoundError/ValueError on a bad dataset."""
    kind: str = ""
    uses_fractions = False
    metrics: tuple = ()

    def __init__(self, dataset: str):
        self.dataset = dataset

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.dataset}"

    def recipe(self, preset: Preset) -> dict:
        raise NotImplementedError

    def load(self, root: Path, preset: Preset, runtime: Runtime):
        raise NotImplementedError

    def describe(self, data) -> dict:
        raise NotImplementedError

    def chance(self, data, preset: Preset) -> Dict[str, Optional[float]]:
        raise NotImplementedError

    def units(self, data, preset: Preset, fraction: Optional[float]) -> float:
        raise NotImplementedError

    def run(self, row: ModelRow, data, preset: Preset, fraction: Optional[float], seed: int,
            runtime: Runtime) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class RetrievalData:
    pairs: List[ImageTextPair]  # the rows the check kept, in file order
    rows: RowCheck  # what the check read and left out, with each rejected row's source and reason


class RetrievalTask(Task):
    """Image-text retrieval on a release's test split: each seed draws its pairs from the rows
    that ``data.shards.check_rows`` keeps, the converters' own check (ROCO's truncated
    ``PMC4885136_gr1.jpg`` is left out as ``unreadable_image``, as a conversion leaves it out).

    Duplicates (ours, the converters' rule): the first row of an image is kept; a later row whose
    image has the same bytes is left out and counted, as ``duplicate_image`` with another caption and
    ``duplicate_pair`` with the same one. With one image in the gallery twice, a ranking metric would
    count one of two identical images as a wrong hit, and a caption's correct image would be ambiguous.
    """
    kind = "retrieval"
    metrics = RETRIEVAL_METRICS

    def recipe(self, preset: Preset) -> dict:
        return {"num_samples": preset.retrieval.num_samples}

    def load(self, root: Path, preset: Preset, runtime: Runtime) -> RetrievalData:
        if self.dataset == "roco":
            rows = roco_rows(root, splits=("test",))
        elif self.dataset == "medpix":
            rows = medpix_rows(root, ("test",))
        else:
            raise ValueError(f"no retrieval reader for {self.dataset!r}")
        # Decoding every image (~6,000 for ROCO) takes seconds: the runtime's workers share it.
        checked = check_rows(rows, runtime.workers, runtime.progress)
        pairs = [ImageTextPair(kept.row.key, StoredImage.from_file(str(kept.row.image)), kept.caption)
                 for kept in checked.kept]
        if not pairs:
            raise ValueError(f"no test image with a caption and a readable image under {root}")
        return RetrievalData(pairs, checked)

    def describe(self, data: RetrievalData) -> dict:
        return {"split": "test", "rows_read": data.rows.rows_read, "pairs": len(data.pairs),
                "left_out": data.rows.left_out}

    def pairs_per_draw(self, data: RetrievalData, preset: Preset) -> int:
        wanted = preset.retrieval.num_samples
        return len(data.pairs) if wanted is None else min(wanted, len(data.pairs))

    def chance(self, data: RetrievalData, preset: Preset) -> Dict[str, Optional[float]]:
        # A uniformly random ranking puts the one positive in the top K with probability K / N.
        n = self.pairs_per_draw(data, preset)
        return {metric: min(int(metric.rsplit("@", 1)[1]), n) / n for metric in RETRIEVAL_METRICS}

    def units(self, data: RetrievalData, preset: Preset, fraction: Optional[float]) -> float:
        return 2 * EVAL_UNIT * self.pairs_per_draw(data, preset)  # images and captions

    def run(self, row: ModelRow, data: RetrievalData, preset: Preset, fraction: Optional[float], seed: int,
            runtime: Runtime) -> dict:
        import open_clip

        torch.manual_seed(seed)
        sampled = sample_pairs(data.pairs, preset.retrieval.num_samples, seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            row.model, pretrained=row.weights, pretrained_text=row.pretrained_text, device=runtime.device)
        tokenizer = open_clip.get_tokenizer(row.model)
        with autocast(torch.device(runtime.device), runtime.precision):
            image_features, text_features = encode_pairs(
                model, preprocess, tokenizer, sampled, batch_size=preset.retrieval.batch_size,
                device=runtime.device, num_workers=runtime.workers)
        metrics = retrieval_metrics(image_features, text_features)
        return {"metrics": {m: metrics[m] for m in RETRIEVAL_METRICS},
                "details": {"num_pairs": len(sampled), "num_available": len(data.pairs), **metrics,
                            "keys": [pair.key for pair in sampled]}}


@dataclass(frozen=True)
class ChestXrayData:
    root: Path
    full: object  # ClassificationData at 100 %, seed 0: read once to check the dataset and size the plan


class ChestXrayTask(Task):
    """Table 1: multi-label chest X-ray classification on 1 / 10 / 100 % of the training split,
    macro AUC over the protocol's labels on the test split.

    ``mode="fine-tune"`` (task ``classification-<dataset>``): the paper's end-to-end fine-tuning
    (sec. 4.2). ``mode="linear-probe"`` (task ``linear-probe-<dataset>``; ours): the frozen image
    tower's embeddings, one logistic regression per label, ``C`` chosen on valid
    (``evaluation.linear_probe``). Both read the same splits under ``ChestXrayRecipe.protocol_for``
    and draw the same training subset for a (fraction, seed); a label with one class in the test
    split is left out of the macro mean (``classification.auc_report``).
    """
    kind = "classification"
    uses_fractions = True
    metrics = ("macro_auc",)

    def __init__(self, dataset: str, mode: str = "fine-tune"):
        super().__init__(dataset)
        if mode not in CXR_MODES:
            raise ValueError(f"unknown chest X-ray mode {mode!r}; expected one of {', '.join(CXR_MODES)}")
        self.mode = mode

    @property
    def name(self) -> str:
        # fine-tuning keeps the name it had before probing existed, and with it its cell files
        return f"{self.kind}-{self.dataset}" if self.mode == "fine-tune" else f"{self.mode}-{self.dataset}"

    def recipe(self, preset: Preset) -> dict:
        recipe = preset.chest_xray
        common = {"mode": self.mode, "image_size": recipe.image_size, "protocol": recipe.protocol_for(self.dataset)}
        if self.mode == "linear-probe":
            return {**common, "c_grid": list(recipe.probe_c_grid)}
        return {**common, "batch_size": recipe.batch_sizes[self.dataset], "lr": recipe.lr,
                "max_epochs": recipe.max_epochs, "patience": recipe.patience}

    def load(self, root: Path, preset: Preset, runtime: Runtime) -> ChestXrayData:
        return ChestXrayData(root, load_classification_data(
            self.dataset, root, 1.0, 0, limit=preset.limit, protocol=preset.chest_xray.protocol_for(self.dataset)))

    def describe(self, data: ChestXrayData) -> dict:
        full = data.full
        return {"mode": self.mode, "protocol": full.settings.name if full.settings else None,
                "split_rule": full.settings.split_rule if full.settings else None,
                "split_note": full.settings.split_note if full.settings else None, "labels": list(full.label_names),
                "train": len(full.train), "valid": len(full.valid), "test": len(full.test)}

    def chance(self, data: ChestXrayData, preset: Preset) -> Dict[str, Optional[float]]:
        return {"macro_auc": 0.5}  # a constant score ranks nothing: every label's ROC AUC is 0.5

    def units(self, data: ChestXrayData, preset: Preset, fraction: Optional[float]) -> float:
        recipe, full = preset.chest_xray, data.full
        train = max(1, round(fraction * len(full.train)))
        if self.mode == "linear-probe":  # one forward pass per image; the regressions are cheap beside it
            return _image_scale(recipe.image_size) * EVAL_UNIT * (train + len(full.valid) + len(full.test))
        return _image_scale(recipe.image_size) * (
            recipe.max_epochs * (train + EVAL_UNIT * len(full.valid)) + EVAL_UNIT * len(full.test))

    def run(self, row: ModelRow, data: ChestXrayData, preset: Preset, fraction: Optional[float], seed: int,
            runtime: Runtime) -> dict:
        recipe = preset.chest_xray
        torch.manual_seed(seed)  # as scripts/finetune_classification.py: before reading and building
        split = load_classification_data(self.dataset, data.root, fraction, seed, limit=preset.limit,
                                         protocol=recipe.protocol_for(self.dataset))
        images = {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}
        if self.mode == "linear-probe":
            # the tower load_clip_model gives is the one build_image_classifier wraps: a model without
            # weights draws the same random tower from the seed in both modes
            model, preprocess_cfg = load_clip_model(row.model, row.weights, recipe.image_size,
                                                    pretrained_text=False)
            result = probe_chest_xray(model.visual, preprocess_cfg, split, recipe.probe_c_grid,
                                      recipe.batch_sizes[self.dataset], runtime.device, runtime.workers,
                                      runtime.precision)
            return {"metrics": {"macro_auc": result["test_macro_auc"]}, "details": {"images": images, **result}}
        classifier, preprocess_cfg = build_image_classifier(row.model, row.weights, len(split.label_names),
                                                            recipe.image_size)
        result = fine_tune_classifier(
            classifier, preprocess_cfg, split, batch_size=recipe.batch_sizes[self.dataset], lr=recipe.lr,
            fit_config=FitConfig(recipe.max_epochs, recipe.patience, runtime.precision), seed=seed,
            workers=runtime.workers, device=runtime.device, progress=runtime.progress)
        return {"metrics": {"macro_auc": result.test.macro_auc}, "details": {"images": images, **result.summary()}}


class MedpixClassificationTask(Task):
    """Table 1's layout on MedPix 2.0's own labels (a stand-in: MedPix is not a paper dataset):
    softmax over the label's classes on 1 / 10 / 100 % of the official train split (stratified by
    class, ``stratified_subset``), model selection on dev, macro one-vs-rest AUC on test
    (``evaluation.medpix_classification``, whose docstring gives the labels and choices).

    ``mode="fine-tune"`` (task ``classification-medpix``): ``fine_tune_softmax`` end to end.
    ``mode="linear-probe"`` (task ``linear-probe-medpix``): the frozen image tower's features of every
    split, once per weights (and per seed for weights the seed draws), and ``linear_probe``'s
    logistic regression, ``C`` chosen on dev. The same seed gives every row the same training subset.
    """
    kind = "classification"
    uses_fractions = True
    metrics = ("macro_auc",)

    def __init__(self, dataset: str, mode: str = "fine-tune"):
        super().__init__(dataset)
        if mode not in CXR_MODES:
            raise ValueError(f"unknown MedPix mode {mode!r}; expected one of {', '.join(CXR_MODES)}")
        self.mode = mode
        self._features: Dict[tuple, dict] = {}  # the linear probe's, per (weights, image size, seed)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.dataset}" if self.mode == "fine-tune" else f"{self.mode}-{self.dataset}"

    def recipe(self, preset: Preset) -> dict:
        recipe = asdict(preset.medpix)
        probe = {key: recipe.pop(key) for key in ("probe_c_grid", "feature_batch_size")}
        if self.mode == "linear-probe":
            return {"mode": self.mode, "image_size": recipe["image_size"], "label": recipe["label"],
                    "c_grid": list(probe["probe_c_grid"])}
        recipe["finetune"].pop("workers")
        recipe["finetune"].pop("precision")  # the runtime's, hashed with every cell
        return recipe

    def load(self, root: Path, preset: Preset, runtime: Runtime):
        return load_medpix_classification(root, preset.medpix.label, preset.limit)

    def describe(self, data) -> dict:
        return {"label": data.label, "classes": list(data.classes), "train": len(data.train), "valid": len(data.dev),
                "test": len(data.test), "left_out": data.train.left_out + data.dev.left_out + data.test.left_out}

    def chance(self, data, preset: Preset) -> Dict[str, Optional[float]]:
        return {"macro_auc": 0.5}

    def units(self, data, preset: Preset, fraction: Optional[float]) -> float:
        scale = _image_scale(preset.medpix.image_size)
        if self.mode == "linear-probe":  # one forward pass per image; the regression is cheap beside it
            return scale * EVAL_UNIT * (len(data.train) + len(data.dev) + len(data.test))
        settings = preset.medpix.finetune
        train = len(stratified_subset(data.train.targets, fraction, 0))
        return scale * (settings.max_epochs * (max(train, settings.min_epoch_images) + EVAL_UNIT * len(data.dev))
                        + EVAL_UNIT * len(data.test))

    def run(self, row: ModelRow, data, preset: Preset, fraction: Optional[float], seed: int,
            runtime: Runtime) -> dict:
        torch.manual_seed(seed)  # the new head's (and a random tower's) weights
        subset = stratified_subset(data.train.targets, fraction, seed)
        if self.mode == "linear-probe":
            features = self._split_features(row, data, preset.medpix, seed, runtime)
            details = linear_probe(features["train"][subset], data.train.targets[subset], features["dev"],
                                   data.dev.targets, features["test"], data.test.targets, len(data.classes),
                                   preset.medpix.probe_c_grid)
            return {"metrics": {"macro_auc": details["test_macro_auc"]}, "details": details}
        recipe = preset.medpix
        settings = replace(recipe.finetune, precision=runtime.precision, workers=runtime.workers)
        classifier, preprocess_cfg = build_image_classifier(row.model, row.weights, len(data.classes),
                                                            recipe.image_size)
        details = fine_tune_softmax(classifier, preprocess_cfg, data.train.select(subset), data.dev, data.test,
                                    settings, seed, runtime.device, runtime.progress)
        return {"metrics": {"macro_auc": details["test_macro_auc"]}, "details": details}

    def _split_features(self, row: ModelRow, data, recipe: "MedpixRecipe", seed: int, runtime: Runtime) -> dict:
        """The frozen tower's features of every split, computed once per weights: per seed for a row
        whose tower the seed draws (no weights, random ones), once for a checkpoint or a tag."""
        key = (row.model, row.pretrained, recipe.image_size, seed if row.weights is None else None)
        if key not in self._features:
            classifier, preprocess_cfg = build_image_classifier(row.model, row.weights, len(data.classes),
                                                                recipe.image_size)
            self._features[key] = {
                split: image_features(classifier.tower, preprocess_cfg, getattr(data, split).images,
                                      recipe.feature_batch_size, runtime.device)
                for split in ("train", "dev", "test")}
        return self._features[key]


class VqaTask(Task):
    """Table 2: VQA fine-tuning, open/closed/overall accuracy on the test split.

    ``question_only`` (task ``vqa-question-only-<dataset>``): the same fine-tune with the image
    tokens left out of the fusion input (``build_vqa_model(blank_image=True)``), to show what the
    image adds beside each model row.
    """
    kind = "vqa"
    metrics = VQA_METRICS

    def __init__(self, dataset: str, question_only: bool = False):
        super().__init__(dataset)
        self.question_only = question_only

    @property
    def name(self) -> str:
        return f"{self.kind}-question-only-{self.dataset}" if self.question_only else f"{self.kind}-{self.dataset}"

    def recipe(self, preset: Preset) -> dict:
        recipe = {**asdict(preset.vqa), "blank_image": self.question_only}
        recipe.pop("language" if self.dataset != "slake" else "vqa_rad_split")
        return recipe

    def load(self, root: Path, preset: Preset, runtime: Runtime):
        return load_vqa_data(self.dataset, root, preset.vqa.language, preset.limit, preset.vqa.vqa_rad_split)

    def describe(self, data) -> dict:
        unseen = [s for s in data.test if data.answers.index(s.answer) < 0]
        return {"train": len(data.train), "valid": len(data.valid) if data.valid is not None else None,
                "test": len(data.test), "test_open": sum(not s.is_closed for s in data.test),
                "test_closed": sum(s.is_closed for s in data.test), "answers": len(data.answers),
                "test_unseen_answers": len(unseen)}

    def chance(self, data, preset: Preset) -> Dict[str, Optional[float]]:
        accuracy = majority_answer_accuracy(data.train, data.test)
        return {metric: getattr(accuracy, metric) for metric in VQA_METRICS}

    def units(self, data, preset: Preset, fraction: Optional[float]) -> float:
        recipe = preset.vqa
        valid = len(data.valid) if data.valid is not None else 0
        # without the image tower a question-only cell still costs about three quarters of a full one: the
        # fusion layers, the answer head and the loader remain (ours: 200 s against 267 s, cpu preset, seed 0,
        # 2026-12-06; rough elsewhere)
        scale = 0.75 if self.question_only else _image_scale(recipe.image_size)
        return scale * (recipe.epochs * (len(data.train) + EVAL_UNIT * valid) + EVAL_UNIT * len(data.test))

    def run(self, row: ModelRow, data, preset: Preset, fraction: Optional[float], seed: int,
            runtime: Runtime) -> dict:
        recipe = preset.vqa
        torch.manual_seed(seed)  # as scripts/finetune_vqa.py: before building
        model, preprocess_cfg, tokenizer = build_vqa_model(
            row.model, row.weights, len(data.answers), recipe.image_size, use_map_tokens=recipe.map_tokens,
            pretrained_text=row.pretrained_text, freeze_text=recipe.freeze_text, blank_image=self.question_only)
        result = fine_tune_vqa(model, preprocess_cfg, tokenizer, data, batch_size=recipe.batch_size,
                               encoder_lr=recipe.encoder_lr, fusion_lr=recipe.fusion_lr,
                               fit_config=FitConfig(recipe.epochs, recipe.patience, runtime.precision), seed=seed,
                               workers=runtime.workers, device=runtime.device, progress=runtime.progress,
                               augment=recipe.augment)
        summary = result.summary()
        return {"metrics": {metric: getattr(result.test, metric) for metric in VQA_METRICS},
                "details": {key: summary[key] for key in ("best_epoch", "epochs_run", "history", "valid", "test",
                                                          "test_unseen_answers")}}


def tasks_for(dataset: str) -> List[Task]:
    """The tasks run on ``dataset``, in table order."""
    if dataset == "roco":
        return [RetrievalTask("roco")]
    if dataset == "medpix":
        return [RetrievalTask("medpix"), *(MedpixClassificationTask("medpix", mode) for mode in CXR_MODES)]
    if dataset in ("chexpert", "mimic", "nih"):
        return [ChestXrayTask(dataset, mode) for mode in CXR_MODES]
    if dataset in ("vqa-rad", "slake"):
        return [VqaTask(dataset), VqaTask(dataset, question_only=True)]
    raise ValueError(f"no task for dataset {dataset!r}")


def vqa_unsupported_reason(model: torch.nn.Module) -> Optional[str]:
    """Why the paper's VQA recipe cannot run on ``model`` (None when it can): it fine-tunes a Hugging
    Face text transformer with learnable tokens, the condition ``evaluation.vqa.build_vqa_model`` checks."""
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "config"):
        return None
    tower = type(text).__name__ if text is not None else "OpenCLIP's own transformer"
    return ("not applicable: the paper's VQA recipe appends learnable tokens to a Hugging Face text transformer; "
            f"this model's text tower is {tower}")
