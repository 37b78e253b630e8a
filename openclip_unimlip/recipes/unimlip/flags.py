"""The ``--unimlip-*`` command-line flags of ``open_clip_train.main`` for Uni-Mlip models.

OpenCLIP's parser is strict, so our flags are split off first (``split_argv``) and the
rest goes to OpenCLIP's unchanged. Loss weights default to the paper's; method
hyper-parameters default to the model config's ``unimlip_cfg`` (``None`` = keep); the SimCLR
start epoch, when not given, follows from ``--pretrained`` (``resolve_simclr_start``).
"""
import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from openclip_unimlip.recipes.unimlip.loss import LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD, PAPER_SIMCLR_TEMPERATURE, PAPER_WEIGHTS
from openclip_unimlip.recipes.unimlip.terms import TERMS

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("Uni-Mlip (openclip-unimlip); only for unimlip-* models")
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
    group.add_argument(f"{PREFIX}no-bn-freeze", action="store_true",
                       help="keep BatchNorm statistics updating while SimCLR is on (the naive baseline of Table 3)")
    group.add_argument(f"{PREFIX}feed-views", action="store_true",
                       help="forward the SimCLR views through the image tower even with SimCLR weight 0 "
                            "(the 'views fed, no SimCLR' row of Table 3)")
    group.add_argument(f"{PREFIX}dropblock-shared-mask", action="store_true",
                       help="one DropBlock mask shared by all channels of a sample (default: a mask per channel, "
                            "DropBlock's Algorithm 1)")
    group.add_argument(f"{PREFIX}itc-on-clean-caption", action="store_true",
                       help="run ITC on the clean caption with a second text pass (default: the masked caption, as PMC-CLIP)")
    group.add_argument(f"{PREFIX}view-crop-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                       help="re-crop each SimCLR view from the clean view with this RandomResizedCrop scale "
                            "(default: no re-crop; the views share the clean view's crop, as the paper lists no crop)")
    for suffix, (_, kind, help_text) in _CFG_OVERRIDES.items():
        group.add_argument(f"{PREFIX}{suffix}", type=kind, default=None, help=help_text)
    return parser


def split_argv(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str], bool]:
    """(our options, OpenCLIP's argv, whether any of our flags was given)."""
    argv = list(argv)
    given = any(a.startswith(PREFIX) for a in argv)
    ours, rest = build_parser().parse_known_args(argv)
    leftover = [a for a in rest if a.startswith(PREFIX)]
    if leftover:
        raise SystemExit(f"error: unrecognized Uni-Mlip arguments: {' '.join(leftover)} "
                         f"(see --help for the {PREFIX}* flags)")
    return ours, rest, given


def loss_weights(options: argparse.Namespace) -> Dict[str, float]:
    return {term: getattr(options, f"unimlip_{term}_weight") for term in TERMS}


def cfg_overrides(options: argparse.Namespace) -> Dict:
    overrides = {}
    for suffix, (key, _, _) in _CFG_OVERRIDES.items():
        value = getattr(options, f"unimlip_{suffix.replace('-', '_')}")
        if value is not None:
            overrides[key] = value
    if options.unimlip_no_bn_freeze:
        overrides["freeze_bn_with_simclr"] = False
    if options.unimlip_itc_on_clean_caption:
        overrides["itc_on_clean_caption"] = True
    if options.unimlip_dropblock_shared_mask:
        overrides["dropblock_per_channel"] = False
    if options.unimlip_feed_views:
        overrides["feed_views_without_simclr"] = True
    if options.unimlip_view_crop_scale is not None:
        overrides["view_crop_scale"] = tuple(options.unimlip_view_crop_scale)
    return overrides


def validate(options: argparse.Namespace, args: argparse.Namespace, model_section: dict) -> Optional[str]:
    """A clear error message for unknown or contradictory values, or None. ``model_section``: the
    model JSON's ``unimlip_cfg``, which the flags override."""
    weights = loss_weights(options)
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
    from openclip_unimlip.recipes.unimlip.model import UniMlipCfg

    try:
        cfg = UniMlipCfg.from_dict({**model_section, **cfg_overrides(options)})
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
    from openclip_unimlip.recipes.unimlip.model import UniMlipCfg

    cfg = UniMlipCfg.from_dict({**model_section, **cfg_overrides(options)})
    simclr = loss_weights(options)["simclr"] > 0
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


def create_unimlip_loss(args: argparse.Namespace, model_cfg: dict):
    """The Uni-Mlip recipe's loss factory (see ``openclip_unimlip.recipes``): OpenCLIP's distributed flags plus
    our ``--unimlip-*`` options, which the parse_args patch put on ``args`` (paper defaults otherwise)."""
    from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss

    defaults = vars(build_parser().parse_args([]))
    options = argparse.Namespace(**{k: getattr(args, k, v) for k, v in defaults.items()})
    return UniMlipLoss(
        weights=loss_weights(options),
        simclr_temperature=options.unimlip_simclr_temperature,
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        rank=args.rank,
        world_size=args.world_size,
    )
