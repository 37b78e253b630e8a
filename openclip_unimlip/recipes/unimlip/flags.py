"""The ``--unimlip-*`` command-line flags of ``open_clip_train.main`` for Uni-Mlip models: the
recipe's flag group (``FLAGS``, see ``recipes/flag_group.py``) and its loss factory.

Loss weights default to the paper's; method hyper-parameters default to the model config's
``unimlip_cfg`` (``None`` = keep); the SimCLR start epoch, when not given, follows from
``--pretrained`` (``resolve_simclr_start``). The values live on OpenCLIP's ``args``
(``unimlip_<flag>``), where the loss factory and the model read them, and in the run's
``params.txt``, where the export reads them; a value absent there is the default.
"""
import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from openclip_unimlip.recipes.distributed import distributed_flags
from openclip_unimlip.recipes.flag_group import FlagGroup
from openclip_unimlip.recipes.run_params import read_params
from openclip_unimlip.recipes.unimlip.loss import LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD, PAPER_SIMCLR_TEMPERATURE, PAPER_WEIGHTS
from openclip_unimlip.recipes.unimlip.config import TERMS

PREFIX = "--unimlip-"

# flag suffix -> unimlip_cfg key, for the method hyper-parameters the trainer can override
_CFG_OVERRIDES = {
    "mlm-probability": ("mlm_probability", float, "fraction of caption tokens masked for MLM (paper: 0.15)"),
    "mlm-replacement": ("mlm_replacement", str, "what a masked caption token becomes: 'mask', [MASK] always (the "
                                                "paper, sec. 3.4; default) or 'bert', BERT's 80%% [MASK] / 10%% "
                                                "random token / 10%% unchanged"),
    "dropblock-prob": ("dropblock_prob", float, "DropBlock probability on the layer-4 map (paper: 0.5)"),
    "dropblock-size": ("dropblock_size", int, "DropBlock block size (paper: 3)"),
    "text-dropout": ("text_dropout", float, "dropout on the text feature (paper: 0.75)"),
    "fusion-image-tokens": ("fusion_image_tokens", str, "'pooled' (PMC-CLIP) or 'grid' (layer-4 map) image tokens for MLM"),
    "simclr-head": ("simclr_head", str, "'none' (image embedding) or 'mlp' (SLIP projection head)"),
    "view-augmentation": ("view_augmentation", str, "strengths of the SimCLR views: 'simclr' (SimCLR's: jitter 0.8, "
                                                    "hue 0.2) or 'mocov2' (SLIP's: jitter 0.4, hue 0.1)"),
}
# switch flag suffix -> (unimlip_cfg key, the value the switch sets, help)
_CFG_SWITCHES = {
    "no-bn-freeze": ("freeze_bn_with_simclr", False,
                     "keep BatchNorm statistics updating while SimCLR is on (the naive baseline of Table 3)"),
    "feed-views": ("feed_views_without_simclr", True,
                   "forward the SimCLR views through the image tower even with SimCLR weight 0 "
                   "(the 'views fed, no SimCLR' row of Table 3)"),
    "dropblock-shared-mask": ("dropblock_per_channel", False,
                              "one DropBlock mask shared by all channels of a sample (default: a mask per channel, "
                              "DropBlock's Algorithm 1)"),
    "itc-on-clean-caption": ("itc_on_clean_caption", True,
                             "run ITC on the clean caption with a second text pass (default: the masked caption, "
                             "as PMC-CLIP)"),
}


def _dest(suffix: str) -> str:
    return f"unimlip_{suffix.replace('-', '_')}"


def add_arguments(group) -> None:
    for term in TERMS:
        group.add_argument(
            f"{PREFIX}{term.replace('_', '-')}-weight", type=float, default=PAPER_WEIGHTS[term],
            help=f"weight of the {term} loss term; 0 switches it off (default: {PAPER_WEIGHTS[term]:.4g})")
    group.add_argument(f"{PREFIX}simclr-temperature", type=float, default=PAPER_SIMCLR_TEMPERATURE,
                       help=f"SimCLR temperature (default: {PAPER_SIMCLR_TEMPERATURE})")
    group.add_argument(f"{PREFIX}simclr-start-epoch", type=int, default=None,
                       help="first epoch (0-based) with the SimCLR term and frozen BatchNorm statistics (default: "
                            "0 with --pretrained, the paper's start from PMC-CLIP's weights; without it, half of "
                            "--epochs, a warm-up of ours; a resumed run keeps the epoch of its first launch)")
    for suffix, (_, _, help_text) in _CFG_SWITCHES.items():
        group.add_argument(f"{PREFIX}{suffix}", action="store_true", help=help_text)
    group.add_argument(f"{PREFIX}view-crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                       help="re-crop each SimCLR view from the clean view with this RandomResizedCrop scale "
                            "(default: no re-crop; the views share the clean view's crop, as the paper lists no crop)")
    for suffix, (_, kind, help_text) in _CFG_OVERRIDES.items():
        group.add_argument(f"{PREFIX}{suffix}", type=kind, default=None, help=help_text)


def loss_weights(values: Mapping[str, Any]) -> Dict[str, float]:
    """The five terms' weights from a run's ``vars(args)`` or ``params.txt`` (the paper's where absent)."""
    return {term: values.get(f"unimlip_{term}_weight", PAPER_WEIGHTS[term]) for term in TERMS}


def cfg_overrides(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``unimlip_cfg`` keys the flags change, from a run's ``vars(args)`` or ``params.txt``."""
    overrides = {}
    for suffix, (key, _, _) in _CFG_OVERRIDES.items():
        if values.get(_dest(suffix)) is not None:
            overrides[key] = values[_dest(suffix)]
    for suffix, (key, value, _) in _CFG_SWITCHES.items():
        if values.get(_dest(suffix)):
            overrides[key] = value
    if values.get("unimlip_view_crop_scale") is not None:
        overrides["view_crop_scale"] = tuple(values["unimlip_view_crop_scale"])
    return overrides


def validate(options: argparse.Namespace, args: argparse.Namespace, model_section: dict) -> Optional[str]:
    """A clear error message for unknown or contradictory values, or None. ``model_section``: the
    model JSON's ``unimlip_cfg``, which the flags override."""
    weights = loss_weights(vars(options))
    negative = {t: w for t, w in weights.items() if w < 0}
    if negative:
        return f"loss weights must be >= 0, got {negative}"
    if not any(weights.values()):
        return "every Uni-Mlip loss weight is 0: nothing to train"
    if options.unimlip_simclr_temperature <= 0:
        return f"--unimlip-simclr-temperature must be > 0, got {options.unimlip_simclr_temperature}"
    start = options.unimlip_simclr_start_epoch  # None: not resolved yet (resolve_simclr_start)
    if start is not None and start < 0:
        return f"--unimlip-simclr-start-epoch must be >= 0, got {start}"
    if start is not None and weights["simclr"] > 0 and start >= args.epochs:
        return (f"--unimlip-simclr-start-epoch {start} is not before --epochs {args.epochs}: SimCLR would never run; "
                "set --unimlip-simclr-weight 0 to train without it")
    if getattr(args, "distill", False) or getattr(args, "distill_model", None):
        return "distillation is not supported with Uni-Mlip models"
    if getattr(args, "siglip", False):
        return "--siglip is not supported with Uni-Mlip models (the ITC terms are CLIP's softmax loss)"
    if getattr(args, "horovod", False):
        return "horovod is not supported with Uni-Mlip models; use torchrun"
    if getattr(args, "local_loss", False) and not getattr(args, "gather_with_grad", False):
        return LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD  # refused at every world size: see loss.py
    from openclip_unimlip.recipes.unimlip.config import UniMlipCfg

    try:
        cfg = UniMlipCfg.from_dict({**model_section, **cfg_overrides(vars(options))})
    except ValueError as exc:
        return str(exc)
    if start is not None and weights["simclr"] > 0 and cfg.simclr_head == "mlp" and start > 0:
        return ("a SimCLR MLP head with --unimlip-simclr-start-epoch > 0 has no gradient in the first epochs, "
                "which DDP (built without find_unused_parameters) rejects; start SimCLR at epoch 0")
    return None


def scratch_warmup_epochs(epochs: int) -> int:
    """Epochs without SimCLR before a run from scratch freezes BatchNorm statistics for it. Ours: half
    the run, as in the paper's own schedule, where SimCLR has the second half: PMC-CLIP's 100 epochs
    without it, then 100 with it from PMC-CLIP's weights (sec. 4.2, "Implementation Details")."""
    return epochs // 2


@dataclass(frozen=True)
class SimclrStart:
    epoch: int
    reason: str  # how it was chosen, for the run's log


@dataclass(frozen=True)
class RecordedStart:
    """The SimCLR start epoch a resumed run was first launched with (its ``params.txt``)."""
    epoch: int
    pretrained: bool  # whether that launch had --pretrained
    source: str  # where it was read


def _frozen_from_the_initial_statistics(how: str, remedy: str) -> str:
    return (f"SimCLR with frozen BatchNorm statistics from epoch 0 without --pretrained ({how}) keeps the statistics "
            f"at their initial values (mean 0, variance 1) for the whole run: {remedy}")


def resolve_simclr_start(options: argparse.Namespace, args: argparse.Namespace, model_section: dict,
                         recorded: Optional[RecordedStart] = None) -> SimclrStart:
    """The first epoch of the SimCLR phase (and of frozen BatchNorm statistics, where they freeze):
    ``--unimlip-simclr-start-epoch`` when given; else, for a resumed run, the epoch its first launch
    chose (``recorded``), so changing ``--epochs`` or dropping ``--pretrained`` on resume moves nothing;
    else 0 with ``--pretrained`` (the paper) or when nothing freezes, and after
    ``scratch_warmup_epochs`` from scratch. Raises ValueError for a run whose statistics would stay
    at their initial values, and for a warm-up the run cannot hold."""
    from openclip_unimlip.recipes.unimlip.config import UniMlipCfg

    cfg = UniMlipCfg.from_dict({**model_section, **cfg_overrides(vars(options))})
    simclr = loss_weights(vars(options))["simclr"] > 0
    freezes = (simclr or cfg.feed_views_without_simclr) and cfg.freeze_bn_with_simclr
    given = options.unimlip_simclr_start_epoch
    if given is not None:
        if given == 0 and freezes and not args.pretrained:
            raise ValueError(_frozen_from_the_initial_statistics(
                "--unimlip-simclr-start-epoch 0", "start from trained weights (--pretrained, as the paper from "
                "PMC-CLIP's), leave --unimlip-simclr-start-epoch unset for a warm-up of half the epochs, or keep "
                "the statistics updating (--unimlip-no-bn-freeze)"))
        return SimclrStart(given, f"--unimlip-simclr-start-epoch {given}")
    if recorded is not None:
        if recorded.epoch == 0 and freezes and not (args.pretrained or recorded.pretrained):
            raise ValueError(_frozen_from_the_initial_statistics(
                f"as the run's first launch recorded in {recorded.source}",
                "start a new run (another --name), or choose a start with --unimlip-simclr-start-epoch"))
        return SimclrStart(recorded.epoch, f"the run's first launch chose it ({recorded.source})")
    if not (simclr or cfg.feed_views_without_simclr):
        return SimclrStart(0, "no strong views (SimCLR weight 0), so no SimCLR phase")
    if args.pretrained:
        return SimclrStart(0, f"--pretrained {args.pretrained}: SimCLR and frozen statistics from the start, as the "
                              "paper from PMC-CLIP's weights (sec. 4.2)")
    if not freezes:
        return SimclrStart(0, "BatchNorm statistics keep updating (--unimlip-no-bn-freeze), so no warm-up")
    start = scratch_warmup_epochs(args.epochs)
    if start < 1:
        raise ValueError(f"--epochs {args.epochs} without --pretrained leaves no epoch for the warm-up before SimCLR "
                         "freezes the BatchNorm statistics (ours: half the epochs): train more epochs, start from "
                         "--pretrained weights, set --unimlip-simclr-weight 0, or pass --unimlip-no-bn-freeze")
    if simclr and cfg.simclr_head == "mlp":
        raise ValueError("a SimCLR MLP head needs SimCLR from epoch 0 (DDP, built without find_unused_parameters, "
                         "rejects a head without gradient), but without --pretrained SimCLR with frozen BatchNorm "
                         f"statistics waits for a warm-up (until epoch {start}): start from --pretrained weights, "
                         "pass --unimlip-no-bn-freeze, or use --unimlip-simclr-head none")
    return SimclrStart(start, f"no --pretrained: a warm-up of half of --epochs {args.epochs} without SimCLR first (ours; "
                              "the paper gives SimCLR the second half of its schedule, sec. 4.2)")


def recorded_start(first_launch: Optional[Path]) -> Optional[RecordedStart]:
    """The SimCLR start a resumed run's first launch recorded in its ``params.txt``, or None."""
    if first_launch is None:
        return None
    params = read_params(first_launch)
    start = params.get("unimlip_simclr_start_epoch")
    if not isinstance(start, int):
        return None
    return RecordedStart(start, bool(params.get("pretrained")), str(first_launch))


class UniMlipFlags(FlagGroup):
    prefix = PREFIX
    recipe = "Uni-Mlip"

    def add_arguments(self, group) -> None:
        add_arguments(group)

    def resolve(self, options, args, model_section, first_launch):
        try:
            start = resolve_simclr_start(options, args, model_section, recorded_start(first_launch))
        except ValueError as exc:
            return str(exc)
        options.unimlip_simclr_start_epoch = start.epoch
        options.unimlip_simclr_start_reason = start.reason  # logged when the run's model is built
        return validate(options, args, model_section)

    def model_overrides(self, values):
        return cfg_overrides(values)

    def configure_model(self, model, args) -> None:
        """The run's terms (a weight of 0 switches its branch off) and, once, why SimCLR starts when it does."""
        model.configure_terms([t for t, w in loss_weights(vars(args)).items() if w > 0])
        reason = getattr(args, "unimlip_simclr_start_reason", None)
        if reason and getattr(args, "rank", 0) == 0:  # the global master, as open_clip_train's is_master
            logging.info(f"Uni-Mlip: SimCLR phase from epoch {args.unimlip_simclr_start_epoch}: {reason}")


FLAGS = UniMlipFlags()


def split_argv(argv):
    return FLAGS.split_argv(argv)


def create_unimlip_loss(args: argparse.Namespace, model_cfg: dict):
    """The Uni-Mlip recipe's loss factory (see ``openclip_unimlip.recipes``): OpenCLIP's distributed flags plus
    the ``--unimlip-*`` values on ``args`` (the paper's where ``args`` has none, e.g. outside the trainer)."""
    from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss

    values = vars(args)
    return UniMlipLoss(
        weights=loss_weights(values),
        simclr_temperature=values.get("unimlip_simclr_temperature", PAPER_SIMCLR_TEMPERATURE),
        **distributed_flags(args),
    )
