"""The Uni-Mlip loss (Eq. 4): three image-text contrastive terms, SimCLR and MLM.

    L = λcm · (L_ITC + L_ĨTC + L_IT̃C) + λum · L_I2I + λfm · L_MLM

Each term has its own weight (paper: λcm = 0.5/3 for each ITC term, λum = λfm = 0.5; the run's are
``unimlip_cfg.loss_weights`` with its ``--unimlip-<term>-weight`` flags over them). A
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
import argparse
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from openclip_unimlip.recipes.config import check_loss_weights
from openclip_unimlip.recipes.distributed import GatheringLoss, all_reduce_sum, distributed_flags, terms_or_total
from openclip_unimlip.recipes.ops import paired_logits
from openclip_unimlip.recipes.unimlip.config import PAPER_SIMCLR_TEMPERATURE, PAPER_WEIGHTS, TERMS, UniMlipCfg
from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions

# which model outputs each contrastive term pairs up
_CONTRASTIVE_INPUTS = {
    "itc": ("image_features", "text_features"),
    "image_perturbed_itc": ("perturbed_image_features", "text_features"),
    "text_perturbed_itc": ("image_features", "perturbed_text_features"),
    "simclr": ("simclr_features_a", "simclr_features_b"),
}


class UniMlipLoss(GatheringLoss):
    """The five weighted terms; the contract and the gathering of ``GatheringLoss``
    (``recipes/distributed.py``), every contrastive term over the whole gathered batch."""

    recipe = "Uni-Mlip models"

    def __init__(
            self,
            weights: Optional[Dict[str, float]] = None,
            simclr_temperature: float = PAPER_SIMCLR_TEMPERATURE,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            rank: int = 0,
            world_size: int = 1,
    ):
        weights = {**PAPER_WEIGHTS, **(weights or {})}
        check_loss_weights(weights, TERMS, "Uni-Mlip")
        if simclr_temperature <= 0:
            raise ValueError(f"SimCLR temperature must be > 0, got {simclr_temperature}")
        super().__init__({t: weights[t] for t in TERMS}, local_loss, gather_with_grad, rank, world_size)
        self.simclr_temperature = simclr_temperature

    def _contrastive(self, a, b, a_all, b_all, scale, logit_bias=None) -> torch.Tensor:
        """Symmetric InfoNCE between row-paired a and b (Eq. 1 / Eq. 2), as OpenCLIP's ClipLoss."""
        logits_a, logits_b, labels = paired_logits(a, b, a_all, b_all, scale, self.local_loss, self.rank)
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
        gathered = dict(zip(names, self._gather([inputs[k] for k in names])))

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

        return terms_or_total(losses, output_dict)


def create_unimlip_loss(args: argparse.Namespace, model_cfg: dict) -> UniMlipLoss:
    """The Uni-Mlip recipe's loss factory (see ``openclip_unimlip.recipes``): the weights of the run's
    ``unimlip_cfg``, the SimCLR temperature of its options on ``args`` (the paper's where ``args`` has
    none, e.g. outside the trainer) and OpenCLIP's distributed flags."""
    cfg = UniMlipCfg.from_dict(model_cfg.get("unimlip_cfg"))
    options = UniMlipOptions.from_args(args)
    return UniMlipLoss(weights=cfg.loss_weights, simclr_temperature=options.simclr_temperature,
                       **distributed_flags(args))
