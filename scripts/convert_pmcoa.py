#!/usr/bin/env python
"""Convert PMC-OA (pmc_oa.jsonl + images.zip or an image folder) to webdataset shards and/or
OpenCLIP CSV. Bad rows are listed in OUT/bad_rows.csv; re-running resumes an interrupted run."""
import argparse
from pathlib import Path

from openclip_unimlip.data.pmcoa import convert_pmcoa
from openclip_unimlip.data.shards import add_output_arguments, output_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jsonl", type=Path, required=True, help="pmc_oa.jsonl")
    parser.add_argument("--images", type=Path, required=True, help="images.zip or a folder of the images")
    add_output_arguments(parser)
    args = parser.parse_args()
    print(convert_pmcoa(args.jsonl, args.images, args.out, **output_options(args)).summary())


if __name__ == "__main__":
    main()
