"""``unimlip-real-downstream``: Uni-Mlip Table 2 on the real VQA-RAD release and a Table 1 stand-in on
MedPix 2.0's labels, per initialisation (``studies/real_downstream.py`` says what it runs)."""
import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import open_clip
import torch

from openclip_unimlip.evaluation.medpix_classification import LABELS
from openclip_unimlip.studies import real_downstream
from openclip_unimlip.studies.real_downstream import FRACTIONS, MODES, PRESETS, TASKS, DownstreamConfig, parse_init


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Uni-Mlip Table 2 on the real VQA-RAD release and a Table 1 stand-in on MedPix 2.0's labels, "
                    "per initialisation, several seeds, 95 % intervals.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="unimlip-tiny", help="OpenCLIP model name of every initialisation")
    parser.add_argument("--init", action="append", required=True, metavar="SPEC", dest="inits",
                        help="repeatable: 'random', 'text-base' or NAME=CHECKPOINT")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                        help="folder holding vqa-rad/ and medpix-2.0/")
    parser.add_argument("--vqa-rad-root", type=Path, default=None, help="default: <data-root>/vqa-rad")
    parser.add_argument("--medpix-root", type=Path, default=None, help="default: <data-root>/medpix-2.0")
    parser.add_argument("--out", type=Path, default=Path("runs/real-downstream"))
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--labels", nargs="+", choices=list(LABELS), default=["location_category"],
                        help="MedPix labels, one Table 1 each")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--vqa-epochs", type=int, default=None, help="override the preset's")
    parser.add_argument("--vqa-batch-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--cls-max-epochs", type=int, default=None, help="override the preset's fine-tuning epochs")
    parser.add_argument("--cls-batch-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--min-epoch-images", type=int, default=None, help="override the preset's")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the preset's)")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N questions/images of each split")
    parser.add_argument("--reference", default=None, help="initialisation the others are compared with, per seed")
    parser.add_argument("--pretraining-note", default="",
                        help="what the checkpoints were pretrained on, for the report's header")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp", "amp_bf16"))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DownstreamConfig:
    """The run's config; every bad input stops here with one message (parser.error)."""
    try:
        inits = [parse_init(spec, args.seeds) for spec in args.inits]
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    names = [init.name for init in inits]
    if len(set(names)) != len(names):
        parser.error(f"initialisation names repeat: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    if args.reference is not None and args.reference not in names:
        parser.error(f"--reference {args.reference!r} is not one of the initialisations ({', '.join(names)})")
    if ":" not in args.model and args.model not in open_clip.list_models():
        parser.error(f"unknown OpenCLIP model {args.model!r}")
    for name in ("vqa_epochs", "vqa_batch_size", "cls_max_epochs", "cls_batch_size", "min_epoch_images", "limit",
                 "image_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error(f"--fractions must lie in (0, 1], got {args.fractions}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds repeat")
    roots = {"vqa-rad": args.vqa_rad_root or args.data_root / "vqa-rad",
             "medpix": args.medpix_root or args.data_root / "medpix-2.0"}
    for task in args.tasks:
        if not roots[task].is_dir():
            parser.error(f"the {task} data folder {roots[task]} does not exist (--data-root or --{task}-root)")

    vqa, classification = PRESETS[args.preset]
    workers = {} if args.workers is None else {"workers": args.workers}
    vqa = replace(vqa, **{k: v for k, v in {"epochs": args.vqa_epochs, "batch_size": args.vqa_batch_size,
                                            "image_size": args.image_size}.items() if v is not None}, **workers)
    finetune = replace(classification.finetune, **{k: v for k, v in {
        "max_epochs": args.cls_max_epochs, "batch_size": args.cls_batch_size,
        "min_epoch_images": args.min_epoch_images}.items() if v is not None}, **workers)
    classification = replace(classification, finetune=finetune,
                             **({"image_size": args.image_size} if args.image_size else {}))
    return DownstreamConfig(
        model=args.model, inits=inits, out=args.out,
        vqa_rad_root=roots["vqa-rad"] if "vqa-rad" in args.tasks else None,
        medpix_root=roots["medpix"] if "medpix" in args.tasks else None,
        tasks=args.tasks, labels=args.labels, modes=args.modes, fractions=sorted(args.fractions), seeds=args.seeds,
        preset=args.preset, vqa=vqa, classification=classification, limit=args.limit, device=args.device,
        precision=args.precision, reference=args.reference, pretraining_note=args.pretraining_note,
        progress=not args.no_progress)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = config_from_args(parser, args)
    try:  # the data are read and checked before any cell runs
        data = real_downstream.load_data(config)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    return real_downstream.run(config, data)


def cli() -> None:
    """The ``unimlip-real-downstream`` console command and ``scripts/real_downstream.py``: :func:`main`
    runs on the command line's arguments; its report is for callers, the command exits 0."""
    main()


if __name__ == "__main__":
    cli()
