"""The MLIP (Liu) loss (equations, defaults and provenance: docs/methods/mlip-liu.md).

Its contract and its semantics on several GPUs: ``GatheringLoss`` in ``recipes/distributed.py``.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from openclip_unimlip.recipes.distributed import GatheringLoss, distributed_flags, terms_or_total
from openclip_unimlip.recipes.mlip_liu.config import LiuCfg
from openclip_unimlip.recipes.ops import paired_logits, sinkhorn_plan


class MlipLiuLoss(GatheringLoss):
    """λ_mcl · masked contrastive (integrity-weighted) + λ_psm · patch-sentence OT InfoNCE + λ_rec · MSE."""

    recipe = "MLIP (Liu)"

    def __init__(self, weights: Optional[Dict[str, float]] = None, psm_temperature: float = 0.1,
                 ot_epsilon: float = 0.1, ot_iterations: int = 50, ot_tolerance: float = 1e-3,
                 local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        cfg = LiuCfg(loss_weights=dict(weights or {}), psm_temperature=psm_temperature, ot_epsilon=ot_epsilon,
                     ot_iterations=ot_iterations, ot_tolerance=ot_tolerance)
        super().__init__(cfg.loss_weights, local_loss, gather_with_grad, rank, world_size)
        self.psm_temperature = psm_temperature
        self.ot_epsilon = ot_epsilon
        self.ot_iterations = ot_iterations
        self.ot_tolerance = ot_tolerance

    def masked_contrastive(self, image, text, weights, image_all, text_all, weights_all, scale) -> torch.Tensor:
        """¼ [CE(w ⊙ L) + CE(w ⊙ Lᵀ) + CE_w̄(L) + CE_w̄(Lᵀ)], w scaling row i of both directions (MaCo,
        model_MaCo.py l.411-419: ``scale`` [B, 1] multiplies ``logits1`` and ``logits2``, so in the
        text→image direction it scales each *text* row by its pair's weight: a per-pair temperature)."""
        logits_i, logits_t, labels = paired_logits(image, text, image_all, text_all, scale, self.local_loss, self.rank)
        row_weights = (weights_all if logits_i.shape[0] == image_all.shape[0] else weights).unsqueeze(1)
        class_weights = weights_all.detach()[labels]
        # CrossEntropyLoss(weight=w̄) normalises by Σ w̄ over the scored rows; with local rows that sum is
        # the global one scaled to this rank's share, so the ranks' terms add up to the global term
        normaliser = weights_all.detach().sum() * labels.shape[0] / weights_all.shape[0]
        terms = [F.cross_entropy(logits_i * row_weights, labels), F.cross_entropy(logits_t * row_weights, labels)]
        for logits in (logits_i, logits_t):
            terms.append((F.cross_entropy(logits, labels, reduction="none") * class_weights).sum() / normaliser)
        return sum(terms) / 4

    def patch_sentence_similarity(self, patches: torch.Tensor, sentences: torch.Tensor,
                                  sentence_mask: torch.Tensor) -> torch.Tensor:
        """sim[a, b] = Σ_ij T^{ab}_ij cos(p^a_i, s^b_j), T the entropic OT plan (no gradient)."""
        cosine = torch.einsum("and,bsd->abns", patches, sentences)
        plan = sinkhorn_plan(cosine, sentence_mask, self.ot_epsilon, self.ot_iterations, self.ot_tolerance)
        return (plan.to(cosine.dtype) * cosine).sum(dim=(-2, -1))

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: torch.Tensor,
            integrity_weights: Optional[torch.Tensor] = None,
            patch_embeddings: Optional[torch.Tensor] = None,
            sentence_embeddings: Optional[torch.Tensor] = None,
            sentence_mask: Optional[torch.Tensor] = None,
            reconstruction: Optional[torch.Tensor] = None,
            reconstruction_target: Optional[torch.Tensor] = None,
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
    ):
        losses = {}
        use_mcl = "masked_contrastive" in self.weights and integrity_weights is not None
        use_psm = "patch_sentence" in self.weights and patch_embeddings is not None
        local = [image_features, text_features]
        if use_mcl:
            local.append(integrity_weights.unsqueeze(1))
        if use_psm:
            local += [patch_embeddings, sentence_embeddings, sentence_mask.to(sentence_embeddings.dtype)]
        gathered = self._gather(local)
        image_all, text_all = gathered[:2]
        if use_mcl:
            weights_all = gathered[2].squeeze(1)
            losses["masked_contrastive_loss"] = self.weights["masked_contrastive"] * self.masked_contrastive(
                image_features, text_features, integrity_weights, image_all, text_all, weights_all, logit_scale)
        if use_psm:
            patches_all, sentences_all, mask_all = gathered[-3:]
            mask_all = mask_all > 0.5
            rows = self._rows(patches_all, patch_embeddings)
            sim = self.patch_sentence_similarity(rows, sentences_all, mask_all) / self.psm_temperature
            if rows.shape[0] == patches_all.shape[0]:
                labels = torch.arange(sim.shape[0], device=sim.device)
                value = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2
            else:  # local rows: images vs all captions, and this rank's captions vs all images
                labels = torch.arange(rows.shape[0], device=sim.device) + rows.shape[0] * self.rank
                sim_t = self.patch_sentence_similarity(patches_all, sentence_embeddings, sentence_mask).T
                value = (F.cross_entropy(sim, labels) + F.cross_entropy(sim_t / self.psm_temperature, labels)) / 2
            losses["patch_sentence_loss"] = self.weights["patch_sentence"] * value
        if "reconstruction" in self.weights and reconstruction is not None:
            error = F.mse_loss(reconstruction.float(), reconstruction_target.float())
            losses["reconstruction_loss"] = self.weights["reconstruction"] * error
        return terms_or_total(losses, output_dict)


def create_mlip_liu_loss(args, model_cfg: dict) -> MlipLiuLoss:
    """Loss factory of the MLIP (Liu) recipe (``openclip_unimlip.recipes``): hyper-parameters from the model
    config's ``mlip_liu_cfg``, distributed flags from OpenCLIP's args."""
    cfg = LiuCfg.from_dict(model_cfg.get("mlip_liu_cfg"))
    return MlipLiuLoss(weights=cfg.loss_weights, psm_temperature=cfg.psm_temperature, ot_epsilon=cfg.ot_epsilon,
                       ot_iterations=cfg.ot_iterations, ot_tolerance=cfg.ot_tolerance, **distributed_flags(args))
