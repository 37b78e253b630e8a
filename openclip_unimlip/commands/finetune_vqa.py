"""Fine-tune a pre-trained model for medical VQA on VQA-RAD or SLAKE (Uni-Mlip Table 2).

Writes ``<output-dir>/<name>.json`` (open, closed and overall test accuracy, training history,
run settings) and ``<output-dir>/<name>_accuracy.png``. Examples::

    # paper setting on a GPU
    python scripts/finetune_vqa.py --dataset slake --data-root /data/Slake1.0 --model unimlip-rn50 \\
        --pretrained logs/run/checkpoints/epoch_100.pt --device cuda --precision amp --output-dir results/vqa

    # CPU smoke run
    python scripts/finetune_vqa.py --dataset vqa-rad --data-root /data/vqa-rad --model unimlip-tiny \\
        --image-size 64 --batch-size 8 --max-epochs 1 --limit 32 --workers 0 --output-dir /tmp/vqa

    # the benchmark's cpu preset on a CPU (ours: frozen, cached question states, images transformed
    # once); add --blank-image for its question-only row
    python scripts/finetune_vqa.py --dataset vqa-rad --data-root /data/vqa-rad --model unimlip-tiny \\
        --image-size 64 --max-epochs 10 --freeze-text --no-augment --workers 0 --output-dir /tmp/vqa

VQA-RAD's training set is the standard 3,064 questions by default (``--vqa-rad-split``, see
``data/vqa_releases.py``: it holds templates of 284 test questions).
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from openclip_unimlip.data.vqa_releases import DEFAULT_VQA_RAD_SPLIT, VQA_DATASETS, VQA_RAD_SPLITS
from openclip_unimlip.evaluation import vqa
from openclip_unimlip.evaluation.finetune import DEFAULT_IMAGE_SIZE, DEFAULT_PATIENCE, PRECISIONS, FitConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=VQA_DATASETS)
    parser.add_argument("--data-root", required=True, type=Path, help="the dataset's released folder")
    parser.add_argument("--language", default="en", help="SLAKE question language (q_lang); 'all' keeps every one")
    parser.add_argument("--vqa-rad-split", default=DEFAULT_VQA_RAD_SPLIT, choices=VQA_RAD_SPLITS,
                        help="VQA-RAD's training set: 'standard' (3,064 questions, with the frames of 284 test "
                             "questions) or 'no-frames' (the 1,797 freeform and para questions)")
    parser.add_argument("--model", required=True, help="OpenCLIP model name, e.g. unimlip-rn50")
    parser.add_argument("--pretrained", default=None, help="checkpoint path (open_clip_train checkpoints work)")
    parser.add_argument("--no-map-tokens", action="store_true",
                        help="fuse only the image embedding, not the tokens of the final feature map")
    parser.add_argument("--freeze-text", action="store_true",
                        help="ours: freeze the text transformer, cache each question's states and move the "
                             "learnable tokens to the fusion input (the CPU preset's layout)")
    parser.add_argument("--blank-image", action="store_true",
                        help="the question-only baseline: no image tokens in the fusion input")
    parser.add_argument("--no-augment", action="store_true",
                        help="train on the test transform (no random crop), each image transformed once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--batch-size", type=int, default=vqa.DEFAULT_BATCH_SIZE)
    parser.add_argument("--encoder-lr", type=float, default=vqa.DEFAULT_ENCODER_LR)
    parser.add_argument("--fusion-lr", type=float, default=vqa.DEFAULT_FUSION_LR,
                        help="learning rate of the learnable tokens, fusion layer and head")
    parser.add_argument("--max-epochs", type=int, default=vqa.DEFAULT_EPOCHS)
    parser.add_argument("--patience", type=int, default=DEFAULT_PATIENCE,
                        help="epochs without validation gain before stopping (SLAKE; VQA-RAD has no validation)")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N questions of each split")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--output-dir", type=Path, default=Path("results/vqa"))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:  # a slice by 0 or less would keep none, or all but the last
        parser.error(f"--limit must be at least 1 (questions per split), got {args.limit}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(args.seed)
    language = None if args.language == "all" else args.language
    try:  # every bad input surfaces here, before any training
        data = vqa.load_vqa_data(args.dataset, args.data_root, language, args.limit, args.vqa_rad_split)
        model, preprocess_cfg, tokenizer = vqa.build_vqa_model(
            args.model, args.pretrained, len(data.answers), args.image_size, use_map_tokens=not args.no_map_tokens,
            freeze_text=args.freeze_text, blank_image=args.blank_image)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    logging.info("questions: %d train, %s valid, %d test; %d answers", len(data.train),
                 len(data.valid) if data.valid is not None else "no", len(data.test), len(data.answers))
    result = vqa.fine_tune_vqa(
        model, preprocess_cfg, tokenizer, data,
        batch_size=args.batch_size,
        encoder_lr=args.encoder_lr,
        fusion_lr=args.fusion_lr,
        fit_config=FitConfig(args.max_epochs, args.patience, args.precision),
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        augment=not args.no_augment,
    )

    model_tag = args.model.replace("/", "-").replace(":", "-")
    name = f"{args.dataset}_{model_tag}_seed{args.seed}" + ("_question-only" if args.blank_image else "")
    summary = {
        "dataset": args.dataset, "model": args.model, "pretrained": args.pretrained, "seed": args.seed,
        "language": args.language, "vqa_rad_split": args.vqa_rad_split if args.dataset == "vqa-rad" else None,
        "image_size": preprocess_cfg["size"], "map_tokens": not args.no_map_tokens,
        "freeze_text": args.freeze_text, "blank_image": args.blank_image, "augment": not args.no_augment,
        "questions": {"train": len(data.train), "valid": len(data.valid) if data.valid is not None else None,
                      "test": len(data.test)},
        "answers": len(data.answers),
        **result.summary(),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{name}.json").write_text(json.dumps(summary, indent=2))
    vqa.plot_accuracy_by_type(result.test, args.output_dir / f"{name}_accuracy.png", title=f"{name} (test)")
    logging.info("test accuracy: open %s, closed %s, overall %.4f", result.test.open, result.test.closed,
                 result.test.overall)
    return summary


def cli() -> None:
    """The ``unimlip-finetune-vqa`` console command and ``scripts/finetune_vqa.py``: :func:`main` on the
    command line's arguments; its result is for callers, the command exits 0."""
    main()
