"""Converting PMC-CLIP checkpoints for Uni-Mlip models (the paper initialises from PMC-CLIP).

OpenCLIP's ``load_checkpoint`` rewrites a state dict holding ``positional_embedding`` as an
old CLIP text tower before any model sees it, so PMC-CLIP checkpoints are converted once,
into a complete Uni-Mlip state dict that ``--pretrained`` then loads strictly.

PMC-CLIP (github.com/WeixiongLin/PMC-CLIP, ``src/pmc_clip/model/pmc_clip.py``) saves
``{"epoch", "name", "state_dict", "optimizer"}`` with DDP's ``module.`` prefix. Its image tower
already uses OpenCLIP's ModifiedResNet names; the rest maps as below. Its
``positional_embedding`` and ``ln_final`` (left over from CLIP's text transformer, unused with
BERT), BERT's pooler (unused by [CLS] pooling) and BERT's ``position_ids`` buffer (saved by
transformers < 4.31) have no counterpart and are reported as dropped. Every key name and shape
of a real checkpoint is in ``tests/fixtures/pmc_clip_state_dict_keys.json``, with the source
lines it was read from.
"""
from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import nn

# PMC-CLIP prefix -> Uni-Mlip prefix
_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("visual.", "visual."),
    ("text_encoder.", "text.transformer."),
    ("fusion_module.", "fusion.transformer."),
)
# PMC-CLIP parameter -> (Uni-Mlip parameter, transposed: PMC-CLIP multiplies x @ W)
_PARAMETERS = {
    "text_projection": ("text.proj.weight", True),
    "mlm_projection": ("fusion.vocab_proj.weight", True),
    "img_special_token": ("fusion.image_token", False),
    "logit_scale": ("logit_scale", False),
}
_UNUSED = ("positional_embedding", "ln_final.", "text_encoder.pooler.", "text_encoder.embeddings.position_ids")
# Uni-Mlip modules PMC-CLIP does not have: left at their initialisation
NEW_IN_UNIMLIP = ("simclr_head.", "fusion.image_proj.")


class ConversionReport(NamedTuple):
    dropped: List[str]  # PMC-CLIP keys with no Uni-Mlip counterpart (expected, see module doc)
    unexpected: List[str]  # PMC-CLIP keys that matched no rule or fit nothing in the model
    initialised: List[str] = []  # Uni-Mlip keys PMC-CLIP lacks, kept at the model's initialisation
    missing: List[str] = []  # Uni-Mlip keys PMC-CLIP should have had but did not


def is_pmc_clip_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    return any(k.startswith("text_encoder.") or k.startswith("fusion_module.") for k in keys)


def convert_pmc_clip_state_dict(
        state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """PMC-CLIP keys and layouts -> Uni-Mlip's, plus what had no counterpart."""
    converted, dropped, unexpected = {}, [], []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(_UNUSED):
            dropped.append(key)
        elif key in _PARAMETERS:
            target, transpose = _PARAMETERS[key]
            converted[target] = value.t().contiguous() if transpose else value
        else:
            for source, target in _PREFIXES:
                if key.startswith(source):
                    converted[target + key[len(source):]] = value
                    break
            else:
                unexpected.append(key)
    return converted, ConversionReport(dropped, unexpected)


def load_pmc_clip_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def pmc_clip_to_unimlip(state_dict: Dict[str, torch.Tensor],
                        model: nn.Module) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """A complete state dict for ``model`` from a PMC-CLIP one; raises if any key does not fit."""
    converted, report = convert_pmc_clip_state_dict(state_dict)
    target = model.state_dict()
    unexpected = report.unexpected + [k for k in converted if k not in target]
    mismatched = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
                  for k, v in converted.items() if k in target and v.shape != target[k].shape]
    absent = [k for k in target if k not in converted]
    initialised = [k for k in absent if k.startswith(NEW_IN_UNIMLIP)]
    missing = [k for k in absent if k not in initialised]
    report = ConversionReport(report.dropped, unexpected + mismatched, initialised, missing)
    if report.unexpected or report.missing:
        raise ValueError(f"PMC-CLIP checkpoint does not fit this model: unexpected or mis-shaped "
                         f"{report.unexpected}, missing {report.missing}")
    return {**{k: target[k] for k in initialised}, **converted}, report
