"""Pins of the recipes' shared ops (``openclip_unimlip/recipes/ops.py``), each against a reference
computed another way: numpy and Python loops written from the docstrings, OpenCLIP's own
``PatchDropout`` and ViT forward, OpenCLIP's ``ClipLoss``. Everything but the ViT pass runs in
milliseconds, so a generated mutant of the module meets these first."""
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout

from openclip_unimlip.recipes import ops

from mlip_helpers import sinkhorn as naive_sinkhorn
from mlip_helpers import swav_codes as naive_swav_codes


# ----- patch masks and MAE targets --------------------------------------------------------------------
@pytest.mark.parametrize("num_patches, mask_ratio, expected_keep", [
    (36, 0.75, 9), (7, 0.0, 7),
    (10, 0.65, 4),  # 3.5000000000000004 rounds up
    (10, 0.75, 2),  # 2.5 exactly: Python's round keeps the even 2
    (10, 0.99, 1), (10, 1.0, 1),  # never fewer than one kept patch
])
def test_random_patch_mask_counts_and_sorted_halves(num_patches, mask_ratio, expected_keep):
    keep, masked = ops.random_patch_mask(5, num_patches, mask_ratio)
    assert keep.shape == (5, expected_keep) and masked.shape == (5, num_patches - expected_keep)
    for row_keep, row_masked in zip(keep.tolist(), masked.tolist()):
        assert row_keep == sorted(row_keep) and row_masked == sorted(row_masked)  # raster order
        assert sorted(row_keep + row_masked) == list(range(num_patches))


def test_random_patch_mask_is_uniform_per_sample_and_follows_the_global_seed():
    torch.manual_seed(0)
    keep, _ = ops.random_patch_mask(4000, 8, 0.5)
    counts = np.bincount(keep.flatten().numpy(), minlength=8) / 4000  # each patch kept with probability 1/2
    assert np.abs(counts - 0.5).max() < 0.03
    assert len({tuple(row) for row in keep[:50].tolist()}) > 20  # samples draw their own masks
    torch.manual_seed(0)
    assert torch.equal(ops.random_patch_mask(4000, 8, 0.5)[0], keep)
    assert ops.random_patch_mask(2, 8, 0.5, device="meta")[0].device.type == "meta"


def test_keep_mask_and_gather_tokens_against_indexing():
    keep = torch.tensor([[0, 3], [1, 2], [2, 4]])
    expected = np.zeros((3, 5), dtype=np.float32)
    for row, columns in enumerate(keep.tolist()):
        expected[row, columns] = 1.0
    mask = ops.keep_mask(keep, 5)
    assert mask.dtype == torch.float32 and np.array_equal(mask.numpy(), expected)
    tokens = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    gathered = ops.gather_tokens(tokens, keep)
    assert torch.equal(gathered, torch.stack([tokens[b, keep[b]] for b in range(3)]))


def test_patchify_of_a_wide_image_against_a_loop():
    images = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    patches = ops.patchify(images, 8).numpy()
    pixels = images.numpy()
    assert patches.shape == (2, 2 * 3, 8 * 8 * 3)
    for b in range(2):
        for row in range(2):
            for column in range(3):
                block = pixels[b, :, row * 8:(row + 1) * 8, column * 8:(column + 1) * 8]  # [C, p, p]
                np.testing.assert_array_equal(patches[b, row * 3 + column], block.transpose(1, 2, 0).reshape(-1))


def test_normalize_patches_uses_the_unbiased_variance_and_eps():
    # pixel spreads near sqrt(1e-6), where the epsilon and the n - 1 both move the result
    patches = torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1e-3
    values = patches.numpy()
    mean = values.mean(-1, keepdims=True)
    for eps, normalised in ((1e-6, ops.normalize_patches(patches)), (1e-4, ops.normalize_patches(patches, eps=1e-4))):
        expected = (values - mean) / np.sqrt(values.var(-1, ddof=1, keepdims=True) + eps)
        np.testing.assert_allclose(normalised.numpy(), expected, rtol=1e-10)


# ----- the ViT pass over a patch subset --------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_vit_tokens_on_a_subset_is_openclip_patch_dropout(models, name):
    """OpenCLIP's own ``PatchDropout`` (open_clip/transformer.py) keeps the top-k of ``torch.randn``
    draws: the same draws, sorted, as our ``keep`` give the same embedding and the same tokens
    (OpenCLIP's ``output_tokens``), in our order, since the ViT has no mask and no order of its own
    once the positions are added."""
    visual = models[name].visual
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    num_patches = (96 // 16) ** 2
    visual.patch_dropout, visual.output_tokens = PatchDropout(0.5), True
    try:
        visual.train()
        torch.manual_seed(5)
        pooled_ref, tokens_ref = visual(images)
        torch.manual_seed(5)
        kept = torch.randn(3, num_patches).topk(num_patches // 2, dim=-1).indices
        pooled, tokens = ops.vit_tokens(visual, images, kept.sort(dim=1).values)
        torch.testing.assert_close(pooled, pooled_ref)
        order = kept.argsort(dim=1)  # where each sorted index sits among PatchDropout's kept tokens
        for b in range(3):
            torch.testing.assert_close(tokens[b], tokens_ref[b, order[b]])
        torch.manual_seed(6)
        pooled_ref, tokens_ref = visual(images)  # no keep: the tower's own patch dropout applies
        torch.manual_seed(6)
        pooled, tokens = ops.vit_tokens(visual, images)
        torch.testing.assert_close(pooled, pooled_ref)
        torch.testing.assert_close(tokens, tokens_ref)
        assert tokens.shape == (3, num_patches // 2, visual.transformer.width)
    finally:
        visual.patch_dropout, visual.output_tokens = torch.nn.Identity(), False
        visual.eval()


def test_project_tokens_uses_the_projection_when_there_is_one(models):
    visual = models["mlip-li-tiny"].visual
    tokens = torch.randn(2, 5, visual.transformer.width)
    torch.testing.assert_close(ops.project_tokens(visual, tokens), torch.einsum("bkw,wd->bkd", tokens, visual.proj))
    proj, visual.proj = visual.proj, None
    try:
        assert ops.project_tokens(visual, tokens) is tokens
    finally:
        visual.proj = proj


# ----- sentences ----------------------------------------------------------------------------------------
# a vocabulary of 14 ids: 0 [PAD] (also what precedes the first token), 1 [CLS], 2 [SEP], 3 ".", 4 ":",
# 5 "approx", 6 "2", 7 "5", 8 "cm", 9 "word", 10 "1", 11 "e", 12 "!", 13 "other"
PAD, CLS, SEP, DOT, COLON, APPROX, TWO, FIVE, CM, WORD, ONE, E, BANG, OTHER = range(14)
VOCAB = 14


def _lookups():
    def lookup(ids):
        table = torch.zeros(VOCAB, dtype=torch.bool)
        table[list(ids)] = True
        return table
    return dict(is_delimiter=lookup([DOT, BANG]), keeps_period=lookup([APPROX, E]),
                is_number=lookup([TWO, FIVE, ONE]), opens_item=lookup([PAD, CLS, SEP, DOT, BANG, COLON]))


def _boundaries_by_rule(ids, is_delimiter, keeps_period, is_number, opens_item):
    """The docstring's three rules, token by token; outside the row stands id 0."""
    def at(row, i):
        return row[i] if 0 <= i < len(row) else 0

    out = []
    for row in ids:
        decimal = [bool(is_delimiter[t]) and bool(is_number[at(row, i - 1)]) and bool(is_number[at(row, i + 1)])
                   for i, t in enumerate(row)]
        ends = []
        for i, token in enumerate(row):
            item_number = (bool(is_number[at(row, i - 1)]) and bool(opens_item[at(row, i - 2)])
                           and not (i >= 2 and decimal[i - 2]))
            ends.append(bool(is_delimiter[token]) and not decimal[i] and not bool(keeps_period[at(row, i - 1)])
                        and not item_number)
        out.append(ends)
    return out


@pytest.mark.parametrize("row, ends", [
    ([CLS, WORD, DOT, WORD, BANG, SEP], [2, 4]),
    ([CLS, WORD, TWO, DOT, FIVE, CM, DOT, SEP], [6]),  # "2.5 cm." : a decimal point
    ([CLS, APPROX, DOT, TWO, CM, DOT, SEP], [5]),  # "approx. 2 cm."
    ([CLS, E, DOT, WORD, DOT, SEP], [4]),  # "e. word."
    ([CLS, ONE, DOT, WORD, DOT, TWO, DOT, WORD, DOT, SEP], [4, 8]),  # "1. word. 2. word."
    ([CLS, WORD, TWO, DOT, FIVE, DOT, SEP], [5]),  # "at 10.30." ends after a decimal
    ([CLS, WORD, COLON, ONE, DOT, WORD, DOT], [6]),  # "word: 1. word."
    ([CLS, WORD, OTHER, ONE, DOT, SEP], [4]),  # a number after a word ends its sentence
    ([TWO, DOT, WORD, DOT], [3]),  # an item number in the first position
    ([WORD, TWO, DOT], [2]),  # a number before the last token's delimiter: nothing follows
    ([DOT, WORD], [0]), ([DOT], [0]), ([WORD], []), ([ONE, DOT], []),
])
def test_sentence_boundaries_cases(row, ends):
    boundaries = ops.sentence_boundaries(torch.tensor([row]), **_lookups())
    assert boundaries.shape == (1, len(row)) and boundaries.dtype == torch.bool
    assert boundaries[0].nonzero().flatten().tolist() == ends
    assert _boundaries_by_rule([row], **_lookups()) == boundaries.tolist()  # the reference agrees


def test_sentence_boundaries_match_the_rules_on_random_rows():
    generator = np.random.default_rng(0)
    lookups = _lookups()
    for length in (1, 2, 3, 12):
        ids = torch.from_numpy(generator.integers(0, VOCAB, size=(400, length)))
        expected = _boundaries_by_rule(ids.tolist(), **{k: v.tolist() for k, v in lookups.items()})
        assert ops.sentence_boundaries(ids, **lookups).tolist() == expected


def _segments_by_loop(boundaries, content, max_sentences):
    out = np.zeros((len(boundaries), max_sentences, len(boundaries[0])), dtype=bool)
    for b, (row, keep) in enumerate(zip(boundaries, content)):
        sentence = 0
        for i, (ends, is_content) in enumerate(zip(row, keep)):
            if is_content:
                out[b, min(sentence, max_sentences - 1), i] = True
            sentence += int(ends)
    return out


def test_sentence_segments_against_a_loop():
    generator = np.random.default_rng(1)
    boundaries = generator.random((50, 11)) < 0.3
    content = generator.random((50, 11)) < 0.8
    for max_sentences in (1, 2, 4):
        segments = ops.sentence_segments(torch.from_numpy(boundaries), torch.from_numpy(content), max_sentences)
        assert segments.dtype == torch.bool
        np.testing.assert_array_equal(segments.numpy(), _segments_by_loop(boundaries, content, max_sentences))


def test_pool_sentences_means_and_the_empty_caption():
    hidden = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    segments = torch.zeros(3, 3, 6, dtype=torch.bool)
    segments[0, 0, 1:3] = segments[0, 1, 3:6] = True  # two sentences, the third slot empty
    segments[1, 2, 2] = True  # only the last slot
    # row 2: no content token at all
    pooled, valid = ops.pool_sentences(hidden, segments)
    assert pooled.dtype == torch.float64
    values = hidden.numpy()
    np.testing.assert_allclose(pooled[0, 0].numpy(), values[0, 1:3].mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled[0, 1].numpy(), values[0, 3:6].mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled[1, 2].numpy(), values[1, 2], rtol=1e-12)
    assert not pooled[0, 2].any() and not pooled[1, :2].any() and not pooled[2].any()
    assert valid.tolist() == [[True, True, False], [False, False, True], [True, False, False]]


# ----- transport plans and prototype codes --------------------------------------------------------------
def _steps_to_tolerance(sim, mask, epsilon, tolerance):
    """The iteration after which the float64 reference's rows are within ``tolerance`` of 1/N."""
    n = sim.shape[0]
    for steps in range(1, 500):
        rows = naive_sinkhorn(sim, mask, epsilon, steps).sum(1)
        if (rows * n - 1).abs().max() <= tolerance:
            return steps
    raise AssertionError("the reference did not converge")


def test_sinkhorn_plan_broadcasts_a_mask_over_leading_dims_and_stops_at_the_tolerance():
    g = torch.Generator().manual_seed(4)
    sim = torch.rand(2, 3, 7, 4, generator=g) * 2 - 1
    mask = torch.tensor([True, True, False, True])  # one mask for every problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default tolerance (0) runs exactly, and never warns
        plan = ops.sinkhorn_plan(sim, mask, epsilon=0.2, iterations=4)
    assert plan.shape == (2, 3, 7, 4) and plan.dtype == torch.float32
    for i in range(2):
        for j in range(3):
            expected = naive_sinkhorn(sim[i, j], mask, 0.2, 4)
            torch.testing.assert_close(plan[i, j].double(), expected, atol=1e-7, rtol=1e-5)
    assert torch.equal(plan[..., 2], torch.zeros(2, 3, 7))  # the masked column receives no mass
    steps = _steps_to_tolerance(sim[0, 0], mask, 0.1, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged within the iterations: no warning
        stopped = ops.sinkhorn_plan(sim[0, 0], mask, epsilon=0.1, iterations=400, tolerance=1e-3)
    torch.testing.assert_close(stopped.double(), naive_sinkhorn(sim[0, 0], mask, 0.1, steps), atol=1e-7, rtol=1e-5)
    assert steps > 2


def test_sinkhorn_plan_of_half_precision_similarities_and_of_no_problem():
    sim = (torch.rand(5, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1).half()
    mask = torch.tensor([True, False, True])
    plan = ops.sinkhorn_plan(sim, mask, epsilon=0.1, iterations=6)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan.double(), naive_sinkhorn(sim.float(), mask, 0.1, 6), atol=1e-7, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = ops.sinkhorn_plan(torch.zeros(0, 4, 3), torch.ones(3, dtype=torch.bool), 0.1, 3, tolerance=1e-3)
    assert empty.shape == (0, 4, 3)


def test_swav_codes_of_sharp_scores_against_float64():
    """ε = 0.01 on scores near 1: exp(s / ε) alone overflows float32, the shift by the maximum does not."""
    scores = 0.9 + 0.1 * torch.rand(5, 7, generator=torch.Generator().manual_seed(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = ops.swav_codes(scores.half(), epsilon=0.01, iterations=3)
    assert codes.shape == (5, 7) and codes.dtype == torch.float32 and torch.isfinite(codes).all()
    expected = naive_swav_codes(scores.half(), 0.01, 3).numpy()
    np.testing.assert_allclose(codes.numpy(), expected, atol=1e-6, rtol=1e-4)


def test_swav_codes_stop_at_the_tolerance():
    scores = (torch.rand(6, 4, generator=torch.Generator().manual_seed(7)) * 2 - 1).double()
    steps = next(n for n in range(1, 500)
                 if (naive_swav_codes(scores, 0.1, n).sum(0) * 4 / 6 - 1).abs().max() <= 1e-4)
    assert steps > 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged within the iterations: no warning
        codes = ops.swav_codes(scores, epsilon=0.1, iterations=400, tolerance=1e-4)
    np.testing.assert_allclose(codes.numpy(), naive_swav_codes(scores, 0.1, steps).numpy(), atol=1e-7, rtol=1e-5)


def test_a_tolerance_of_zero_or_below_runs_every_iteration_unchecked():
    g = torch.Generator().manual_seed(10)
    sim, scores = torch.rand(6, 4, generator=g), torch.rand(5, 3, generator=g)
    mask = torch.ones(4, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 iterations are far from converged, yet nothing warns
        for tolerance in (0.0, -1.0):
            plan = ops.sinkhorn_plan(sim, mask, epsilon=0.05, iterations=3, tolerance=tolerance)
            torch.testing.assert_close(plan.double(), naive_sinkhorn(sim, mask, 0.05, 3), atol=1e-7, rtol=1e-5)
            codes = ops.swav_codes(scores, epsilon=0.05, iterations=3, tolerance=tolerance)
            np.testing.assert_allclose(codes.numpy(), naive_swav_codes(scores, 0.05, 3).numpy(), rtol=1e-4)


def test_unconverged_warnings_name_the_caller_the_error_and_the_limits():
    g = torch.Generator().manual_seed(3)
    sim = torch.rand(12, 5, generator=g) * 2 - 1
    with pytest.warns(RuntimeWarning) as caught:
        ops.sinkhorn_plan(sim, torch.ones(5, dtype=torch.bool), epsilon=0.02, iterations=5, tolerance=1e-3)
        ops.swav_codes(torch.rand(6, 9, generator=g), epsilon=0.01, iterations=3, tolerance=2e-3)
    assert [w.filename for w in caught] == [__file__, __file__]  # the line that asked, not a library frame
    first, second = (str(w.message) for w in caught)
    assert first.startswith("patch-sentence transport: relative marginal error ")
    assert first.endswith(" after 5 Sinkhorn iterations, above the tolerance 0.001; raise the iterations or epsilon")
    assert second.startswith("prototype codes: relative marginal error ") and "after 3 Sinkhorn" in second
    assert "tolerance 0.002;" in second
    error = float(first.split("relative marginal error ")[1].split(" ")[0])
    rows = naive_sinkhorn(sim, torch.ones(5, dtype=torch.bool), 0.02, 5).sum(1) * 12
    assert error == pytest.approx((rows - 1).abs().max().item(), rel=0.01)


# ----- contrastive logits -------------------------------------------------------------------------------
@pytest.mark.parametrize("local_loss, rank", [(False, 0), (False, 1), (True, 0), (True, 1)])
def test_info_nce_is_openclip_clip_loss_on_two_ranks(monkeypatch, local_loss, rank):
    g = torch.Generator().manual_seed(8)
    a_all = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    b_all = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    a, b = a_all[3 * rank:3 * rank + 3], b_all[3 * rank:3 * rank + 3]
    monkeypatch.setattr(open_clip.loss, "gather_features", lambda *args, **kwargs: (a_all, b_all))
    reference = open_clip.ClipLoss(local_loss=local_loss, rank=rank, world_size=2)(a, b, torch.tensor(7.0))
    torch.testing.assert_close(ops.info_nce(a, b, a_all, b_all, 7.0, local_loss, rank), reference)
    logits_a, logits_b, labels = ops.paired_logits(a, b, a_all, b_all, 7.0, local_loss, rank)
    assert logits_a.shape == ((3, 6) if local_loss else (6, 6)) and logits_b.shape == logits_a.shape
    expected_labels = (torch.arange(3) + 3 * rank) if local_loss else torch.arange(6)
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(logits_b, 7.0 * (b if local_loss else b_all) @ a_all.T)


def test_info_nce_on_one_rank_is_clip_loss_also_with_local_loss():
    g = torch.Generator().manual_seed(9)
    a, b = F.normalize(torch.randn(4, 5, generator=g), dim=-1), F.normalize(torch.randn(4, 5, generator=g), dim=-1)
    reference = open_clip.ClipLoss()(a, b, torch.tensor(3.0))
    torch.testing.assert_close(ops.info_nce(a, b, a, b, 3.0, True, 0), reference)
    logits_a, logits_b, labels = ops.paired_logits(a, b, a, b, 3.0, True, 0)
    torch.testing.assert_close(logits_b, logits_a.T)
    assert torch.equal(labels, torch.arange(4))
