"""The MLIP (Li) loss (equations, defaults and provenance: docs/methods/mlip-li.md).

Its contract and its semantics on several GPUs: ``GatheringLoss`` in ``recipes/distributed.py``.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from openclip_unimlip.recipes.distributed import GatheringLoss, distributed_flags, gather_batch, terms_or_total
from openclip_unimlip.recipes.mlip_li.config import LiCfg
from openclip_unimlip.recipes.ops import info_nce, swav_codes


class MlipLiLoss(GatheringLoss):
    """λ_g · ITC(v, t) + λ_d · divergence contrast + λ_l · token↔patch alignment
    + λ_p · swapped prototype prediction."""

    recipe = "MLIP (Li)"

    def __init__(self, weights: Optional[Dict[str, float]] = None, divergence_temperature: float = 0.1,
                 local_temperature: float = 0.1, prototype_temperature: float = 0.2, sinkhorn_epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, sinkhorn_tolerance: float = 0.0, local_loss: bool = False,
                 gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        cfg = LiCfg(loss_weights=dict(weights or {}), divergence_temperature=divergence_temperature,
                    local_temperature=local_temperature, prototype_temperature=prototype_temperature,
                    sinkhorn_epsilon=sinkhorn_epsilon, sinkhorn_iterations=sinkhorn_iterations,
                    sinkhorn_tolerance=sinkhorn_tolerance)
        super().__init__(cfg.loss_weights, local_loss, gather_with_grad, rank, world_size)
        self.divergence_temperature = divergence_temperature
        self.local_temperature = local_temperature
        self.prototype_temperature = prototype_temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_tolerance = sinkhorn_tolerance

    def local_alignment(self, tokens: torch.Tensor, token_weights: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Per sample, token→patch + patch→token intra-sample InfoNCE (MGCA sums the two,
        mgca_module.py l.223); the mean over the global batch's samples."""
        valid = token_weights > 0  # the model gives special tokens and pads weight 0
        has_tokens = valid.any(dim=1)
        if not has_tokens.all():  # an empty caption has nothing to align
            tokens, token_weights, patches, valid = (t[has_tokens] for t in (tokens, token_weights, patches, valid))
        tau = self.local_temperature
        token_patch = tokens @ patches.transpose(1, 2) / tau  # [B, L, N]
        token_context = F.normalize(token_patch.softmax(dim=-1) @ patches, dim=-1)
        token_loss = self._intra_sample_nce(tokens, token_context, valid, token_weights)
        patch_token = token_patch.transpose(1, 2).masked_fill(~valid.unsqueeze(1), float("-inf"))
        patch_context = F.normalize(patch_token.softmax(dim=-1) @ tokens, dim=-1)
        all_patches = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        patch_loss = self._intra_sample_nce(patches, patch_context, all_patches,
                                            all_patches.to(patches.dtype) / patches.shape[1])
        return self._per_sample_mean(token_loss + patch_loss)

    def _intra_sample_nce(self, queries, contexts, valid, weights) -> torch.Tensor:
        """Per sample [B]: Σ_i weight_i · ½ [CE_i(q·cᵀ/τ) + CE_i(c·qᵀ/τ)] over its valid entries."""
        logits = queries @ contexts.transpose(1, 2) / self.local_temperature  # [B, L, L]
        columns_invalid = ~valid.unsqueeze(1)
        labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        both = []
        for matrix in (logits, logits.transpose(1, 2)):
            log_probs = matrix.masked_fill(columns_invalid, float("-inf")).log_softmax(dim=-1)
            picked = log_probs.gather(2, labels.unsqueeze(-1)).squeeze(-1)
            both.append(-(picked.masked_fill(~valid, 0.0) * weights).sum(dim=1))
        return (both[0] + both[1]) / 2

    def prototype(self, image_scores, text_scores, image_scores_all, text_scores_all) -> torch.Tensor:
        """Swapped prediction: the text's codes are the image's target and vice versa (SwAV/MGCA),
        the mean of the two directions (mgca_module.py l.262)."""
        batch = image_scores.shape[0]
        offset = batch * self.rank if image_scores_all.shape[0] != batch else 0
        codes = [swav_codes(scores, self.sinkhorn_epsilon, self.sinkhorn_iterations,
                            self.sinkhorn_tolerance)[offset:offset + batch]
                 for scores in (image_scores_all, text_scores_all)]
        tau = self.prototype_temperature
        image_to_text = -(codes[1] * F.log_softmax(image_scores / tau, dim=1)).sum(dim=1)
        text_to_image = -(codes[0] * F.log_softmax(text_scores / tau, dim=1)).sum(dim=1)
        return self._per_sample_mean((image_to_text + text_to_image) / 2)

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: torch.Tensor,
            divergence_image_features: Optional[torch.Tensor] = None,
            divergence_text_features: Optional[torch.Tensor] = None,
            token_embeddings: Optional[torch.Tensor] = None,
            token_weights: Optional[torch.Tensor] = None,
            patch_embeddings: Optional[torch.Tensor] = None,
            image_prototype_scores: Optional[torch.Tensor] = None,
            text_prototype_scores: Optional[torch.Tensor] = None,
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
    ):
        losses = {}
        use_divergence = "divergence" in self.weights and divergence_text_features is not None
        local = [image_features, text_features]
        if use_divergence:
            local += [divergence_image_features, divergence_text_features]
        gathered = self._gather(local) if "global" in self.weights or use_divergence else []
        if "global" in self.weights:
            image_all, text_all = gathered[:2]
            # MGCA sums its two directions (mgca_module.py l.107-109); info_nce is their mean
            value = 2 * info_nce(image_features, text_features, image_all, text_all, logit_scale, self.local_loss,
                                 self.rank)
            losses["global_loss"] = self.weights["global"] * value
        if use_divergence:
            # each encoder's first view against its diverged second view (ours), a sum of two symmetric
            # InfoNCE terms as the global one
            image_all, text_all, image_div_all, text_div_all = gathered
            scale = 1.0 / self.divergence_temperature
            value = (info_nce(image_features, divergence_image_features, image_all, image_div_all, scale,
                              self.local_loss, self.rank)
                     + info_nce(text_features, divergence_text_features, text_all, text_div_all, scale,
                                self.local_loss, self.rank))
            losses["divergence_loss"] = self.weights["divergence"] * value
        if "local" in self.weights and token_embeddings is not None:
            losses["local_loss"] = self.weights["local"] * self.local_alignment(
                token_embeddings, token_weights, patch_embeddings)
        if "prototype" in self.weights and image_prototype_scores is not None:
            # codes are computed over the whole batch of every rank (SwAV), never with gradient
            scores_all = gather_batch([image_prototype_scores.detach(), text_prototype_scores.detach()],
                                      self.rank, self.world_size, with_grad=False)
            losses["prototype_loss"] = self.weights["prototype"] * self.prototype(
                image_prototype_scores, text_prototype_scores, *scores_all)
        return terms_or_total(losses, output_dict)


def create_mlip_li_loss(args, model_cfg: dict) -> MlipLiLoss:
    """Loss factory of the MLIP (Li) recipe (``openclip_unimlip.recipes``)."""
    cfg = LiCfg.from_dict(model_cfg.get("mlip_li_cfg"))
    return MlipLiLoss(weights=cfg.loss_weights, divergence_temperature=cfg.divergence_temperature,
                      local_temperature=cfg.local_temperature, prototype_temperature=cfg.prototype_temperature,
                      sinkhorn_epsilon=cfg.sinkhorn_epsilon, sinkhorn_iterations=cfg.sinkhorn_iterations,
                      sinkhorn_tolerance=cfg.sinkhorn_tolerance, **distributed_flags(args))
