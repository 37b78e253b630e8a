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


def test_itc_equals_openclip_clip_loss():
    f = _features()
    ours = _only("itc")(**f, output_dict=True)
    reference = open_clip.ClipLoss()(f["image_features"], f["text_features"], f["logit_scale"])
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
    with pytest.raises(ValueError, match="temperature"):
        UniMlipLoss(simclr_temperature=0)


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
