"""The SimCLR views drawn on the device: normalisation round trip, per-sample randomness, the
paper's augmentations, and the model using them only while the SimCLR branch is on."""
import dataclasses
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from openclip_unimlip.recipes.unimlip.config import UniMlipCfg
from openclip_unimlip.recipes.unimlip.views import (
    LUMA,
    StrongViews,
    colour_transform,
    gaussian_blur,
    hue_rotation,
    random_subset,
    simclr_blur_kernel_size,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalised(unit):
    return (unit - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pixels(normalised):
    """The views back in pixel values: the inverse of ``_normalised``."""
    return normalised * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


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
    pixels = _pixels(view_a)
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
    for mean, std in (((0.5,), (0.5,)), (MEAN, STD + (0.3,)), (MEAN + (0.3,), STD), (MEAN, STD[:2]),
                      (MEAN[:2], STD)):
        with pytest.raises(ValueError, match="3-channel"):
            StrongViews(32).set_normalization(mean, std)


def test_each_new_normalisation_is_taken_and_none_is_saved():
    """set_normalization takes every new mean and std, above or below the current ones in any
    order, and the views keep nothing in a checkpoint (OpenCLIP's keys stay as they are)."""
    views = StrongViews(32)
    for mean, std in (((0.1, 0.1, 0.1), (0.9, 0.9, 0.9)), ((0.0, 0.5, 1.0), (0.2, 0.2, 0.2)), (MEAN, STD)):
        views.set_normalization(mean, std)
        assert views.mean.tolist() == pytest.approx(mean) and views.std.tolist() == pytest.approx(std)
    assert views.state_dict() == {}


def test_a_jitter_above_one_starts_its_factors_at_zero_as_torchvision():
    """torchvision's ColorJitter draws brightness, contrast and saturation from [max(0, 1 - s), 1 + s]
    (its _check_input, clip_first_on_zero): at s = 3 a factor is never negative, so a white image
    (which contrast and saturation leave white) is never turned black by the clamp."""
    views = StrongViews(8, jitter=3.0, jitter_p=1.0, hue=0.0, grayscale_p=0, blur_p=0, flip_p=0)
    views.set_normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.manual_seed(0)
    view_a, view_b = views(torch.ones(200, 3, 8, 8))
    assert min(view_a.amin(), view_b.amin()) > 0  # one factor in [-1, 0) would be a 20 % chance a sample


def test_a_crop_of_the_whole_image_gives_the_image_back():
    """RandomResizedCrop at scale (1, 1) takes the whole image (the drawn aspect cannot fit, so the
    centre crop of ratio 1) and resizes it to its own size: with nothing else on, both views are the
    images themselves, each crop made from its own image."""
    views = StrongViews(16, crop_scale=(1.0, 1.0), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    images = _unit_images(batch=4, size=16)
    for view in views(images):
        torch.testing.assert_close(view, images, atol=1e-5, rtol=0)


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
    step-by-step functions, in any order (one per sample), while no value leaves [0, 1] (where
    torchvision clamps)."""
    unit = 0.35 + 0.3 * _unit_images(batch=3)
    factors = torch.tensor([[0.9, 1.1, 0.95], [1.05, 0.92, 1.08], [1.0, 1.07, 0.9]])  # per sample: b, c, s
    orders = torch.tensor([order, order[::-1], order[1:] + order[:1]])
    matrix, offset = colour_transform(factors[:, 0], factors[:, 1], factors[:, 2], hue=torch.zeros(3),
                                      greyscale=torch.tensor([False, False, True]), order=orders,
                                      channel_means=unit.mean((-2, -1)))
    steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(3):
        expected = unit[i]
        for step in orders[i].tolist():
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


def test_the_oldest_of_64_cached_micro_batches_still_replays():
    """docs/training.md: --accum-freq up to 64. OpenCLIP caches all N micro-batches of a step before
    the first gradient pass, so the oldest recorded draw must still be there after 63 more."""
    views = StrongViews(8)
    batches = [_unit_images(batch=2, size=8, seed=seed) for seed in range(64)]
    with torch.no_grad():
        cached = [views(images)[0] for images in batches]
    assert torch.equal(views(batches[0])[0], cached[0])


# ----- the default views' strengths, probabilities and independence, measured -------------------------
# Torchvision's definitions, written here: brightness scales every value; contrast blends towards the
# image's mean grey value and saturation towards each pixel's grey value (weights LUMA_TV), so both keep
# the mean grey value; hue rotates the chroma plane (here YIQ's, NTSC coefficients), keeping grey.
LUMA_TV = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64)
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
CHROMA = 0.02  # small enough that even the strongest jitter clips nothing


def _band_images(colours, batch, size=32):
    """Horizontal bands of constant colour: unchanged by a horizontal flip, and their middle rows
    unchanged by a blur of a kernel smaller than half a band (3 at 32 px)."""
    rows = size // len(colours)
    image = torch.empty(3, size, size)
    for k, colour in enumerate(colours):
        image[:, k * rows:(k + 1) * rows] = torch.as_tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return image.expand(batch, -1, -1, -1).contiguous(), [k * rows + rows // 2 for k in range(len(colours))]


def _recovered_parameters(views, batch=1000):
    """Per view and sample, (brightness, contrast, saturation, hue in turns, greyscale) recovered from
    the output colours of four bands: two greys (0.38, 0.42) and two colours of luma 0.4 along the
    I and Q axes. The colour map is affine, so grey difference -> brightness*contrast, mean grey ->
    brightness, chroma of the colour bands -> brightness*contrast*saturation and the hue angle."""
    yiq_to_rgb = torch.linalg.inv(RGB_TO_YIQ)
    i_axis, q_axis = yiq_to_rgb[:, 1], yiq_to_rgb[:, 2]
    colours = [[0.38] * 3, [0.42] * 3, (0.4 + CHROMA * i_axis).tolist(), (0.4 + CHROMA * q_axis).tolist()]
    unit, middle_rows = _band_images(colours, batch)
    views.set_normalization(MEAN, STD)
    pair = torch.cat(views(_normalised(unit)))
    pixels = _pixels(pair).double()
    out = [pixels[:, :, row].mean(-1) for row in middle_rows]  # [2B, 3] per band
    grey0, grey1, along_i, along_q = out
    clipped = torch.stack(out).amin((0, 2)).le(1e-4) | torch.stack(out).amax((0, 2)).ge(1 - 1e-4)
    mean_in = torch.tensor(colours, dtype=torch.float64).mean(0) @ LUMA_TV
    brightness = (sum(out) / 4) @ LUMA_TV / mean_in
    brightness_contrast = ((grey1 - grey0) / 0.04).mean(-1)
    chroma = ((along_i - (grey0 + grey1) / 2) @ RGB_TO_YIQ.T)[:, 1:]  # I, Q of the mapped I axis
    saturation = chroma.norm(dim=-1) / (CHROMA * brightness_contrast)
    hue = torch.atan2(chroma[:, 1], chroma[:, 0]) / (2 * math.pi)
    return {"brightness": brightness, "contrast": brightness_contrast / brightness, "saturation": saturation,
            "hue": hue, "greyscale": saturation < 0.05, "clipped": clipped}


def _check_uniform(values, low, high):
    span = high - low
    assert low - 1e-3 < values.min() < low + 0.05 * span and high - 0.05 * span < values.max() < high + 1e-3
    assert abs(values.mean() - (low + high) / 2) < 0.05 * span
    assert abs(values.std() - span / math.sqrt(12)) < 0.04 * span


def test_default_views_have_simclrs_strengths_and_probabilities():
    """SimCLR's colour distortion (data_util.py, strength 1.0): with p 0.8 brightness, contrast and
    saturation from U[0.2, 1.8] and hue from U[-0.2, 0.2] turns, each per sample and per view;
    greyscale with p 0.2, independently of the jitter."""
    torch.manual_seed(0)
    params = _recovered_parameters(StrongViews(32))
    assert params["clipped"].float().mean() < 0.01
    jittered = ((params["brightness"] - 1).abs() > 1e-3) | ((params["contrast"] - 1).abs() > 1e-3)
    for view, in_view in enumerate(jittered.view(2, -1)):  # each view on its own
        assert abs(in_view.float().mean() - 0.8) < 0.05, view
    keep = ~params["clipped"]
    params = {k: v[keep] for k, v in params.items()}
    jittered = jittered[keep]
    grey = params["greyscale"]
    assert abs(grey.float().mean() - 0.2) < 0.035
    assert abs(grey[jittered].float().mean() - 0.2) < 0.04  # independent of the jitter
    for name in ("brightness", "contrast"):
        _check_uniform(params[name][jittered], 0.2, 1.8)
        assert (params[name][~jittered] - 1).abs().max() < 1e-3  # (greyscale's weights sum to 0.9999)
    coloured = jittered & ~grey
    _check_uniform(params["saturation"][coloured], 0.2, 1.8)
    _check_uniform(params["hue"][coloured], -0.2, 0.2)
    plain = ~jittered & ~grey
    assert (params["saturation"][plain] - 1).abs().max() < 1e-3 and params["hue"][plain].abs().max() < 1e-3


def test_the_two_views_and_the_samples_draw_independent_parameters():
    torch.manual_seed(1)
    params = _recovered_parameters(StrongViews(32), batch=600)
    view_a, view_b = params["brightness"].view(2, -1)
    assert abs(torch.corrcoef(torch.stack([view_a, view_b]))[0, 1]) < 0.15
    assert (view_a - view_b).abs().gt(1e-3).float().mean() > 0.75  # equal only where neither is jittered
    assert len(view_a.unique()) > 400  # a factor per sample, not per batch


def test_mocov2_views_have_slips_strengths():
    """SLIP's MoCo v2 views (datasets.py): ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, greyscale with
    p 0.2, and SimCLR's blur and flip, which the default views' tests measure."""
    torch.manual_seed(2)
    params = _recovered_parameters(StrongViews(32, augmentation="mocov2"), batch=600)
    jittered = (params["brightness"] - 1).abs() > 1e-3
    assert abs(jittered.float().mean() - 0.8) < 0.04
    assert abs(params["greyscale"].float().mean() - 0.2) < 0.04
    _check_uniform(params["brightness"][jittered], 0.6, 1.4)
    _check_uniform(params["contrast"][jittered], 0.6, 1.4)
    coloured = jittered & ~params["greyscale"]
    _check_uniform(params["saturation"][coloured], 0.6, 1.4)
    _check_uniform(params["hue"][coloured], -0.1, 0.1)
    mocov2, simclr = StrongViews(32, augmentation="mocov2").augmentation, StrongViews(32).augmentation
    assert dataclasses.replace(mocov2, jitter=simclr.jitter, hue=simclr.hue) == simclr
    with pytest.raises(dataclasses.FrozenInstanceError):  # the presets are shared by every model
        simclr.grayscale_p = 0.5


def test_one_order_for_every_sample_is_that_order_per_sample():
    factors = torch.tensor([[0.9, 1.1, 0.95, 0.05], [1.05, 0.92, 1.08, -0.1]])
    means = torch.tensor([[0.3, 0.5, 0.4], [0.6, 0.2, 0.5]])
    arguments = dict(brightness=factors[:, 0], contrast=factors[:, 1], saturation=factors[:, 2], hue=factors[:, 3],
                     greyscale=torch.tensor([False, False]), channel_means=means)
    order = (3, 1, 0, 2)
    shared = colour_transform(order=order, **arguments)
    per_sample = colour_transform(order=torch.tensor([order, order]), **arguments)
    for ours, expected in zip(shared, per_sample):
        torch.testing.assert_close(ours, expected)


def test_views_are_clamped_to_the_pixel_range():
    """Bright images with brightness up to 1.8 saturate at 1 (and nothing goes below 0)."""
    torch.manual_seed(3)
    views = StrongViews(32)
    views.set_normalization(MEAN, STD)
    unit = torch.full((200, 3, 32, 32), 0.9)
    viewed = torch.cat(views(_normalised(unit)))
    pixels = _pixels(viewed)
    assert pixels.max() < 1 + 1e-5 and pixels.min() > -1e-5
    saturated = (pixels - 1).abs().lt(1e-5).flatten(1).all(1).float().mean()
    # P(jittered and brightness > 1/0.9) = 0.8 * (1.8 - 1/0.9) / 1.6
    assert abs(saturated - 0.8 * (1.8 - 1 / 0.9) / 1.6) < 0.08
    # a strong red: saturation above 1 pushes its green and blue below 0, where they stop
    red = torch.tensor([0.9, 0.05, 0.05]).view(1, 3, 1, 1).expand(200, 3, 32, 32)
    viewed = torch.cat(views(_normalised(red)))
    pixels = _pixels(viewed)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    assert pixels.amin((1, 2, 3)).abs().lt(1e-5).float().mean() > 0.2  # about 0.39 of the views stop at 0


def test_blur_and_flip_probabilities_and_blur_sigma():
    """A vertical step edge in grey: colour jitter keeps its direction, a flip reverses it (p 0.5);
    the blur (p 0.5, sigma from U[0.1, 2.0], kernel 3 at 32 px) mixes the columns beside it with
    weight a = w / (1 + 2w), w = exp(-1 / (2 sigma^2)), which gives sigma back."""
    torch.manual_seed(4)
    views = StrongViews(32, jitter_p=0, grayscale_p=0)
    views.set_normalization(MEAN, STD)
    unit = torch.full((1000, 3, 32, 32), 0.3)
    unit[..., 16:] = 0.5
    viewed = torch.cat(views(_normalised(unit)))
    pixels = _pixels(viewed)
    row = pixels[:, 0, 16].double()
    flipped = row[:, 0] > row[:, -1]
    assert abs(flipped.float().mean() - 0.5) < 0.05
    row = torch.where(flipped.unsqueeze(-1), row.flip(-1), row)
    mixed = ((row[:, 15] - 0.3) / 0.2).clamp(min=0)  # the column left of the edge
    sigma = torch.sqrt(-1 / (2 * torch.log(mixed / (1 - 2 * mixed))))
    visible = mixed > 1e-3  # sigma above about 0.27: smaller blurs leave no trace in float32
    expected_visible = 0.5 * (2.0 - 0.27) / 1.9
    assert abs(visible.float().mean() - expected_visible) < 0.05
    assert 1.9 < sigma[visible].max() < 2.0 + 1e-3 and sigma[visible].min() < 0.4


def test_recrops_are_drawn_per_view_and_per_sample():
    """With ``crop_scale`` each view of each sample has its own crop: identical inputs give
    pairwise different views (no jitter, blur or flip to tell them apart otherwise)."""
    torch.manual_seed(5)
    views = StrongViews(32, crop_scale=(0.2, 0.5), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    same = _unit_images(batch=1).expand(6, -1, -1, -1)
    everything = torch.cat(views(same)).flatten(1)
    distances = torch.cdist(everything, everything)
    assert (distances + torch.eye(12)).min() > 1e-3


def test_the_jitter_order_is_a_permutation_drawn_per_sample(monkeypatch):
    """As torchvision's ColorJitter (a permutation per image): every ordering of the four steps,
    about equally often, within one batch."""
    import openclip_unimlip.recipes.unimlip.views as views_module

    seen = []
    original = views_module.colour_transform
    monkeypatch.setattr(views_module, "colour_transform", lambda **kw: seen.append(kw["order"]) or original(**kw))
    torch.manual_seed(6)
    StrongViews(32)(_unit_images(batch=600))
    (orders,) = seen
    assert orders.shape == (1200, 4)
    assert torch.equal(orders.sort(dim=1).values, torch.arange(4).expand(1200, 4))
    counts = torch.unique(orders, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 1200 / 24 / 2


def test_recrops_are_taken_from_the_image_itself():
    """Left half black, right half white: any crop of it, resized, still rises from left to right
    (a crop reaching past the image's edge into a copy of it would fall back to black)."""
    torch.manual_seed(7)
    views = StrongViews(32, crop_scale=(0.2, 0.5), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    halves = torch.zeros(64, 3, 32, 32)
    halves[..., 16:] = 1
    everything = torch.cat(views(halves))
    assert (everything[..., 1:] - everything[..., :-1]).min() > -1e-5
    assert (everything.amax((1, 2, 3)).gt(0.9) & everything.amin((1, 2, 3)).lt(0.1)).any()  # crops across the edge


def test_the_blur_kernel_is_simclrs_at_every_size():
    """SimCLR's data_util.py: random_blur passes kernel_size=height // 10, and gaussian_blur makes it
    odd as radius = int(kernel_size / 2), kernel 2 * radius + 1; ours: never below 3."""
    for size in range(8, 1025):
        simclr = 2 * int((size // 10) / 2) + 1
        assert simclr_blur_kernel_size(size) == max(3, simclr), size
