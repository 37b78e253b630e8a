"""A recipe's run options: one frozen dataclass whose fields are its ``open_clip_train`` flags.

Each option is declared once, as a field of the recipe's ``RunOptions`` subclass (``Recipe.flags``):
its type, its default and its help (with the source of the default). From the fields come the
``--<prefix>-<field>`` flags and their argparse names ``<prefix>_<field>`` (``add_arguments``), and
the argv that sets given values (``to_argv``: what the studies and the Slurm launcher build runs
with). Fields with ``metadata["term"]`` are the run's loss weights: they override the
``loss_weights`` of the model config's section, the weights' one home for every recipe (see
``recipes/config.py``, ``check_loss_weights``).

How one run's options travel: OpenCLIP's parser is strict, so the seam splits each recipe's flags
off the command line first (``split_argv``: parsed once, into the options object); the model's
recipe checks them against OpenCLIP's ``args`` and the model config and fills in the values that
follow from them (``resolve``, before anything starts); their ``record`` goes on OpenCLIP's
``args`` under the argparse names, where ``params.txt`` and wandb record them as they record every
flag. Every reader gets the typed object back through the same class: from the run's ``args``
(``from_args``: the loss factory, the run's model config, the epoch hook) or from its
``params.txt`` (``from_values`` of ``run_params.read_params``: the export); a value absent there is
the field's default.
"""
import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

Options = TypeVar("Options", bound="RunOptions")


def loss_weight(term: str, section: str) -> Any:
    """The run's weight of the loss term ``term``, over ``<section>.loss_weights`` (None: the config's)."""
    return dataclasses.field(default=None, metadata={
        "term": term,
        "help": f"weight of the {term} loss term (default: the model config's {section}.loss_weights); "
                "0 switches the term off"})


def config_override(key: str, help_text: str, metavar: Optional[Tuple[str, ...]] = None) -> Any:
    """A value the run sets for the section's ``key`` (None: keep the model config's)."""
    return dataclasses.field(default=None, metadata={"overrides": key, "help": help_text, "metavar": metavar})


def config_switch(key: str, value: Any, help_text: str) -> Any:
    """A switch that sets the section's ``key`` to ``value`` for the run."""
    return dataclasses.field(default=False, metadata={"sets": (key, value), "help": help_text})


def derived(help_text: str) -> Any:
    """A value no flag sets: ``resolve`` derives it from the others; recorded with them."""
    return dataclasses.field(default=None, metadata={"flag": False, "help": help_text})


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Base of a recipe's run options: subclass it as a frozen dataclass, set ``prefix`` and
    ``recipe``, declare each option as a field (``loss_weight``, ``config_override``,
    ``config_switch``, ``derived`` or a plain field with ``metadata={"help": ...}``) and, where the
    recipe needs them, override ``resolve`` and ``configure_model``."""

    prefix: ClassVar[str] = ""  # e.g. "unimlip": flags --unimlip-*, argparse names unimlip_*
    recipe: ClassVar[str] = ""  # the method's name in messages, e.g. "Uni-Mlip"
    # the recipe's config-section dataclass (with ``from_dict``): resolve checks the run's section with it
    section_class: ClassVar[Optional[type]] = None

    # ----- the flags, generated from the fields ------------------------------------------------
    @classmethod
    def flag_prefix(cls) -> str:
        return f"--{cls.prefix.replace('_', '-')}-"

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.flag_prefix() + name.replace("_", "-")

    @classmethod
    def dest(cls, name: str) -> str:
        return f"{cls.prefix}_{name}"

    @classmethod
    def flag_fields(cls) -> Tuple[dataclasses.Field, ...]:
        return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("flag", True))

    @classmethod
    def add_arguments(cls, group) -> None:
        hints = typing.get_type_hints(cls)
        for f in cls.flag_fields():
            kind = hints[f.name]
            if typing.get_origin(kind) is typing.Union:  # Optional[X]: None means "not given"
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            spec = {"dest": cls.dest(f.name), "default": f.default, "help": f.metadata["help"]}
            if kind is bool:
                if f.default is not False:
                    raise TypeError(f"{cls.__name__}.{f.name}: a switch defaults to False")
                group.add_argument(cls.flag(f.name), action="store_true", **spec)
            elif typing.get_origin(kind) is tuple:
                items = typing.get_args(kind)
                group.add_argument(cls.flag(f.name), type=items[0], nargs=len(items),
                                   metavar=f.metadata.get("metavar"), **spec)
            else:
                group.add_argument(cls.flag(f.name), type=kind, **spec)

    @classmethod
    def build_parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        cls.add_arguments(parser.add_argument_group(f"{cls.recipe} (openclip-unimlip); only for {cls.recipe} models"))
        return parser

    @classmethod
    def flag_names(cls) -> Tuple[str, ...]:
        """The argparse names of the flags (what a model card lists)."""
        return tuple(cls.dest(f.name) for f in cls.flag_fields())

    @classmethod
    def split_argv(cls: typing.Type[Options], argv: Sequence[str]) -> Tuple[Options, List[str], bool]:
        """(the options ``argv`` sets, the rest of ``argv``, whether any of these flags was given)."""
        argv = list(argv)
        given = any(a.startswith(cls.flag_prefix()) for a in argv)
        parsed, rest = cls.build_parser().parse_known_args(argv)
        leftover = [a for a in rest if a.startswith(cls.flag_prefix())]
        if leftover:
            raise SystemExit(f"error: unrecognized {cls.recipe} arguments: {' '.join(leftover)} "
                             f"(see --help for the {cls.flag_prefix()}* flags)")
        return cls.from_values(vars(parsed)), rest, given

    def to_argv(self) -> List[str]:
        """The flags that set these options; those at their default are left out (field order)."""
        argv = []
        for f in self.flag_fields():
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if value is True:
                argv.append(self.flag(f.name))
            else:
                argv += [self.flag(f.name), *map(_argv_text, value if isinstance(value, tuple) else (value,))]
        return argv

    # ----- the record on OpenCLIP's args and in params.txt ---------------------------------------
    def record(self) -> Dict[str, Any]:
        """The values as they go on OpenCLIP's ``args`` (and so into ``params.txt`` and wandb)."""
        return {self.dest(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_values(cls: typing.Type[Options], values: Mapping[str, Any]) -> Options:
        """The options recorded in ``values``: a run's ``vars(args)`` or its ``params.txt``
        (``run_params.read_params``); a value absent there is the field's default."""
        given = {}
        for f in dataclasses.fields(cls):
            if cls.dest(f.name) in values:
                value = values[cls.dest(f.name)]
                given[f.name] = tuple(value) if isinstance(value, list) else value  # nargs and params.txt: lists
        return cls(**given)

    @classmethod
    def from_args(cls: typing.Type[Options], args: argparse.Namespace) -> Options:
        return cls.from_values(vars(args))

    # ----- what a recipe fills in ------------------------------------------------------------------
    def loss_weights(self) -> Dict[str, float]:
        """The loss weights the run sets (term -> weight), over its section's ``loss_weights``."""
        fields = dataclasses.fields(self)
        return {f.metadata["term"]: getattr(self, f.name) for f in fields
                if "term" in f.metadata and getattr(self, f.name) is not None}

    def model_section(self, section: Mapping[str, Any]) -> Dict[str, Any]:
        """The model config's section with the run's options over it: what the run's model and loss
        are built from, and what its export carries."""
        section = dict(section)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "overrides" in f.metadata and value is not None:
                section[f.metadata["overrides"]] = value
            elif "sets" in f.metadata and value:
                key, setting = f.metadata["sets"]
                section[key] = setting
        if self.loss_weights():
            section["loss_weights"] = {**section.get("loss_weights", {}), **self.loss_weights()}
        return section

    def resolve(self: Options, args: argparse.Namespace, section: Mapping[str, Any],
                first_launch: Optional[Path]) -> Options:
        """These options checked against OpenCLIP's ``args`` and the model config's ``section``, with
        the values that follow from them filled in; ``first_launch``: a resumed run's ``params.txt`` as
        its first launch wrote it (None for a new run). Raises ValueError with the message. Here: the
        section the run's options make, checked by ``section_class``, before the run starts."""
        if self.section_class is not None:
            self.section_class.from_dict(self.model_section(section))
        return self

    def configure_model(self, model, args: argparse.Namespace) -> None:
        """Called on the model ``open_clip_train`` builds for the run of ``args``."""


def _argv_text(value: Any) -> str:
    # an integral float as an integer ("0"): the spelling the studies have always launched runs with,
    # part of their cached runs' settings hashes
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
