"""Fine-tune a pre-trained image tower on CheXpert, MIMIC-CXR or NIH ChestX-ray14 (Uni-Mlip Table 1).

Writes ``<output-dir>/<name>.json`` (test macro and per-label AUC, training history, run
settings, the protocol the numbers were produced under) and ``<output-dir>/<name>_roc.png``, where
``<name>`` is ``<dataset>_<protocol>_<model>_<pct>pct_seed<seed>``. ``--protocol`` chooses the label
set, per-label uncertainty mapping, views and split (default ``chexclusion``, the protocol of the
rows Uni-Mlip's Table 1 compares with; ``mgca``; ``all14``, the earlier default); ``--labels``,
``--uncertain`` and ``--all-views``/``--frontal-only`` replace its choices. Examples::

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

from openclip_unimlip.data.chest_xray import DATASET_LABELS, DEFAULT_PROTOCOL, PROTOCOLS, UNCERTAIN_POLICIES
from openclip_unimlip.evaluation import classification as cls
from openclip_unimlip.evaluation import finetune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_LABELS))
    parser.add_argument("--data-root", required=True, type=Path, help="folder in the dataset's official layout")
    parser.add_argument("--model", required=True, help="OpenCLIP model name, e.g. unimlip-rn50")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint path (open_clip_train checkpoints work) or OpenCLIP tag; none: random init")
    parser.add_argument("--fraction", type=float, default=1.0, help="labelled training fraction: 0.01, 0.1, 1.0")
    parser.add_argument("--seed", type=int, default=0, help="chooses the training subset, head init, shuffling")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=sorted(PROTOCOLS),
                        help="label set, uncertainty mapping, views and split: "
                             + "; ".join(f"{name}: {protocol.summary}" for name, protocol in PROTOCOLS.items()))
    parser.add_argument("--labels", default=None, help="comma-separated label columns (default: the protocol's)")
    parser.add_argument("--uncertain", default=None, choices=sorted(UNCERTAIN_POLICIES),
                        help="one mapping of CheXpert/MIMIC uncertain (-1) labels for every label "
                             "(default: the protocol's, per label)")
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--all-views", dest="frontal_only", action="store_false", default=None,
                       help="keep lateral views (default: the protocol's rule)")
    views.add_argument("--frontal-only", dest="frontal_only", action="store_true", default=None,
                       help="keep frontal views only (default: the protocol's rule)")
    parser.add_argument("--image-size", type=int, default=finetune.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 190 CheXpert, 150 MIMIC/NIH")
    parser.add_argument("--lr", type=float, default=cls.DEFAULT_LR)
    parser.add_argument("--max-epochs", type=int, default=finetune.DEFAULT_MAX_EPOCHS)
    parser.add_argument("--patience", type=int, default=finetune.DEFAULT_PATIENCE,
                        help="epochs without validation macro-AUC gain before stopping")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N images of each split")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=finetune.PRECISIONS)
    parser.add_argument("--output-dir", type=Path, default=Path("results/classification"))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:  # a slice by 0 or less would keep none, or all but the last
        parser.error(f"--limit must be at least 1 (images per split), got {args.limit}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(args.seed)
    labels = args.labels.split(",") if args.labels else None
    try:  # every bad input surfaces here, before any training
        data = cls.load_classification_data(
            args.dataset, args.data_root, args.fraction, args.seed, labels, args.uncertain,
            frontal_only=args.frontal_only, limit=args.limit, protocol=args.protocol)
        classifier, preprocess_cfg = finetune.build_image_classifier(
            args.model, args.pretrained, len(data.label_names), args.image_size)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    logging.info("protocol %s; images: %d train, %d valid, %d test", data.settings.name, len(data.train),
                 len(data.valid), len(data.test))
    result = cls.fine_tune_classifier(
        classifier, preprocess_cfg, data,
        batch_size=args.batch_size or cls.DEFAULT_BATCH_SIZES[args.dataset],
        lr=args.lr,
        fit_config=finetune.FitConfig(args.max_epochs, args.patience, args.precision),
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )

    model_tag = args.model.replace("/", "-").replace(":", "-")
    name = f"{args.dataset}_{data.settings.name}_{model_tag}_{args.fraction * 100:g}pct_seed{args.seed}"
    summary = {
        "dataset": args.dataset, "model": args.model, "pretrained": args.pretrained, "fraction": args.fraction,
        "seed": args.seed, "image_size": preprocess_cfg["size"],
        "labels": list(data.label_names),
        "images": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
        **result.summary(),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{name}.json").write_text(json.dumps(summary, indent=2))
    cls.plot_roc_curves(result.test_targets, result.test_scores, data.label_names,
                        args.output_dir / f"{name}_roc.png",
                        title=f"{name}: test macro AUC {result.test.macro_auc:.3f} ({data.settings.name} protocol)")
    logging.info("test macro AUC %.4f (%s protocol); results in %s", result.test.macro_auc, data.settings.name,
                 args.output_dir / f"{name}.json")
    return summary


def cli() -> None:
    """The ``unimlip-finetune-classification`` console command and ``scripts/finetune_classification.py``:
    :func:`main` on the command line's arguments; its result is for callers, the command exits 0."""
    main()
