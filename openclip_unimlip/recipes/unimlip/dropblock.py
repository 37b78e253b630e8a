"""DropBlock (Ghiasi, Lin & Le, NeurIPS 2018), the image perturbation of Uni-Mlip (Sec. 3.2).

Written here rather than taken from ``timm.layers``: the versions the project allows
(``timm>=1.0.17``) disagree on what DropBlock means. 1.0.17-1.0.22 draw one mask per channel
(``batchwise``/``fast`` arguments; the default ``fast`` path seeds anywhere, blocks clipped at the
border); 1.0.23 removed those arguments and draws one mask shared by all channels by default
(``couple_channels``). The same config would train a different method depending on the installed
timm. Here the choice is an explicit config key (``dropblock_per_channel``).

What this follows, from the DropBlock paper and its reference code (tensorflow/tpu,
``models/official/resnet/resnet_model.py::dropblock``):

- seed rate ``gamma = p * H * W / (bh * bw) / ((H - bh + 1) * (W - bw + 1))`` (the paper's Eq. 1);
- seeds only where a whole ``bh x bw`` block fits inside the map (the paper's Fig. 2a), each
  seed zeroing its block; the block is clipped to the map (``min(block_size, H)``), as the reference;
- per channel by default: Algorithm 1 draws a mask per feature channel, "which tends to work
  better in our experiments" (Sec. 3), and the reference draws its noise in the tensor's full
  shape; ``per_channel=False`` shares one spatial mask across the channels of a sample;
- the kept units are rescaled by ``numel / kept`` counted over the whole tensor, as the
  reference's ``percent_ones`` (ours: when every unit is dropped the output is all zeros
  instead of the reference's division by zero).
"""
import torch
import torch.nn.functional as F
from torch import nn


def drop_block_2d(x: torch.Tensor, drop_prob: float, block_size: int, per_channel: bool = True) -> torch.Tensor:
    """DropBlock on a [B, C, H, W] map. The seeds are ``torch.rand(B, C or 1, H - bh + 1, W - bw + 1) < gamma``
    (one draw from the default generator), each the top-left corner of a dropped block."""
    batch, channels, height, width = x.shape
    block_h, block_w = min(block_size, height), min(block_size, width)
    valid_h, valid_w = height - block_h + 1, width - block_w + 1
    gamma = drop_prob * height * width / (block_h * block_w) / (valid_h * valid_w)
    with torch.no_grad():
        seeds = torch.rand(batch, channels if per_channel else 1, valid_h, valid_w, device=x.device) < gamma
        # pad by block-1 on every side: output (i, j) sees the seeds whose block covers it
        padded = F.pad(seeds.float(), (block_w - 1, block_w - 1, block_h - 1, block_h - 1))
        dropped = F.max_pool2d(padded, (block_h, block_w), stride=1)
        keep = 1.0 - dropped
        # a shared mask keeps the same fraction as its broadcast over the channels
        scale = keep.numel() / keep.sum().clamp(min=1)
    return x * (keep * scale).to(x.dtype)


class DropBlock2d(nn.Module):
    """``drop_block_2d`` in training mode, the identity in eval mode."""

    def __init__(self, drop_prob: float, block_size: int, per_channel: bool = True):
        super().__init__()
        self.drop_prob, self.block_size, self.per_channel = drop_prob, block_size, per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        return drop_block_2d(x, self.drop_prob, self.block_size, self.per_channel)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, per_channel={self.per_channel}"
