"""``unimlip-demo``: the one-command demo (``studies/demo.py`` says what it runs; its docstring is
this command's help)."""
import argparse
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm.contrib.logging import logging_redirect_tqdm

from openclip_unimlip.evaluation.retrieval import format_retrieval_table
from openclip_unimlip.studies import demo
from openclip_unimlip.studies.demo import CPU_PRETRAIN, MEDPIX_PRETRAIN, DemoConfig, DemoResult, run_demo
from openclip_unimlip.studies.experiment import (
    DATASETS,
    DataConfig,
    MedpixConfig,
    PretrainConfig,
    check_medpix_root,
    mean_r1,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=demo.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: runs/demo-<time>)")
    parser.add_argument("--dataset", choices=DATASETS, default="embedded",
                        help="embedded: built here, no download; medpix: MedPix 2.0's real images and captions "
                             "(the MedPix-2-0 folder of the CHILab1/MedPix-2.0 repository as --data-root)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="embedded: the dataset folder, built there if missing and reused otherwise "
                             "(default: data/embedded-<image size>px-<num samples>); medpix: the release folder "
                             "(required; converted into <out>/data)")
    parser.add_argument("--num-samples", type=int, default=2000,
                        help="image-caption pairs in the embedded dataset (10%% val)")
    parser.add_argument("--model", default="unimlip-tiny", help="a Uni-Mlip model config")
    parser.add_argument("--image-size", type=int, default=96,
                        help="side of the dataset's images (the model's input size; MedPix: the short side)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default: {CPU_PRETRAIN['epochs']} (embedded), {MEDPIX_PRETRAIN['epochs']} (medpix)")
    parser.add_argument("--batch-size", type=int, default=CPU_PRETRAIN["batch_size"])
    parser.add_argument("--lr", type=float, default=CPU_PRETRAIN["lr"])
    parser.add_argument("--workers", type=int, default=CPU_PRETRAIN["workers"],
                        help="data loading processes (at most the number of train shards)")
    parser.add_argument("--simclr-start-epoch", type=int, default=None,
                        help="first epoch with SimCLR and frozen BatchNorm statistics (paper: after a CLIP phase; "
                             f"default: {CPU_PRETRAIN['simclr_start_epoch']} (embedded), "
                             f"{MEDPIX_PRETRAIN['simclr_start_epoch']} (medpix))")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default=None, help="OpenCLIP precision (default: fp32 on CPU, amp on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset == "medpix":
        try:
            check_medpix_root(args.data_root)
        except ValueError as error:
            parser.error(str(error))
    defaults = MEDPIX_PRETRAIN if args.dataset == "medpix" else CPU_PRETRAIN
    for name in ("epochs", "simclr_start_epoch"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def data_config(args: argparse.Namespace, out: Path) -> Union[DataConfig, MedpixConfig]:
    if args.dataset == "medpix":
        return MedpixConfig(root=str(out / "data"), release=str(args.data_root), image_size=args.image_size)
    return DataConfig(root=str(args.data_root or Path("data") / f"embedded-{args.image_size}px-{args.num_samples}"),
                      num_samples=args.num_samples, image_size=args.image_size, seed=args.seed)


def main(argv: Optional[Sequence[str]] = None) -> DemoResult:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if (out / "logs" / "pretrain").exists():
        raise SystemExit(f"error: {out} already holds a demo run; pass another --out")
    precision = args.precision or ("fp32" if args.device == "cpu" else "amp")
    config = DemoConfig(
        data=data_config(args, out),
        pretrain=PretrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                warmup=CPU_PRETRAIN["warmup"], workers=args.workers, seed=args.seed,
                                device=args.device, precision=precision),
        out=out, simclr_start_epoch=args.simclr_start_epoch)
    with logging_redirect_tqdm():  # log lines above the progress bars, not through them
        result = run_demo(config)
    print(format_retrieval_table(result.after.metrics))
    print(f"mean R@1: {100 * mean_r1(result.before.metrics):.1f}% untrained -> "
          f"{100 * mean_r1(result.after.metrics):.1f}% pretrained (chance {100 * result.after.chance[1]:.1f}%) "
          f"on {len(result.after.pairs)} {'test' if args.dataset == 'medpix' else 'val'} pairs")
    print(f"report: {result.report.resolve()}")
    return result


def cli() -> None:
    """The ``unimlip-demo`` console command and ``scripts/demo.py``: :func:`main` runs on the command
    line's arguments; its result is for callers, the command exits 0."""
    main()
