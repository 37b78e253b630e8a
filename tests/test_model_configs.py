"""Every shipped model config (``model_configs/*.json``) read back, built without weights (on the
``meta`` device: shapes only, no memory, no initialisation cost) and compared with its source's
numbers (issue 26):

- ``unimlip-rn50``: the paper (Sec. 4.2), PMC-CLIP's ``RN50_fusion4.json`` whose checkpoints it
  continues, and OpenCLIP's own ``RN50.json`` (the modified ResNet-50), built here by OpenCLIP;
- ``mlip-liu-vitb16``: MaCo (SZUHvern/MaCo 7f64d95) and OpenCLIP's ``ViT-B-16.json``;
- ``mlip-li-vitb16``: MGCA (HKU-MedAI/MGCA 680fe4a) and OpenCLIP's ``ViT-B-16.json``;
- the tiny configs: the model tables of docs/methods/, which are their only source.

The source values are transcribed below with their file and line. The large text towers are not
downloaded: a random BERT-base stands in for them (their names are compared as strings); the
tiny configs use the MiniLM copy shipped on PyPI.
"""
import json
import math
import re
from pathlib import Path

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
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"  # MLIP (both papers), MGCA encoder.py l.154
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# PMC-CLIP src/pmc_clip/model_configs/RN50_fusion4.json (WeixiongLin/PMC-CLIP fcf4828), every number
PMC_CLIP_RN50_FUSION4 = {"embed_dim": 768, "image_size": 224, "layers": [3, 4, 6, 3], "width": 64,
                         "context_length": 77, "text_width": 768, "heads": 8, "fusion_layers": 4,
                         "bert_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext"}
PMC_CLIP_HEAD_WIDTH = 64  # src/pmc_clip/model/config.py CLIPVisionCfg.head_width (l.11), not set by the JSON
# src/pmc_clip/model/blocks.py Transformer(mlp_ratio=4.0) l.369, not set by pmc_clip.py l.115-119
PMC_CLIP_MLP_RATIO = 4.0


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))


def test_every_shipped_config_is_checked_here():
    assert {p.stem for p in CONFIGS.glob("*.json")} == {
        "unimlip-rn50", "unimlip-tiny", "mlip-liu-vitb16", "mlip-liu-tiny", "mlip-li-vitb16", "mlip-li-tiny"}
    for path in CONFIGS.glob("*.json"):
        assert open_clip.get_model_config(path.stem) == json.loads(path.read_text())  # what OpenCLIP registered


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
def test_unimlip_rn50_json_is_pmc_clips_rn50_fusion4():
    config, pmc = _config("unimlip-rn50"), PMC_CLIP_RN50_FUSION4
    vision, text, section = config["vision_cfg"], config["text_cfg"], config["unimlip_cfg"]
    assert config["embed_dim"] == pmc["embed_dim"]
    assert (vision["image_size"], vision["layers"], vision["width"]) == (pmc["image_size"], pmc["layers"], pmc["width"])
    assert vision["head_width"] == PMC_CLIP_HEAD_WIDTH
    assert text["context_length"] == pmc["context_length"]
    # Microsoft renamed PubMedBERT to BiomedBERT on the hub (the old id redirects): the same model
    assert text["hf_model_name"] == text["hf_tokenizer_name"] == BIOMEDBERT
    assert BIOMEDBERT == pmc["bert_model_name"].replace("PubMedBERT", "BiomedBERT")
    # PMC-CLIP pools [CLS] of the last hidden state (pmc_clip.py l.167-168) into a 768x768 projection
    assert (text["hf_pooler_type"], text["hf_proj_type"]) == ("cls_last_hidden_state_pooler", "linear")
    assert (section["fusion_layers"], section["fusion_heads"]) == (pmc["fusion_layers"], pmc["heads"])


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


def test_unimlip_section_defaults_are_the_papers():
    cfg = UniMlipCfg()
    assert (cfg.fusion_layers, cfg.fusion_heads, cfg.fusion_mlp_ratio) == (4, 8, PMC_CLIP_MLP_RATIO)
    assert (cfg.dropblock_prob, cfg.dropblock_size, cfg.text_dropout, cfg.mlm_probability) == (0.5, 3, 0.75, 0.15)


# ----- mlip-liu-vitb16: MaCo and OpenCLIP's ViT-B/16 ------------------------------------------------
# MaCo: main_pretrain.py l.101 (mask_ratio 0.5; README l.49's run: --mask_ratio 0.5), l.103 (--T 0.03),
# l.59-61 (norm_pix_loss off); model_MaCo.py l.423-428 (maco(): decoder 768 wide, 4 deep, 6 heads)
MACO = {"mask_ratio": 0.5, "temperature": 0.03, "norm_pix_loss": False, "decoder_width": 768, "decoder_depth": 4,
        "decoder_heads": 6}


def test_mlip_liu_vitb16_is_macos_run_on_openclips_vit_b16(bert_base_dir):
    config = _config("mlip-liu-vitb16")
    section = config["mlip_liu_cfg"]
    assert {k: section[k] for k in ("mask_ratio", "norm_pix_loss", "decoder_width", "decoder_depth",
                                    "decoder_heads")} == {k: v for k, v in MACO.items() if k != "temperature"}
    assert math.isclose(math.exp(config["init_logit_scale"]), 1 / MACO["temperature"], rel_tol=1e-5)
    assert section["loss_weights"] == {"masked_contrastive": 1.0, "patch_sentence": 1.0, "reconstruction": 1.0}
    assert config["text_cfg"]["hf_model_name"] == config["text_cfg"]["hf_tokenizer_name"] == BIO_CLINICALBERT
    assert config["text_cfg"]["context_length"] == 256  # docs/methods/mlip-liu.md, Models
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
# MGCA mgca/models/mgca/mgca_module.py: emb_dim 128 (l.36), local_temperature 0.1 (l.44), proto_temperature
# 0.2 (l.45), num_prototypes 500 (l.46), freeze_prototypes_epochs 1 (l.54), sinkhorn_iterations 3 (l.55),
# epsilon 0.05 (l.56), the [CLS]-attention clip at the 0.1 / 0.9 quantiles (l.146-147), the command line's
# lambda_1..3 = 1 (l.428-430); crop 224 (mgca/datasets/transforms.py l.9)
MGCA = {"embed_dim": 128, "local_temperature": 0.1, "prototype_temperature": 0.2, "num_prototypes": 500,
        "freeze_prototypes_epochs": 1, "sinkhorn_iterations": 3, "sinkhorn_epsilon": 0.05,
        "attention_percentiles": [0.1, 0.9], "image_size": 224}


def test_mlip_li_vitb16_is_mgcas_run_on_openclips_vit_b16(bert_base_dir):
    config = _config("mlip-li-vitb16")
    section = config["mlip_li_cfg"]
    for key in ("local_temperature", "prototype_temperature", "freeze_prototypes_epochs", "sinkhorn_iterations",
                "sinkhorn_epsilon", "attention_percentiles"):
        assert section[key] == MGCA[key], key
    assert section["loss_weights"] == {"global": 1.0, "divergence": 1.0, "local": 1.0, "prototype": 1.0}
    assert section["knowledge_file"] is None  # the shipped 500-entity radiology file
    assert config["embed_dim"] == MGCA["embed_dim"]
    assert config["text_cfg"]["hf_model_name"] == config["text_cfg"]["hf_tokenizer_name"] == BIO_CLINICALBERT
    assert config["text_cfg"]["context_length"] == 128  # docs/methods/mlip-li.md, Models
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
def _table_row(path: Path, name: str) -> str:
    (row,) = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(f"| `{name}` |")]
    return row


def _numbers(text: str) -> list:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_unimlip_tiny_is_the_docs_row():
    row = _table_row(REPO / "docs" / "methods" / "unimlip.md", "unimlip-tiny")
    # "ModifiedResNet [1,1,1,1] width 16, 96 px, embed 256 | all-MiniLM-L6-v2 (shipped on PyPI) | ... DropBlock 1×1 ..."
    image, text, use = row.split("|")[2:5]
    stages, width, size, embed = _numbers(image)[:4], *_numbers(image)[4:7]
    model = _built("unimlip-tiny")
    assert [len(getattr(model.visual, f"layer{i}")) for i in range(1, 5)] == stages == [1, 1, 1, 1]
    assert model.visual.layer1[0].conv1.out_channels == width and model.visual.image_size == size
    assert model.visual.attnpool.c_proj.out_features == embed
    assert "all-MiniLM-L6-v2" in text and _config("unimlip-tiny")["text_cfg"]["hf_model_name"] == MINILM
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
    assert "all-MiniLM-L6-v2" in text and _config(name)["text_cfg"]["hf_model_name"] == MINILM
    assert open_clip.get_tokenizer(name).context_length == _numbers(text.split("context")[1])[0]
    assert model.visual.proj.shape[1] == _numbers(embed)[0]
