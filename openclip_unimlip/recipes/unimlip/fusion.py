"""The fused-modal branch: a small transformer over caption token states and image tokens
that predicts masked caption tokens (the MLM term), shaped like PMC-CLIP's fusion module.

PMC-CLIP's layout is kept so its checkpoints load: 4 pre-LN blocks of OpenCLIP's
``Transformer`` (same parameter names), input = the text tower's last hidden states of
the masked caption, then a learned image token, then the pooled L2-normalised image
embedding; the two image outputs are dropped; no final LayerNorm; a bias-free vocabulary
projection. As an option the 7x7 (at 224 px) layer-4 map replaces the pooled embedding
as a grid of image tokens.
"""
from typing import Optional

import torch
from open_clip.transformer import Transformer
from torch import nn


class MaskedLanguageFusion(nn.Module):
    def __init__(
            self,
            width: int,
            layers: int,
            heads: int,
            vocab_size: int,
            image_embed_dim: int,
            mlp_ratio: float = 4.0,
            grid_channels: Optional[int] = None,
    ):
        super().__init__()
        self.image_token = nn.Parameter(torch.zeros(1, 1, width))
        self.uses_grid = grid_channels is not None
        image_dim = grid_channels if self.uses_grid else image_embed_dim
        # PMC-CLIP feeds the embedding directly (its widths agree); project only when they differ
        self.image_proj = nn.Identity() if image_dim == width else nn.Linear(image_dim, width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio=mlp_ratio, batch_first=True)
        self.vocab_proj = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.vocab_proj.weight, std=width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward(self, text_states: torch.Tensor, image_tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits [B, K, V] at the K caption ``positions`` of each sample.

        ``image_tokens`` is [B, D] (pooled embedding) or [B, N, C] (layer-4 grid).
        """
        if image_tokens.ndim == 2:
            image_tokens = image_tokens.unsqueeze(1)
        batch, length, _ = text_states.shape
        image_tokens = self.image_proj(image_tokens).to(text_states.dtype)
        x = torch.cat([text_states, self.image_token.expand(batch, -1, -1).to(text_states.dtype), image_tokens], dim=1)
        x = self.transformer(x)[:, :length]
        picked = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.vocab_proj(picked)
