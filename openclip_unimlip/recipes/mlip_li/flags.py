"""MLIP (Li)'s run options: the ``--mlip-li-*`` flags of ``open_clip_train.main`` for MLIP (Li)
models (the machinery is ``recipes/run_options.py``). Every hyper-parameter lives in the model
config's ``mlip_li_cfg`` (``config.py``); a run overrides its loss weights, checked with the section they join
(``section_class``) before the run starts."""
import dataclasses
from typing import Optional

from openclip_unimlip.recipes.mlip_li.config import LiCfg
from openclip_unimlip.recipes.run_options import RunOptions, loss_weight


@dataclasses.dataclass(frozen=True)
class MlipLiOptions(RunOptions):
    prefix = "mlip_li"
    recipe = "MLIP (Li)"
    section_class = LiCfg

    global_weight: Optional[float] = loss_weight("global", "mlip_li_cfg")
    divergence_weight: Optional[float] = loss_weight("divergence", "mlip_li_cfg")
    local_weight: Optional[float] = loss_weight("local", "mlip_li_cfg")
    prototype_weight: Optional[float] = loss_weight("prototype", "mlip_li_cfg")
