"""DropBlock against the paper's formulas, written out here: the seed rate, seeds only where a
whole block fits, block expansion, per-channel or shared masks, rescaling by the kept fraction."""
import pytest
import torch

from openclip_unimlip.recipes.unimlip.dropblock import DropBlock2d, drop_block_2d


def _expected(x, drop_prob, block_size, per_channel, seed):
    """DropBlock written from the paper (Eq. 1, Fig. 2, Algorithm 1) with explicit loops."""
    batch, channels, height, width = x.shape
    block_h, block_w = min(block_size, height), min(block_size, width)
    valid_h, valid_w = height - block_h + 1, width - block_w + 1
    gamma = drop_prob * height * width / (block_h * block_w) / (valid_h * valid_w)
    torch.manual_seed(seed)
    seeds = torch.rand(batch, channels if per_channel else 1, valid_h, valid_w) < gamma
    keep = torch.ones(batch, channels if per_channel else 1, height, width)
    for b, c, i, j in seeds.nonzero().tolist():
        keep[b, c, i:i + block_h, j:j + block_w] = 0  # the block of the seed at its top-left corner
    keep = keep.expand(batch, channels, height, width)
    return x * keep * (keep.numel() / keep.sum()), keep


@pytest.mark.parametrize("per_channel", [True, False])
# odd and even blocks, a block of 1, a block larger than the map, and maps taller or wider than
# they are high (the block clipped on one side only)
@pytest.mark.parametrize("height, width, block_size", [(7, 7, 3), (3, 3, 1), (3, 3, 5), (8, 8, 2), (6, 6, 4),
                                                       (5, 9, 3), (9, 5, 4), (2, 7, 3)])
def test_drop_block_reproduces_the_paper_formula(per_channel, height, width, block_size):
    x = torch.rand(3, 4, height, width, generator=torch.Generator().manual_seed(1)) + 0.5  # no natural zeros
    torch.manual_seed(7)
    dropped = drop_block_2d(x, 0.5, block_size, per_channel=per_channel)
    expected, keep = _expected(x, 0.5, block_size, per_channel, seed=7)
    torch.testing.assert_close(dropped, expected)
    assert 0 < (keep == 0).sum() < keep.numel()  # something dropped, something kept
    same_across_channels = all(torch.equal(keep[:, 0], keep[:, c]) for c in range(1, 4))
    assert same_across_channels == (not per_channel)


def test_dropped_fraction_matches_the_seed_rate():
    """Each unit is dropped with probability 1 - (1 - gamma)^n, n = the seed positions whose
    block covers it (fewer at the border): the mean over the map, against a large draw."""
    size, block, p = 7, 3, 0.5
    valid = size - block + 1
    gamma = p * size * size / block ** 2 / valid ** 2
    covering = torch.zeros(size, size)
    for i in range(valid):
        for j in range(valid):
            covering[i:i + block, j:j + block] += 1
    expected_fraction = (1 - (1 - gamma) ** covering).mean().item()
    torch.manual_seed(0)
    out = drop_block_2d(torch.ones(256, 16, size, size), p, block, per_channel=True)
    measured = (out == 0).float().mean().item()
    assert abs(measured - expected_fraction) < 0.01, (measured, expected_fraction)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - measured)))  # rescaled by the kept fraction


def test_module_acts_only_in_training():
    layer = DropBlock2d(0.5, 3)
    x = torch.rand(2, 4, 7, 7) + 0.5
    assert not torch.equal(layer(x), x)
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(DropBlock2d(0.0, 3)(x), x)


def test_a_map_dropped_whole_gives_zeros_not_nan():
    """At drop_prob 1 on a map one block wide, gamma = 1: every seed is set and every unit dropped;
    the module's documented choice is zeros where the reference divides by zero."""
    out = drop_block_2d(torch.rand(2, 3, 3, 3) + 0.5, 1.0, 3)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("drop_prob, training", [(0.0, True), (0.5, False)])
def test_an_inactive_layer_draws_nothing_from_the_generator(drop_prob, training):
    """At p = 0 or in eval mode the layer is absent: it returns its input and leaves the global
    generator where it was, so the rest of a run draws what a model without DropBlock draws."""
    layer = DropBlock2d(drop_prob, 3).train(training)
    x = torch.rand(2, 4, 7, 7) + 0.5
    torch.manual_seed(5)
    assert layer(x) is x
    after_the_layer = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_the_layer, torch.rand(3))


def test_by_default_each_channel_draws_its_own_mask():
    """Algorithm 1 of the DropBlock paper, "which tends to work better in our experiments" (Sec. 3):
    a mask per feature channel, the function's and the layer's default."""
    x = torch.rand(2, 16, 7, 7) + 0.5
    torch.manual_seed(11)
    from_function = drop_block_2d(x, 0.5, 3) == 0
    torch.manual_seed(11)
    from_layer = DropBlock2d(0.5, 3).train()(x) == 0
    assert torch.equal(from_function, from_layer)
    assert any(not torch.equal(from_function[b, 0], from_function[b, c]) for b in range(2) for c in range(1, 16))


def test_one_unit_kept_is_scaled_by_the_whole_tensor():
    """A 1 x 3 map under a 1 x 2 block has two seed positions; where only the first is set, one unit
    of three survives and carries the whole tensor's weight (numel / kept = 3)."""
    x = torch.rand(1, 1, 1, 3) + 0.5
    for seed in range(100):
        expected, keep = _expected(x, 0.9, 2, True, seed)
        if keep.sum() == 1:
            break
    assert keep.sum() == 1
    torch.manual_seed(seed)
    out = drop_block_2d(x, 0.9, 2)
    torch.testing.assert_close(out, expected)
    assert out[0, 0, 0, 2] == 3 * x[0, 0, 0, 2]
