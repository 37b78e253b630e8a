"""BERT-style masking of caption tokens for the MLM term, done on the device in one pass.

Chooses tokens as BERT's reference recipe (Google's ``create_pretraining_data.py``, as Hugging
Face's ``DataCollatorForWholeWordMask``): per caption, whole words (a word-initial token and its
``##`` continuations; never [CLS], [SEP], [PAD]) are visited in random order and each is
taken if it fits in what is left of the caption's quota of predicted tokens, else skipped
(the next word may fit). What a chosen token becomes is ``REPLACEMENTS``: by default the
paper's [MASK] for every one (Uni-Mlip sec. 3.4: "Following BERT, our masked tokens are
replaced with a unique token [MASK]"), or BERT's own split, [MASK] 80%, a token drawn
uniformly from the vocabulary 10%, unchanged 10%.

The quota (ours): BERT uses ``max(1, round(p * n))`` for ``n`` tokens, which on captions of a
few to a few tens of tokens is not ``p`` on average (a two-token caption: 50%). Here it is
``p * n`` for ``n`` maskable tokens rounded up or down at random with the probability that
makes its expectation exactly ``p * n`` (stochastic rounding; a caption may get no
prediction). The masked fraction falls short of ``p`` only where no remaining word fits the
quota (measured on real captions: test_masking.py). The quota never exceeds
``prediction_budget``, so the model returns MLM logits only at that many positions per
caption, batch-first and of fixed shape.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import nn

# What a chosen token becomes: (fraction replaced by [MASK], fraction replaced by a uniformly drawn
# token); the rest stay unchanged. The model config's ``mlm_replacement`` names one.
REPLACEMENTS: Dict[str, Tuple[float, float]] = {
    # Uni-Mlip sec. 3.4 (paper text): "our masked tokens are replaced with a unique token [MASK]"
    "mask": (1.0, 0.0),
    # BERT's create_pretraining_data.py, create_masked_lm_predictions (google-research/bert at
    # eedf571, lines 392-401): "80% of the time, replace with [MASK]", "10% of the time, keep
    # original", "10% of the time, replace with random word"
    "bert": (0.8, 0.1),
}


@dataclass
class MaskedCaptions:
    input_ids: torch.Tensor  # [B, L] caption ids after masking (fed to the text tower)
    positions: torch.Tensor  # [B, K] positions of predicted tokens (0 where unused)
    targets: torch.Tensor  # [B, K] original ids at those positions, -100 where unused


def prediction_budget(context_length: int, probability: float) -> int:
    """Most tokens masked in one caption of ``context_length`` tokens (the largest quota)."""
    return max(1, math.ceil(probability * context_length))


class CaptionMasker(nn.Module):
    def __init__(
            self,
            vocab_size: int,
            mask_token_id: int,
            special_token_ids: Iterable[int],
            subword_token_ids: Iterable[int] = (),
            probability: float = 0.15,
            whole_word: bool = True,
            mask_fraction: float = REPLACEMENTS["mask"][0],
            random_fraction: float = REPLACEMENTS["mask"][1],
    ):
        super().__init__()
        if not 0.0 < probability < 1.0:
            raise ValueError(f"MLM masking probability must be in (0, 1), got {probability}")
        if min(mask_fraction, random_fraction) < 0 or mask_fraction + random_fraction > 1:
            raise ValueError(f"MLM replacement fractions must be >= 0 and sum to at most 1, "
                             f"got [MASK] {mask_fraction} and random {random_fraction}")
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.probability = probability
        self.whole_word = whole_word
        self.mask_fraction = mask_fraction
        self.random_fraction = random_fraction
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[list(special_token_ids)] = True
        subword = torch.zeros(vocab_size, dtype=torch.bool)
        subword[list(subword_token_ids)] = True
        # Derived from the tokenizer at construction: not part of the checkpoint.
        self.register_buffer("is_special", special, persistent=False)
        self.register_buffer("is_subword", subword, persistent=False)

    def forward(self, input_ids: torch.Tensor, budget: Optional[int] = None) -> MaskedCaptions:
        batch, length = input_ids.shape
        budget = budget or prediction_budget(length, self.probability)
        device = input_ids.device
        maskable = ~self.is_special[input_ids]
        starts_word = maskable & ~self.is_subword[input_ids] if self.whole_word else maskable
        # a caption truncated inside a word may start with a sub-word: it opens a word too
        starts_word = starts_word | (maskable & ~torch.roll(maskable, 1, dims=1))
        word_index = torch.cumsum(starts_word.long(), dim=1) - 1  # word of each token
        word_index = torch.where(maskable, word_index, torch.full_like(word_index, length))

        # word lengths in a [B, L + 1] table (slot L collects the non-maskable tokens)
        word_length = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
        word_length.scatter_add_(1, word_index, maskable.long())
        word_length = word_length[:, :length]
        n_words = starts_word.sum(dim=1, keepdim=True)
        n_tokens = maskable.sum(dim=1, keepdim=True)
        expected = n_tokens * self.probability
        quota = torch.floor(expected + torch.rand(expected.shape, device=device)).long().clamp(max=budget)

        # BERT's pass over the shuffled words, one word per step: the first word in the random
        # order that still fits is taken (a word that did not fit never fits later: what is left
        # only shrinks); each step takes a word or none, so `budget` steps suffice
        word_slot = torch.arange(length, device=device).expand(batch, length)
        is_word = word_slot < n_words
        order = torch.rand(batch, length, device=device)
        word_taken = torch.zeros(batch, length + 1, dtype=torch.bool, device=device)
        left = quota
        for _ in range(budget):
            fits = is_word & ~word_taken[:, :length] & (word_length <= left)
            first = torch.where(fits, order, 2.0).argmin(dim=1, keepdim=True)
            take = fits.gather(1, first)
            word_taken.scatter_(1, first, word_taken.gather(1, first) | take)
            left = left - word_length.gather(1, first) * take
        selected = word_taken.gather(1, word_index) & maskable

        roll = torch.rand(batch, length, device=device)
        to_mask = selected & (roll < self.mask_fraction)
        to_random = selected & (roll >= self.mask_fraction) & (roll < self.mask_fraction + self.random_fraction)
        random_ids = torch.randint(self.vocab_size, (batch, length), device=device)
        masked_ids = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked_ids = torch.where(to_random, random_ids, masked_ids)

        # selected positions first (stable sort keeps caption order), then pad to the budget
        positions = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :budget]
        valid = selected.gather(1, positions)
        targets = torch.where(valid, input_ids.gather(1, positions), torch.full_like(positions, -100))
        positions = positions.masked_fill(~valid, 0)
        return MaskedCaptions(masked_ids, positions, targets)
