"""Uni-Mlip's names and settings: the five loss terms (shared by the model, the loss and the run
options) and the ``unimlip_cfg`` section of the model JSON, validated in one place. The terms'
weights live in the section's ``loss_weights`` (the paper's by default), as every recipe's do; a run
overrides them with ``--unimlip-<term>-weight`` (``flags.py``)."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from openclip_unimlip.recipes.config import check_loss_weights, section_from_dict
from openclip_unimlip.recipes.unimlip.masking import REPLACEMENTS
from openclip_unimlip.recipes.unimlip.views import VIEW_AUGMENTATIONS

TERMS: Tuple[str, ...] = ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")
# Sec. 4.2: "we set λcm = 0.5/3 = 0.167, λum = 0.5, and λfm = 0.5" (λcm for each of the three ITC terms)
PAPER_WEIGHTS: Dict[str, float] = {
    "itc": 0.5 / 3,
    "image_perturbed_itc": 0.5 / 3,
    "text_perturbed_itc": 0.5 / 3,
    "simclr": 0.5,
    "mlm": 0.5,
}
PAPER_SIMCLR_TEMPERATURE = 0.1  # of the SimCLR term (Eq. 2 between the two views)


@dataclass
class UniMlipCfg:
    """Method hyper-parameters (paper values by default); ``unimlip_cfg`` in the model JSON."""
    fusion_layers: int = 4
    fusion_heads: int = 8
    fusion_mlp_ratio: float = 4.0
    fusion_image_tokens: str = "pooled"  # "pooled" (PMC-CLIP) or "grid" (the layer-4 map)
    mlm_probability: float = 0.15
    mlm_whole_word: bool = True
    # what a chosen token becomes (masking.REPLACEMENTS): "mask", the paper's (sec. 3.4: "replaced with a
    # unique token [MASK]"), or "bert", BERT's 80 % [MASK] / 10 % random / 10 % unchanged
    mlm_replacement: str = "mask"
    dropblock_prob: float = 0.5
    dropblock_size: int = 3
    # ours where the paper is silent: DropBlock's own Algorithm 1 and reference code draw a mask per
    # channel (dropblock.py); False shares one spatial mask across the channels of a sample
    dropblock_per_channel: bool = True
    text_dropout: float = 0.75
    itc_on_clean_caption: bool = False
    simclr_head: str = "none"  # "none": the image embedding itself; "mlp": SLIP's projection MLP
    simclr_head_hidden: int = 4096
    simclr_head_dim: int = 256
    freeze_bn_with_simclr: bool = True  # the paper's fix; False reproduces the naive baseline
    feed_views_without_simclr: bool = False  # Table 3, row 3: views through the tower, no SimCLR term
    view_crop_scale: Optional[Tuple[float, float]] = None  # None: the views share the clean view's crop
    view_augmentation: str = "simclr"  # the views' strengths: "simclr" (the paper names SimCLR) or "mocov2" (SLIP's)
    # term -> weight, the paper's for the terms not named; a weight of 0 switches its term and branch off
    loss_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.loss_weights = {**PAPER_WEIGHTS, **self.loss_weights}
        check_loss_weights(self.loss_weights, TERMS, "Uni-Mlip")
        if self.fusion_image_tokens not in ("pooled", "grid"):
            raise ValueError(f"fusion_image_tokens must be 'pooled' or 'grid', got {self.fusion_image_tokens!r}")
        if self.view_augmentation not in VIEW_AUGMENTATIONS:
            raise ValueError(f"view_augmentation must be one of {sorted(VIEW_AUGMENTATIONS)}, "
                             f"got {self.view_augmentation!r}")
        if self.simclr_head not in ("none", "mlp"):
            raise ValueError(f"simclr_head must be 'none' or 'mlp', got {self.simclr_head!r}")
        for name in ("dropblock_prob", "text_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mlm_replacement not in REPLACEMENTS:
            raise ValueError(f"mlm_replacement must be one of {sorted(REPLACEMENTS)}, got {self.mlm_replacement!r}")
        if self.dropblock_size < 1:
            raise ValueError(f"dropblock_size must be >= 1, got {self.dropblock_size}")
        if self.view_crop_scale is not None:
            low, high = self.view_crop_scale
            if not 0 < low <= high <= 1:
                raise ValueError(f"view_crop_scale needs 0 < min <= max <= 1, got {list(self.view_crop_scale)}")
            self.view_crop_scale = (float(low), float(high))

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "UniMlipCfg":
        return section_from_dict(cls, values, "unimlip_cfg")
