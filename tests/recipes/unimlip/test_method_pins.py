"""Method numbers that no other test holds against an independent source (issue 20): each is
checked against the paper's or SimCLR's own value, with the loss written out in the test."""
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss
from openclip_unimlip.recipes.unimlip.views import simclr_blur_kernel_size


def _info_nce(a, b, scale):
    """CLIP's symmetric cross-entropy over the row-paired similarity matrix."""
    logits = scale * a @ b.T
    labels = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_default_loss_is_equation_4_with_the_papers_weights():
    """Sec. 4.2: "we set λcm = 0.5/3 = 0.167, λum = 0.5, and λfm = 0.5"; SimCLR at temperature 0.1."""
    g = torch.Generator().manual_seed(0)
    unit = lambda: F.normalize(torch.randn(6, 8, generator=g), dim=-1)  # noqa: E731
    features = {name: unit() for name in ("image_features", "text_features", "perturbed_image_features",
                                          "perturbed_text_features", "simclr_features_a", "simclr_features_b")}
    logit_scale = torch.tensor(7.0)
    mlm_logits = torch.randn(6, 3, 20, generator=g)
    mlm_targets = torch.randint(20, (6, 3), generator=g)
    mlm_targets[::2, 2] = -100  # unused slots
    terms = UniMlipLoss()(**features, logit_scale=logit_scale, mlm_logits=mlm_logits, mlm_targets=mlm_targets,
                          output_dict=True)
    f = features
    used = mlm_targets != -100
    expected = {
        "itc_loss": 0.5 / 3 * _info_nce(f["image_features"], f["text_features"], 7.0),
        "image_perturbed_itc_loss": 0.5 / 3 * _info_nce(f["perturbed_image_features"], f["text_features"], 7.0),
        "text_perturbed_itc_loss": 0.5 / 3 * _info_nce(f["image_features"], f["perturbed_text_features"], 7.0),
        "simclr_loss": 0.5 * _info_nce(f["simclr_features_a"], f["simclr_features_b"], 1 / 0.1),
        "mlm_loss": 0.5 * F.cross_entropy(mlm_logits[used], mlm_targets[used]),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)


def test_blur_kernel_is_simclrs():
    """google-research/simclr data_util.random_blur: kernel_size = height // 10, then
    radius = kernel_size // 2 and the kernel 2 * radius + 1 wide."""
    for side in (96, 224, 256):
        assert simclr_blur_kernel_size(side) == (side // 10) // 2 * 2 + 1


def test_feed_views_sends_the_views_through_the_tower_without_a_simclr_term(captions):
    """Table 3's "views fed, no SimCLR" row (feed_views_without_simclr): while the SimCLR phase is on
    the two strong views pass the image tower although no SimCLR term is trained; counted at the
    real layer-4 output."""
    import open_clip

    model = open_clip.create_model("unimlip-tiny", unimlip_cfg={"fusion_layers": 1, "fusion_heads": 6,
                                                                "feed_views_without_simclr": True})
    model.train()
    model.configure_terms(["itc"])
    model.set_simclr_active(True)
    samples = []
    model.visual.layer4.register_forward_hook(lambda module, args, out: samples.append(out.shape[0]))
    out = model(torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)), captions)
    assert sum(samples) == 3 * 4  # the clean batch and its two views
    assert "simclr_features_a" not in out


def test_with_itc_on_the_clean_caption_the_fusion_still_reads_the_masked_caption(captions):
    """``itc_on_clean_caption`` adds a text pass on the clean caption for ITC only: MLM must still
    predict from the masked caption's states (else the masked word is in its input). The text
    tower's real calls are recorded with their input ids and compared with what the fusion gets."""
    import open_clip

    model = open_clip.create_model("unimlip-tiny", unimlip_cfg={"fusion_layers": 1, "fusion_heads": 6,
                                                                "itc_on_clean_caption": True})
    model.train()
    passes, fusion_states = [], []
    model.text.transformer.register_forward_hook(
        lambda module, args, kwargs, out: passes.append((kwargs["input_ids"], out.last_hidden_state)), with_kwargs=True)
    model.fusion.register_forward_pre_hook(lambda module, args: fusion_states.append(args[0]))
    model(torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)), captions)
    masked = [states for ids, states in passes if not torch.equal(ids, captions)]
    clean = [states for ids, states in passes if torch.equal(ids, captions)]
    assert len(masked) == 1 and len(clean) == 1 and len(fusion_states) == 1
    assert torch.equal(fusion_states[0], masked[0])


def test_the_trainers_loss_follows_openclips_distributed_flags():
    """``open_clip_train`` builds the loss with ``create_loss(args)``: OpenCLIP's --local-loss,
    --gather-with-grad, rank and world size must reach the Uni-Mlip loss (their effect on values and
    gradients is tested over two processes in test_distributed_losses.py)."""
    import argparse

    import open_clip

    args = argparse.Namespace(model="unimlip-tiny", local_loss=True, gather_with_grad=True, rank=1, world_size=2)
    loss = open_clip.create_loss(args)
    assert (loss.local_loss, loss.gather_with_grad, loss.rank, loss.world_size) == (True, True, 1, 2)
    args = argparse.Namespace(model="unimlip-tiny", local_loss=False, gather_with_grad=True, rank=0, world_size=1)
    assert open_clip.create_loss(args).local_loss is False
