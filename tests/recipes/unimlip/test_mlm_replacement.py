"""``--unimlip-mlm-replacement``: what a chosen caption token becomes, counted on the masker of the
model OpenCLIP's trainer builds (its patched parser and factory).

References: the paper, sec. 3.4 ("our masked tokens are replaced with a unique token [MASK]"), the
default; BERT's create_pretraining_data.py, create_masked_lm_predictions ("80% of the time, replace
with [MASK]", "10% of the time, keep original", "10% of the time, replace with random word", the
random word drawn uniformly from the vocabulary), for ``bert``. Each count is over tens of
thousands of chosen tokens and must fall within 6 binomial standard deviations of its expectation
(a chance failure: below 1e-8)."""
import math
import re

import pytest
import torch

# element-wise ops on [4000, L] tensors: a second intra-op thread only adds contention
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def build(monkeypatch):
    """The model ``open_clip_train.main`` builds from a command line (its names, its arguments)."""
    import open_clip_train.main as main
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)

    def build(*argv):
        args = parse_args(["--model", "unimlip-tiny", "--dataset-type", "synthetic", "--epochs", "2", *argv])
        model, _, _ = main.create_model_and_transforms(args.model, args.pretrained, precision="fp32", device="cpu",
                                                       output_dict=True)
        return model

    return build


def _replacements(model, captions, tokens=40000):
    """(chosen tokens, [MASK]ed, unchanged, other) counted over repeated masking of the captions."""
    torch.manual_seed(0)
    batch = captions.repeat(1000, 1)
    counts = torch.zeros(4, dtype=torch.long)
    while counts[0] < tokens:
        out = model.masker(batch)
        valid = out.targets != -100
        now = out.input_ids.gather(1, out.positions)[valid]
        original = out.targets[valid]
        is_mask = now == model.masker.mask_token_id
        kept = (now == original) & ~is_mask
        counts += torch.tensor([len(now), int(is_mask.sum()), int(kept.sum()), int((~is_mask & ~kept).sum())])
    return counts.tolist()


def _within_binomial(count, n, p, sds=6.0):
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def test_default_is_the_papers_mask_for_every_chosen_token(build, captions):
    model = build()
    n, as_mask, kept, other = _replacements(model, captions)
    assert n >= 40000
    assert (as_mask, kept, other) == (n, 0, 0)  # exactly: no draw decides it
    assert model.cfg.mlm_replacement == "mask"


def test_bert_is_80_percent_mask_10_unchanged_10_random(build, captions):
    model = build("--unimlip-mlm-replacement", "bert")
    vocab = model.masker.vocab_size
    n, as_mask, kept, other = _replacements(model, captions)
    # a random draw can hit the original token (counted unchanged) or [MASK] itself (counted [MASK])
    assert _within_binomial(as_mask, n, 0.8 + 0.1 / vocab), (as_mask / n, n)
    assert _within_binomial(kept, n, 0.1 + 0.1 / vocab), (kept / n, n)
    assert _within_binomial(other, n, 0.1 * (1 - 2 / vocab)), (other / n, n)


def test_an_unknown_replacement_is_refused_by_the_parser(build):
    message = "error: mlm_replacement must be one of ['bert', 'mask'], got 'random'"
    with pytest.raises(SystemExit, match=re.escape(message)):
        build("--unimlip-mlm-replacement", "random")
