"""The ``mlip_liu_cfg`` section of the model JSON: MLIP (Liu)'s model and loss hyper-parameters in
one validated place (defaults and their sources: docs/methods/mlip-liu.md)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from openclip_unimlip.recipes.config import check_loss_weights, check_non_negative, check_positive, section_from_dict

LIU_TERMS: Tuple[str, ...] = ("masked_contrastive", "patch_sentence", "reconstruction")

# Tokens after which a sentence delimiter does not end the sentence ("approx. 2 cm", "vs. prior"); single
# letters ("e.g.", "a.m.") and numbers are handled by rule (recipes/ops.py, sentence_boundaries). Ours.
DEFAULT_ABBREVIATIONS: Tuple[str, ...] = ("approx", "vs", "dr", "mr", "mrs", "ms", "fig", "cf", "resp", "incl")


@dataclass
class LiuCfg:
    mask_ratio: float = 0.5
    max_sentences: int = 16
    sentence_delimiters: List[str] = field(default_factory=lambda: ["."])
    sentence_abbreviations: List[str] = field(default_factory=lambda: list(DEFAULT_ABBREVIATIONS))
    ot_epsilon: float = 0.1
    ot_iterations: int = 50  # at most; stops at ot_tolerance
    ot_tolerance: float = 1e-3  # relative row-marginal error; 0: always run ot_iterations
    psm_temperature: float = 0.1
    decoder_width: int = 768  # MaCo's ViT-B factory maco(): 768 / 4 / 6
    decoder_depth: int = 4
    decoder_heads: int = 6
    norm_pix_loss: bool = False  # MaCo's main_pretrain.py default (MAE: True)
    loss_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not self.sentence_delimiters:
            raise ValueError("sentence_delimiters must name at least one token")
        check_positive(self, ("max_sentences", "ot_epsilon", "ot_iterations", "psm_temperature",
                               "decoder_width", "decoder_depth", "decoder_heads"))
        check_non_negative(self, ("ot_tolerance",))
        self.loss_weights = {**{t: 1.0 for t in LIU_TERMS}, **self.loss_weights}
        check_loss_weights(self.loss_weights, LIU_TERMS, "MLIP (Liu)")
        if self.loss_weights["reconstruction"] > 0 and self.mask_ratio == 0:
            raise ValueError("the reconstruction term needs masked patches: mask_ratio must be > 0")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiuCfg":
        return section_from_dict(cls, values, "mlip_liu_cfg")
