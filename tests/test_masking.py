"""BERT masking of captions: budget, specials, whole words, 80/10/10."""
import torch

from openclip_unimlip.masking import CaptionMasker, prediction_budget


def _masker(tokenizer, whole_word=True):
    hf = tokenizer.tokenizer
    return CaptionMasker(
        vocab_size=len(hf), mask_token_id=hf.mask_token_id, special_token_ids=hf.all_special_ids,
        subword_token_ids=[i for t, i in hf.get_vocab().items() if t.startswith("##")], whole_word=whole_word)


def test_only_maskable_tokens_within_budget(tokenizer, captions):
    torch.manual_seed(0)
    masker = _masker(tokenizer)
    special = set(tokenizer.tokenizer.all_special_ids)
    for _ in range(20):
        out = masker(captions)
        budget = prediction_budget(captions.shape[1], 0.15)
        assert out.positions.shape == out.targets.shape == (captions.shape[0], budget)
        for b in range(captions.shape[0]):
            valid = out.targets[b] != -100
            positions = out.positions[b][valid].tolist()
            n_maskable = sum(int(t) not in special for t in captions[b])
            assert 1 <= len(positions) <= max(1, round(0.15 * n_maskable))
            assert all(int(captions[b, p]) not in special for p in positions)
            assert out.targets[b][valid].tolist() == captions[b, positions].tolist()
            changed = (out.input_ids[b] != captions[b]).nonzero().flatten().tolist()
            assert set(changed) <= set(positions)  # nothing outside the predicted positions changes


def test_whole_words_are_masked_together(tokenizer):
    torch.manual_seed(0)
    ids = tokenizer(["hyperdense hypoechoic calcification pneumothorax cardiomegaly effusion " * 3])
    subword = torch.tensor([t.startswith("##") for t in tokenizer.tokenizer.convert_ids_to_tokens(ids[0])])
    assert subword.any()
    masker = _masker(tokenizer)
    for _ in range(50):
        out = masker(ids)
        chosen = torch.zeros(ids.shape[1], dtype=torch.bool)
        chosen[out.positions[0][out.targets[0] != -100]] = True
        for p in range(1, ids.shape[1]):
            if subword[p]:
                assert chosen[p] == chosen[p - 1], "a word was split by the mask"


def test_mask_random_keep_proportions(tokenizer):
    torch.manual_seed(0)
    hf = tokenizer.tokenizer
    ids = tokenizer(["the chest radiograph shows a small left pleural effusion and mild cardiomegaly"] * 2000)
    out = _masker(tokenizer, whole_word=False)(ids)
    valid = out.targets != -100
    now = out.input_ids.gather(1, out.positions)[valid]
    original = out.targets[valid]
    as_mask = (now == hf.mask_token_id).float().mean().item()
    kept = (now == original).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
