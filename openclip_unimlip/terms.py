"""Names of the five Uni-Mlip loss terms, shared by the model, the loss and the trainer flags."""
from typing import Iterable, Tuple

TERMS: Tuple[str, ...] = ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")


def validate_terms(terms: Iterable[str], known: Tuple[str, ...] = TERMS, recipe: str = "Uni-Mlip") -> Tuple[str, ...]:
    """``terms`` as a tuple, or a clear error naming the unknown ones (any recipe's term names)."""
    terms = tuple(terms)
    unknown = sorted(set(terms) - set(known))
    if unknown:
        raise ValueError(f"Unknown {recipe} loss terms {unknown}; known terms: {list(known)}")
    return terms
