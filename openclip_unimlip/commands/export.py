"""``unimlip-export``: export an ``open_clip_train`` checkpoint of one of our recipes the way OpenCLIP
shares models (the export itself is ``openclip_unimlip/export.py``; its docstring is this command's
help)."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip import export


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=export.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    try:
        folder = export.export_checkpoint(args.checkpoint, args.output_dir, model_name=args.model,
                                          params_file=args.params, retrieval_file=args.retrieval,
                                          repo_id=args.repo_id, push=args.push, license=args.license,
                                          private=args.private)
    except export.PushFailed as error:
        raise SystemExit(f"error: {error}") from None
    print(f"exported to {folder}; load it with open_clip.create_model_from_pretrained('local-dir:{folder}')")
    if args.push:
        print(f"pushed to {args.repo_id}: open_clip.create_model_from_pretrained('hf-hub:{args.repo_id}')")
    return folder


def cli() -> None:
    """The ``unimlip-export`` console command (a console script exits with what it returns)."""
    main()
