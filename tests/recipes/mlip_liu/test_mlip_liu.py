"""MLIP (Liu): each term against an independent computation, the sentence splitter, the model's
train/eval contract and a short CPU training through open_clip_train."""
import math

import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss

from mlip_helpers import liu_inputs as _liu_inputs

# ----- sentences ----------------------------------------------------------------------------------
# Report phrasing in the style of MIMIC-CXR / Open-I impressions, split by hand: decimals, abbreviations,
# "e.g." and numbered lists stay inside their sentence.
RADIOLOGY_REPORTS = [
    ("1. Interval increase in the right pleural effusion, now moderate. 2. No pneumothorax.",
     ["1. Interval increase in the right pleural effusion, now moderate.", "2. No pneumothorax."]),
    ("A 2.5 cm nodule in the right upper lobe, e.g. a granuloma. Heart size is normal.",
     ["A 2.5 cm nodule in the right upper lobe, e.g. a granuloma.", "Heart size is normal."]),
    ("Findings: 1. ET tube tip 3.2 cm above the carina. 2. Approx. 1.5 cm calcified granuloma, unchanged vs. prior.",
     ["Findings: 1. ET tube tip 3.2 cm above the carina.",
      "2. Approx. 1.5 cm calcified granuloma, unchanged vs. prior."]),
    ("Dr. Smith was notified of the findings at 10.30. Lungs are clear.",
     ["Dr. Smith was notified of the findings at 10.30.", "Lungs are clear."]),
    # "1234" is the word pieces "123" "##4": a piece of digits is a number too
    ("A 1234.5 mL collection in the pelvis. No free air.", ["A 1234.5 mL collection in the pelvis.", "No free air."]),
]


@pytest.mark.parametrize("report, sentences", RADIOLOGY_REPORTS)
def test_sentence_splitter_keeps_decimals_abbreviations_and_list_numbers(models, report, sentences):
    import open_clip

    model = models["mlip-liu-tiny"]
    tokenizer = open_clip.get_tokenizer("mlip-liu-tiny")
    ids = tokenizer([report])
    boundaries = ops.sentence_boundaries(ids, model.is_delimiter, model.keeps_period, model.is_number,
                                         model.opens_item)
    content = ~torch.isin(ids, torch.tensor(model.special_token_ids))
    segments = ops.sentence_segments(boundaries, content, max_sentences=8)
    found = [ids[0][row].tolist() for row in segments[0] if row.any()]
    # each hand-split sentence tokenised alone gives the same ids (BERT's tokenisation is word-local)
    expected = [[i for i in tokenizer([s])[0].tolist() if i not in model.special_token_ids] for s in sentences]
    assert found == expected
    assert sum(boundaries[0].tolist()) == len(sentences)


# ----- loss terms ---------------------------------------------------------------------------------
def _maco_contrastive(image, text, integrity, temperature_inverse):
    """MaCo's contrastive loss, transcribed from model_MaCo.py l.407-419 (``x_`` there is the
    estimator's pre-activation; ours returns softplus(x_) = ``scale`` directly)."""
    x1, x2 = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    logits1, logits2 = temperature_inverse * x1 @ x2.t(), temperature_inverse * x2 @ x1.t()
    gt = torch.arange(logits1.shape[0])
    scale = integrity.unsqueeze(-1)  # [B, 1]
    ce = torch.nn.CrossEntropyLoss()
    loss_c = ce(logits1 * scale, gt) + ce(logits2 * scale, gt)
    wce = torch.nn.CrossEntropyLoss(weight=scale.detach().squeeze(-1))
    loss_c = loss_c + wce(logits1, gt) + wce(logits2, gt)
    return loss_c / 4


def test_masked_contrastive_is_macos_formula():
    x = _liu_inputs()
    loss = MlipLiuLoss(weights={"patch_sentence": 0, "reconstruction": 0})
    value = loss(**x, output_dict=True)["masked_contrastive_loss"]
    expected = _maco_contrastive(x["image_features"], x["text_features"], x["integrity_weights"], x["logit_scale"])
    torch.testing.assert_close(value, expected)
    # the weights differ across the batch, so scaling image columns instead of text rows would not pass
    logits = x["logit_scale"] * x["text_features"] @ x["image_features"].T
    columns = F.cross_entropy(logits * x["integrity_weights"].unsqueeze(0), torch.arange(4))
    rows = F.cross_entropy(logits * x["integrity_weights"].unsqueeze(1), torch.arange(4))
    assert abs(columns - rows) > 1e-3


def test_reconstruction_is_mse_and_weights_scale_and_remove_terms():
    x = _liu_inputs()
    terms = MlipLiuLoss(weights={"reconstruction": 2.0, "patch_sentence": 0})(**x, output_dict=True)
    assert set(terms) == {"masked_contrastive_loss", "reconstruction_loss"}
    expected = ((x["reconstruction"] - x["reconstruction_target"]) ** 2).mean() * 2
    torch.testing.assert_close(terms["reconstruction_loss"], expected)
    with pytest.raises(ValueError, match="Unknown"):
        MlipLiuLoss(weights={"itm": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MlipLiuLoss(weights={"reconstruction": -1.0})


# ----- model --------------------------------------------------------------------------------------
def test_integrity_weights_start_at_ln2_and_are_trainable(models, batch):
    model = models["mlip-liu-tiny"].train()
    model.zero_grad()
    out = model(*batch)
    torch.testing.assert_close(out["integrity_weights"], torch.full((4,), math.log(2.0)))
    assert (out["integrity_weights"] > 0).all()
    MlipLiuLoss()(**out).backward()
    assert model.integrity.linear.weight.grad.abs().sum() > 0 and model.integrity.linear.bias.grad.abs() > 0


def test_sentences_of_the_caption_reach_the_transport(models, batch):
    out = models["mlip-liu-tiny"].train()(*batch)
    assert out["sentence_mask"].sum(1).tolist() == [3, 1, 2, 2]
    assert out["patch_embeddings"].shape[1] == 18  # half of the 36 patches kept
