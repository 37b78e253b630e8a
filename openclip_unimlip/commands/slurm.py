"""``unimlip-slurm`` (also ``python -m openclip_unimlip.commands.slurm``, what ``scripts/slurm/*.sbatch``
run): Uni-Mlip pre-training from inside a Slurm batch job; the launcher's logic is
``studies/pretraining/slurm.py``, whose docstring is this command's help."""
import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from openclip_unimlip.studies.pretraining import slurm
from openclip_unimlip.studies.pretraining.slurm import (
    MODES,
    RECIPE,
    LaunchError,
    launch_command,
    set_aside_incomplete_checkpoints,
)

# what every message starts with: the module the sbatch scripts run
PREFIX = "openclip_unimlip.commands.slurm"


def build_parser() -> argparse.ArgumentParser:
    """The command's help. Its arguments are not parsed by argparse: everything after the mode goes
    to open_clip_train as it is (argparse would take options such as ``--help`` or abbreviations)."""
    variables = "\n".join(f"  {name:<20} {default or '(derived)':<14} {source}" for name, default, source in RECIPE)
    parser = argparse.ArgumentParser(
        description=slurm.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Variables (default; source):\n{variables}\n  and TRAIN_DATA (required), PRETRAINED, VAL_DATA, "
               "GPUS_PER_NODE, NNODES, WORKERS, LOGS, NAME, ...: docs/slurm.md")
    parser.add_argument("mode", choices=MODES, help="one node (torchrun --standalone) or several (c10d rendezvous)")
    parser.add_argument("train_args", nargs="*", metavar="OPEN_CLIP_TRAIN_ARG",
                        help="passed on to open_clip_train after the launcher's own (the recipe is set by variables)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(build_parser().format_help(), end="")
        return 0 if argv else 2
    try:
        command, env_updates, summary = launch_command(argv[0], os.environ, argv[1:])
    except LaunchError as error:
        print(f"{PREFIX}: {error}; nothing was started", file=sys.stderr, flush=True)
        return 1
    train = command[command.index("--", command.index("open_clip_train.main")) + 1:]
    value = dict(zip(train, train[1:]))  # the last occurrence of a flag, as argparse takes it
    checkpoints = os.path.join(value["--logs"], value["--name"], "checkpoints")
    for path in set_aside_incomplete_checkpoints(checkpoints):
        print(f"{PREFIX}: {path} was cut short while being written: kept as {path}.incomplete, "
              "the run resumes from the checkpoint before it", flush=True)
    final = os.path.join(checkpoints, f"epoch_{value['--epochs']}.pt")
    if os.path.exists(final):  # e.g. the last of a chain of --dependency=afterany jobs
        print(f"{PREFIX}: the run already finished ({final}); nothing to do", flush=True)
        return 0
    print(f"{PREFIX}: {summary}", flush=True)
    print("+ " + shlex.join(command), flush=True)
    os.environ.update(env_updates)
    os.execvp(command[0], command)


def cli() -> None:
    """The ``unimlip-slurm`` console command and ``scripts/slurm.py``: exits with :func:`main`'s status
    (on success the process has become ``srun``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
