"""Convert MedPix 2.0 (the MedPix-2-0 folder of the CHILab1/MedPix-2.0 repository) to webdataset
shards and/or OpenCLIP CSV, official case splits kept (dev -> val). Bad rows are listed in
OUT/bad_rows.csv; the cases left out with --exclude-vqa-rad / --exclude-like (every case with an
image that a downstream test set also holds, by id or as a perceptual near-duplicate) in
OUT/excluded.csv; re-running resumes an interrupted run."""
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
                        help="leave out every case with an image that this VQA-RAD release also holds "
                             "(same id or a near-duplicate)")
    parser.add_argument("--exclude-like", type=Path, action="append", default=[], metavar="IMAGE_DIR",
                        help="a folder of a downstream test set's images: leave out every case with a "
                             "near-duplicate there (repeatable; e.g. ROCO's data/test/radiology/images)")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N records of each split")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    for folder in args.exclude_like:
        if not folder.is_dir():
            parser.error(f"--exclude-like {folder} is not a folder")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1 (records per split), got {args.limit}")
    report = convert_medpix(args.root, args.out, splits=args.splits, caption_prefix=args.caption_prefix,
                            exclude_vqa_rad=args.exclude_vqa_rad, exclude_like=args.exclude_like, limit=args.limit,
                            **output_options(args))
    print(report.summary())
    if args.exclude_vqa_rad is not None or args.exclude_like:
        excluded = pd.read_csv(args.out / EXCLUDED_NAME)
        print(f"left out {len(excluded)} images of {excluded['case_id'].nunique()} cases matching a test set: "
              f"{args.out / EXCLUDED_NAME}")


def cli() -> None:
    """The ``unimlip-convert-medpix`` console command and ``scripts/convert_medpix.py``."""
    main()
