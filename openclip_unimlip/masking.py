"""BERT-style masking of caption tokens for the MLM term, done on the device in one pass.

Follows BERT's reference recipe (``create_pretraining_data.py``): per caption, the number of
tokens to predict is ``max(1, round(p * n))`` for ``n`` maskable tokens (never [CLS], [SEP],
[PAD]), whole words are chosen in random order until that budget is reached (a word that
would overflow the budget ends the selection (words longer than the whole budget are tried
last), a vectorisable simplification of BERT's "skip and try the next word"), and chosen tokens become [MASK] 80%, a random token 10%,
unchanged 10%. The fixed budget bounds the number of predicted positions per caption, so
the model returns MLM logits only at those positions, batch-first and of fixed shape.
"""
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn


@dataclass
class MaskedCaptions:
    input_ids: torch.Tensor  # [B, L] caption ids after masking (fed to the text tower)
    positions: torch.Tensor  # [B, K] positions of predicted tokens (0 where unused)
    targets: torch.Tensor  # [B, K] original ids at those positions, -100 where unused


def prediction_budget(context_length: int, probability: float) -> int:
    """Largest number of tokens masked in one caption of ``context_length`` tokens."""
    return max(1, round(probability * (context_length - 2)))


class CaptionMasker(nn.Module):
    def __init__(
            self,
            vocab_size: int,
            mask_token_id: int,
            special_token_ids: Iterable[int],
            subword_token_ids: Iterable[int] = (),
            probability: float = 0.15,
            whole_word: bool = True,
            mask_fraction: float = 0.8,
            random_fraction: float = 0.1,
    ):
        super().__init__()
        if not 0.0 < probability < 1.0:
            raise ValueError(f"MLM masking probability must be in (0, 1), got {probability}")
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
        quota = torch.clamp(torch.round(n_tokens * self.probability), min=1, max=budget).long()

        word_slot = torch.arange(length, device=device).expand(batch, length)
        # words too long for the quota go last, so a caption with any word that fits gets one
        score = torch.rand(batch, length, device=device) + (word_length > quota).float()
        score = score.masked_fill(word_slot >= n_words, 3.0)
        order = torch.argsort(score, dim=1)
        taken_sorted = torch.cumsum(word_length.gather(1, order), dim=1) <= quota
        taken_sorted &= word_slot < n_words
        word_taken = torch.zeros(batch, length + 1, dtype=torch.bool, device=device)
        word_taken.scatter_(1, order, taken_sorted)
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
