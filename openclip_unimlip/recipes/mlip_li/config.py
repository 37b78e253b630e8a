"""The ``mlip_li_cfg`` section of the model JSON: MLIP (Li)'s model and loss hyper-parameters in
one validated place (defaults and their sources: docs/methods/mlip-li.md)."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from openclip_unimlip.recipes.config import check_loss_weights, check_non_negative, check_positive, section_from_dict

LI_TERMS: Tuple[str, ...] = ("global", "divergence", "local", "prototype")


@dataclass
class LiCfg:
    knowledge_file: Optional[str] = None  # a path or a shipped name (knowledge.SHIPPED); None: the default
    divergence_temperature: float = 0.1  # ours (SimCLR/SLIP's 0.1)
    divergence_image_keep: float = 0.5  # fraction of patches the diverged image view sees; ours
    local_temperature: float = 0.1
    attention_percentiles: Tuple[float, float] = (0.1, 0.9)
    prototype_temperature: float = 0.2
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3  # at most; stops at sinkhorn_tolerance
    sinkhorn_tolerance: float = 0.0  # relative prototype-marginal error; 0: always 3 iterations (MGCA)
    freeze_prototypes_epochs: int = 1  # MGCA
    loss_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        low, high = self.attention_percentiles
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"attention_percentiles must satisfy 0 <= low <= high <= 1, got {low}, {high}")
        self.attention_percentiles = (float(low), float(high))
        if not 0.0 < self.divergence_image_keep <= 1.0:
            raise ValueError(f"divergence_image_keep must be in (0, 1], got {self.divergence_image_keep}")
        check_positive(self, ("divergence_temperature", "local_temperature", "prototype_temperature",
                               "sinkhorn_epsilon", "sinkhorn_iterations"))
        check_non_negative(self, ("sinkhorn_tolerance", "freeze_prototypes_epochs"))
        # MGCA's command-line weights (mgca_module.py l.428-430, what its README run uses); divergence: ours
        self.loss_weights = {**{"global": 1.0, "divergence": 1.0, "local": 1.0, "prototype": 1.0},
                             **self.loss_weights}
        check_loss_weights(self.loss_weights, LI_TERMS, "MLIP (Li)")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiCfg":
        return section_from_dict(cls, values, "mlip_li_cfg")
