"""All cross-rank communication of the Uni-Mlip loss, in one place.

Every feature a loss term contrasts is gathered in a single collective: the tensors are
packed side by side ([B, D1 + D2 + ...]), gathered once and split again, instead of one
all_gather per tensor as in OpenCLIP's ``gather_features``. Semantics follow it:
``with_grad`` uses ``torch.distributed.nn.all_gather`` (gradients flow to every rank's
features); otherwise the gathered copy carries no gradient, except this rank's own slice.
"""
from typing import List, Sequence

import torch


def gather_batch(tensors: Sequence[torch.Tensor], rank: int, world_size: int, with_grad: bool) -> List[torch.Tensor]:
    """Concatenate each [B, D_i] tensor over ranks along the batch: returns [world_size * B, D_i] each."""
    if world_size == 1:
        return list(tensors)
    import torch.distributed as dist
    import torch.distributed.nn

    widths = [t.shape[1] for t in tensors]
    packed = torch.cat(list(tensors), dim=1)
    if with_grad:
        gathered = torch.cat(torch.distributed.nn.all_gather(packed), dim=0)
    else:
        parts = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(parts, packed.detach())
        parts[rank] = packed
        gathered = torch.cat(parts, dim=0)
    return list(gathered.split(widths, dim=1))


def all_reduce_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    values = values.detach().clone()
    dist.all_reduce(values)
    return values
