"""The ops the two MLIP recipes share (``openclip_unimlip/recipes/ops.py``): the transport plan and the
prototype codes against an independent Sinkhorn-Knopp, patchify, the random patch mask, the sentence
segments and the ViT token pass."""
import pytest
import torch
import torch.nn.functional as F

from openclip_unimlip.recipes import ops

from mlip_helpers import sinkhorn as _naive_sinkhorn
from mlip_helpers import swav_codes as _naive_swav_codes


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
    samples = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    scores = samples @ F.normalize(torch.randn(10, 32, generator=g), dim=-1).T
    codes = ops.swav_codes(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(codes.double(), _naive_swav_codes(scores, 0.05, 3), atol=1e-6, rtol=1e-4)


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


@pytest.mark.parametrize("num_patches, mask_ratio", [(196, 0.75), (196, 0.5), (36, 0.75), (36, 0.25)])
def test_random_patch_mask_keeps_one_minus_the_ratio(num_patches, mask_ratio):
    """MaCo's random_masking (model_MaCo.py l.219): len_keep = int(L * (1 - mask_ratio)); these ratios
    give whole numbers, so int and our round agree."""
    keep, masked = ops.random_patch_mask(3, num_patches, mask_ratio)
    assert keep.shape == (3, int(num_patches * (1 - mask_ratio)))
    assert masked.shape == (3, num_patches - keep.shape[1])
    for row_keep, row_masked in zip(keep, masked):
        assert sorted(row_keep.tolist() + row_masked.tolist()) == list(range(num_patches))


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


def test_vit_tokens_is_the_towers_forward(models, batch):
    visual = models["mlip-li-tiny"].visual.eval()
    images = batch[0]
    pooled, _ = ops.vit_tokens(visual, images)
    torch.testing.assert_close(pooled, visual(images))
    every_patch = torch.arange(36).expand(4, -1)
    torch.testing.assert_close(ops.vit_tokens(visual, images, every_patch)[0], visual(images))
