"""Zero-shot classification with prompt templates, built as clip_benchmark builds it.

A class's weight is the mean of its L2-normalised prompt embeddings, renormalised (OpenCLIP's
`build_zero_shot_classifier`, the same construction as clip_benchmark's `zero_shot_classifier`);
logits are `100 * image_embedding @ weights`, clip_benchmark's scale. Templates use
clip_benchmark's `{c}` placeholder, so a set can go straight into its `--custom_template_file`.
"""
import logging
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from openclip_unimlip.data.stored import LabelledImages, load_labelled_images
from openclip_unimlip.evaluation.features import encode_images, eval_mode

# The five CheXpert competition findings, as used by the CheXpert 5x200 zero-shot benchmark.
CHEST_XRAY_CLASSNAMES = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion")

CHEST_XRAY_TEMPLATES = (
    "a chest x-ray showing {c}.",
    "a chest radiograph with {c}.",
    "a frontal chest x-ray demonstrating {c}.",
    "findings consistent with {c}.",
    "{c} on a chest x-ray.",
    "{c}.",
)

# Generic prompts for class names that are modalities, body parts or findings (e.g. the
# project's embedded dataset); "figure" echoes the figure captions of PMC-OA and ROCO.
MEDICAL_IMAGE_TEMPLATES = (
    "{c}.",
    "an image of {c}.",
    "a medical image of {c}.",
    "a medical image showing {c}.",
    "a figure showing {c}.",
)

TEMPLATE_SETS = {"chest_xray": CHEST_XRAY_TEMPLATES, "medical_image": MEDICAL_IMAGE_TEMPLATES}

LOGIT_SCALE = 100.0


def _fill_template(template: str, classname: str) -> str:
    return template.format(c=classname)


def build_classifier(
        model: torch.nn.Module,
        tokenizer: Callable,
        classnames: Sequence[str],
        templates: Sequence[str],
        device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """`[D, num_classes]` zero-shot weights for `{c}` templates, float32 on the CPU."""
    import open_clip  # here, not at module level: importing it takes seconds and the metrics need none of it

    # OpenCLIP formats plain strings positionally ("{}"); callables let us keep clip_benchmark's "{c}".
    fillers = [partial(_fill_template, template) for template in templates]
    with eval_mode(model):
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), fillers, device=device)
    return weights.float().cpu()


def _macro_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    num_classes = probabilities.shape[1]
    if num_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1])) if len(np.unique(labels)) == 2 else float("nan")
    # One-vs-rest per class, averaged: sklearn's multi_class="ovr", average="macro", which
    # however refuses a test set missing a class; such classes (no positives) are left out.
    one_hot = np.eye(num_classes, dtype=int)[labels]
    scorable = one_hot.any(axis=0) & ~one_hot.all(axis=0)
    if not scorable.any():
        return float("nan")
    return float(roc_auc_score(one_hot[:, scorable], probabilities[:, scorable], average="macro"))


def zero_shot_metrics(logits: Union[torch.Tensor, np.ndarray], labels: Sequence[int]) -> Dict[str, float]:
    """Top-1 accuracy, mean per-class recall and macro one-vs-rest ROC AUC of `[N, C]` logits.

    Mean per-class recall is scikit-learn's balanced accuracy over the classes present, as in
    clip_benchmark. AUC scores the softmax of the logits; for two classes it is the plain
    binary AUC of class 1, otherwise the mean over classes of one-vs-rest AUCs (classes absent
    from `labels` are skipped). It is NaN when no class has both positives and negatives.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = np.asarray(labels, dtype=int)
    predictions = logits.argmax(dim=1).numpy()
    probabilities = torch.softmax(logits, dim=1).numpy()
    return {
        "top1_accuracy": float(np.mean(predictions == labels)),
        "mean_per_class_recall": float(balanced_accuracy_score(labels, predictions)),
        "macro_auc": _macro_auc(probabilities, labels),
    }


def prompt_classnames(label_names: Sequence[str]) -> List[str]:
    """Folder or CSV label names as prompt text: underscores become spaces."""
    return [name.replace("_", " ") for name in label_names]


def run_zero_shot(
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        dataset: LabelledImages,
        templates: Sequence[str] = MEDICAL_IMAGE_TEMPLATES,
        classnames: Optional[Sequence[str]] = None,
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        num_workers: int = 0,
) -> dict:
    """Zero-shot metrics of an in-memory model on `dataset`.

    `classnames` are the prompt names, one per class in `dataset.classnames` order; by default
    `prompt_classnames(dataset.classnames)`.
    """
    classnames = list(classnames) if classnames is not None else prompt_classnames(dataset.classnames)
    if len(classnames) != len(dataset.classnames):
        raise ValueError(f"{len(classnames)} class names given for {len(dataset.classnames)} classes")
    classifier = build_classifier(model, tokenizer, classnames, templates, device=device)
    image_features = encode_images(
        model, preprocess, dataset.images, batch_size=batch_size, device=device, num_workers=num_workers)
    logits = LOGIT_SCALE * image_features @ classifier
    return {
        "classnames": classnames,
        "templates": list(templates),
        "num_images": len(dataset.images),
        "metrics": zero_shot_metrics(logits, dataset.labels),
    }


def evaluate_zero_shot(
        model_name: str,
        pretrained: Optional[str] = None,
        *,
        data: str,
        templates: Sequence[str] = MEDICAL_IMAGE_TEMPLATES,
        classnames: Optional[Sequence[str]] = None,
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        num_workers: int = 0,
) -> dict:
    """Zero-shot classification of an OpenCLIP model on `data`.

    `data` is a folder of class subfolders or a CSV (tab-separated, columns `filepath` and
    `label`); see `datasets.load_labelled_images`. The model is loaded as in
    `retrieval.evaluate_retrieval` (an `open_clip_train` checkpoint path works as `pretrained`).
    Returns a JSON-serialisable dict: the inputs, class names, templates, `num_images`, `metrics`.
    """
    import open_clip

    dataset = load_labelled_images(data)
    if not dataset.images:
        raise ValueError(f"no labelled images found in {data!r}")
    logging.info(f"zero-shot classification of {len(dataset.images)} images in {len(dataset.classnames)} classes")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    results = run_zero_shot(
        model, preprocess, tokenizer, dataset, templates=templates, classnames=classnames,
        batch_size=batch_size, device=device, num_workers=num_workers)
    return {"model": model_name, "pretrained": pretrained, "data": str(data), **results}
