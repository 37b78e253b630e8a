#!/usr/bin/env python
"""Export an open_clip_train checkpoint of one of our recipes the way OpenCLIP shares models.

Writes, with OpenCLIP's own save_for_hf, a folder loadable as `local-dir:FOLDER` (and, pushed,
as `hf-hub:ORG/NAME`): open_clip_config.json (text towers named by hub id), safetensors
weights, the tokenizer's files and a model card (README.md: recipe, training data, flags from
the run's params.txt, retrieval from --retrieval or the run's results.jsonl). --push then uploads
that folder with huggingface_hub (token: HF_TOKEN or `hf auth login`).

    python scripts/export_hf.py logs/unimlip-run/checkpoints/epoch_100.pt --output-dir exports/unimlip-rn50
    python scripts/export_hf.py logs/unimlip-run/checkpoints/epoch_100.pt --output-dir exports/unimlip-rn50 \\
        --retrieval results/roco_retrieval.json --repo-id my-org/unimlip-rn50-pmcoa --push
"""
import argparse
from pathlib import Path

from openclip_unimlip.seam.hub import PushFailed, export_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="open_clip_train checkpoint (epoch_N.pt)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder to write (must not hold an export)")
    parser.add_argument("--model", default=None, help="model name; default: the one in the run's params.txt")
    parser.add_argument("--params", type=Path, default=None,
                        help="the run's params.txt; default: found beside the checkpoints folder")
    parser.add_argument("--retrieval", type=Path, default=None,
                        help="retrieval JSON (scripts/eval_retrieval.py --output, or clip_benchmark's) for the card; "
                             "default: the run's own validation results, if any")
    parser.add_argument("--repo-id", default=None, help="Hugging Face repo (org/name) named in the card / pushed to")
    parser.add_argument("--push", action="store_true",
                        help="then upload the exported folder to --repo-id (huggingface_hub's upload_folder)")
    parser.add_argument("--private", action="store_true", help="create the pushed repo private")
    parser.add_argument("--license", default="other", help="license in the card's metadata")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        folder = export_checkpoint(args.checkpoint, args.output_dir, model_name=args.model, params_file=args.params,
                                   retrieval_file=args.retrieval, repo_id=args.repo_id, push=args.push,
                                   license=args.license, private=args.private)
    except PushFailed as error:
        raise SystemExit(f"error: {error}") from None
    print(f"exported to {folder}; load it with open_clip.create_model_from_pretrained('local-dir:{folder}')")
    if args.push:
        print(f"pushed to {args.repo_id}: open_clip.create_model_from_pretrained('hf-hub:{args.repo_id}')")
    return folder


if __name__ == "__main__":
    main()
