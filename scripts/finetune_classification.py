#!/usr/bin/env python
"""Fine-tune a pre-trained image tower on CheXpert, MIMIC-CXR or NIH ChestX-ray14 (Uni-Mlip Table 1).

Writes ``<output-dir>/<name>.json`` (test macro and per-label AUC, training history, run
settings) and ``<output-dir>/<name>_roc.png``. Examples::

    # paper setting, 1% of CheXpert, on a GPU
    python scripts/finetune_classification.py --dataset chexpert --data-root /data/CheXpert-v1.0-small \\
        --model unimlip-rn50 --pretrained logs/run/checkpoints/epoch_100.pt --fraction 0.01 --seed 0 \\
        --device cuda --precision amp --output-dir results/classification

    # CPU smoke run
    python scripts/finetune_classification.py --dataset nih --data-root /data/nih --model unimlip-tiny \\
        --image-size 64 --batch-size 8 --max-epochs 1 --limit 32 --workers 0 --output-dir /tmp/cls
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from openclip_unimlip.evaluation import classification as cls
from openclip_unimlip.evaluation.cxr_datasets import DATASET_LABELS, UNCERTAIN_POLICIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_LABELS))
    parser.add_argument("--data-root", required=True, type=Path, help="folder in the dataset's official layout")
    parser.add_argument("--model", required=True, help="OpenCLIP model name, e.g. unimlip-rn50")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint path (open_clip_train checkpoints work) or OpenCLIP tag; none: random init")
    parser.add_argument("--fraction", type=float, default=1.0, help="labelled training fraction: 0.01, 0.1, 1.0")
    parser.add_argument("--seed", type=int, default=0, help="chooses the training subset, head init, shuffling")
    parser.add_argument("--labels", default=None, help="comma-separated label columns (default: all 14)")
    parser.add_argument("--uncertain", default="u_ones", choices=sorted(UNCERTAIN_POLICIES),
                        help="mapping of CheXpert/MIMIC uncertain (-1) labels")
    parser.add_argument("--all-views", action="store_true", help="keep lateral views (default: frontal only)")
    parser.add_argument("--image-size", type=int, default=cls.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 190 CheXpert, 150 MIMIC/NIH")
    parser.add_argument("--lr", type=float, default=cls.DEFAULT_LR)
    parser.add_argument("--max-epochs", type=int, default=cls.DEFAULT_MAX_EPOCHS)
    parser.add_argument("--patience", type=int, default=cls.DEFAULT_PATIENCE,
                        help="epochs without validation macro-AUC gain before stopping")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N images of each split")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=cls.PRECISIONS)
    parser.add_argument("--output-dir", type=Path, default=Path("results/classification"))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(args.seed)
    labels = args.labels.split(",") if args.labels else None
    try:  # every bad input surfaces here, before any training
        data = cls.load_classification_data(
            args.dataset, args.data_root, args.fraction, args.seed, labels, args.uncertain,
            frontal_only=not args.all_views, limit=args.limit)
        classifier, preprocess_cfg = cls.build_image_classifier(
            args.model, args.pretrained, len(data.label_names), args.image_size)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    logging.info("images: %d train, %d valid, %d test", len(data.train), len(data.valid), len(data.test))
    result = cls.fine_tune_classifier(
        classifier, preprocess_cfg, data,
        batch_size=args.batch_size or cls.DEFAULT_BATCH_SIZES[args.dataset],
        lr=args.lr,
        fit_config=cls.FitConfig(args.max_epochs, args.patience, args.precision),
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )

    model_tag = args.model.replace("/", "-").replace(":", "-")
    name = f"{args.dataset}_{model_tag}_{args.fraction * 100:g}pct_seed{args.seed}"
    summary = {
        "dataset": args.dataset, "model": args.model, "pretrained": args.pretrained, "fraction": args.fraction,
        "seed": args.seed, "uncertain": args.uncertain, "image_size": preprocess_cfg["size"],
        "labels": list(data.label_names),
        "images": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
        **result.summary(),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{name}.json").write_text(json.dumps(summary, indent=2))
    cls.plot_roc_curves(result.test_targets, result.test_scores, data.label_names,
                        args.output_dir / f"{name}_roc.png",
                        title=f"{name}: test macro AUC {result.test.macro_auc:.3f}")
    logging.info("test macro AUC %.4f; results in %s", result.test.macro_auc, args.output_dir / f"{name}.json")
    return summary


if __name__ == "__main__":
    main()
