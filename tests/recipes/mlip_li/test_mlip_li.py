"""MLIP (Li): each term against an independent computation, the token weights, the prototypes, the
knowledge file, the model's train/eval contract and a short CPU training through open_clip_train."""
import json

import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops
from openclip_unimlip.recipes.mlip_li.knowledge import DEFAULT_KNOWLEDGE_FILE, load_knowledge
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss
from openclip_unimlip.recipes.mlip_li.model import clipped_token_weights, cls_attention

from mlip_helpers import build_li_model as _li_model
from mlip_helpers import ce as _naive_ce
from mlip_helpers import li_inputs as _li_inputs
from mlip_helpers import mean_of_both_directions as _itc


# ----- loss terms ---------------------------------------------------------------------------------
def test_global_term_is_mgcas_sum_of_both_directions():
    x = _li_inputs()
    value = MlipLiLoss(weights={"divergence": 0, "local": 0, "prototype": 0})(**x, output_dict=True)["global_loss"]
    # mgca_module.py l.104-109: loss_ita = CE(scores) + CE(scores.T), summed
    scores = x["image_features"] @ x["text_features"].T * 10.0
    labels = torch.arange(4)
    torch.testing.assert_close(value, F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels))


def test_divergence_term_contrasts_each_view_with_its_diverged_view():
    x = _li_inputs()
    value = MlipLiLoss(weights={"global": 0, "local": 0, "prototype": 0}, divergence_temperature=0.1)(
        **x, output_dict=True)["divergence_loss"]
    expected = (_itc(x["image_features"], x["divergence_image_features"], 10.0)
                + _itc(x["text_features"], x["divergence_text_features"], 10.0))
    torch.testing.assert_close(value, expected)


def test_divergence_gradient_is_not_that_of_plain_itc():
    """The earlier reading, ITC(v, t') with t' a second dropout pass, has ITC(v, t)'s expected gradient;
    ours adds a gradient ITC has none of: on the diverged views, and through them on v and t."""
    x = _li_inputs()
    keys = ("image_features", "text_features", "divergence_image_features", "divergence_text_features")
    grads = []
    for divergence in (0.0, 1.0):
        inputs = {k: v.clone().requires_grad_() if k in keys else v for k, v in x.items()}
        MlipLiLoss(weights={"divergence": divergence, "local": 0, "prototype": 0})(**inputs).backward()
        grads.append({k: inputs[k].grad for k in keys})
    assert grads[0]["divergence_image_features"] is None and grads[0]["divergence_text_features"] is None
    assert grads[1]["divergence_image_features"].abs().sum() > 0
    assert grads[1]["divergence_text_features"].abs().sum() > 0
    for key in ("image_features", "text_features"):
        difference = (grads[1][key] - grads[0][key]).norm() / grads[0][key].norm()
        assert difference > 0.1, key


def test_local_term_matches_a_per_sample_computation():
    x = _li_inputs()
    value = MlipLiLoss(weights={"global": 0, "divergence": 0, "prototype": 0})(**x, output_dict=True)["local_loss"]
    tau, total = 0.1, 0.0
    for words, omega, patches in zip(x["token_embeddings"], x["token_weights"], x["patch_embeddings"]):
        valid = omega > 0
        w, om = words[valid], omega[valid]
        ctx = F.normalize(torch.softmax(w @ patches.T / tau, dim=1) @ patches, dim=-1)
        s = w @ ctx.T / tau
        token = sum(om[i] * (_naive_ce(s[i], i) + _naive_ce(s[:, i], i)) / 2 for i in range(len(w)))
        pctx = F.normalize(torch.softmax(patches @ w.T / tau, dim=1) @ w, dim=-1)
        p = patches @ pctx.T / tau
        patch = sum((_naive_ce(p[j], j) + _naive_ce(p[:, j], j)) / 2 for j in range(len(patches))) / len(patches)
        total = total + token + patch  # MGCA sums word and patch terms (mgca_module.py l.223)
    torch.testing.assert_close(value, total / len(x["token_embeddings"]))


def test_prototype_term_is_swapped_prediction_with_codes_summing_to_one():
    x = _li_inputs()
    loss = MlipLiLoss(weights={"global": 0, "divergence": 0, "local": 0, "prototype": 0.5})
    value = loss(**x, output_dict=True)["prototype_loss"]
    codes_v = ops.swav_codes(x["image_prototype_scores"], 0.05, 3)
    codes_t = ops.swav_codes(x["text_prototype_scores"], 0.05, 3)
    torch.testing.assert_close(codes_v.sum(1), torch.ones(4), atol=1e-5, rtol=0)
    log_v = torch.log_softmax(x["image_prototype_scores"] / 0.2, dim=1)
    log_t = torch.log_softmax(x["text_prototype_scores"] / 0.2, dim=1)
    expected = -((codes_t * log_v).sum(1).mean() + (codes_v * log_t).sum(1).mean()) / 2 * 0.5
    torch.testing.assert_close(value, expected)


def test_token_weights_are_clipped_normalised_attention():
    attention = torch.tensor([[0.5, 0.01, 0.2, 0.04, 0.05, 0.2], [0.3, 0.1, 0.1, 0.5, 0.0, 0.0]])
    valid = torch.tensor([[False, True, True, True, True, False], [False, True, True, True, False, False]])
    weights = clipped_token_weights(attention, valid, 0.1, 0.9)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    assert (weights[~valid] == 0).all()
    row = attention[0, 1:5]
    low, high = torch.quantile(row, 0.1), torch.quantile(row, 0.9)
    torch.testing.assert_close(weights[0, 1:5], row.clamp(low, high) / row.clamp(low, high).sum())


def test_a_caption_with_no_valid_token_weighs_every_token_zero():
    """A caption of special tokens only (or a zero attention row): weights of 0, never the NaN of 0 / 0,
    which would reach the local loss through its weighted sum."""
    attention = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.0, 0.0], [0.2, 0.5, 0.3]])
    valid = torch.tensor([[False, False, False], [False, True, True], [False, True, True]])
    weights = clipped_token_weights(attention, valid, 0.1, 0.9)
    assert weights[:2].eq(0).all()  # nothing valid; valid tokens whose attention is 0
    # the 10th / 90th percentiles of (0.5, 0.3), interpolated linearly: 0.32 and 0.48; clipped and normalised
    torch.testing.assert_close(weights[2], torch.tensor([0.0, 0.48, 0.32]) / 0.8)


# ----- model --------------------------------------------------------------------------------------
def test_cls_attention_matches_the_eager_attention_weights(models, batch):
    model = models["mlip-li-tiny"].eval()
    texts = batch[1]
    mask = (texts != model.text.config.pad_token_id).long()
    transformer = model.text.transformer
    transformer.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = transformer(input_ids=texts, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            ours = cls_attention(model._last_text_attention(), out.hidden_states[-2], mask)
    finally:
        transformer.set_attn_implementation("sdpa")
    torch.testing.assert_close(ours, out.attentions[-1][:, :, 0, :].mean(1), atol=1e-5, rtol=1e-4)


def test_prototypes_start_from_the_knowledge_embeddings(batch, small_knowledge):
    import open_clip

    torch.manual_seed(0)
    model = _li_model(small_knowledge)
    assert model.prototypes.shape[0] == 16 and not model.prototypes_initialized
    model.train()(*batch)
    assert model.prototypes_initialized
    entities = load_knowledge(small_knowledge)
    tokenizer = open_clip.get_tokenizer("mlip-li-tiny")
    with torch.no_grad():
        expected = F.normalize(model.text.eval()(tokenizer([e.text() for e in entities[:3]])), dim=-1)
    torch.testing.assert_close(model.prototypes[:3], expected, atol=1e-5, rtol=1e-4)
    before = model.prototypes.detach().clone()
    model.train()(*batch)
    assert torch.equal(model.prototypes.detach(), before)  # not re-initialised


def test_prototypes_are_frozen_in_the_first_epoch(batch, small_knowledge):
    """MGCA (mgca_module.py l.340-343) drops the prototypes' gradient while epoch < 1: the normalised
    prototypes must not move in epoch 0 under AdamW with weight decay, and must move in epoch 1."""
    torch.manual_seed(0)
    model = _li_model(small_knowledge).train()
    model.configure_terms(["prototype"])
    loss = MlipLiLoss(weights={"global": 0, "divergence": 0, "local": 0, "prototype": 1.0})
    optimizer = torch.optim.AdamW([model.prototypes], lr=0.1, weight_decay=0.2)
    with torch.no_grad():
        model(*batch)  # the first forward initialises the prototypes from the knowledge entities
    moved = []
    for epoch in (0, 1):
        model.set_epoch(epoch)
        before = F.normalize(model.prototypes.detach(), dim=-1).clone()
        for _ in range(2):
            optimizer.zero_grad()
            loss(**model(*batch)).backward()
            assert model.prototypes.grad is not None  # DDP needs a gradient for every parameter
            optimizer.step()
        moved.append((F.normalize(model.prototypes.detach(), dim=-1) - before).abs().max().item())
    assert moved[0] < 1e-6 < 1e-3 < moved[1]


def test_knowledge_file_default_and_errors(tmp_path):
    entities = load_knowledge()
    assert 0 < len(entities) <= 500 and DEFAULT_KNOWLEDGE_FILE.is_file()
    assert all(e.name and e.description for e in entities)
    chest = load_knowledge("chest")  # the shipped chest-specific file
    assert {e.category for e in chest} <= {"Thoracic Imaging", "Cardiac Imaging", "Chest"}
    assert {"Pneumothorax", "Pulmonary Embolism (PE)"} <= {e.name for e in chest}
    with pytest.raises(FileNotFoundError, match="shipped names"):
        load_knowledge("thorax")
    bad = tmp_path / "k.jsonl"
    bad.write_text(json.dumps({"name": "a", "category": "c", "description": "d"}) + "\n"
                   + json.dumps({"name": "a", "description": "e"}))
    with pytest.raises(ValueError, match="duplicate"):
        load_knowledge(bad)
    bad.write_text(json.dumps({"name": "a"}))
    with pytest.raises(ValueError, match="description"):
        load_knowledge(bad)
