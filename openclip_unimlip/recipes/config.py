"""Reading a recipe's section of the model JSON (``unimlip_cfg``, ``mlip_liu_cfg``, ``mlip_li_cfg``):
unknown keys, term names, loss weights and bounds, each refused with one message naming it."""
from dataclasses import fields
from typing import Dict, Iterable, Optional, Tuple


def validate_terms(terms: Iterable[str], known: Tuple[str, ...], recipe: str) -> Tuple[str, ...]:
    """``terms`` as a tuple, or a clear error naming the unknown ones (any recipe's term names)."""
    terms = tuple(terms)
    unknown = sorted(set(terms) - set(known))
    if unknown:
        raise ValueError(f"Unknown {recipe} loss terms {unknown}; known terms: {list(known)}")
    return terms


def section_from_dict(cls, values: Optional[dict], section: str):
    values = dict(values or {})
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"Unknown {section} keys: {sorted(unknown)}")
    return cls(**values)


def check_loss_weights(weights: Dict[str, float], terms: Tuple[str, ...], section: str) -> None:
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"Unknown {section}.loss_weights terms {unknown}; known: {list(terms)}")
    negative = {t: w for t, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"{section}.loss_weights must be >= 0, got {negative}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"every {section}.loss_weights entry is 0: nothing to train")


def check_positive(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")


def check_non_negative(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
