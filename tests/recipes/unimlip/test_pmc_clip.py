"""PMC-CLIP checkpoints initialise Uni-Mlip.

The checkpoint is built from ``fixtures/pmc_clip_state_dict_keys.json``: every key, dtype and
shape of a real PMC-CLIP (RN50_fusion4, --mlm) training checkpoint, derived from PMC-CLIP's
model source (the file names the source lines of each family). Values are random, so a
tensor that lands under the wrong name, transposed or not at all is seen.
"""
import ast
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from openclip_unimlip.recipes.text_models import resolve_text_model
from openclip_unimlip.recipes.unimlip.pmc_clip import pmc_clip_to_unimlip

from paths import TESTS  # noqa: E402

FIXTURE = json.loads((TESTS / "fixtures" / "pmc_clip_state_dict_keys.json").read_text(encoding="utf-8"))
CONVERT_SCRIPT = TESTS.parent / "scripts" / "convert_pmc_clip.py"

# PMC-CLIP keys with no Uni-Mlip counterpart (see the fixture's families): the CLIP text
# transformer's leftovers, BERT's pooler (Uni-Mlip pools [CLS] of the last hidden state, as
# PMC-CLIP does, pmc_clip.py L167-168) and the old persistent position_ids buffer.
EXPECTED_DROPPED = {
    "positional_embedding", "ln_final.weight", "ln_final.bias",
    "text_encoder.pooler.dense.weight", "text_encoder.pooler.dense.bias",
    "text_encoder.embeddings.position_ids",
}


def _random_pmc_clip_checkpoint(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, (dtype, shape) in FIXTURE["keys"].items():
        if dtype == "int64":
            state_dict[name] = torch.randint(0, 10_000, shape, generator=generator)
        else:
            state_dict[name] = torch.randn(shape, generator=generator)
    # the optimizer state is irrelevant to the conversion; an AdamW-shaped stand-in
    return {"epoch": 100, "name": "pmc_clip", "state_dict": state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": list(range(len(state_dict)))}]}}


def _bert_base_dir(root: Path) -> Path:
    """BiomedBERT's shape offline: a random-init BERT-base (transformers' BertConfig defaults, as
    ``tools.bench`` stands in) with MiniLM's WordPiece vocabulary (bert-base-uncased, 30522)."""
    directory = root / "bert-base-random"
    BertConfig().save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_text_model("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(directory)
    return directory


def _unimlip_rn50(bert_dir: Path, **overrides) -> torch.nn.Module:
    text_cfg = dict(open_clip.get_model_config("unimlip-rn50")["text_cfg"])
    text_cfg.update(hf_model_name=str(bert_dir), hf_tokenizer_name=str(bert_dir), hf_model_pretrained=False)
    return open_clip.create_model("unimlip-rn50", text_cfg=text_cfg, **overrides)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _bert_base_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def rn50(bert_dir):
    torch.manual_seed(0)
    return _unimlip_rn50(bert_dir)


@pytest.fixture(scope="module")
def pmc_checkpoint():
    return _random_pmc_clip_checkpoint()


def _fingerprints(tensors):
    """Value fingerprints independent of names and of transposition, exact: (sorted shape, max, min)."""
    return Counter((tuple(sorted(t.shape)), *(v.item() for v in torch.aminmax(t))) for t in tensors)


def test_fixture_covers_pmc_clip_families():
    keys = FIXTURE["keys"]
    assert all(k.startswith("module.") for k in keys)
    for family in FIXTURE["families"]:
        assert any(k.startswith(family["prefix"]) for k in keys), family["prefix"]
    assert all(any(k.startswith(f["prefix"]) for f in FIXTURE["families"]) for k in keys)
    # PMC-CLIP RN50_fusion4 (pmc_clip.py L108-114, RN50_fusion4.json)
    assert keys["module.text_projection"] == ["float32", [768, 768]]
    assert keys["module.mlm_projection"] == ["float32", [768, 30522]]
    assert keys["module.img_special_token"] == ["float32", [1, 1, 768]]
    assert sum(k.startswith("module.fusion_module.resblocks.") and k.endswith("in_proj_weight") for k in keys) == 4


def test_real_pmc_clip_checkpoint_loads_strictly_with_every_value(rn50, pmc_checkpoint):
    source = {k[len("module."):]: v for k, v in pmc_checkpoint["state_dict"].items()}
    converted, report = pmc_clip_to_unimlip(pmc_checkpoint["state_dict"], rn50)
    assert set(report.dropped) == EXPECTED_DROPPED
    assert report.unexpected == [] and report.missing == []
    assert report.initialised == []  # the default unimlip-rn50 has nothing PMC-CLIP lacks
    rn50.load_state_dict(converted, strict=True)
    loaded = rn50.state_dict()

    # every PMC-CLIP tensor that has a counterpart is somewhere in the model, unchanged up to a transpose
    kept = [v for k, v in source.items() if k not in EXPECTED_DROPPED]
    assert len(kept) == len(loaded)
    assert _fingerprints(kept) == _fingerprints(loaded.values())

    # one tensor of each family where it belongs, as PMC-CLIP uses it
    same_name = ["visual.conv1.weight", "visual.layer3.0.downsample.1.running_var",
                 "visual.layer4.2.bn3.num_batches_tracked", "visual.attnpool.c_proj.weight", "logit_scale"]
    for key in same_name:
        torch.testing.assert_close(loaded[key], source[key], rtol=0, atol=0, msg=key)
    pairs = {
        "text.transformer.embeddings.word_embeddings.weight": "text_encoder.embeddings.word_embeddings.weight",
        "text.transformer.encoder.layer.11.output.LayerNorm.weight":
            "text_encoder.encoder.layer.11.output.LayerNorm.weight",
        "fusion.transformer.resblocks.3.attn.in_proj_weight": "fusion_module.resblocks.3.attn.in_proj_weight",
        "fusion.transformer.resblocks.0.mlp.c_fc.bias": "fusion_module.resblocks.0.mlp.c_fc.bias",
        "fusion.image_token": "img_special_token",
    }
    for ours, theirs in pairs.items():
        torch.testing.assert_close(loaded[ours], source[theirs], rtol=0, atol=0, msg=ours)
    # PMC-CLIP computes x @ text_projection (pmc_clip.py L169) and x @ mlm_projection (L183)
    states = torch.randn(3, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # sums of 768 products of unit normals (~28 in size): float32 summation order differs
        torch.testing.assert_close(rn50.text.proj(states), states @ source["text_projection"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(rn50.fusion.vocab_proj(states), states @ source["mlm_projection"],
                                   rtol=1e-5, atol=1e-3)


def test_keys_that_do_not_fit_are_refused(rn50, pmc_checkpoint):
    state_dict = dict(pmc_checkpoint["state_dict"])
    state_dict["module.itm_head.weight"] = torch.zeros(2, 768)
    del state_dict["module.fusion_module.resblocks.0.ln_1.weight"]
    state_dict["module.text_projection"] = torch.zeros(768, 512)  # another embed_dim
    with pytest.raises(ValueError, match=r"itm_head.weight.*text.proj.weight: \(512, 768\) vs \(768, 768\)"
                                         r".*missing \['fusion.transformer.resblocks.0.ln_1.weight'\]"):
        pmc_clip_to_unimlip(state_dict, rn50)


@pytest.mark.slow
def test_new_modules_are_initialised_and_reported(bert_dir, pmc_checkpoint):
    model = _unimlip_rn50(bert_dir, unimlip_cfg={"fusion_layers": 4, "fusion_heads": 8, "simclr_head": "mlp",
                                                 "simclr_head_hidden": 64, "simclr_head_dim": 32})
    initial = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("simclr_head.")}
    converted, report = pmc_clip_to_unimlip(pmc_checkpoint["state_dict"], model)
    assert initial and sorted(report.initialised) == sorted(initial)
    model.load_state_dict(converted, strict=True)
    for key, value in initial.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_convert_script_writes_a_checkpoint_pretrained_loads(bert_dir, rn50, pmc_checkpoint, tmp_path):
    """The CLI from any working directory; BiomedBERT's shape comes from the offline stand-in."""
    path, out = tmp_path / "pmc_clip.pt", tmp_path / "converted.pt"
    torch.save(pmc_checkpoint, path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNIMLIP_BIOMEDBERT_PATH": str(bert_dir)}
    result = subprocess.run([sys.executable, str(CONVERT_SCRIPT), str(path), str(out), "--model", "unimlip-rn50"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dropped_line = next(line for line in result.stdout.splitlines() if line.startswith("dropped"))
    assert set(ast.literal_eval(dropped_line.split(": ", 1)[1])) == EXPECTED_DROPPED
    converted = torch.load(out, mmap=True)
    rn50.load_state_dict(converted, strict=True)
    source = pmc_checkpoint["state_dict"]
    torch.testing.assert_close(converted["text.proj.weight"], source["module.text_projection"].t(), rtol=0, atol=0)
    torch.testing.assert_close(converted["visual.layer2.1.conv2.weight"], source["module.visual.layer2.1.conv2.weight"],
                               rtol=0, atol=0)
