"""The ``mlip_liu_cfg`` / ``mlip_li_cfg`` sections of the model JSONs: model and loss
hyper-parameters of each recipe in one validated place (defaults and their sources:
docs/methods/mlip-liu.md, mlip-li.md)."""
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

LIU_TERMS: Tuple[str, ...] = ("masked_contrastive", "patch_sentence", "reconstruction")
LI_TERMS: Tuple[str, ...] = ("global", "local", "prototype")


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


@dataclass
class LiuCfg:
    mask_ratio: float = 0.5
    max_sentences: int = 16
    sentence_delimiters: List[str] = field(default_factory=lambda: ["."])
    ot_epsilon: float = 0.1
    ot_iterations: int = 5
    psm_temperature: float = 0.1
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    loss_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not self.sentence_delimiters:
            raise ValueError("sentence_delimiters must name at least one token")
        _check_positive(self, ("max_sentences", "ot_epsilon", "ot_iterations", "psm_temperature",
                               "decoder_width", "decoder_depth", "decoder_heads"))
        self.loss_weights = {**{t: 1.0 for t in LIU_TERMS}, **self.loss_weights}
        _check_weights(self.loss_weights, LIU_TERMS, "mlip_liu_cfg")
        if self.loss_weights["reconstruction"] > 0 and self.mask_ratio == 0:
            raise ValueError("the reconstruction term needs masked patches: mask_ratio must be > 0")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiuCfg":
        return _from_dict(cls, values, "mlip_liu_cfg")


@dataclass
class LiCfg:
    knowledge_file: Optional[str] = None  # None: the shipped default
    local_temperature: float = 0.1
    attention_percentiles: Tuple[float, float] = (0.1, 0.9)
    prototype_temperature: float = 0.2
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    loss_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        low, high = self.attention_percentiles
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"attention_percentiles must satisfy 0 <= low <= high <= 1, got {low}, {high}")
        self.attention_percentiles = (float(low), float(high))
        _check_positive(self, ("local_temperature", "prototype_temperature", "sinkhorn_epsilon",
                               "sinkhorn_iterations"))
        self.loss_weights = {**{"global": 1.0, "local": 0.7, "prototype": 0.5}, **self.loss_weights}
        _check_weights(self.loss_weights, LI_TERMS, "mlip_li_cfg")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "LiCfg":
        return _from_dict(cls, values, "mlip_li_cfg")
