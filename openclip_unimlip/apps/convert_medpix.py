"""Convert MedPix 2.0 (the MedPix-2-0 folder of the CHILab1/MedPix-2.0 repository) to webdataset
shards and/or OpenCLIP CSV, official case splits kept (dev -> val). Bad rows are listed in
OUT/bad_rows.csv, images left out with --exclude-vqa-rad in OUT/excluded.csv; re-running resumes
an interrupted run."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from openclip_unimlip.data.medpix import EXCLUDED_NAME, MEDPIX_SPLITS, convert_medpix
from openclip_unimlip.data.shards import add_output_arguments, output_options


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the MedPix-2-0 folder (or the repository root)")
    parser.add_argument("--splits", nargs="+", choices=MEDPIX_SPLITS, default=list(MEDPIX_SPLITS),
                        help="official splits to convert")
    parser.add_argument("--caption-prefix", action="store_true",
                        help="ours: start each caption with the image's modality and plane")
    parser.add_argument("--exclude-vqa-rad", type=Path, default=None, metavar="VQA_RAD_ROOT",
                        help="leave out the MedPix images that this VQA-RAD release also holds")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N records of each split")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    report = convert_medpix(args.root, args.out, splits=args.splits, caption_prefix=args.caption_prefix,
                            exclude_vqa_rad=args.exclude_vqa_rad, limit=args.limit, **output_options(args))
    print(report.summary())
    if args.exclude_vqa_rad is not None:
        excluded = pd.read_csv(args.out / EXCLUDED_NAME)
        print(f"left out {len(excluded)} images that VQA-RAD also holds: {args.out / EXCLUDED_NAME}")


def cli() -> None:
    """The ``unimlip-convert-medpix`` console command and ``scripts/convert_medpix.py``."""
    main()
