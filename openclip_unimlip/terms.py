"""Names of the five Uni-Mlip loss terms, shared by the model, the loss and the trainer flags."""
from typing import Iterable, Tuple

TERMS: Tuple[str, ...] = ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")


def validate_terms(terms: Iterable[str]) -> Tuple[str, ...]:
    terms = tuple(terms)
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise ValueError(f"Unknown Uni-Mlip loss terms {unknown}; known terms: {list(TERMS)}")
    return terms
