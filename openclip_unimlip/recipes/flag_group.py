"""A recipe's own ``open_clip_train`` flags (``--<recipe>-*``), as the seam sees them.

OpenCLIP's parser is strict, so each recipe's flags are split off the command line first
(``split_argv``) and the rest goes to OpenCLIP's parser unchanged. The values then live on
OpenCLIP's ``args`` under their argparse names (so ``params.txt`` and wandb record them), and every
reader takes them from there: the loss factory and ``configure_model`` from the run's ``args``, the
export from the run's ``params.txt`` (``model_overrides`` reads either, a missing value meaning
"keep the model config's").

A recipe subclasses ``FlagGroup``, fills in ``add_arguments`` and, where it needs them,
``resolve`` (validation and derived values, before anything starts), ``model_overrides`` (the
config section's values its flags change) and ``configure_model``.
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


class FlagGroup:
    prefix: str = ""  # e.g. "--unimlip-"
    recipe: str = ""  # the method's name in messages, e.g. "Uni-Mlip"

    def add_arguments(self, group) -> None:
        raise NotImplementedError

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        self.add_arguments(parser.add_argument_group(f"{self.recipe} (openclip-unimlip); only for {self.recipe} models"))
        return parser

    def split_argv(self, argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str], bool]:
        """(this group's values, the rest of ``argv``, whether any of this group's flags was given)."""
        argv = list(argv)
        given = any(a.startswith(self.prefix) for a in argv)
        ours, rest = self.build_parser().parse_known_args(argv)
        leftover = [a for a in rest if a.startswith(self.prefix)]
        if leftover:
            raise SystemExit(f"error: unrecognized {self.recipe} arguments: {' '.join(leftover)} "
                             f"(see --help for the {self.prefix}* flags)")
        return ours, rest, given

    def resolve(self, options: argparse.Namespace, args: argparse.Namespace, model_section: dict,
                first_launch: Optional[Path]) -> Optional[str]:
        """Check ``options`` against OpenCLIP's ``args`` and the model config's section, and set the
        values that follow from them on ``options``. ``first_launch``: a resumed run's ``params.txt``
        as its previous launch wrote it (None for a new run). Returns an error message, or None."""
        return None

    def model_overrides(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """The config-section keys this group's values change; ``values``: the run's ``vars(args)``
        or its ``params.txt``."""
        return {}

    def configure_model(self, model, args: argparse.Namespace) -> None:
        """Called on the model ``open_clip_train`` builds for the run of ``args``."""

    def flag_names(self) -> Tuple[str, ...]:
        """The argparse names of this group's flags (what a model card lists)."""
        return tuple(vars(self.build_parser().parse_args([])))
