"""Uni-Mlip's SimCLR phase: the epoch it starts (and BatchNorm statistics freeze) and the epoch hook
that switches it.

The start is chosen once, before the run starts (``resolve_simclr_start``, called by the run
options' ``resolve``; the Slurm launcher applies the same rule, ``default_simclr_start``), and
recorded as ``--unimlip-simclr-start-epoch`` in the run's ``params.txt``. ``open_clip_train`` calls
``model.train()`` at every epoch start, so the phase is set at every epoch from that start
(``simclr_phase``): a resumed run is in the right phase from its first epoch.
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

from openclip_unimlip.recipes.unimlip.config import UniMlipCfg


def scratch_warmup_epochs(epochs: int) -> int:
    """Epochs without SimCLR before a run from scratch freezes BatchNorm statistics for it. Ours: half
    the run, as in the paper's own schedule, where SimCLR has the second half: PMC-CLIP's 100 epochs
    without it, then 100 with it from PMC-CLIP's weights (sec. 4.2, "Implementation Details")."""
    return epochs // 2


def default_simclr_start(pretrained: bool, epochs: int) -> int:
    """The SimCLR start of a run that freezes BatchNorm statistics and names no start: at once from
    trained weights (the paper, from PMC-CLIP's, sec. 4.2), after ``scratch_warmup_epochs`` from scratch."""
    return 0 if pretrained else scratch_warmup_epochs(epochs)


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


def resolve_simclr_start(given: Optional[int], cfg: UniMlipCfg, pretrained: str, epochs: int,
                         recorded: Optional[RecordedStart] = None) -> SimclrStart:
    """The first epoch of the SimCLR phase (and of frozen BatchNorm statistics, where they freeze) of
    a run of the model ``cfg`` (the run's ``unimlip_cfg``, its loss weights included), ``--pretrained``
    and ``--epochs``: ``given`` (``--unimlip-simclr-start-epoch``) when not None; else, for a resumed
    run, the epoch its first launch chose (``recorded``), so changing ``--epochs`` or dropping
    ``--pretrained`` on resume moves nothing; else 0 when nothing freezes, and otherwise
    ``default_simclr_start``. Raises ValueError for a run whose statistics would stay at their
    initial values, and for a warm-up the run cannot hold."""
    simclr = cfg.loss_weights["simclr"] > 0
    freezes = (simclr or cfg.feed_views_without_simclr) and cfg.freeze_bn_with_simclr
    if given is not None:
        if given == 0 and freezes and not pretrained:
            raise ValueError(_frozen_from_the_initial_statistics(
                "--unimlip-simclr-start-epoch 0", "start from trained weights (--pretrained, as the paper from "
                "PMC-CLIP's), leave --unimlip-simclr-start-epoch unset for a warm-up of half the epochs, or keep "
                "the statistics updating (--unimlip-no-bn-freeze)"))
        return SimclrStart(given, f"--unimlip-simclr-start-epoch {given}")
    if recorded is not None:
        if recorded.epoch == 0 and freezes and not (pretrained or recorded.pretrained):
            raise ValueError(_frozen_from_the_initial_statistics(
                f"as the run's first launch recorded in {recorded.source}",
                "start a new run (another --name), or choose a start with --unimlip-simclr-start-epoch"))
        return SimclrStart(recorded.epoch, f"the run's first launch chose it ({recorded.source})")
    if not (simclr or cfg.feed_views_without_simclr):
        return SimclrStart(0, "no strong views (SimCLR weight 0), so no SimCLR phase")
    if pretrained:
        return SimclrStart(default_simclr_start(True, epochs), f"--pretrained {pretrained}: SimCLR and frozen "
                           "statistics from the start, as the paper from PMC-CLIP's weights (sec. 4.2)")
    if not freezes:
        return SimclrStart(0, "BatchNorm statistics keep updating (--unimlip-no-bn-freeze), so no warm-up")
    start = default_simclr_start(False, epochs)
    if start < 1:
        raise ValueError(f"--epochs {epochs} without --pretrained leaves no epoch for the warm-up before SimCLR "
                         "freezes the BatchNorm statistics (ours: half the epochs): train more epochs, start from "
                         "--pretrained weights, set --unimlip-simclr-weight 0, or pass --unimlip-no-bn-freeze")
    if simclr and cfg.simclr_head == "mlp":
        raise ValueError("a SimCLR MLP head needs SimCLR from epoch 0 (DDP, built without find_unused_parameters, "
                         "rejects a head without gradient), but without --pretrained SimCLR with frozen BatchNorm "
                         f"statistics waits for a warm-up (until epoch {start}): start from --pretrained weights, "
                         "pass --unimlip-no-bn-freeze, or use --unimlip-simclr-head none")
    return SimclrStart(start, f"no --pretrained: a warm-up of half of --epochs {epochs} without SimCLR first (ours; "
                              "the paper gives SimCLR the second half of its schedule, sec. 4.2)")


@contextlib.contextmanager
def simclr_phase(model, epoch: int, optimizer, args) -> Iterator[None]:
    """SimCLR (and the BatchNorm freeze that goes with it) on from the run's start epoch, for runs
    that feed the strong views; ``model`` is the unwrapped ``UniMlip``."""
    from open_clip_train.distributed import is_master

    from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions  # which imports this module's rule

    start = UniMlipOptions.from_args(args).simclr_start_epoch
    if start is not None:  # a run parsed by the plugin; otherwise the model keeps its own phase
        uses_views = "simclr" in model.active_terms or model.cfg.feed_views_without_simclr
        active = uses_views and epoch >= start
        model.set_simclr_active(active)
        if is_master(args):
            logging.info(f"Uni-Mlip epoch {epoch}: SimCLR {'on' if active else 'off'}, BatchNorm statistics "
                         f"{'frozen' if model.bn_stats_frozen else 'updating'}")
    yield
