"""MLIP (Liu)'s run options: the ``--mlip-liu-*`` flags of ``open_clip_train.main`` for MLIP (Liu)
models (the machinery is ``recipes/run_options.py``). Every hyper-parameter lives in the model
config's ``mlip_liu_cfg`` (``config.py``); a run overrides its loss weights, checked with the section they join
(``section_class``) before the run starts."""
import dataclasses
from typing import Optional

from openclip_unimlip.recipes.mlip_liu.config import LiuCfg
from openclip_unimlip.recipes.run_options import RunOptions, loss_weight


@dataclasses.dataclass(frozen=True)
class MlipLiuOptions(RunOptions):
    prefix = "mlip_liu"
    recipe = "MLIP (Liu)"
    section_class = LiuCfg

    masked_contrastive_weight: Optional[float] = loss_weight("masked_contrastive", "mlip_liu_cfg")
    patch_sentence_weight: Optional[float] = loss_weight("patch_sentence", "mlip_liu_cfg")
    reconstruction_weight: Optional[float] = loss_weight("reconstruction", "mlip_liu_cfg")
