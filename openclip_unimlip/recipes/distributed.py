"""All cross-rank communication of the losses, in one place: ``gather_batch`` (one collective for
every tensor a loss term contrasts), ``all_reduce_sum``, ``GatheringLoss`` (the MLIP losses' base,
with the same global-batch semantics as the Uni-Mlip loss), ``terms_or_total`` (OpenCLIP's loss
contract), ``distributed_flags`` (the settings from OpenCLIP's args) and the ``--local-loss`` refusal.

Every feature a loss term contrasts is gathered in a single collective: the tensors are
packed side by side ([B, D1 + D2 + ...]), gathered once and split again, instead of one
all_gather per tensor as in OpenCLIP's ``gather_features``. Semantics follow it:
``with_grad`` uses ``torch.distributed.nn.all_gather`` (gradients flow to every rank's
features); otherwise the gathered copy carries no gradient, except this rank's own slice,
which sits in slot ``rank`` of the gathered batch.

``global_gradient`` (used by the Uni-Mlip loss, see ``unimlip/loss.py``, and by ``GatheringLoss``)
makes the no-gradient gather exact for a loss that every rank computes over the *whole* gathered
batch: each rank then holds only ``dL/dx`` for its own rows, while DDP divides the summed parameter
gradient by the world size, so the own slice's gradient is multiplied by ``world_size`` (value
unchanged). DDP's average then equals the gradient of the loss on the global batch, as
``with_grad`` gives it (there every rank's copy of ``dL/dx`` is summed by the backward
all_gather).
"""
import functools
from typing import Dict, List, Sequence

import torch
from torch import nn


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


def local_loss_needs_gather_with_grad(recipe: str) -> str:
    return (f"--local-loss without --gather-with-grad is not supported with {recipe}: each GPU would get only "
            "part of the contrastive gradient and the loss weights would change with the number of GPUs; "
            "add --gather-with-grad (or drop --local-loss)")


class GatheringLoss(nn.Module):
    """Base of the MLIP losses. They follow the Uni-Mlip loss's contract:
    ``forward(**model_out, output_dict=False)``; each weighted term is returned under ``<term>_loss``
    (OpenCLIP's trainer sums and logs them); a term with weight 0 or without its model outputs is
    skipped; cross-rank features are gathered in one collective (``gather_batch``).

    Several GPUs: the same semantics as the Uni-Mlip loss (``recipes/unimlip/loss.py``): the
    gradient DDP applies (the average over ranks) equals, for every term, the gradient of that term
    on the global batch on one process. Without ``--local-loss`` every rank computes the batch
    terms over the whole gathered batch (its own rows' gradient scaled by the world size, or
    returned by the all_gather's backward with ``--gather-with-grad``); with ``--local-loss
    --gather-with-grad`` each rank scores its own rows and every normaliser is the global one;
    ``--local-loss`` alone is refused on several ranks. Per-sample terms (reconstruction, local
    alignment, prototypes) are per-rank means of the rank's own samples, normalised by the global
    count. Tested against one process at the double batch (tests/recipes/test_mlip_distributed.py).

    ``recipe`` names the recipe in refusals.
    """

    recipe = "this recipe"

    def __init__(self, weights: Dict[str, float], local_loss: bool, gather_with_grad: bool, rank: int,
                 world_size: int):
        super().__init__()
        if world_size > 1 and local_loss and not gather_with_grad:
            raise ValueError(local_loss_needs_gather_with_grad(self.recipe))
        self.weights = {t: float(w) for t, w in weights.items() if w > 0}
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    def _gather(self, tensors):
        """Gather [B, ...] tensors over ranks in one collective; returns [world · B, ...] each,
        with the global-batch gradient semantics above."""
        if not tensors:
            return []
        shapes = [t.shape[1:] for t in tensors]
        common = functools.reduce(torch.promote_types, (t.dtype for t in tensors))  # lossless both ways
        flat = [t.reshape(t.shape[0], -1).to(common) for t in tensors]
        gathered = gather_batch(flat, self.rank, self.world_size, self.gather_with_grad,
                                global_gradient=not self.local_loss)
        return [g.reshape(g.shape[0], *s).to(t.dtype) for g, s, t in zip(gathered, shapes, tensors)]

    def _rows(self, gathered: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """The rows a rank scores: its own with ``local_loss``, else the whole gathered batch."""
        return local if self.local_loss else gathered

    def _per_sample_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of this rank's per-sample values [n] as its share of the global-batch mean: the sum
        over ranks of the gradients DDP averages is world_size × the global mean's gradient."""
        count = all_reduce_sum(torch.tensor(float(values.shape[0]), device=values.device), self.world_size)
        return values.sum() * self.world_size / count.clamp(min=1)


def terms_or_total(losses: Dict[str, torch.Tensor], output_dict: bool):
    """OpenCLIP's loss contract: the named terms with ``output_dict``, else their sum."""
    return losses if output_dict else sum(losses.values())


def distributed_flags(args) -> dict:
    """The loss's distributed settings from OpenCLIP's parsed args."""
    return dict(local_loss=getattr(args, "local_loss", False),
                gather_with_grad=getattr(args, "gather_with_grad", False),
                rank=getattr(args, "rank", 0), world_size=getattr(args, "world_size", 1))
