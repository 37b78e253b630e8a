"""Losses of the two MLIP recipes (equations, defaults and provenance: docs/methods/mlip-*.md).

Both follow the Uni-Mlip loss's contract: ``forward(**model_out, output_dict=False)``; each
weighted term is returned under ``<term>_loss`` (OpenCLIP's trainer sums and logs them); a
term with weight 0 or without its model outputs is skipped; cross-rank features are gathered
in one collective (``distributed.gather_batch``).

Several GPUs: the same semantics as the Uni-Mlip loss (``openclip_unimlip/losses.py``): the
gradient DDP applies (the average over ranks) equals, for every term, the gradient of that term
on the global batch on one process. Without ``--local-loss`` every rank computes the batch
terms over the whole gathered batch (its own rows' gradient scaled by the world size, or
returned by the all_gather's backward with ``--gather-with-grad``); with ``--local-loss
--gather-with-grad`` each rank scores its own rows and every normaliser is the global one;
``--local-loss`` alone is refused on several ranks. Per-sample terms (reconstruction, local
alignment, prototypes) are per-rank means of the rank's own samples, normalised by the global
count. Tested against one process at the double batch (tests/test_mlip_distributed.py).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum, gather_batch
from .config import LiCfg, LiuCfg
from .ops import info_nce, paired_logits, sinkhorn_plan, swav_codes

LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD = (
    "--local-loss without --gather-with-grad is not supported with the MLIP recipes: each GPU would get only "
    "part of the contrastive gradient and the loss weights would change with the number of GPUs; "
    "add --gather-with-grad (or drop --local-loss)")


class _DistributedLoss(nn.Module):
    def __init__(self, weights: Dict[str, float], local_loss: bool, gather_with_grad: bool, rank: int,
                 world_size: int):
        super().__init__()
        if world_size > 1 and local_loss and not gather_with_grad:
            raise ValueError(LOCAL_LOSS_NEEDS_GATHER_WITH_GRAD)
        self.weights = {t: float(w) for t, w in weights.items() if w > 0}
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    def _gather(self, tensors):
        """Gather [B, ...] tensors over ranks in one collective; returns [world · B, ...] each,
        with the global-batch gradient semantics of the module docstring."""
        shapes = [t.shape[1:] for t in tensors]
        flat = [t.reshape(t.shape[0], -1).to(tensors[0].dtype) for t in tensors]
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


def _finish(losses: Dict[str, torch.Tensor], output_dict: bool):
    return losses if output_dict else sum(losses.values())


class MlipLiuLoss(_DistributedLoss):
    """λ_mcl · masked contrastive (integrity-weighted) + λ_psm · patch-sentence OT InfoNCE + λ_rec · MSE."""

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
        return _finish(losses, output_dict)


class MlipLiLoss(_DistributedLoss):
    """λ_g · ITC(v, t) + λ_d · divergence contrast + λ_l · token↔patch alignment + λ_p · swapped prototype prediction."""

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
        return _finish(losses, output_dict)


def create_mlip_liu_loss(args, model_cfg: dict) -> MlipLiuLoss:
    """Loss factory of the MLIP (Liu) recipe (``recipes.py``): hyper-parameters from the model
    config's ``mlip_liu_cfg``, distributed flags from OpenCLIP's args."""
    cfg = LiuCfg.from_dict(model_cfg.get("mlip_liu_cfg"))
    return MlipLiuLoss(weights=cfg.loss_weights, psm_temperature=cfg.psm_temperature, ot_epsilon=cfg.ot_epsilon,
                       ot_iterations=cfg.ot_iterations, ot_tolerance=cfg.ot_tolerance, **_distributed_flags(args))


def create_mlip_li_loss(args, model_cfg: dict) -> MlipLiLoss:
    """Loss factory of the MLIP (Li) recipe (``recipes.py``)."""
    cfg = LiCfg.from_dict(model_cfg.get("mlip_li_cfg"))
    return MlipLiLoss(weights=cfg.loss_weights, divergence_temperature=cfg.divergence_temperature,
                      local_temperature=cfg.local_temperature, prototype_temperature=cfg.prototype_temperature,
                      sinkhorn_epsilon=cfg.sinkhorn_epsilon, sinkhorn_iterations=cfg.sinkhorn_iterations,
                      sinkhorn_tolerance=cfg.sinkhorn_tolerance, **_distributed_flags(args))


def _distributed_flags(args) -> dict:
    return dict(local_loss=getattr(args, "local_loss", False), gather_with_grad=getattr(args, "gather_with_grad", False),
                rank=getattr(args, "rank", 0), world_size=getattr(args, "world_size", 1))

