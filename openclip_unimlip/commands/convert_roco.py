"""Convert ROCO (a checkout of its release repository with the images fetched) to webdataset
shards and/or OpenCLIP CSV. Bad rows are listed in OUT/bad_rows.csv; re-running resumes an
interrupted run."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.data.roco import ROCO_SPLITS, ROCO_SUBSETS, convert_roco
from openclip_unimlip.data.shards import add_output_arguments, output_options


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the ROCO repository (or its data/ folder)")
    parser.add_argument("--splits", nargs="+", choices=tuple(ROCO_SPLITS), default=list(ROCO_SPLITS),
                        help="official splits to convert")
    parser.add_argument("--subsets", nargs="+", choices=ROCO_SUBSETS, default=["radiology"])
    parser.add_argument("--split-mode", choices=("official", "random"), default="official",
                        help="keep ROCO's train/validation/test split, or split by --seed and --val-fraction")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    report = convert_roco(args.root, args.out, splits=args.splits, subsets=args.subsets,
                          official_split=args.split_mode == "official", **output_options(args))
    print(report.summary())


def cli() -> None:
    """The ``unimlip-convert-roco`` console command and ``scripts/convert_roco.py``."""
    main()
