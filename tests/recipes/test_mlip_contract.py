"""What both MLIP recipes promise OpenCLIP alike, one test per promise over both recipes: eval mode
is exactly OpenCLIP's CLIP, training outputs reach `create_loss` with every parameter in the graph,
each loss weight scales exactly its term, and a short `open_clip_train` run lowers the loss."""

import argparse
import subprocess
import sys

import open_clip
import pytest
import torch
from open_clip.model import CustomTextCLIP

from openclip_unimlip.recipes.mlip_li.config import LI_TERMS
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss
from openclip_unimlip.recipes.mlip_liu.config import LIU_TERMS
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss

from mlip_helpers import ENV, li_inputs, liu_inputs, logged
from shards import write_shards


@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_eval_mode_is_exactly_openclip_clip(models, batch, name):
    model = models[name].eval()
    images, texts = batch
    out = model(images, texts)
    with torch.no_grad():
        reference = CustomTextCLIP.forward(model, images, texts)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    for key in out:
        torch.testing.assert_close(out[key], reference[key])


@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_a_logit_bias_reaches_the_loss_only_when_the_model_is_built_with_one(models, batch, small_knowledge, name):
    """OpenCLIP's CLIP puts logit_bias in its output dict only when built with init_logit_bias (SigLIP)."""
    images, texts = batch
    section = {"mlip_li_cfg": {"knowledge_file": small_knowledge}} if name == "mlip-li-tiny" else {}
    torch.manual_seed(0)
    biased = open_clip.create_model(name, output_dict=True, init_logit_bias=-10.0, **section).train()
    with torch.no_grad():
        out, unbiased = biased(images, texts), models[name].train()(images, texts)
    assert out["logit_bias"] is biased.logit_bias and biased.logit_bias.item() == -10.0
    assert "init_logit_bias" not in open_clip.get_model_config(name) and "logit_bias" not in unbiased


@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_train_outputs_are_batch_first_and_every_parameter_gets_a_gradient(models, batch, name):
    model = models[name].train()
    model.zero_grad()
    images, texts = batch
    out = model(images, texts)
    assert not {"logits", "labels"} & set(out)
    for key, value in out.items():
        if key not in ("logit_scale", "logit_bias"):
            assert value.shape[0] == 4, key
    args = argparse.Namespace(model=name, local_loss=False, gather_with_grad=False, rank=0, world_size=1)
    terms = open_clip.create_loss(args)(**out, output_dict=True)
    expected = {"mlip-liu-tiny": {"masked_contrastive_loss", "patch_sentence_loss", "reconstruction_loss"},
                "mlip-li-tiny": {"global_loss", "divergence_loss", "local_loss", "prototype_loss"}}[name]
    assert set(terms) == expected
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing


@pytest.mark.parametrize("recipe, term", [("liu", t) for t in LIU_TERMS] + [("li", t) for t in LI_TERMS])
def test_each_terms_weight_scales_exactly_that_term(recipe, term):
    loss_class, inputs = (MlipLiuLoss, liu_inputs()) if recipe == "liu" else (MlipLiLoss, li_inputs())
    unit = loss_class()(**inputs, output_dict=True)
    weighted = loss_class(weights={term: 0.3})(**inputs, output_dict=True)
    assert set(weighted) == set(unit) and f"{term}_loss" in unit
    for name, value in unit.items():
        torch.testing.assert_close(weighted[name], value * 0.3 if name == f"{term}_loss" else value, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name, terms", [
    ("mlip-liu-tiny", ("Masked_contrastive_loss", "Patch_sentence_loss", "Reconstruction_loss")),
    ("mlip-li-tiny", ("Global_loss", "Divergence_loss", "Local_loss", "Prototype_loss")),
])
def test_short_cpu_training_lowers_the_loss(tmp_path, name, terms):
    # 2 epochs of 6 steps. Seen (seed 0, 8 steps an epoch): the mean of the first 4 logged losses against
    # steps 9-12, 6.30 -> 5.79 (Liu) and 21.6 -> 17.8 (Li); more steps only lowered it further
    pattern = write_shards(tmp_path / "shards", num_samples=96, per_shard=48)
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", name, "--train-data", pattern,
           "--dataset-type", "webdataset", "--train-num-samples", "96", "--batch-size", "16", "--epochs", "2",
           "--workers", "1", "--precision", "fp32", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path / "logs"),
           "--name", "run", "--log-every-n-steps", "1", "--seed", "0"]
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "logs" / "run" / "out.log").read_text()
    for term in terms:
        assert term in log, term
    losses = logged(log, "Loss")
    assert len(losses) >= 10
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
