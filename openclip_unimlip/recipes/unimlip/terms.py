"""Names of the five Uni-Mlip loss terms, shared by the model, the loss and the trainer flags."""
from typing import Tuple

TERMS: Tuple[str, ...] = ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")
