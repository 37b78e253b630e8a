"""The Uni-Mlip loss against independent computations written here."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.loss import PAPER_WEIGHTS, UniMlipLoss


def _features(batch=6, dim=8, vocab=11, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda: F.normalize(torch.randn(batch, dim, generator=g), dim=-1)  # noqa: E731
    targets = torch.randint(vocab, (batch, k), generator=g)
    targets[torch.rand(batch, k, generator=g) < 0.3] = -100
    return {
        "image_features": unit(), "text_features": unit(),
        "perturbed_image_features": unit(), "perturbed_text_features": unit(),
        "simclr_features_a": unit(), "simclr_features_b": unit(),
        "mlm_logits": torch.randn(batch, k, vocab, generator=g), "mlm_targets": targets,
        "logit_scale": torch.tensor(1 / 0.07),
    }


def _only(term, **kwargs):
    return UniMlipLoss(weights={t: float(t == term) for t in TERMS}, **kwargs)


@pytest.mark.parametrize("logit_bias", [None, torch.tensor(-2.5)])
def test_itc_equals_openclip_clip_loss(logit_bias):
    f = _features()
    ours = _only("itc")(**f, logit_bias=logit_bias, output_dict=True)
    reference = open_clip.ClipLoss()(f["image_features"], f["text_features"], f["logit_scale"], logit_bias)
    assert set(ours) == {"itc_loss"}
    torch.testing.assert_close(ours["itc_loss"], reference)


@pytest.mark.parametrize("term, perturbed, clean, untouched", [
    ("image_perturbed_itc", "perturbed_image_features", "text_features", "image_features"),
    ("text_perturbed_itc", "perturbed_text_features", "image_features", "text_features"),
])
def test_perturbed_itc_terms_use_only_the_perturbed_side(term, perturbed, clean, untouched):
    f = {k: v.requires_grad_() if v.is_floating_point() and v.ndim else v for k, v in _features().items()}
    value = _only(term)(**f, output_dict=True)[f"{term}_loss"]
    pair = (f[perturbed], f[clean]) if term == "image_perturbed_itc" else (f[clean], f[perturbed])
    torch.testing.assert_close(value, open_clip.ClipLoss()(*pair, f["logit_scale"]))
    value.backward()
    assert f[untouched].grad is None
    assert f[perturbed].grad.abs().sum() > 0 and f[clean].grad.abs().sum() > 0


def test_simclr_is_equation_2():
    f = _features()
    a, b, tau = f["simclr_features_a"], f["simclr_features_b"], 0.1
    n = a.shape[0]
    sim = lambda x, y: float(x @ y) / tau  # noqa: E731 (features are unit norm: cosine)
    expected = 0.0
    for i in range(n):
        expected -= (sim(a[i], b[i]) - math.log(sum(math.exp(sim(a[i], b[j])) for j in range(n)))) / (2 * n)
        expected -= (sim(a[i], b[i]) - math.log(sum(math.exp(sim(a[j], b[i])) for j in range(n)))) / (2 * n)
    got = _only("simclr", simclr_temperature=tau)(**f, output_dict=True)["simclr_loss"]
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_mlm_counts_only_predicted_positions():
    f = _features()
    loss = _only("mlm")
    got = loss(**f, output_dict=True)["mlm_loss"]
    valid = f["mlm_targets"] != -100
    per_token = [-torch.log_softmax(f["mlm_logits"][b, k], -1)[f["mlm_targets"][b, k]]
                 for b, k in valid.nonzero().tolist()]
    torch.testing.assert_close(got, torch.stack(per_token).mean())
    scrambled = f["mlm_logits"].clone()
    scrambled[~valid] = torch.randn_like(scrambled[~valid]) * 100
    torch.testing.assert_close(loss(**{**f, "mlm_logits": scrambled}, output_dict=True)["mlm_loss"], got)


def test_mlm_is_the_global_mean_with_the_one_gpu_gradient_across_ranks(monkeypatch):
    """Rank 0 of two: the value is the mean over both ranks' predicted tokens, and its gradient is
    twice that mean's (DDP averages the two ranks' gradients). The other rank's tokens reach rank 0
    through the all-reduce, replaced here by the sum it returns."""
    from openclip_unimlip.recipes.unimlip import loss as loss_module

    mine, other = _features(seed=1), _features(seed=2)
    logits = mine["mlm_logits"].clone().requires_grad_()
    other_sum = F.cross_entropy(other["mlm_logits"].flatten(0, 1), other["mlm_targets"].flatten(), reduction="sum")
    other_count = (other["mlm_targets"] != -100).sum()
    monkeypatch.setattr(loss_module, "all_reduce_sum",
                        lambda values, world_size: values + torch.stack([other_sum, other_count.float()]))
    got = UniMlipLoss(world_size=2)._mlm(logits, mine["mlm_targets"])
    (grad,) = torch.autograd.grad(got, logits)

    reference_logits = mine["mlm_logits"].clone().requires_grad_()
    both = torch.cat([reference_logits, other["mlm_logits"]]).flatten(0, 1)
    reference = F.cross_entropy(both, torch.cat([mine["mlm_targets"], other["mlm_targets"]]).flatten())
    (reference_grad,) = torch.autograd.grad(reference, reference_logits)
    torch.testing.assert_close(got, reference)
    torch.testing.assert_close(grad, 2 * reference_grad)


def test_mlm_with_no_or_one_predicted_token():
    f = _features()
    logits = f["mlm_logits"].clone().requires_grad_()
    none = torch.full_like(f["mlm_targets"], -100)
    got = _only("mlm")(**{**f, "mlm_logits": logits, "mlm_targets": none}, output_dict=True)["mlm_loss"]
    got.backward()
    assert got.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    one = none.clone()
    one[2, 1] = 4
    got = _only("mlm")(**{**f, "mlm_targets": one}, output_dict=True)["mlm_loss"]
    torch.testing.assert_close(got, -torch.log_softmax(f["mlm_logits"][2, 1], -1)[4])


def test_the_distributed_defaults_are_clip_losss():
    from mlip_helpers import defaults_unlike_clip_loss

    assert defaults_unlike_clip_loss(UniMlipLoss) == []


def test_weights_scale_terms_and_zero_removes_them():
    f = _features()
    full = UniMlipLoss()(**f, output_dict=True)
    assert set(full) == {f"{t}_loss" for t in TERMS}
    for term in TERMS:
        alone = _only(term)(**f, output_dict=True)[f"{term}_loss"]
        torch.testing.assert_close(full[f"{term}_loss"], PAPER_WEIGHTS[term] * alone)
    torch.testing.assert_close(UniMlipLoss()(**f), sum(full.values()))
    without = UniMlipLoss(weights={"simclr": 0.0, "mlm": 0.0})(**f, output_dict=True)
    assert set(without) == {"itc_loss", "image_perturbed_itc_loss", "text_perturbed_itc_loss"}


def test_terms_without_inputs_are_skipped():
    f = _features()
    for key in ("simclr_features_a", "simclr_features_b", "perturbed_text_features", "mlm_logits", "mlm_targets"):
        f.pop(key)
    assert set(UniMlipLoss()(**f, output_dict=True)) == {"itc_loss", "image_perturbed_itc_loss"}


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="Unknown"):
        UniMlipLoss(weights={"itm": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        UniMlipLoss(weights={"mlm": -1.0})
    for temperature in (0, -0.1):
        with pytest.raises(ValueError, match=f"SimCLR temperature must be > 0, got {temperature}"):
            UniMlipLoss(simclr_temperature=temperature)


# The distributed semantics (2 gloo ranks vs 1) are tested in test_distributed_losses.py.
def test_local_loss_without_gather_with_grad_is_refused_before_the_run(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    common = ["--model", "unimlip-tiny", "--dataset-type", "synthetic"]
    with pytest.raises(SystemExit, match="add --gather-with-grad"):
        parse_args([*common, "--local-loss"])
    args = parse_args([*common, "--local-loss", "--gather-with-grad"])
    assert args.local_loss and args.gather_with_grad
