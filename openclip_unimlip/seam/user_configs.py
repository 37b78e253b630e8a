"""``--model-config PATH``: a user's own OpenCLIP model configs (a JSON file or a folder of them),
registered with OpenCLIP's public ``add_model_config`` before a command builds its models. The
commands that take models by name (``unimlip-benchmark``, ``unimlip-eval-retrieval``,
``unimlip-eval-zero-shot``) share this flag."""
import argparse
from pathlib import Path
from typing import Sequence


def add_model_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-config", action="append", default=[], metavar="PATH",
                        help="extra OpenCLIP model config file or folder to register (repeatable)")


def register_model_configs(parser: argparse.ArgumentParser, paths: Sequence[str]) -> None:
    """Register ``paths`` with OpenCLIP; a path that does not exist stops the command with one message
    (``parser.error``) before anything runs."""
    for path in paths:
        if not Path(path).exists():
            parser.error(f"--model-config {path} does not exist")
    if paths:
        import open_clip

        for path in paths:
            open_clip.add_model_config(path)
