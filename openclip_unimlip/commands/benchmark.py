"""``unimlip-benchmark``: evaluate OpenCLIP models on every medical downstream task found under
``--data-root`` (``studies/benchmark/engine.py`` says what runs; docs/evaluation.md)."""
import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from openclip_unimlip.data.releases import DATASETS
from openclip_unimlip.evaluation import finetune
from openclip_unimlip.seam.user_configs import add_model_config_argument, register_model_configs
from openclip_unimlip.studies.benchmark import engine
from openclip_unimlip.studies.benchmark.engine import PRESETS, TASK_KINDS, BenchmarkConfig, row_folder
from openclip_unimlip.studies.benchmark.tasks import SEED_FIELD, ModelRow, Runtime

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class _RowOption(argparse.Action):
    """``--model`` starts a row; ``--pretrained`` and ``--label`` complete the row before them."""

    def __call__(self, parser, namespace, value, option_string=None):
        rows = list(getattr(namespace, self.dest) or [])
        if option_string == "--model":
            rows.append({"model": value, "pretrained": None, "label": None})
        else:
            key = option_string.lstrip("-")
            if not rows:
                parser.error(f"{option_string} {value} must follow the --model it belongs to")
            if rows[-1][key] is not None:
                parser.error(f"{option_string} is given twice for --model {rows[-1]['model']}")
            rows[-1][key] = value
        setattr(namespace, self.dest, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unimlip-benchmark",
        description="Evaluate OpenCLIP models on every medical downstream task found under --data-root, in the "
                    "paper's layout (Fig. 2, Table 1, Table 2) with its reported numbers beside.")
    parser.add_argument("--model", action=_RowOption, dest="rows", metavar="NAME",
                        help="a row: an OpenCLIP model name (repeatable; hf-hub:..., local-dir:..., stock or ours)")
    parser.add_argument("--pretrained", action=_RowOption, dest="rows", metavar="CKPT",
                        help="weights of the --model before it: a checkpoint path ({seed} in it: downstream seed k "
                             "takes pretraining seed k's file), an OpenCLIP tag, or 'random' (every weight random, "
                             "the text tower's too; without --pretrained a Hugging Face text tower starts from its "
                             "base weights)")
    parser.add_argument("--label", action=_RowOption, dest="rows", metavar="TEXT",
                        help="the row's name in the tables (default: the model name, and the checkpoint's)")
    add_model_config_argument(parser)
    parser.add_argument("--data-root", type=Path, required=True,
                        help="folder holding the datasets, each in its released layout")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="only these datasets (default: every one found)")
    parser.add_argument("--tasks", nargs="+", choices=TASK_KINDS, default=None,
                        help="only these kinds of task (default: all; vqa includes its question-only row)")
    parser.add_argument("--out", type=Path, required=True, help="results folder (re-use it to resume)")
    parser.add_argument("--preset", choices=list(PRESETS), default="paper")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the preset's")
    parser.add_argument("--fractions", nargs="+", type=float, default=None,
                        help="labelled training fractions for classification (default: the preset's)")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N images/questions of each split")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="assignments",
                        help="change one setting of the preset (repeatable), a dotted path into it, e.g. "
                             "vqa.epochs=1, vqa.vqa_rad_split=no-frames, medpix.label=plane, vqa.image_size=none")
    parser.add_argument("--reference", default=None, metavar="LABEL",
                        help="a row's label: every table adds each other row's paired per-seed differences to it, "
                             "with 95 %% t-intervals")
    parser.add_argument("--pretraining-note", default="",
                        help="what the rows' weights were pretrained on, for the report's header")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=finetune.PRECISIONS, default="fp32")
    parser.add_argument("--plan", action="store_true", help="list the cells and an estimate; run nothing")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _default_label(model: str, pretrained: Optional[str]) -> str:
    if not pretrained:
        return model
    return f"{model} ({Path(pretrained).name if Path(pretrained).suffix else pretrained})"


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchmarkConfig:
    """The run's configuration; every bad input stops here with one message, before anything runs."""
    import open_clip

    register_model_configs(parser, args.model_config)
    if not args.rows:
        parser.error("give at least one --model")
    rows = []
    for spec in args.rows:
        model, pretrained = spec["model"], spec["pretrained"]
        if ":" not in model and model not in open_clip.list_models():
            parser.error(f"unknown OpenCLIP model {model!r} (register its config with --model-config)")
        looks_like_file = pretrained and (Path(pretrained).suffix in _CHECKPOINT_SUFFIXES or os.sep in pretrained)
        for seed in (args.seeds or PRESETS[args.preset].seeds) if pretrained and SEED_FIELD in pretrained else (None,):
            path = pretrained.replace(SEED_FIELD, str(seed)) if seed is not None else pretrained
            if looks_like_file and not Path(path).is_file():
                parser.error(f"checkpoint {path} of --model {model} not found")
        rows.append(ModelRow(spec["label"] or _default_label(model, pretrained), model, pretrained))
    labels = [row.label for row in rows]
    folders = [row_folder(label) for label in labels]
    if len(set(folders)) != len(folders):
        repeated = sorted({label for label in labels if labels.count(label) > 1}) or labels
        parser.error(f"two rows share a name ({', '.join(repeated)}): "
                     "give each a distinct --label")
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")
    preset = PRESETS[args.preset]
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            parser.error("--seeds repeat")
        preset = replace(preset, seeds=tuple(args.seeds))
    if args.fractions is not None:
        if any(not 0 < f <= 1 for f in args.fractions) or len(set(args.fractions)) != len(args.fractions):
            parser.error(f"--fractions must be distinct and lie in (0, 1], got {args.fractions}")
        preset = replace(preset, fractions=tuple(sorted(args.fractions)))
    for name in ("limit", "workers"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "limit" else 0):
            parser.error(f"--{name} must be at least {1 if name == 'limit' else 0}")
    if args.limit is not None:
        preset = replace(preset, limit=args.limit)
    try:
        preset = engine.preset_with(preset, args.assignments)
    except ValueError as error:
        parser.error(str(error))
    if args.reference is not None and args.reference not in labels:
        parser.error(f"--reference {args.reference!r} is not the label of a row ({', '.join(labels)})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    runtime = Runtime(device=args.device, precision=args.precision,
                      workers=preset.workers if args.workers is None else args.workers, progress=not args.no_progress)
    return BenchmarkConfig(rows, args.data_root, args.out, preset, runtime, args.datasets, args.tasks, args.reference,
                           args.pretraining_note)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = config_from_args(parser, args)
    if args.plan:
        return engine.plan(config)
    report = engine.run_benchmark(config)
    print(f"tables: {config.out / 'benchmark.md'} (and benchmark.json); cells: {config.out / 'cells'}")
    return report


def cli() -> None:
    """The ``unimlip-benchmark`` console entry point: the console script exits with what it is given,
    and ``main``'s report (a dict, for callers) would read as a failure there."""
    main()


if __name__ == "__main__":
    cli()
