"""BERT masking of captions against direct counts on real captions: rate, specials, whole words, 80/10/10."""
import json
import math
import re

import pytest
import torch

from openclip_unimlip.recipes.unimlip.masking import REPLACEMENTS, CaptionMasker, prediction_budget

# real radiology text: the entity names and imaging findings of radiology-semantic-dict that ship with the package
from paths import REPO  # noqa: E402

KNOWLEDGE = REPO / "openclip_unimlip" / "recipes" / "mlip_li" / "knowledge" / "radiology_entities.jsonl"


# element-wise ops on [2000, 32] tensors: a second intra-op thread only adds contention
pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer_tables(tokenizer, subwords=True):
    """What a masker takes from the tokenizer: its vocabulary size, [MASK], specials (and ##sub-words)."""
    hf = tokenizer.tokenizer
    tables = dict(vocab_size=len(hf), mask_token_id=hf.mask_token_id, special_token_ids=hf.all_special_ids)
    if subwords:
        tables["subword_token_ids"] = [i for t, i in hf.get_vocab().items() if t.startswith("##")]
    return tables


def _masker(tokenizer, whole_word=True, probability=0.15, **fractions):
    return CaptionMasker(**_tokenizer_tables(tokenizer), whole_word=whole_word, probability=probability, **fractions)


@pytest.fixture(scope="module")
def real_captions(tokenizer):
    """~2000 distinct captions of 4-30 tokens: each entity as "name: findings", and each finding alone."""
    texts = []
    for line in KNOWLEDGE.read_text().splitlines():
        entity = json.loads(line)
        texts.append(f"{entity['name']}: {entity['description']}")
        texts += [f.strip() for f in entity["description"].split(":", 1)[-1].rstrip(".").split(";") if f.strip()]
    texts = sorted(set(texts))
    assert len(texts) > 1900
    return tokenizer(texts)


def _special(tokenizer, ids):
    return torch.isin(ids, torch.tensor(tokenizer.tokenizer.all_special_ids))


def _selected(out, shape):
    """[B, L] bool: the positions the masker says it predicts (independently of its own mask)."""
    chosen = torch.zeros(shape, dtype=torch.bool)
    rows = torch.arange(shape[0]).unsqueeze(1).expand_as(out.positions)
    valid = out.targets != -100
    chosen[rows[valid], out.positions[valid]] = True
    return chosen


@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_masked_fraction_is_the_configured_probability(tokenizer, real_captions, probability):
    torch.manual_seed(0)
    masker = _masker(tokenizer, probability=probability)
    maskable = (~_special(tokenizer, real_captions)).sum(1).float()
    token_fraction, caption_fraction = [], []
    for _ in range(4):
        predicted = (masker(real_captions).targets != -100).sum(1).float()
        token_fraction.append(predicted.sum() / maskable.sum())
        caption_fraction.append((predicted / maskable).mean())
    # the brief: within 0.5 percentage points of the configured rate, over all tokens and per caption
    assert torch.stack(token_fraction).mean().item() == pytest.approx(probability, abs=0.005)
    assert torch.stack(caption_fraction).mean().item() == pytest.approx(probability, abs=0.005)


def test_two_token_captions_are_masked_at_the_configured_rate_not_half(tokenizer):
    torch.manual_seed(0)
    ids = tokenizer(["bone fracture"] * 4000)
    assert (~_special(tokenizer, ids)).sum(1).eq(2).all()
    predicted = (_masker(tokenizer)(ids).targets != -100).sum(1).float()
    assert predicted.mean().item() / 2 == pytest.approx(0.15, abs=0.01)


def test_specials_and_padding_never_change_nor_are_predicted(tokenizer, real_captions):
    torch.manual_seed(0)
    masker = _masker(tokenizer, probability=0.5)
    special = _special(tokenizer, real_captions)
    assert special.sum(1).gt(2).any()  # padding present
    for _ in range(3):
        out = masker(real_captions)
        chosen = _selected(out, real_captions.shape)
        assert not (chosen & special).any()
        assert torch.equal(out.input_ids[special], real_captions[special])
        assert not ((out.input_ids != real_captions) & ~chosen).any()  # nothing outside the predictions changes
        rows = torch.arange(len(real_captions)).unsqueeze(1).expand_as(out.positions)
        valid = out.targets != -100
        assert torch.equal(out.targets[valid], real_captions[rows[valid], out.positions[valid]])
        assert valid.sum(1).max() <= prediction_budget(real_captions.shape[1], 0.5) == out.positions.shape[1]


def test_whole_words_stay_whole(tokenizer, real_captions):
    torch.manual_seed(0)
    hf = tokenizer.tokenizer
    continues = torch.tensor([t.startswith("##") for t in hf.convert_ids_to_tokens(real_captions.flatten().tolist())])
    continues = continues.view_as(real_captions)
    continues[:, 0] = False
    inner = continues[:, 1:] & ~_special(tokenizer, real_captions)[:, :-1]  # a ## token and the token before it
    assert inner.sum() > 1000
    masker = _masker(tokenizer)
    for _ in range(5):
        chosen = _selected(masker(real_captions), real_captions.shape)
        assert torch.equal(chosen[:, 1:][inner], chosen[:, :-1][inner]), "a word was split by the mask"
    # token-level masking splits words: the check above can fail
    chosen = _selected(_masker(tokenizer, whole_word=False, probability=0.5)(real_captions), real_captions.shape)
    assert not torch.equal(chosen[:, 1:][inner], chosen[:, :-1][inner])


def test_mask_random_keep_split_is_80_10_10(tokenizer, real_captions):
    """BERT's split (``--unimlip-mlm-replacement bert``; the paper's [MASK]-only default: test_mlm_replacement.py)."""
    torch.manual_seed(0)
    hf = tokenizer.tokenizer
    mask_fraction, random_fraction = REPLACEMENTS["bert"]
    masker = _masker(tokenizer, mask_fraction=mask_fraction, random_fraction=random_fraction)
    now, original = [], []
    for _ in range(10):
        out = masker(real_captions)
        valid = out.targets != -100
        now.append(out.input_ids.gather(1, out.positions)[valid])
        original.append(out.targets[valid])
    now, original = torch.cat(now), torch.cat(original)
    assert len(now) > 30000
    as_mask = (now == hf.mask_token_id).float().mean().item()
    kept = (now == original).float().mean().item()
    replaced = ((now != original) & (now != hf.mask_token_id)).float().mean().item()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1, abs=0.01)  # + the 1/V chance that a random token is the original
    assert replaced == pytest.approx(0.1, abs=0.01)


def test_random_replacements_are_uniform_over_the_vocabulary(tokenizer, real_captions):
    torch.manual_seed(0)
    hf = tokenizer.tokenizer
    vocab = len(hf)
    # every chosen token replaced by a random one: the draws the 10 % branch makes, many at a time
    masker = _masker(tokenizer, whole_word=False, probability=0.9, mask_fraction=0.0, random_fraction=1.0)
    draws = []
    while sum(len(d) for d in draws) < 40000:
        out = masker(real_captions)
        changed = (out.input_ids != real_captions) & (out.input_ids != hf.mask_token_id)
        draws.append(out.input_ids[changed])
    draws = torch.cat(draws)
    n = len(draws)
    # chi-square over 64 equal-width id bins (the last holds the remainder): df 63, 1e-4 upper tail ~ 112
    edges = torch.linspace(0, vocab, 65).round().long()
    counts = torch.bucketize(draws, edges[1:-1], right=True).bincount(minlength=64).float()
    expected = n * (edges[1:] - edges[:-1]).float() / vocab
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 112, chi2
    # coverage: distinct ids among n uniform draws from V
    distinct = len(draws.unique())
    assert distinct == pytest.approx(vocab * (1 - math.exp(-n / vocab)), rel=0.03)


def test_a_masker_built_without_options_is_the_papers(tokenizer, real_captions):
    """Uni-Mlip sec. 3.4, read from the paper beside the checkout: "the captions are masked randomly
    with a probability of 15%" and every chosen token becomes [MASK]; measured on real captions."""
    paper = REPO.parent / "shared" / "papers" / "uni-mlip.txt"
    if paper.is_file():
        percent = int(re.search(r"masked randomly with a probability of (\d+)%", paper.read_text()).group(1))
    else:  # typed from the same sentence
        percent = 15
    torch.manual_seed(0)
    out = CaptionMasker(**_tokenizer_tables(tokenizer, subwords=False))(real_captions)
    chosen = _selected(out, real_captions.shape)
    maskable = ~_special(tokenizer, real_captions)
    assert abs(chosen.sum().item() / maskable.sum().item() - percent / 100) < 0.01
    mask_id = tokenizer.tokenizer.mask_token_id
    assert torch.equal(out.input_ids[chosen], torch.full_like(out.input_ids[chosen], mask_id))
    unused = out.targets == -100
    assert unused.any() and not out.positions[unused].any()  # MaskedCaptions: positions 0 where unused
    # whole words by default: given the tokenizer's sub-words, it chooses as the whole-word masker
    torch.manual_seed(0)
    default = CaptionMasker(**_tokenizer_tables(tokenizer))(real_captions)
    torch.manual_seed(0)
    assert torch.equal(default.positions, _masker(tokenizer, whole_word=True)(real_captions).positions)


@pytest.mark.parametrize("probability, mask_fraction, random_fraction, accepted", [
    (0.15, 0.8, 0.2, True), (0.15, 1.0, 0.0, True), (0.15, 0.0, 1.0, True),
    (0.15, 0.8, 0.5, False), (0.15, -0.1, 0.5, False), (0.15, 0.5, -0.1, False),
    (0.0, 1.0, 0.0, False), (1.0, 1.0, 0.0, False), (1.5, 1.0, 0.0, False), (-0.15, 1.0, 0.0, False)])
def test_rates_outside_their_range_are_refused(tokenizer, probability, mask_fraction, random_fraction, accepted):
    """The masking rate in (0, 1); the [MASK] and random fractions each >= 0, summing to at most 1."""
    if accepted:
        _masker(tokenizer, probability=probability, mask_fraction=mask_fraction, random_fraction=random_fraction)
    else:
        with pytest.raises(ValueError, match="MLM"):
            _masker(tokenizer, probability=probability, mask_fraction=mask_fraction, random_fraction=random_fraction)


@pytest.mark.parametrize("length", [15, 16])  # captions of odd and even length
def test_a_caption_of_one_token_words_gets_its_whole_quota_within_a_tight_budget(tokenizer, length):
    """Four one-token words at rate 0.5: the quota is exactly 2 (stochastic rounding of 2.0), and a
    budget of 2 steps suffices, one word a step: every caption predicts exactly 2 tokens (a step
    spent on anything but a word would leave some with 1)."""
    ids = tokenizer(["bone fracture lung mass"] * 2000)[:, :length]
    assert (~_special(tokenizer, ids)).sum(1).eq(4).all()
    torch.manual_seed(0)
    out = _masker(tokenizer, probability=0.5)(ids, budget=2)
    assert torch.equal(_selected(out, ids.shape).sum(1), torch.full((2000,), 2))


def test_the_masker_adds_nothing_to_a_checkpoint(tokenizer):
    """Its tables come from the tokenizer at construction (the module's comment): a checkpoint holds
    none of them, so a model keeps PMC-CLIP's and OpenCLIP's keys."""
    masker = _masker(tokenizer)
    assert masker.state_dict() == {} and {name for name, _ in masker.named_buffers()} == {"is_special", "is_subword"}


@pytest.mark.parametrize("probability", [0.05, 0.15, 0.5])
def test_the_budget_is_the_largest_quota_a_caption_can_draw(probability):
    """A caption of n maskable tokens draws floor(n * p + u), u in [0, 1): at most floor(n * p) + 1
    where n * p is not whole, n * p where it is. The budget for a context of L tokens is the largest
    of these over n <= L (a caption of 4 tokens at 15 % never predicts 2)."""
    for length in range(1, 81):
        largest = max(math.floor(n * probability) + (n * probability % 1 != 0) for n in range(length + 1))
        assert prediction_budget(length, probability) == largest, length


def test_a_caption_cut_inside_a_word_opens_a_word_at_its_first_sub_word(tokenizer):
    """A caption truncated before its first token may start with a ##sub-word: that sub-word opens a
    word, so every maskable token can be chosen."""
    hf = tokenizer.tokenizer
    ids = torch.tensor([[hf.cls_token_id, *hf.convert_tokens_to_ids(["##ing", "bone", "fracture"]), hf.sep_token_id]])
    torch.manual_seed(0)
    out = _masker(tokenizer, probability=0.5)(ids.expand(2000, -1).clone())
    chosen = _selected(out, (2000, 5))
    assert chosen[:, 1:4].any(dim=0).all() and not chosen[:, [0, 4]].any()
