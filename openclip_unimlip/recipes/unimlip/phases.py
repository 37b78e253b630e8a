"""Uni-Mlip's epoch hook: the SimCLR phase (and frozen BatchNorm statistics) by epoch.

``open_clip_train`` calls ``model.train()`` at every epoch start, so the phase is set at every
epoch from the run's ``--unimlip-simclr-start-epoch`` (resolved before the run starts,
``flags.resolve_simclr_start``): a resumed run is in the right phase from its first epoch.
"""
import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def simclr_phase(model, epoch: int, optimizer, args) -> Iterator[None]:
    """SimCLR (and the BatchNorm freeze that goes with it) on from the run's start epoch, for runs
    that feed the strong views; ``model`` is the unwrapped ``UniMlip``."""
    from open_clip_train.distributed import is_master

    start = getattr(args, "unimlip_simclr_start_epoch", None)
    if start is not None:  # a run parsed by the plugin; otherwise the model keeps its own phase
        uses_views = "simclr" in model.active_terms or model.cfg.feed_views_without_simclr
        active = uses_views and epoch >= start
        model.set_simclr_active(active)
        if is_master(args):
            logging.info(f"Uni-Mlip epoch {epoch}: SimCLR {'on' if active else 'off'}, BatchNorm statistics "
                         f"{'frozen' if model.bn_stats_frozen else 'updating'}")
    yield
