"""Export sampled retrieval pairs in clip_benchmark's webdataset layout and print its command.

The same --num-samples/--seed draw as scripts/eval_retrieval.py, so clip_benchmark evaluates
exactly the pairs we do:

    python scripts/export_clip_benchmark.py --data "data/roco/test/{00000..00003}.tar" \\
        --output-dir data/clip_benchmark/roco_test --model unimlip-rn50 \\
        --pretrained logs/unimlip/checkpoints/epoch_100.pt
"""
import argparse
import shlex
from typing import Optional, Sequence

from openclip_unimlip.data.stored import load_pairs, sample_pairs
from openclip_unimlip.evaluation.clip_benchmark_export import clip_benchmark_eval_args, export_clip_benchmark_retrieval


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="webdataset shards (brace pattern or folder of .tar) or a CSV (filepath, title)")
    parser.add_argument("--output-dir", required=True, help="root of the clip_benchmark dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-samples", type=int, default=2000, help="pairs drawn without replacement; 0: all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--max-count", type=int, default=10_000, help="samples per shard")
    parser.add_argument("--model", default="MODEL", help="only for the printed clip_benchmark command")
    parser.add_argument("--pretrained", default="CHECKPOINT", help="only for the printed clip_benchmark command")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    pairs = sample_pairs(load_pairs(args.data), args.num_samples or None, args.seed)
    split_dir = export_clip_benchmark_retrieval(pairs, args.output_dir, split=args.split, max_count=args.max_count)
    # clip_benchmark is not a dependency: the default install lacks its CLI
    print(f"wrote {len(pairs)} pairs to {split_dir}; evaluate with clip_benchmark "
          f"(pip install clip_benchmark==1.6.2, or the package's [test] extra):")
    print(shlex.join(["clip_benchmark", *clip_benchmark_eval_args(
        args.model, args.pretrained, args.output_dir, split=args.split)]))


def cli() -> None:
    """The ``unimlip-export-clip-benchmark`` console command and ``scripts/export_clip_benchmark.py``."""
    main()
