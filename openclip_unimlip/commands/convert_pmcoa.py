"""Convert PMC-OA (captions + images.zip or an image folder) to webdataset shards and/or OpenCLIP CSV.

Captions: today's pmc_oa.jsonl (split by --seed/--val-fraction) or the first release's
train.jsonl/valid.jsonl/test.jsonl (PMC-CLIP's splits, kept); give the files or their folder.
Bad rows are listed in OUT/bad_rows.csv; re-running resumes an interrupted run."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.data.pmcoa import convert_pmcoa, pmcoa_caption_files
from openclip_unimlip.data.shards import add_output_arguments, output_options


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jsonl", type=Path, nargs="+", required=True,
                        help="pmc_oa.jsonl, or train.jsonl valid.jsonl test.jsonl, or the folder holding them")
    parser.add_argument("--images", type=Path, required=True, help="images.zip or a folder of the images")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    try:
        pmcoa_caption_files(args.jsonl)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print(convert_pmcoa(args.jsonl, args.images, args.out, **output_options(args)).summary())


def cli() -> None:
    """The ``unimlip-convert-pmcoa`` console command and ``scripts/convert_pmcoa.py``."""
    main()
