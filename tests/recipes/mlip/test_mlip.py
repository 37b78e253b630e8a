"""The two MLIP recipes: each term against an independent computation, the models' train/eval
contracts, the knowledge file, and short CPU trainings through open_clip_train."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops
from openclip_unimlip.recipes.mlip_li.knowledge import DEFAULT_KNOWLEDGE_FILE, load_knowledge
from openclip_unimlip.recipes.mlip_li.model import clipped_token_weights, cls_attention
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss
from shards import write_shards

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _naive_sinkhorn(sim, column_mask, epsilon, iterations):
    """Sinkhorn-Knopp in the probability domain, float64, one (N, S) problem."""
    sim, column_mask = sim.double(), column_mask.bool()
    kernel = torch.exp(sim / epsilon) * column_mask
    mu = torch.full((sim.shape[0],), 1.0 / sim.shape[0], dtype=torch.float64)
    nu = column_mask.double() / column_mask.sum()
    v = torch.ones(sim.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        u = mu / (kernel @ v)
        v = torch.where(column_mask, nu / (kernel.T @ u), torch.zeros_like(nu))
    return u[:, None] * kernel * v[None, :]


def _naive_ce(logits, target):
    return -(logits[target] - torch.logsumexp(logits, dim=0))


# ----- ops -----------------------------------------------------------------------------------------
def test_transport_plan_marginals_and_independent_sinkhorn():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(3, 6, 4, generator=g) * 2 - 1
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    plan = ops.sinkhorn_plan(sim, mask, epsilon=0.1, iterations=5)
    for b in range(3):
        expected = _naive_sinkhorn(sim[b], mask[b], 0.1, 5)
        torch.testing.assert_close(plan[b].double(), expected, atol=1e-6, rtol=1e-4)
        # ends on the column update: column marginal exact, padding columns empty
        torch.testing.assert_close(plan[b].sum(0), mask[b].float() / mask[b].sum(), atol=1e-6, rtol=0)
    converged = ops.sinkhorn_plan(sim, mask, epsilon=0.1, iterations=200)
    torch.testing.assert_close(converged.sum(-1), torch.full((3, 6), 1 / 6), atol=1e-5, rtol=0)


def test_swav_codes_sum_to_one_and_match_an_independent_computation():
    g = torch.Generator().manual_seed(1)
    scores = F.normalize(torch.randn(6, 32, generator=g), dim=-1) @ F.normalize(torch.randn(10, 32, generator=g), dim=-1).T
    codes = ops.swav_codes(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    q = torch.exp(scores.double() / 0.05).T
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(1, keepdim=True) * 10
        q /= q.sum(0, keepdim=True) * 6
    torch.testing.assert_close(codes.double(), (q * 6).T, atol=1e-6, rtol=1e-4)


def test_patchify_and_normalised_targets():
    images = torch.randn(2, 3, 32, 32)
    patches = ops.patchify(images, 16)
    unfolded = F.unfold(images, kernel_size=16, stride=16).transpose(1, 2)  # (c, p, q) order
    reorder = unfolded.reshape(2, 4, 3, 16, 16).permute(0, 1, 3, 4, 2).reshape(2, 4, -1)  # (p, q, c)
    torch.testing.assert_close(patches, reorder)
    target = ops.normalize_patches(patches)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1), torch.ones(2, 4), atol=1e-4, rtol=0)


def test_random_patch_mask_partitions_the_patches():
    keep, masked = ops.random_patch_mask(4, 36, 0.5, device="cpu")
    assert keep.shape == (4, 18) and masked.shape == (4, 18)
    for k, m in zip(keep, masked):
        assert sorted(k.tolist() + m.tolist()) == list(range(36))
    assert torch.equal(ops.keep_mask(keep, 36).sum(1), torch.full((4,), 18.0))


def test_sentences_split_at_boundaries_and_skip_special_tokens():
    # [CLS] a b . c . d [SEP] [PAD]   with '.' = 5, specials 101/102/0
    ids = torch.tensor([[101, 7, 8, 5, 9, 5, 10, 102, 0], [101, 7, 102, 0, 0, 0, 0, 0, 0]])
    content = ~torch.isin(ids, torch.tensor([101, 102, 0]))
    segments = ops.sentence_segments(ids == 5, content, max_sentences=2)
    assert segments[0, 0].nonzero().flatten().tolist() == [1, 2, 3]
    assert segments[0, 1].nonzero().flatten().tolist() == [4, 5, 6]  # third sentence merged into the last
    assert segments[1, 0].nonzero().flatten().tolist() == [1] and not segments[1, 1].any()
    hidden = torch.randn(2, 9, 4)
    pooled, valid = ops.pool_sentences(hidden, segments)
    torch.testing.assert_close(pooled[0, 1], hidden[0, 4:7].mean(0))
    assert valid.tolist() == [[True, True], [True, False]]


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


def test_sinkhorn_converges_to_tolerance_and_warns_when_iterations_run_out():
    g = torch.Generator().manual_seed(3)
    sim = torch.rand(2, 12, 5, generator=g) * 2 - 1
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with pytest.warns(RuntimeWarning, match="above the tolerance"):  # extreme input: ε = 0.02, 5 iterations
        ops.sinkhorn_plan(sim, mask, epsilon=0.02, iterations=5, tolerance=1e-3)
    plan = ops.sinkhorn_plan(sim, mask, epsilon=0.05, iterations=2000, tolerance=1e-4)
    for b in range(2):
        reference = _naive_sinkhorn(sim[b], mask[b], 0.05, 5000)  # float64, far past convergence
        torch.testing.assert_close(plan[b].sum(1).double(), torch.full((12,), 1 / 12, dtype=torch.float64),
                                   atol=1e-4 / 12, rtol=0)
        torch.testing.assert_close(plan[b].double(), reference, atol=2e-4 / 12, rtol=0)
    scores = torch.rand(6, 9, generator=g) * 2 - 1
    with pytest.warns(RuntimeWarning, match="prototype codes"):
        ops.swav_codes(scores, epsilon=0.01, iterations=3, tolerance=1e-3)
    codes = ops.swav_codes(scores, epsilon=0.05, iterations=5000, tolerance=1e-5)
    torch.testing.assert_close(codes.sum(0), torch.full((9,), 6 / 9), atol=1e-4, rtol=0)  # equal prototype mass
    torch.testing.assert_close(codes.sum(1), torch.ones(6), atol=1e-5, rtol=0)


# ----- MLIP (Liu) loss terms ---------------------------------------------------------------------
def _liu_inputs(batch=4, patches=5, sentences=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    mask = torch.ones(batch, sentences, dtype=torch.bool)
    mask[0, 2] = mask[1, 1:] = False
    return dict(image_features=unit(batch, dim), text_features=unit(batch, dim), logit_scale=torch.tensor(10.0),
                integrity_weights=torch.rand(batch, generator=g) + 0.5, patch_embeddings=unit(batch, patches, dim),
                sentence_embeddings=unit(batch, sentences, dim), sentence_mask=mask,
                reconstruction=torch.randn(batch, 6, 12, generator=g), reconstruction_target=torch.randn(batch, 6, 12, generator=g))


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


def test_patch_sentence_term_is_infonce_over_transport_similarities():
    x = _liu_inputs()
    loss = MlipLiuLoss(weights={"masked_contrastive": 0, "reconstruction": 0}, psm_temperature=0.1,
                       ot_epsilon=0.1, ot_iterations=5, ot_tolerance=0.0)
    value = loss(**x, output_dict=True)["patch_sentence_loss"]
    n = x["patch_embeddings"].shape[0]
    sim = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for b in range(n):
            cos = x["patch_embeddings"][a] @ x["sentence_embeddings"][b].T
            plan = _naive_sinkhorn(cos, x["sentence_mask"][b], 0.1, 5)
            sim[a, b] = (plan * cos.double()).sum()
    sim = sim / 0.1
    expected = (sum(_naive_ce(sim[i], i) for i in range(n)) + sum(_naive_ce(sim[:, j], j) for j in range(n))) / (2 * n)
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)


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


# ----- MLIP (Li) loss terms -----------------------------------------------------------------------
def _li_inputs(batch=4, tokens=6, patches=5, dim=8, prototypes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    weights = torch.rand(batch, tokens, generator=g)
    weights[:, 0] = weights[:, -2:] = 0  # [CLS], [SEP]/pad
    weights = weights / weights.sum(1, keepdim=True)
    image, text = unit(batch, dim), unit(batch, dim)
    protos = unit(prototypes, dim)
    return dict(image_features=image, text_features=text, logit_scale=torch.tensor(10.0),
                divergence_image_features=unit(batch, dim), divergence_text_features=unit(batch, dim),
                token_embeddings=unit(batch, tokens, dim),
                token_weights=weights, patch_embeddings=unit(batch, patches, dim),
                image_prototype_scores=image @ protos.T, text_prototype_scores=text @ protos.T)


def _itc(a, b, scale):
    logits = scale * a @ b.T
    n = logits.shape[0]
    return (sum(_naive_ce(logits[i], i) for i in range(n)) + sum(_naive_ce(logits[:, j], j) for j in range(n))) / (2 * n)


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


# ----- models -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_knowledge(tmp_path_factory):
    """The first 16 default entities: encoding all 500 costs ~10 s of CPU per model."""
    path = tmp_path_factory.mktemp("knowledge") / "entities.jsonl"
    path.write_text("".join(DEFAULT_KNOWLEDGE_FILE.read_text().splitlines(keepends=True)[:16]))
    return str(path)


def _li_model(knowledge_file):
    import open_clip

    return open_clip.create_model("mlip-li-tiny", output_dict=True, mlip_li_cfg={"knowledge_file": knowledge_file})


@pytest.fixture(scope="module")
def models(small_knowledge):
    import open_clip

    torch.manual_seed(0)
    return {"mlip-liu-tiny": open_clip.create_model("mlip-liu-tiny", output_dict=True),
            "mlip-li-tiny": _li_model(small_knowledge)}


@pytest.fixture(scope="module")
def batch():
    import open_clip

    tokenizer = open_clip.get_tokenizer("mlip-liu-tiny")
    texts = tokenizer(["heart size is normal. small left pleural effusion. no pneumothorax.",
                       "a bright square in the upper left of the image",
                       "lungs are clear. no focal consolidation.",
                       "dark square. lower right."])
    return torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)), texts


@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_eval_mode_is_exactly_openclip_clip(models, batch, name):
    from open_clip.model import CustomTextCLIP

    model = models[name].eval()
    images, texts = batch
    out = model(images, texts)
    with torch.no_grad():
        reference = CustomTextCLIP.forward(model, images, texts)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    for key in out:
        torch.testing.assert_close(out[key], reference[key])


@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_train_outputs_are_batch_first_and_every_parameter_gets_a_gradient(models, batch, name):
    import argparse

    import open_clip

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


def test_vit_tokens_is_the_towers_forward(models, batch):
    visual = models["mlip-li-tiny"].visual.eval()
    images = batch[0]
    pooled, _ = ops.vit_tokens(visual, images)
    torch.testing.assert_close(pooled, visual(images))
    every_patch = torch.arange(36).expand(4, -1)
    torch.testing.assert_close(ops.vit_tokens(visual, images, every_patch)[0], visual(images))


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
    bad.write_text(json.dumps({"name": "a", "category": "c", "description": "d"}) + "\n" + json.dumps({"name": "a", "description": "e"}))
    with pytest.raises(ValueError, match="duplicate"):
        load_knowledge(bad)
    bad.write_text(json.dumps({"name": "a"}))
    with pytest.raises(ValueError, match="description"):
        load_knowledge(bad)


def test_bad_recipe_sections_are_refused():
    from openclip_unimlip.recipes.mlip_li.config import LiCfg
    from openclip_unimlip.recipes.mlip_liu.config import LiuCfg

    with pytest.raises(ValueError, match="Unknown mlip_liu_cfg keys"):
        LiuCfg.from_dict({"mask_ration": 0.5})
    with pytest.raises(ValueError, match="mask_ratio"):
        LiuCfg.from_dict({"mask_ratio": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        LiCfg.from_dict({"loss_weights": {"global": 0, "divergence": 0, "local": 0, "prototype": 0}})


# ----- end to end through open_clip_train --------------------------------------------------------
def _logged(log_text, key):
    return [float(v) for v in re.findall(rf"{key}: ([0-9.]+) \(", log_text)]


@pytest.mark.slow
@pytest.mark.parametrize("name, terms", [
    ("mlip-liu-tiny", ("Masked_contrastive_loss", "Patch_sentence_loss", "Reconstruction_loss")),
    ("mlip-li-tiny", ("Global_loss", "Divergence_loss", "Local_loss", "Prototype_loss")),
])
def test_short_cpu_training_lowers_the_loss(tmp_path, name, terms):
    pattern = write_shards(tmp_path / "shards", num_samples=128, per_shard=64)
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", name, "--train-data", pattern,
           "--dataset-type", "webdataset", "--train-num-samples", "128", "--batch-size", "16", "--epochs", "3",
           "--workers", "1", "--precision", "fp32", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path / "logs"),
           "--name", "run", "--log-every-n-steps", "1", "--seed", "0"]
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "logs" / "run" / "out.log").read_text()
    for term in terms:
        assert term in log, term
    losses = _logged(log, "Loss")
    assert len(losses) >= 20
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
