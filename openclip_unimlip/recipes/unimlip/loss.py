"""The Uni-Mlip loss (Eq. 4): three image-text contrastive terms, SimCLR and MLM.

    L = λcm · (L_ITC + L_ĨTC + L_IT̃C) + λum · L_I2I + λfm · L_MLM

Each term has its own weight (paper: λcm = 0.5/3 for each ITC term, λum = λfm = 0.5). A
weight of 0 removes the term: not computed, not returned. A term whose inputs the model
did not produce (e.g. SimCLR before its start epoch) is skipped, never faked. With
``output_dict=True`` each weighted term is returned under ``<term>_loss``, which OpenCLIP's
trainer sums and logs as ``train/<term>_loss``.

Several GPUs (ours: the paper trained on 8 but does not say how its terms were reduced).
Every term's weight means what it means on one GPU: with DDP, the gradient DDP applies
(the average over ranks) equals the gradient of that term computed on the global batch
(all ranks' samples together) on one GPU, for every term and every supported flag set:

- OpenCLIP's default (neither ``--gather-with-grad`` nor ``--local-loss``): every rank
  computes each contrastive term (the three ITC terms and SimCLR) over the whole gathered
  batch; the gathered copy carries no gradient except the rank's own rows, whose gradient is
  multiplied by the world size (``distributed.gather_batch(global_gradient=True)``; the value
  is unchanged). Stock OpenCLIP leaves that factor out, which divides the ITC gradient by the
  number of GPUs (measured: 0.5 at 2 GPUs) while a per-rank mean such as MLM's is not.
- ``--gather-with-grad``: the same loss, gradients returned to every rank by the backward of
  the all_gather (they sum to the same world-size factor).
- ``--local-loss --gather-with-grad``: each rank scores its own rows against the gathered
  batch (OpenCLIP's local loss); the average over ranks is the global loss, exactly.
- ``--local-loss`` without ``--gather-with-grad`` on several ranks is refused (here and at
  argument validation): a rank never receives the gradient its features get through the other
  ranks' rows, which is no multiple of the global gradient, so no weight can fix it.
- MLM: the mean over the predicted tokens of the global batch (ranks hold different token
  counts), its local gradient scaled so that DDP's average is that mean's gradient.

SimCLR follows the same flags as ITC (before: always gathered with gradient; both exact now).
Logged values are the global-batch values, except with ``--local-loss`` (the rank's share).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from openclip_unimlip.recipes.distributed import all_reduce_sum, gather_batch
from openclip_unimlip.recipes.unimlip.terms import TERMS

PAPER_WEIGHTS: Dict[str, float] = {
    "itc": 0.5 / 3,
    "image_perturbed_itc": 0.5 / 3,
    "text_perturbed_itc": 0.5 / 3,
    "simclr": 0.5,
    "mlm": 0.5,
}
PAPER_SIMCLR_TEMPERATURE = 0.1
LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD = (
    "--local-loss without --gather-with-grad is not supported with Uni-Mlip models: each GPU would get only "
    "part of the contrastive gradient and the loss weights would change with the number of GPUs; "
    "add --gather-with-grad (or drop --local-loss)")

# which model outputs each contrastive term pairs up
_CONTRASTIVE_INPUTS = {
    "itc": ("image_features", "text_features"),
    "image_perturbed_itc": ("perturbed_image_features", "text_features"),
    "text_perturbed_itc": ("image_features", "perturbed_text_features"),
    "simclr": ("simclr_features_a", "simclr_features_b"),
}


class UniMlipLoss(nn.Module):
    def __init__(
            self,
            weights: Optional[Dict[str, float]] = None,
            simclr_temperature: float = PAPER_SIMCLR_TEMPERATURE,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            rank: int = 0,
            world_size: int = 1,
    ):
        super().__init__()
        weights = {**PAPER_WEIGHTS, **(weights or {})}
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"Unknown Uni-Mlip loss terms {unknown}; known terms: {list(TERMS)}")
        negative = {t: w for t, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f"Loss weights must be >= 0, got {negative}")
        if simclr_temperature <= 0:
            raise ValueError(f"SimCLR temperature must be > 0, got {simclr_temperature}")
        if world_size > 1 and local_loss and not gather_with_grad:
            raise ValueError(LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD)
        self.weights = {t: float(weights[t]) for t in TERMS if weights[t] > 0}
        self.simclr_temperature = simclr_temperature
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    @property
    def active_terms(self):
        return tuple(self.weights)

    def _contrastive(self, a, b, a_all, b_all, scale, logit_bias=None) -> torch.Tensor:
        """Symmetric InfoNCE between row-paired a and b (Eq. 1 / Eq. 2), as OpenCLIP's ClipLoss."""
        if self.world_size > 1 and self.local_loss:
            logits_a = scale * a @ b_all.T
            logits_b = scale * b @ a_all.T
            labels = torch.arange(a.shape[0], device=a.device) + a.shape[0] * self.rank
        else:
            logits_a = scale * a_all @ b_all.T
            logits_b = logits_a.T
            labels = torch.arange(a_all.shape[0], device=a.device)
        if logit_bias is not None:
            logits_a = logits_a + logit_bias
            logits_b = logits_b + logit_bias
        return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2

    def _mlm(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the predicted tokens of the *global* batch.

        Ranks hold different numbers of predicted tokens, so a per-rank mean would weight
        tokens unequally. The value is the global mean; the gradient is scaled so that
        DDP's average over ranks equals the gradient of that global mean.
        """
        local_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        local_count = (targets != -100).sum()
        totals = all_reduce_sum(torch.stack([local_sum.detach(), local_count.to(local_sum.dtype)]), self.world_size)
        global_count = totals[1].clamp(min=1)
        scaled_local = local_sum * self.world_size / global_count
        return scaled_local + (totals[0] / global_count - scaled_local).detach()

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: torch.Tensor,
            perturbed_image_features: Optional[torch.Tensor] = None,
            perturbed_text_features: Optional[torch.Tensor] = None,
            simclr_features_a: Optional[torch.Tensor] = None,
            simclr_features_b: Optional[torch.Tensor] = None,
            mlm_logits: Optional[torch.Tensor] = None,
            mlm_targets: Optional[torch.Tensor] = None,
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
    ):
        inputs = {
            "image_features": image_features,
            "text_features": text_features,
            "perturbed_image_features": perturbed_image_features,
            "perturbed_text_features": perturbed_text_features,
            "simclr_features_a": simclr_features_a,
            "simclr_features_b": simclr_features_b,
        }
        contrastive = [
            t for t in self.weights
            if t in _CONTRASTIVE_INPUTS and all(inputs[k] is not None for k in _CONTRASTIVE_INPUTS[t])
        ]
        # one collective for every feature a contrastive term needs (see the module docstring)
        names = sorted({k for t in contrastive for k in _CONTRASTIVE_INPUTS[t]})
        gathered = dict(zip(names, gather_batch(
            [inputs[k] for k in names], self.rank, self.world_size, self.gather_with_grad, global_gradient=True)))

        losses = {}
        for term in contrastive:
            a_name, b_name = _CONTRASTIVE_INPUTS[term]
            if term == "simclr":
                scale, bias = 1.0 / self.simclr_temperature, None
            else:
                scale, bias = logit_scale, logit_bias
            value = self._contrastive(inputs[a_name], inputs[b_name], gathered[a_name], gathered[b_name], scale, bias)
            losses[f"{term}_loss"] = self.weights[term] * value
        if "mlm" in self.weights and mlm_logits is not None and mlm_targets is not None:
            losses["mlm_loss"] = self.weights["mlm"] * self._mlm(mlm_logits, mlm_targets)

        if output_dict:
            return losses
        return sum(losses.values())
