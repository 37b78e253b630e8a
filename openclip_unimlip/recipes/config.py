"""Reading a recipe's section of the model JSON (``unimlip_cfg``, ``mlip_liu_cfg``, ``mlip_li_cfg``):
unknown keys, term names, loss weights and bounds, each refused with one message naming it.

Loss weights have one home for every recipe: the section's ``loss_weights`` (defaults in the
recipe's config dataclass, with their sources). They belong to the model config because the model
reads them too: a term with weight 0 is not computed and its parameters stop training
(``configure_terms``), some are checked against the model's settings (MLIP (Liu)'s reconstruction
needs masked patches; MLIP (Li)'s divergence needs a text tower with dropout), and an export carries
them, so a loaded model computes the terms it was trained with. A run overrides them with its
``--<recipe>-<term>-weight`` flags (``run_options.loss_weight``), as OpenCLIP's CoCa takes its loss
weights from the command line."""
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


def check_loss_weights(weights: Dict[str, float], terms: Tuple[str, ...], recipe: str) -> None:
    """The one check of a recipe's loss weights (its section's ``loss_weights``, with a run's
    ``--<recipe>-<term>-weight`` flags over them): known terms, none negative, at least one on."""
    validate_terms(weights, terms, recipe)
    negative = {t: w for t, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"{recipe} loss weights must be >= 0, got {negative}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"every {recipe} loss weight is 0: nothing to train")


def active_terms(weights: Dict[str, float]) -> Tuple[str, ...]:
    """The terms a model computes and a loss adds: those whose weight is above 0."""
    return tuple(t for t, w in weights.items() if w > 0)


def check_positive(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")


def check_non_negative(cfg, names) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
