"""The ``mlip_liu_cfg`` / ``mlip_li_cfg`` sections of the model JSONs: model and loss
hyper-parameters of each recipe in one validated place (defaults and their sources:
docs/methods/mlip-liu.md, mlip-li.md)."""
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

LIU_TERMS: Tuple[str, ...] = ("masked_contrastive", "patch_sentence", "reconstruction")
LI_TERMS: Tuple[str, ...] = ("global", "divergence", "local", "prototype")


def _from_dict(cls, values: Optional[dict], section: str):
    values = dict(values or {})
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"Unknown {section} keys: {sorted(unknown)}")
    return cls(**values)


def _check_weights(weights: Dict[str, float], terms: Tuple[str, ...], section: str) -> None:
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"Unknown {section}.loss_weights terms {unknown}; known: {list(terms)}")
    negative = {t: w for t, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"{section}.loss_weights must be >= 0, got {negative}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"every {section}.loss_weights entry is 0: nothing to train")


def _check_positive(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")


def _check_non_negative(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


# Tokens after which a sentence delimiter does not end the sentence ("approx. 2 cm", "vs. prior"); single
# letters ("e.g.", "a.m.") and numbers are handled by rule (ops.sentence_boundaries). Ours.
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
        _check_positive(self, ("max_sentences", "ot_epsilon", "ot_iterations", "psm_temperature",
                               "decoder_width", "decoder_depth", "decoder_heads"))
        _check_non_negative(self, ("ot_tolerance",))
        self.loss_weights = {**{t: 1.0 for t in LIU_TERMS}, **self.loss_weights}
        _check_weights(self.loss_weights, LIU_TERMS, "mlip_liu_cfg")
        if self.loss_weights["reconstruction"] > 0 and self.mask_ratio == 0:
            raise ValueError("the reconstruction term needs masked patches: mask_ratio must be > 0")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiuCfg":
        return _from_dict(cls, values, "mlip_liu_cfg")


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
        _check_positive(self, ("divergence_temperature", "local_temperature", "prototype_temperature",
                               "sinkhorn_epsilon", "sinkhorn_iterations"))
        _check_non_negative(self, ("sinkhorn_tolerance", "freeze_prototypes_epochs"))
        # MGCA's command-line weights (mgca_module.py l.428-430, what its README run uses); divergence: ours
        self.loss_weights = {**{"global": 1.0, "divergence": 1.0, "local": 1.0, "prototype": 1.0},
                             **self.loss_weights}
        _check_weights(self.loss_weights, LI_TERMS, "mlip_li_cfg")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiCfg":
        return _from_dict(cls, values, "mlip_li_cfg")
