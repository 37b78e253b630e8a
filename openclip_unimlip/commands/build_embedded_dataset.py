"""Build the embedded Uni-Mlip demo dataset (real medical images from PyPI packages with
synthetic findings) as webdataset shards and/or OpenCLIP CSV, offline and from a seed."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.data.embedded import ensure_embedded_dataset
from openclip_unimlip.data.shards import FORMATS


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset root")
    parser.add_argument("--num-samples", type=int, default=3000, help="image-caption pairs in all")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square images in pixels")
    parser.add_argument("--shard-size", type=int, default=500, help="samples per webdataset shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and of the train/val split")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the samples in val")
    parser.add_argument("--format", choices=FORMATS, default="both", help="what to write")
    args = parser.parse_args(argv)

    info = ensure_embedded_dataset(
        args.out, num_samples=args.num_samples, image_size=args.image_size, seed=args.seed,
        val_fraction=args.val_fraction, shard_size=args.shard_size, formats=args.format, progress=True)
    print(("built" if info.built else "already built, reused") + f": {info.root}")
    print(f"  train: {info.train_num_samples} samples  {info.train_data or ''}  {info.train_csv or ''}")
    print(f"  val:   {info.val_num_samples} samples  {info.val_data or ''}  {info.val_csv or ''}")


def cli() -> None:
    """The ``unimlip-build-embedded-dataset`` console command and ``scripts/build_embedded_dataset.py``."""
    main()
