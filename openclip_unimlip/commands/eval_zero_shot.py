"""Zero-shot classification of an OpenCLIP model with prompt templates.

Reports top-1 accuracy, mean per-class recall and macro AUC; with --output, writes them as JSON.
--data is a folder of class subfolders or a CSV (tab-separated, columns filepath and label).

    python scripts/eval_zero_shot.py --model unimlip-rn50 \\
        --pretrained logs/unimlip/checkpoints/epoch_100.pt \\
        --data data/chexpert5x200 --templates chest_xray \\
        --classnames atelectasis cardiomegaly consolidation edema "pleural effusion"
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.evaluation.zero_shot import TEMPLATE_SETS, evaluate_zero_shot
from openclip_unimlip.seam.user_configs import add_model_config_argument, register_model_configs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="OpenCLIP model name, e.g. unimlip-rn50")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint path (open_clip_train checkpoints work); default: initial weights")
    parser.add_argument("--data", required=True, help="folder of class subfolders, or a CSV (filepath, label)")
    parser.add_argument("--templates", default="medical_image",
                        help=f"one of {sorted(TEMPLATE_SETS)}, or a text file with one '{{c}}' template per line")
    parser.add_argument("--classnames", nargs="+", default=None,
                        help="prompt name of each class, in sorted label order; default: labels, '_' as spaces")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image loading processes")
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    add_model_config_argument(parser)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    register_model_configs(parser, args.model_config)
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.templates in TEMPLATE_SETS:
        templates = TEMPLATE_SETS[args.templates]
    else:
        templates = [line for line in Path(args.templates).read_text().splitlines() if line.strip()]
    results = evaluate_zero_shot(
        args.model, args.pretrained, data=args.data, templates=templates, classnames=args.classnames,
        batch_size=args.batch_size, device=args.device, num_workers=args.workers)
    print(f"{results['model']} ({results['pretrained'] or 'initial weights'}): "
          f"{results['num_images']} images, classes {results['classnames']}")
    for name, value in results["metrics"].items():
        print(f"{name:<24}{100 * value:>8.2f} %")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


def cli() -> None:
    """The ``unimlip-eval-zero-shot`` console command and ``scripts/eval_zero_shot.py``: :func:`main` on the
    command line's arguments; its result is for callers, the command exits 0."""
    main()
