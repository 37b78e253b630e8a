"""Image-text retrieval R@1/5/10 of an OpenCLIP model on sampled pairs (Uni-Mlip sec. 4.2).

Prints a table and, with --output, writes the results (metrics and evaluated keys) as JSON.

    python scripts/eval_retrieval.py --model unimlip-rn50 \\
        --pretrained logs/unimlip/checkpoints/epoch_100.pt \\
        --data "data/roco/test/{00000..00003}.tar" --num-samples 2000 --seed 0 \\
        --output results/roco_retrieval.json
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.evaluation.retrieval import evaluate_retrieval, format_retrieval_table
from openclip_unimlip.seam.user_configs import add_model_config_argument, register_model_configs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="OpenCLIP model name, e.g. unimlip-rn50")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint path (open_clip_train checkpoints work); default: initial weights")
    parser.add_argument("--data", required=True,
                        help="webdataset shards (brace pattern or folder of .tar) or a CSV (filepath, title)")
    parser.add_argument("--num-samples", type=int, default=2000, help="pairs drawn without replacement; 0: all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
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
    results = evaluate_retrieval(
        args.model, args.pretrained, data=args.data, num_samples=args.num_samples or None, seed=args.seed,
        batch_size=args.batch_size, device=args.device, num_workers=args.workers)
    print(f"{results['model']} ({results['pretrained'] or 'initial weights'}): "
          f"{results['num_pairs']} of {results['num_available']} pairs, seed {results['seed']}")
    print(format_retrieval_table(results["metrics"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


def cli() -> None:
    """The ``unimlip-eval-retrieval`` console command and ``scripts/eval_retrieval.py``: :func:`main` on the
    command line's arguments; its result is for callers, the command exits 0."""
    main()
