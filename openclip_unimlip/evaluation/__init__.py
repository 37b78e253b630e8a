"""Evaluation of Uni-Mlip (and any OpenCLIP) models: the protocols, the downstream models and the
metrics. The downstream releases and the written evaluation sets themselves are read by
``openclip_unimlip.data``.

Names are imported on first use, so importing this package costs nothing (no torch, no OpenCLIP).

- `retrieval`: R@1/5/10 and ranks both ways on 2000 sampled pairs (Uni-Mlip sec. 4.2).
- `zero_shot`: prompt-template classifiers, accuracy, mean per-class recall, macro AUC.
- `clip_benchmark_export`: the same pairs in clip_benchmark's layout, to cross-check with its CLI.
- `features`: batched, L2-normalised image and text embeddings.
- `finetune`: the fine-tuning kit the downstream tasks share (model loading, transforms, head, loop).
- `classification`: chest X-ray fine-tuning and macro AUC (Table 1).
- `linear_probe`: logistic regression on a frozen image tower's embeddings.
- `medpix_classification`: MedPix 2.0's own labels, fine-tuned and probed (a Table 1 stand-in).
- `vqa`: VQA as classification over the training answers (Table 2).
- `reported`: the numbers Uni-Mlip reports, transcribed with their table and row.
"""
import importlib

_EXPORTS = {
    "encode_images": "features",
    "encode_texts": "features",
    "encode_pairs": "retrieval",
    "evaluate_retrieval": "retrieval",
    "format_retrieval_table": "retrieval",
    "positive_ranks": "retrieval",
    "retrieval_metrics": "retrieval",
    "retrieve_top_k": "retrieval",
    "export_clip_benchmark_retrieval": "clip_benchmark_export",
    "from_clip_benchmark_metrics": "clip_benchmark_export",
    "CHEST_XRAY_CLASSNAMES": "zero_shot",
    "CHEST_XRAY_TEMPLATES": "zero_shot",
    "MEDICAL_IMAGE_TEMPLATES": "zero_shot",
    "TEMPLATE_SETS": "zero_shot",
    "build_classifier": "zero_shot",
    "evaluate_zero_shot": "zero_shot",
    "run_zero_shot": "zero_shot",
    "zero_shot_metrics": "zero_shot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
