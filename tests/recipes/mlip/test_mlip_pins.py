"""Pins of the two MLIP recipes beyond their formulas (issue 26): every term's weight and temperature as
configured, the loss factories, MaCo's gradient path, the masking ratio, what the models hand their
losses (the diverged views, the reconstruction target, the logit scale, the [CLS] token weights) and
the default knowledge. Each is held against an independent computation: the cited source's lines
written out here, OpenCLIP's own towers, the eager attention weights of transformers, a count of the
knowledge file's lines."""
import argparse
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops
from openclip_unimlip.recipes.mlip_li import knowledge as li_knowledge
from openclip_unimlip.recipes.mlip_li import model as li_model_module
from openclip_unimlip.recipes.mlip_li.config import LI_TERMS, LiCfg
from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss, create_mlip_li_loss
from openclip_unimlip.recipes.mlip_liu import model as liu_model_module
from openclip_unimlip.recipes.mlip_liu.config import LIU_TERMS
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss, create_mlip_liu_loss
from openclip_unimlip.recipes.towers import text_pass

ONE_PROCESS = argparse.Namespace(local_loss=False, gather_with_grad=False, rank=0, world_size=1)
CAPTIONS = ["heart size is normal. small left pleural effusion. no pneumothorax.",
            "lungs are clear",
            "no focal consolidation. mild cardiomegaly.",
            "dark square. lower right."]


# ----- independent references ----------------------------------------------------------------------
def _ce(logits, target):
    """One row's cross-entropy, written out."""
    return -(logits[target] - torch.logsumexp(logits, dim=0))


def _mean_of_both_directions(a, b, scale):
    """Symmetric InfoNCE, the mean of the row and the column direction (OpenCLIP's ClipLoss)."""
    logits = scale * a @ b.T
    n = logits.shape[0]
    return (sum(_ce(logits[i], i) for i in range(n)) + sum(_ce(logits[:, j], j) for j in range(n))) / (2 * n)


def _sinkhorn(sim, column_mask, epsilon, iterations):
    """Sinkhorn-Knopp in the probability domain, float64, one (N, S) problem: rows 1/N, real columns 1/S."""
    sim, column_mask = sim.double(), column_mask.bool()
    kernel = torch.exp(sim / epsilon) * column_mask
    mu = torch.full((sim.shape[0],), 1.0 / sim.shape[0], dtype=torch.float64)
    nu = column_mask.double() / column_mask.sum()
    v = torch.ones(sim.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        u = mu / (kernel @ v)
        v = torch.where(column_mask, nu / (kernel.T @ u), torch.zeros_like(nu))
    return u[:, None] * kernel * v[None, :]


def _maco_contrastive(image, text, integrity, temperature_inverse):
    """MaCo's contrastive loss, model_MaCo.py l.407-419 (SZUHvern/MaCo 7f64d95), line by line: ``scale``
    = softplus(x_) is what our estimator returns; the weighted CE gets ``scale.detach()`` (l.416)."""
    logits1, logits2 = temperature_inverse * image @ text.t(), temperature_inverse * text @ image.t()
    gt = torch.arange(logits1.shape[0])
    scale = integrity.unsqueeze(-1)
    ce = torch.nn.CrossEntropyLoss()
    loss_c = ce(logits1 * scale, gt) + ce(logits2 * scale, gt)
    wce = torch.nn.CrossEntropyLoss(weight=scale.detach().squeeze(-1))
    loss_c = loss_c + wce(logits1, gt) + wce(logits2, gt)
    return loss_c / 4


def _mae_patchify(images, p):
    """MaCo's ``patchify`` (model_MaCo.py l.191-194: 'n c h p w q -> n (h w) (p q c)'), with einsum."""
    n, c, height, width = images.shape
    x = images.reshape(n, c, height // p, p, width // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (height // p) * (width // p), p * p * c)


def _unit(generator, *shape):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def _liu_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 2] = mask[1, 1:] = False
    return dict(image_features=_unit(g, 4, 8), text_features=_unit(g, 4, 8), logit_scale=torch.tensor(10.0),
                integrity_weights=torch.rand(4, generator=g) + 0.5, patch_embeddings=_unit(g, 4, 5, 8),
                sentence_embeddings=_unit(g, 4, 3, 8), sentence_mask=mask,
                reconstruction=torch.randn(4, 6, 12, generator=g), reconstruction_target=torch.randn(4, 6, 12, generator=g))


def _li_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(4, 6, generator=g)
    weights[:, 0] = weights[:, -2:] = 0
    weights = weights / weights.sum(1, keepdim=True)
    image, text, prototypes = _unit(g, 4, 8), _unit(g, 4, 8), _unit(g, 7, 8)
    return dict(image_features=image, text_features=text, logit_scale=torch.tensor(10.0),
                divergence_image_features=_unit(g, 4, 8), divergence_text_features=_unit(g, 4, 8),
                token_embeddings=_unit(g, 4, 6, 8), token_weights=weights, patch_embeddings=_unit(g, 4, 5, 8),
                image_prototype_scores=image @ prototypes.T, text_prototype_scores=text @ prototypes.T)


# ----- the losses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe, term", [("liu", t) for t in LIU_TERMS] + [("li", t) for t in LI_TERMS])
def test_each_terms_weight_scales_exactly_that_term(recipe, term):
    loss_class, inputs = (MlipLiuLoss, _liu_inputs()) if recipe == "liu" else (MlipLiLoss, _li_inputs())
    unit = loss_class()(**inputs, output_dict=True)
    weighted = loss_class(weights={term: 0.3})(**inputs, output_dict=True)
    assert set(weighted) == set(unit) and f"{term}_loss" in unit
    for name, value in unit.items():
        torch.testing.assert_close(weighted[name], value * 0.3 if name == f"{term}_loss" else value, msg=name)


def test_divergence_contrasts_at_its_own_temperature_not_at_the_logit_scale():
    x = _li_inputs()
    assert x["logit_scale"].item() != 1 / 0.05  # a logit scale other than 1/τd
    loss = MlipLiLoss(weights={"global": 0, "local": 0, "prototype": 0}, divergence_temperature=0.05)
    value = loss(**x, output_dict=True)["divergence_loss"]
    expected = (_mean_of_both_directions(x["image_features"], x["divergence_image_features"], 1 / 0.05)
                + _mean_of_both_directions(x["text_features"], x["divergence_text_features"], 1 / 0.05))
    torch.testing.assert_close(value, expected)


def test_patch_sentence_term_uses_the_configured_temperature():
    x = _liu_inputs()
    loss = MlipLiuLoss(weights={"masked_contrastive": 0, "reconstruction": 0}, psm_temperature=0.05,
                       ot_epsilon=0.1, ot_iterations=5, ot_tolerance=0.0)
    value = loss(**x, output_dict=True)["patch_sentence_loss"]
    n = x["patch_embeddings"].shape[0]
    sim = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for b in range(n):
            cosine = x["patch_embeddings"][a] @ x["sentence_embeddings"][b].T
            sim[a, b] = (_sinkhorn(cosine, x["sentence_mask"][b], 0.1, 5) * cosine.double()).sum()
    sim = sim / 0.05
    expected = (sum(_ce(sim[i], i) for i in range(n)) + sum(_ce(sim[:, j], j) for j in range(n))) / (2 * n)
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)


def test_loss_factories_pass_every_value_of_the_config_section():
    liu = {"psm_temperature": 0.05, "ot_epsilon": 0.2, "ot_iterations": 7, "ot_tolerance": 0.0,
           "loss_weights": {"reconstruction": 0.5}}
    loss = create_mlip_liu_loss(ONE_PROCESS, {"mlip_liu_cfg": liu})
    assert (loss.psm_temperature, loss.ot_epsilon, loss.ot_iterations, loss.ot_tolerance) == (0.05, 0.2, 7, 0.0)
    assert loss.weights == {"masked_contrastive": 1.0, "patch_sentence": 1.0, "reconstruction": 0.5}
    direct = MlipLiuLoss(weights={"reconstruction": 0.5}, psm_temperature=0.05, ot_epsilon=0.2, ot_iterations=7,
                         ot_tolerance=0.0)
    torch.testing.assert_close(loss(**_liu_inputs()), direct(**_liu_inputs()))

    li = {"divergence_temperature": 0.05, "local_temperature": 0.2, "prototype_temperature": 0.3,
          "sinkhorn_epsilon": 0.1, "sinkhorn_iterations": 5, "sinkhorn_tolerance": 0.5,
          "loss_weights": {"local": 0.25}}
    loss = create_mlip_li_loss(ONE_PROCESS, {"mlip_li_cfg": li})
    assert (loss.divergence_temperature, loss.local_temperature, loss.prototype_temperature, loss.sinkhorn_epsilon,
            loss.sinkhorn_iterations, loss.sinkhorn_tolerance) == (0.05, 0.2, 0.3, 0.1, 5, 0.5)
    assert loss.weights == {"global": 1.0, "divergence": 1.0, "local": 0.25, "prototype": 1.0}
    direct = MlipLiLoss(weights={"local": 0.25}, divergence_temperature=0.05, local_temperature=0.2,
                        prototype_temperature=0.3, sinkhorn_epsilon=0.1, sinkhorn_iterations=5, sinkhorn_tolerance=0.5)
    torch.testing.assert_close(loss(**_li_inputs()), direct(**_li_inputs()))


def test_macos_weighted_half_gives_the_estimator_no_gradient():
    """Value and gradient of MaCo's lines: the integrity weights learn only through the scaled half."""
    x = _liu_inputs()
    leaves = {k: x[k].clone().requires_grad_() for k in ("image_features", "text_features", "integrity_weights")}
    ours = MlipLiuLoss(weights={"patch_sentence": 0, "reconstruction": 0})(**{**x, **leaves})
    ours.backward()
    reference = {k: x[k].clone().requires_grad_() for k in leaves}
    theirs = _maco_contrastive(reference["image_features"], reference["text_features"],
                               reference["integrity_weights"], x["logit_scale"])
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    for key in leaves:
        torch.testing.assert_close(leaves[key].grad, reference[key].grad, msg=key)


# ----- masking --------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_patches, mask_ratio", [(196, 0.75), (196, 0.5), (36, 0.75), (36, 0.25)])
def test_random_patch_mask_keeps_one_minus_the_ratio(num_patches, mask_ratio):
    """MaCo's random_masking (model_MaCo.py l.219): len_keep = int(L * (1 - mask_ratio)); these ratios
    give whole numbers, so int and our round agree."""
    keep, masked = ops.random_patch_mask(3, num_patches, mask_ratio)
    assert keep.shape == (3, int(num_patches * (1 - mask_ratio)))
    assert masked.shape == (3, num_patches - keep.shape[1])
    for row_keep, row_masked in zip(keep, masked):
        assert sorted(row_keep.tolist() + row_masked.tolist()) == list(range(num_patches))


# ----- the models' outputs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens():
    return open_clip.get_tokenizer("mlip-liu-tiny")(CAPTIONS)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def small_knowledge(tmp_path_factory):
    """The first 16 default entities: encoding all 500 costs seconds of CPU per model."""
    path = tmp_path_factory.mktemp("knowledge") / "entities.jsonl"
    path.write_text("".join(li_knowledge.DEFAULT_KNOWLEDGE_FILE.read_text().splitlines(keepends=True)[:16]))
    return str(path)


class _RecordedMasks:
    """Wraps ``ops.random_patch_mask`` where a model module imported it; records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, batch, num_patches, mask_ratio, device=None):
        keep, masked = ops.random_patch_mask(batch, num_patches, mask_ratio, device=device)
        self.calls.append({"mask_ratio": mask_ratio, "keep": keep, "masked": masked})
        return keep, masked


def _liu_model(**section):
    registered = open_clip.get_model_config("mlip-liu-tiny")["mlip_liu_cfg"]
    torch.manual_seed(0)
    return open_clip.create_model("mlip-liu-tiny", output_dict=True, mlip_liu_cfg={**registered, **section}).train()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_liu_model_masks_the_configured_ratio_and_reconstructs_the_masked_patches(images, tokens, monkeypatch,
                                                                                   norm_pix_loss):
    model = _liu_model(mask_ratio=0.75, norm_pix_loss=norm_pix_loss)
    recorded = _RecordedMasks()
    monkeypatch.setattr(liu_model_module, "random_patch_mask", recorded)
    with torch.no_grad():
        out = model(images, tokens)
    (call,) = recorded.calls
    keep, masked = call["keep"], call["masked"]
    assert call["mask_ratio"] == 0.75 and keep.shape[1] == 9 and masked.shape[1] == 27  # 36 patches of 16 px
    # the target: MaCo's patchify of the input, at the masked patches (l.383, l.390-392), per-patch
    # normalised only with norm_pix_loss (l.385-388; off in MaCo's run)
    target = _mae_patchify(images, 16)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1.e-6) ** .5
    expected = torch.stack([t[m] for t, m in zip(target, masked)])
    torch.testing.assert_close(out["reconstruction_target"], expected)
    assert out["reconstruction"].shape == expected.shape
    # the visible patches are what the ViT saw
    _, visible = ops.vit_tokens(model.visual, images, keep)
    torch.testing.assert_close(out["patch_embeddings"], F.normalize(visible @ model.visual.proj, dim=-1))


def test_liu_model_hands_its_loss_the_exponentiated_logit_scale(images, tokens):
    """MaCo's inverse temperature starts at 1/T, T = 0.03 (main_pretrain.py l.103, model_MaCo.py l.129-130);
    OpenCLIP's parameter is its log (init_logit_scale in the configs)."""
    model = _liu_model()
    out = model(images, tokens)
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.03), rtol=1e-5, atol=0)
    out["logit_scale"].backward()
    torch.testing.assert_close(model.logit_scale.grad, model.logit_scale.detach().exp())


@pytest.fixture(scope="module")
def li_model(small_knowledge):
    registered = open_clip.get_model_config("mlip-li-tiny")["mlip_li_cfg"]
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-li-tiny", output_dict=True,
                                   mlip_li_cfg={**registered, "knowledge_file": small_knowledge,
                                                "divergence_image_keep": 0.25})
    model.configure_terms(["global", "divergence", "local"])
    return model


def test_li_diverged_views_are_second_passes_of_each_tower(li_model, images, tokens, monkeypatch):
    recorded = _RecordedMasks()
    monkeypatch.setattr(li_model_module, "random_patch_mask", recorded)
    li_model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        out = li_model(images, tokens)
        # the image view: the tower on divergence_image_keep = 1/4 of the 36 patches
        (call,) = recorded.calls
        assert call["mask_ratio"] == 0.75 and call["keep"].shape[1] == 9
        torch.testing.assert_close(out["divergence_image_features"],
                                   F.normalize(ops.vit_tokens(li_model.visual, images, call["keep"])[0], dim=-1))
        # the text view: another dropout draw of the tower (MiniLM: dropout 0.1), so not the first pass ...
        assert (out["divergence_text_features"] - out["text_features"]).abs().max() > 1e-3
        # ... yet the same function: without dropout both passes are OpenCLIP's text tower forward
        li_model.text.eval()
        try:
            quiet = li_model(images, tokens)
            reference = F.normalize(li_model.text(tokens), dim=-1)
        finally:
            li_model.train()
    torch.testing.assert_close(quiet["text_features"], reference)
    torch.testing.assert_close(quiet["divergence_text_features"], reference)


def test_text_pass_is_openclips_text_tower_forward_with_pads_masked(li_model, tokens):
    text = li_model.text.eval()
    assert (tokens == text.config.pad_token_id).any(dim=1).all()  # every caption is padded
    try:
        with torch.no_grad():
            _, attention_mask, projected = text_pass(text, tokens)
            reference = text(tokens)
    finally:
        li_model.train()
    torch.testing.assert_close(projected, reference)
    assert torch.equal(attention_mask, (tokens != text.config.pad_token_id).long())


def test_li_token_weights_are_the_last_layers_clipped_cls_attention(li_model, tokens, images):
    """MGCA (mgca_module.py l.140-153; encoder.py l.382): the last layer's [CLS]->token attention
    averaged over heads, clipped to the sample's 10th-90th percentile and normalised; here read from
    transformers' own eager attention probabilities."""
    transformer = li_model.text.transformer
    mask = (tokens != li_model.text.config.pad_token_id).long()
    li_model.text.eval()  # no dropout, so both passes see the same states
    try:
        transformer.set_attn_implementation("eager")
        with torch.no_grad():
            probabilities = transformer(input_ids=tokens, attention_mask=mask, output_attentions=True).attentions[-1]
        transformer.set_attn_implementation("sdpa")
        with torch.no_grad():
            out = li_model(images, tokens)
    finally:
        transformer.set_attn_implementation("sdpa")
        li_model.train()
    cls_to_token = probabilities[:, :, 0, :].mean(dim=1)
    special = torch.as_tensor(li_model.special_token_ids)
    for row, weights, ids, row_mask in zip(cls_to_token, out["token_weights"], tokens, mask):
        valid = row_mask.bool() & ~torch.isin(ids, special)
        values = row[valid]
        clipped = values.clamp(torch.quantile(values, 0.1), torch.quantile(values, 0.9))
        torch.testing.assert_close(weights[valid], clipped / clipped.sum(), atol=1e-5, rtol=1e-4)
        assert (weights[~valid] == 0).all()


def test_the_default_knowledge_is_the_500_entity_radiology_file():
    """docs/methods/mlip-li.md: knowledge_file null = "radiology", 500 entities (K = 500, MGCA's
    num_prototypes, mgca_module.py l.46); counted here from the file's lines."""
    path = Path(li_knowledge.__file__).parent / "knowledge" / "radiology_entities.jsonl"
    names = [json.loads(line)["name"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(names) == 500
    assert LiCfg().knowledge_file is None
    assert [e.name for e in li_knowledge.load_knowledge(LiCfg().knowledge_file)] == names
    model = open_clip.create_model("mlip-li-tiny", device="meta", pretrained_text=False)  # no weights
    assert model.entity_names == names and tuple(model.prototypes.shape) == (500, 128)
