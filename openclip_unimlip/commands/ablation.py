"""``unimlip-ablate``: the ablation benchmark of Uni-Mlip's Tables 3 and 4 (``studies/ablation.py``
says what it runs; its docstring is this command's help)."""
import argparse
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.ablation import (
    DEFAULT_KEEP_ROWS,
    DEFAULT_ROWS,
    MEDPIX_RUN_ORDER,
    PRESETS,
    ROWS,
    RUN_ORDER,
    AblationConfig,
    run_grid,
)
from openclip_unimlip.studies.experiment import DATASETS, DataConfig, MedpixConfig, PretrainConfig, check_medpix_root


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=ablation.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="embedded",
                        help="embedded: built here, no download; medpix: MedPix 2.0's real images and captions "
                             "(the MedPix-2-0 folder of the CHILab1/MedPix-2.0 repository as --data-root), "
                             "with its own CPU preset")
    parser.add_argument("--full", action="store_true", help="the GPU-sized grid instead of the CPU one (embedded)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="the earlier one-stage protocol: every row from random weights, views from "
                             "--simclr-start-epoch")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/ablation-<preset>)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="embedded: the dataset folder (default: data/ablation-<preset>), built if missing; "
                             "medpix: the release folder (required; converted into <out>/data-medpix-<size>px)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None,
                        help="rows to run, in this order, seed by seed (default: embedded the paper's seven, "
                             f"{' '.join(RUN_ORDER)}; medpix all nine, {' '.join(MEDPIX_RUN_ORDER)}); "
                             "finished runs are reused, so a subset can run first and the rest later")
    parser.add_argument("--keep-rows", nargs="*", choices=list(ROWS), default=None,
                        help="rows whose stage-2 weights are kept (plain state dicts in <out>/checkpoints, listed "
                             "in ablation.json) for every seed (default: embedded none; medpix itc_mlm all_five)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="stage-2 training seeds (default: the preset's)")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="override the preset's stage-1 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs of every stage-2 run")
    parser.add_argument("--num-samples", type=int, default=None, help="override the preset's dataset size (embedded)")
    parser.add_argument("--simclr-start-epoch", type=int, default=None,
                        help="override the preset's (--from-scratch only)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--model", default="unimlip-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default: fp32 on CPU, amp on CUDA")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every run's open_clip_train checkpoint (with its optimizer state, ~0.5 GB each)")
    args = parser.parse_args(argv)
    for name in ("stage1_epochs", "epochs", "num_samples", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.simclr_start_epoch is not None and not args.from_scratch:
        parser.error("--simclr-start-epoch applies to --from-scratch only: stage 2 uses the views from its start")
    if args.stage1_epochs is not None and args.from_scratch:
        parser.error("--stage1-epochs and --from-scratch exclude each other")
    if args.dataset == "medpix":
        if args.full or args.num_samples is not None:
            parser.error("--full and --num-samples apply to the embedded dataset only")
        try:
            check_medpix_root(args.data_root)
        except ValueError as error:
            parser.error(str(error))
    return args


def _model_image_size(model: str) -> int:
    import open_clip

    config = open_clip.get_model_config(model)
    if config is None:
        raise SystemExit(f"error: unknown model config {model!r}")
    size = config["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else min(size)


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    name = "medpix" if args.dataset == "medpix" else "full" if args.full else "cpu"
    preset = PRESETS[name]
    overrides = {k: getattr(args, k)
                 for k in ("stage1_epochs", "epochs", "num_samples", "simclr_start_epoch", "batch_size")
                 if getattr(args, k) is not None}
    if args.seeds is not None:
        overrides["seeds"] = tuple(args.seeds)
    preset = replace(preset, **overrides)
    out = args.out or Path("runs") / f"ablation-{name}"
    if args.dataset == "medpix":
        image_size = _model_image_size(args.model)  # converted at the model's input size: no resizing in training
        data = MedpixConfig(root=str(Path(out) / f"data-medpix-{image_size}px"), release=str(args.data_root),
                            image_size=image_size, shard_size=preset.shard_size)
    else:
        data = DataConfig(root=str(args.data_root or Path("data") / f"ablation-{name}"), num_samples=preset.num_samples,
                          val_fraction=preset.val_fraction, shard_size=preset.shard_size)
    pretrain = PretrainConfig(
        model=args.model, epochs=preset.epochs, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
        workers=preset.workers, device=args.device,
        precision=args.precision or ("fp32" if args.device == "cpu" else "amp"))
    keep_rows = DEFAULT_KEEP_ROWS[args.dataset] if args.keep_rows is None else args.keep_rows
    return AblationConfig(data=data, pretrain=pretrain, out=out,
                          stage1_epochs=None if args.from_scratch else preset.stage1_epochs,
                          seeds=preset.seeds, rows=tuple(args.rows or DEFAULT_ROWS[args.dataset]),
                          simclr_start_epoch=preset.simclr_start_epoch, keep_checkpoints=args.keep_checkpoints,
                          keep_rows=tuple(keep_rows), extra={"preset": name, **asdict(preset)})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = config_from_args(args)
    summary = run_grid(config)
    print((Path(config.out) / "ablation.md").read_text())
    print(f"results: {Path(config.out).resolve() / 'ablation.md'}")
    return summary


def cli() -> None:
    """The ``unimlip-ablate`` console command and ``scripts/ablate.py``: :func:`main` runs on the command
    line's arguments; its summary is for callers, the command exits 0."""
    main()
