"""Pins of MLIP (Liu) beyond its formulas (issue 26): every term's weight and the patch-sentence
temperature as configured, MaCo's gradient path, the masking ratio and what the model hands its loss
(the reconstruction target, the logit scale). Each is held against an independent computation: the
cited source's lines written out here, OpenCLIP's own towers."""
import inspect

import open_clip
import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import distributed, ops
from openclip_unimlip.recipes.mlip_liu import model as liu_model_module
from openclip_unimlip.recipes.mlip_liu.config import LiuCfg
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss

from mlip_helpers import RecordedMasks as _RecordedMasks
from mlip_helpers import ce as _ce
from mlip_helpers import defaults_unlike_clip_loss as _defaults_unlike_clip_loss
from mlip_helpers import joined as _joined
from mlip_helpers import liu_inputs as _liu_inputs
from mlip_helpers import sinkhorn as _sinkhorn
from mlip_helpers import two_ranks_in_one_process as _two_ranks_in_one_process


# ----- independent references ---------------------------------------------------------------------
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


# ----- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.1, 0.05])
def test_patch_sentence_term_is_infonce_over_transport_similarities_at_the_configured_temperature(temperature):
    x = _liu_inputs()
    loss = MlipLiuLoss(weights={"masked_contrastive": 0, "reconstruction": 0}, psm_temperature=temperature,
                       ot_epsilon=0.1, ot_iterations=5, ot_tolerance=0.0)
    value = loss(**x, output_dict=True)["patch_sentence_loss"]
    n = x["patch_embeddings"].shape[0]
    sim = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for b in range(n):
            cosine = x["patch_embeddings"][a] @ x["sentence_embeddings"][b].T
            sim[a, b] = (_sinkhorn(cosine, x["sentence_mask"][b], 0.1, 5) * cosine.double()).sum()
    sim = sim / temperature
    expected = (sum(_ce(sim[i], i) for i in range(n)) + sum(_ce(sim[:, j], j) for j in range(n))) / (2 * n)
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)


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


# ----- the model's outputs ------------------------------------------------------------------------
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


@pytest.mark.parametrize("rows", [8, 6, 260])
@pytest.mark.parametrize("local_loss", [True, False])
def test_two_ranks_average_to_the_one_process_terms(monkeypatch, local_loss, rows):
    """Two ranks in one process (``mlip_helpers.two_ranks_in_one_process``): the two ranks' terms
    average to the one-process terms at the double batch (the value whose gradient DDP's average over
    ranks follows); with --local-loss --gather-with-grad each rank scores its own rows, without it the
    whole batch. With real collectives in spawned ranks: tests/recipes/test_mlip_distributed.py."""
    # each rank's batch as wide as the features (8 rows: a batch axis confused with the feature axis
    # shows), not a power of two (6 rows: an offset added by bits shows), or past 256 (260 rows: sizes
    # are no longer CPython's shared small ints, so identity is not equality; one transport iteration
    # there, to keep it quick)
    def batch(first_seed):
        parts = [_liu_inputs(seed=first_seed + i) for i in range((rows + 3) // 4)]
        whole = {k: torch.cat([part[k] for part in parts]) if v.ndim else v for k, v in parts[0].items()}
        return {k: v[:rows] if v.ndim else v for k, v in whole.items()}

    halves = [batch(1), batch(1000)]
    assert halves[0]["image_features"].shape == (rows, 8)
    settings = dict(psm_temperature=0.07, ot_epsilon=0.1, ot_iterations=5 if rows < 256 else 1, ot_tolerance=0.0)
    one_process = MlipLiuLoss(**settings)(**_joined(*halves), output_dict=True)
    ranks = _two_ranks_in_one_process(monkeypatch, lambda rank: MlipLiuLoss(
        **settings, local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=2), halves, [distributed])
    assert set(one_process) == set(ranks[0]) == set(ranks[1]) == {
        "masked_contrastive_loss", "patch_sentence_loss", "reconstruction_loss"}
    for term, value in one_process.items():
        torch.testing.assert_close((ranks[0][term] + ranks[1][term]) / 2, value, msg=term)
        if local_loss:  # each rank scores its own rows
            assert not torch.allclose(ranks[0][term], ranks[1][term])
        elif term != "reconstruction_loss":  # the whole batch (reconstruction: a per-sample term, its own samples)
            torch.testing.assert_close(ranks[0][term], value, msg=term)


def test_the_loss_defaults_are_the_configs_and_clip_losss():
    """A loss built without arguments (a user's script) is the configured one, distributed as ClipLoss."""
    ours = inspect.signature(MlipLiuLoss.__init__).parameters
    for name in ("psm_temperature", "ot_epsilon", "ot_iterations", "ot_tolerance"):
        assert ours[name].default == getattr(LiuCfg(), name), name
    assert _defaults_unlike_clip_loss(MlipLiuLoss) == []


# ----- the decoder and the model's shapes ---------------------------------------------------------
def test_the_decoder_is_maes_embedded_visible_tokens_and_mask_tokens_plus_positions_through_its_blocks():
    """MAE's forward_decoder (facebookresearch/mae models_mae.py): embed the visible tokens, a mask token
    at every other position, unshuffled, plus the position embedding, the blocks, the norm, the
    prediction at the masked positions; written out one sample at a time. Ten samples, wider than
    the decoder: nothing may mix the batch and width dims."""
    torch.manual_seed(0)
    decoder = liu_model_module.MaskedPatchDecoder(encoder_width=6, num_patches=5, patch_pixels=12, width=8,
                                                  depth=1, heads=2).eval()
    with torch.no_grad():
        decoder.position.normal_()  # far from zero, so that a lost or mis-signed position shows
        decoder.mask_token.normal_()
    order = torch.stack([torch.randperm(5) for _ in range(10)])
    keep, masked = order[:, :2].sort(dim=1).values, order[:, 2:].sort(dim=1).values
    visible = torch.randn(10, 2, 6)
    with torch.no_grad():
        got = decoder(visible, keep, masked)
        for sample in range(10):
            sequence = decoder.mask_token[0].repeat(5, 1)
            sequence[keep[sample]] = decoder.embed(visible[sample])
            sequence = decoder.blocks((sequence + decoder.position[0])[None])[0]
            expected = decoder.head(decoder.norm(sequence[masked[sample]]))
            torch.testing.assert_close(got[sample], expected)


def test_the_decoders_blocks_are_maes_and_its_learned_tokens_start_at_maes_scale():
    """MAE's initialize_weights: normal_(mask_token, std=.02) (models_mae.py); the learned positions
    (ours: MAE's are fixed sin-cos) start at the same scale."""
    torch.manual_seed(0)
    decoder = liu_model_module.MaskedPatchDecoder(encoder_width=8, num_patches=16, patch_pixels=12, width=512,
                                                  depth=1, heads=2)
    for values in (decoder.mask_token, decoder.position):
        assert 0.018 < values.std().item() < 0.022 and abs(values.mean().item()) < 0.002
    # MAE's decoder blocks: Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=4., qkv_bias=True)
    block = decoder.blocks[0]
    assert block.mlp.fc1.out_features == 4 * 512 and block.attn.qkv.bias is not None


def test_the_sentence_lookups_cover_the_tokenizers_vocabulary():
    model = _liu_model()
    size = len(open_clip.get_tokenizer("mlip-liu-tiny").tokenizer)
    for name in ("is_delimiter", "keeps_period", "is_number", "opens_item"):
        assert getattr(model, name).shape == (size,), name


def test_the_state_dict_is_openclips_plus_the_integrity_estimator_and_the_decoder():
    """A checkpoint holds OpenCLIP's CustomTextCLIP of the same towers and MaCo's two heads; the sentence
    lookups are rebuilt from the tokenizer, not saved (a checkpoint loads under another vocabulary's
    lookups only through the tokenizer it names)."""
    from openclip_unimlip.seam.hub import resolve_text_cfg

    model = _liu_model()
    config = open_clip.get_model_config("mlip-liu-tiny")
    clip = open_clip.model.CustomTextCLIP(config["embed_dim"], config["vision_cfg"],
                                          resolve_text_cfg(config["text_cfg"]))
    heads = {k for k in model.state_dict() if k.startswith(("integrity.", "decoder."))}
    assert heads and set(model.state_dict()) == set(clip.state_dict()) | heads


def test_train_outputs_are_unit_vectors_along_their_last_dim(images, tokens):
    with torch.no_grad():
        out = _liu_model()(images, tokens)
    for name in ("image_features", "text_features", "patch_embeddings"):
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(out[name].shape[:-1]), msg=name)
    sentences = out["sentence_embeddings"][out["sentence_mask"]]
    assert sentences.shape[0] > len(tokens)  # several sentences in some captions
    torch.testing.assert_close(sentences.norm(dim=-1), torch.ones(sentences.shape[0]))


def test_a_wide_image_is_cut_into_its_own_grid_of_patches(tokens):
    """OpenCLIP's ViT takes a (height, width) image size: 64 x 96 px in 16 px patches is 4 x 6 = 24."""
    config = open_clip.get_model_config("mlip-liu-tiny")
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-liu-tiny", output_dict=True,
                                   vision_cfg={**config["vision_cfg"], "image_size": [64, 96]}).train()
    wide = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(wide, tokens)
    assert model.integrity.linear.in_features == 24 and out["integrity_weights"].shape == (4,)
    assert out["reconstruction_target"].shape == (4, 12, 16 * 16 * 3)  # mask ratio 0.5
    assert set(_mae_patchify(wide, 16)[0].flatten().tolist()) >= set(out["reconstruction_target"][0].flatten().tolist())


def test_a_mask_ratio_that_masks_no_patch_reconstructs_nothing(images, tokens):
    """ops.random_patch_mask keeps round(36 x 0.99) = 36 of the tiny model's patches: none to rebuild."""
    with torch.no_grad():
        out = _liu_model(mask_ratio=0.01)(images, tokens)
    assert out["patch_embeddings"].shape[1] == 36
    assert "reconstruction" not in out and "reconstruction_target" not in out
    with torch.no_grad():  # round(36 x 0.97) = 35 kept: one patch to rebuild
        one = _liu_model(mask_ratio=0.03)(images, tokens)
    assert one["reconstruction"].shape == one["reconstruction_target"].shape == (len(images), 1, 16 * 16 * 3)


def test_a_vit_that_pools_otherwise_than_by_the_mean_is_refused():
    config = open_clip.get_model_config("mlip-liu-tiny")
    with pytest.raises(ValueError, match="set vision_cfg.pool_type to 'avg'"):
        open_clip.create_model("mlip-liu-tiny", vision_cfg={**config["vision_cfg"], "pool_type": "tok"})

