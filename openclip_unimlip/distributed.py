"""All cross-rank communication of the losses, in one place.

Every feature a loss term contrasts is gathered in a single collective: the tensors are
packed side by side ([B, D1 + D2 + ...]), gathered once and split again, instead of one
all_gather per tensor as in OpenCLIP's ``gather_features``. Semantics follow it:
``with_grad`` uses ``torch.distributed.nn.all_gather`` (gradients flow to every rank's
features); otherwise the gathered copy carries no gradient, except this rank's own slice,
which sits in slot ``rank`` of the gathered batch.

``global_gradient`` (used by the Uni-Mlip loss, see ``losses.py``) makes the no-gradient
gather exact for a loss that every rank computes over the *whole* gathered batch: each rank
then holds only ``dL/dx`` for its own rows, while DDP divides the summed parameter gradient
by the world size, so the own slice's gradient is multiplied by ``world_size`` (value
unchanged). DDP's average then equals the gradient of the loss on the global batch, as
``with_grad`` gives it (there every rank's copy of ``dL/dx`` is summed by the backward
all_gather).
"""
from typing import List, Sequence

import torch


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def gather_batch(tensors: Sequence[torch.Tensor], rank: int, world_size: int, with_grad: bool,
                 global_gradient: bool = False) -> List[torch.Tensor]:
    """Concatenate each [B, D_i] tensor over ranks along the batch: returns [world_size * B, D_i] each.

    Rank ``r``'s rows are rows ``r * B ... (r + 1) * B - 1`` of the result. With
    ``global_gradient`` and without ``with_grad``, this rank's own rows carry ``world_size``
    times their gradient (see the module docstring).
    """
    tensors = list(tensors)
    if world_size == 1 or not tensors:
        return tensors
    import torch.distributed as dist
    import torch.distributed.nn

    widths = [t.shape[1] for t in tensors]
    packed = torch.cat(tensors, dim=1)
    if with_grad:
        gathered = torch.cat(torch.distributed.nn.all_gather(packed), dim=0)
    else:
        parts = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(parts, packed.detach())
        parts[rank] = _ScaleGradient.apply(packed, float(world_size)) if global_gradient else packed
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
