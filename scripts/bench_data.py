"""Samples/second of the three-view train pipeline vs OpenCLIP's single-view one.

    HF_HUB_OFFLINE=1 python scripts/bench_data.py --root /tmp/unimlip-bench-data

Builds the embedded dataset's shards in --root on first use and reads them through
open_clip_train's webdataset loader; see tools/bench_data.py.
"""
import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/ is the checkout's, beside scripts/

from tools.bench_data import embedded_shards, format_data_table, run_data_benchmark  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="where the embedded dataset's shards are (built if missing)")
    parser.add_argument("--num-samples", type=int, default=440)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes over the shards; the median is reported")
    parser.add_argument("--tokenizer", default="unimlip-tiny", help="model name whose tokenizer captions go through")
    parser.add_argument("--device", default=None, help="where batches go and the strong views are drawn "
                                                          "(default: cuda when available, else cpu)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import open_clip
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    shards = embedded_shards(args.root, args.num_samples, args.image_size)
    measurements = run_data_benchmark(
        shards.pattern, shards.num_samples, open_clip.get_tokenizer(args.tokenizer), args.image_size,
        args.workers, args.batch_size, args.epochs, device)
    if args.json:
        print(json.dumps([{**asdict(m), "median": m.median} for m in measurements], indent=2))
    else:
        print(f"{shards.num_samples} train samples at {args.image_size}px, batch {args.batch_size}, device {device}; "
              f"median of {args.epochs} epochs after a warm-up epoch; cost x = per-sample cost relative to single-view")
        print(format_data_table(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
