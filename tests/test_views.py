"""The SimCLR views drawn on the device: normalisation round trip, per-sample randomness, the
paper's augmentations, and the model using them only while the SimCLR branch is on."""
import pytest
import torch

from torchvision.transforms.v2 import functional as TF

from openclip_unimlip.model import UniMlipCfg
from openclip_unimlip.views import LUMA, StrongViews, colour_transform, gaussian_blur, hue_rotation, random_subset

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalised(unit):
    return (unit - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _unit_images(batch=6, size=32, seed=0):
    return torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_without_augmentation_the_views_are_the_clean_view():
    views = StrongViews(32, jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    views.set_normalization(MEAN, STD)
    images = _normalised(_unit_images())
    view_a, view_b = views(images)
    torch.testing.assert_close(view_a, images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(view_b, images, atol=1e-5, rtol=1e-5)


def test_flip_and_greyscale_act_in_pixel_space():
    views = StrongViews(32, jitter_p=0, grayscale_p=1, blur_p=0, flip_p=1)
    views.set_normalization(MEAN, STD)
    unit = _unit_images()
    view_a, _ = views(_normalised(unit))
    pixels = view_a * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    grey = (LUMA[0] * unit[:, 0] + LUMA[1] * unit[:, 1] + LUMA[2] * unit[:, 2]).flip(-1)
    for channel in range(3):
        torch.testing.assert_close(pixels[:, channel], grey, atol=1e-4, rtol=1e-4)


def test_parameters_are_drawn_per_sample_and_per_view():
    torch.manual_seed(0)
    views = StrongViews(32, jitter_p=1, grayscale_p=0, blur_p=0, flip_p=0)
    same = _unit_images(batch=1).expand(8, -1, -1, -1)
    view_a, view_b = views(same)
    assert not torch.allclose(view_a[0], view_a[1])  # two samples of one batch
    assert not torch.allclose(view_a, view_b)  # the two views of one sample
    assert torch.isfinite(view_a).all()


def test_recrop_keeps_the_size_and_blur_smooths():
    torch.manual_seed(0)
    recrop = StrongViews(32, crop_scale=(0.2, 0.5), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    images = _unit_images()
    view_a, _ = recrop(images)
    assert view_a.shape == images.shape and not torch.allclose(view_a, images)
    blur = StrongViews(32, jitter_p=0, grayscale_p=0, blur_p=1, flip_p=0)
    noise = _normalised(_unit_images())
    blurred, _ = blur(noise)
    assert blurred.diff(dim=-1).abs().mean() < noise.diff(dim=-1).abs().mean()


def test_views_stay_float32_under_autocast():
    views = StrongViews(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        view_a, _ = views(_unit_images())
    assert view_a.dtype == torch.float32


def test_bad_crop_scale_and_normalisation_are_rejected():
    with pytest.raises(ValueError, match="view_crop_scale"):
        UniMlipCfg(view_crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="3-channel"):
        StrongViews(32).set_normalization((0.5,), (0.5,))


def test_model_draws_views_with_its_preprocess_normalisation(captions):
    """The views follow the normalisation OpenCLIP's factory recorded on the tower, and the
    trunk sees them only while SimCLR is on."""
    import open_clip

    tiny_model = open_clip.create_model("unimlip-tiny", force_preprocess_cfg={"mean": MEAN, "std": STD})
    seen = []
    hook = tiny_model.visual.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    tiny_model.train()
    images = torch.randn(4, 3, 96, 96)
    tiny_model.set_simclr_active(False)
    tiny_model(images, captions)
    tiny_model.set_simclr_active(True)
    tiny_model(images, captions)
    hook.remove()
    assert seen == [4, 12]  # clean only; then clean + two views in one frozen-BN pass
    torch.testing.assert_close(tiny_model.strong_views.mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(tiny_model.strong_views.std.flatten(), torch.tensor(STD))


def _apply(matrix, offset, unit):
    return torch.einsum("bij,bjhw->bihw", matrix, unit) + offset.view(-1, 3, 1, 1)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_colour_transform_matches_torchvision_where_nothing_clips(order):
    """Brightness, contrast and saturation folded into one affine map equal torchvision's
    step-by-step functions, in any order, while no value leaves [0, 1] (where torchvision clamps)."""
    unit = 0.35 + 0.3 * _unit_images(batch=3)
    factors = torch.tensor([[0.9, 1.1, 0.95], [1.05, 0.92, 1.08], [1.0, 1.07, 0.9]])  # per sample: b, c, s
    matrix, offset = colour_transform(factors[:, 0], factors[:, 1], factors[:, 2], hue=torch.zeros(3),
                                      greyscale=torch.tensor([False, False, True]), order=order,
                                      channel_means=unit.mean((-2, -1)))
    steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(3):
        expected = unit[i]
        for step in order:
            expected = steps[step](expected, factors[i, step].item())
        if i == 2:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        torch.testing.assert_close(_apply(matrix, offset, unit)[i], expected, atol=1e-5, rtol=1e-5)


def test_hue_rotation_keeps_luma_and_grey_and_inverts():
    turns = torch.tensor([0.0, 0.1, -0.1, 0.5])
    rotations = hue_rotation(turns)
    torch.testing.assert_close(rotations[0], torch.eye(3), atol=1e-6, rtol=0)
    grey = torch.full((3, 1), 0.4)
    yiq_luma = torch.tensor([[0.299, 0.587, 0.114]])
    colour = torch.tensor([[0.8], [0.3], [0.1]])
    for rotation in rotations:
        torch.testing.assert_close(rotation @ grey, grey, atol=1e-5, rtol=0)
        torch.testing.assert_close(yiq_luma @ rotation @ colour, yiq_luma @ colour, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotations[1] @ rotations[2], torch.eye(3), atol=1e-5, rtol=0)
    assert not torch.allclose(rotations[1] @ colour, colour, atol=1e-2)


def test_blur_matches_torchvision_per_sample_sigma():
    images = _unit_images(batch=3, size=40)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    blurred = gaussian_blur(images, sigma, kernel_size=5)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], [5, 5], [sigma[i].item()] * 2)
        torch.testing.assert_close(blurred[i], expected, atol=1e-5, rtol=1e-5)


def test_random_subset_has_bernoulli_marginals():
    torch.manual_seed(0)
    hits = torch.zeros(10)
    for _ in range(2000):
        hits[random_subset(10, 0.3, torch.device("cpu"))] += 1
    assert ((hits / 2000) - 0.3).abs().max() < 0.05
    assert len(set(random_subset(10, 1.0, torch.device("cpu")).tolist())) == 10
    assert len(random_subset(10, 0.0, torch.device("cpu"))) == 0


def test_a_gradient_pass_replays_the_views_of_the_cached_pass_once():
    """OpenCLIP's accumulation: a pass without gradients, then one with, over the same tensor."""
    views = StrongViews(32)
    images, other = _unit_images(), _unit_images(seed=1)
    with torch.no_grad():
        cached_a, cached_b = views(images)
        views(other)
    state = torch.get_rng_state()
    again_a, again_b = views(images)
    assert torch.equal(torch.get_rng_state(), state)  # the replay leaves the RNG stream alone
    assert torch.equal(cached_a, again_a) and torch.equal(cached_b, again_b)
    fresh_a, _ = views(images)  # replayed once only: plain training loops draw anew every step
    assert not torch.equal(fresh_a, cached_a)
    assert not torch.equal(views(images.clone())[0], cached_a)
