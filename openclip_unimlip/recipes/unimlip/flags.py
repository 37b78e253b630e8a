"""Uni-Mlip's run options: the ``--unimlip-*`` flags of ``open_clip_train.main`` for Uni-Mlip models
(``UniMlipOptions``, the recipe's flag group; the machinery is ``recipes/run_options.py``).

The loss weights and the method hyper-parameters override the model config's ``unimlip_cfg``
(``None``: keep it; its defaults are the paper's, ``config.py``); the SimCLR start epoch, when not
given, follows from ``--pretrained`` by the rule in ``phases.py``. ``resolve`` checks every value
before the run starts.
"""
import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from openclip_unimlip.recipes.distributed import local_loss_needs_gather_with_grad
from openclip_unimlip.recipes.run_options import RunOptions, config_override, config_switch, derived, loss_weight
from openclip_unimlip.recipes.run_params import read_params
from openclip_unimlip.recipes.unimlip.config import PAPER_SIMCLR_TEMPERATURE, UniMlipCfg
from openclip_unimlip.recipes.unimlip.phases import RecordedStart, resolve_simclr_start


@dataclasses.dataclass(frozen=True)
class UniMlipOptions(RunOptions):
    prefix = "unimlip"
    recipe = "Uni-Mlip"

    # the order of the fields is the order of to_argv's flags, which the ablation's cached runs were
    # launched with (their settings hashes cover the argv)
    itc_weight: Optional[float] = loss_weight("itc", "unimlip_cfg")
    image_perturbed_itc_weight: Optional[float] = loss_weight("image_perturbed_itc", "unimlip_cfg")
    text_perturbed_itc_weight: Optional[float] = loss_weight("text_perturbed_itc", "unimlip_cfg")
    simclr_weight: Optional[float] = loss_weight("simclr", "unimlip_cfg")
    mlm_weight: Optional[float] = loss_weight("mlm", "unimlip_cfg")
    simclr_temperature: float = dataclasses.field(default=PAPER_SIMCLR_TEMPERATURE, metadata={
        "help": f"SimCLR temperature (default: {PAPER_SIMCLR_TEMPERATURE})"})
    simclr_start_epoch: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "first epoch (0-based) with the SimCLR term and frozen BatchNorm statistics (default: 0 with "
                "--pretrained, the paper's start from PMC-CLIP's weights; without it, half of --epochs, a "
                "warm-up of ours; a resumed run keeps the epoch of its first launch)"})
    feed_views: bool = config_switch("feed_views_without_simclr", True,
                                     "forward the SimCLR views through the image tower even with SimCLR weight 0 "
                                     "(the 'views fed, no SimCLR' row of Table 3)")
    no_bn_freeze: bool = config_switch("freeze_bn_with_simclr", False,
                                       "keep BatchNorm statistics updating while SimCLR is on (the naive baseline "
                                       "of Table 3)")
    dropblock_shared_mask: bool = config_switch("dropblock_per_channel", False,
                                                "one DropBlock mask shared by all channels of a sample (default: a "
                                                "mask per channel, DropBlock's Algorithm 1)")
    itc_on_clean_caption: bool = config_switch("itc_on_clean_caption", True,
                                               "run ITC on the clean caption with a second text pass (default: the "
                                               "masked caption, as PMC-CLIP)")
    view_crop_scale: Optional[Tuple[float, float]] = config_override(
        "view_crop_scale", "re-crop each SimCLR view from the clean view with this RandomResizedCrop scale (default: "
        "no re-crop; the views share the clean view's crop, as the paper lists no crop)", metavar=("MIN", "MAX"))
    mlm_probability: Optional[float] = config_override(
        "mlm_probability", "fraction of caption tokens masked for MLM (paper: 0.15)")
    mlm_replacement: Optional[str] = config_override(
        "mlm_replacement", "what a masked caption token becomes: 'mask', [MASK] always (the paper, sec. 3.4; "
        "default) or 'bert', BERT's 80%% [MASK] / 10%% random token / 10%% unchanged")
    dropblock_prob: Optional[float] = config_override(
        "dropblock_prob", "DropBlock probability on the layer-4 map (paper: 0.5)")
    dropblock_size: Optional[int] = config_override("dropblock_size", "DropBlock block size (paper: 3)")
    text_dropout: Optional[float] = config_override("text_dropout", "dropout on the text feature (paper: 0.75)")
    fusion_image_tokens: Optional[str] = config_override(
        "fusion_image_tokens", "'pooled' (PMC-CLIP) or 'grid' (layer-4 map) image tokens for MLM")
    simclr_head: Optional[str] = config_override(
        "simclr_head", "'none' (image embedding) or 'mlp' (SLIP projection head)")
    view_augmentation: Optional[str] = config_override(
        "view_augmentation", "strengths of the SimCLR views: 'simclr' (SimCLR's: jitter 0.8, hue 0.2) or "
        "'mocov2' (SLIP's: jitter 0.4, hue 0.1)")
    simclr_start_reason: Optional[str] = derived(
        "how the SimCLR start epoch was chosen, logged when the model is built")

    def resolve(self, args: argparse.Namespace, section: Mapping[str, Any],
                first_launch: Optional[Path]) -> "UniMlipOptions":
        """The one check of a Uni-Mlip run's options, with the SimCLR start epoch chosen."""
        cfg = UniMlipCfg.from_dict(self.model_section(section))  # the weights and hyper-parameters
        recorded = recorded_start(first_launch)  # a resumed run keeps the start of its first launch
        start = resolve_simclr_start(self.simclr_start_epoch, cfg, args.pretrained, args.epochs, recorded)
        resolved = dataclasses.replace(self, simclr_start_epoch=start.epoch, simclr_start_reason=start.reason)
        resolved._check(args, cfg)
        return resolved

    def _check(self, args: argparse.Namespace, cfg: UniMlipCfg) -> None:
        if self.simclr_temperature <= 0:
            raise ValueError(f"--unimlip-simclr-temperature must be > 0, got {self.simclr_temperature}")
        start, simclr = self.simclr_start_epoch, cfg.loss_weights["simclr"] > 0
        if start < 0:
            raise ValueError(f"--unimlip-simclr-start-epoch must be >= 0, got {start}")
        if simclr and start >= args.epochs:
            raise ValueError(f"--unimlip-simclr-start-epoch {start} is not before --epochs {args.epochs}: SimCLR "
                             "would never run; set --unimlip-simclr-weight 0 to train without it")
        if getattr(args, "distill", False) or getattr(args, "distill_model", None):
            raise ValueError("distillation is not supported with Uni-Mlip models")
        if getattr(args, "siglip", False):
            raise ValueError("--siglip is not supported with Uni-Mlip models (the ITC terms are CLIP's softmax loss)")
        if getattr(args, "horovod", False):
            raise ValueError("horovod is not supported with Uni-Mlip models; use torchrun")
        if getattr(args, "local_loss", False) and not getattr(args, "gather_with_grad", False):
            # refused at every world size, not only where the loss would refuse it: see loss.py
            raise ValueError(local_loss_needs_gather_with_grad("Uni-Mlip models"))
        if simclr and cfg.simclr_head == "mlp" and start > 0:
            raise ValueError("a SimCLR MLP head with --unimlip-simclr-start-epoch > 0 has no gradient in the first "
                             "epochs, which DDP (built without find_unused_parameters) rejects; start SimCLR at "
                             "epoch 0")

    def configure_model(self, model, args: argparse.Namespace) -> None:
        """Once, why SimCLR starts when it does (the model's terms come with its config)."""
        if self.simclr_start_reason and getattr(args, "rank", 0) == 0:  # the global master, as is_master
            logging.info(f"Uni-Mlip: SimCLR phase from epoch {self.simclr_start_epoch}: {self.simclr_start_reason}")


def recorded_start(first_launch: Optional[Path]) -> Optional[RecordedStart]:
    """The SimCLR start a resumed run's first launch recorded in its ``params.txt``, or None."""
    if first_launch is None:
        return None
    params = read_params(first_launch)
    start = UniMlipOptions.from_values(params).simclr_start_epoch
    if not isinstance(start, int):
        return None
    return RecordedStart(start, bool(params.get("pretrained")), str(first_launch))
