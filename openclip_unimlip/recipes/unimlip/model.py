"""The Uni-Mlip model: OpenCLIP's ``CustomTextCLIP`` plus the branches its five losses need.

In eval mode it is exactly ``CustomTextCLIP`` (OpenCLIP's ``evaluate()``, zero-shot code and
clip_benchmark see a CLIP). In train mode ``model(images, texts)`` returns, batch-first:

- ``image_features``, ``text_features``, ``logit_scale`` (OpenCLIP's keys; the text side is
  the *masked* caption, one text pass serving ITC and MLM as in PMC-CLIP, unless
  ``itc_on_clean_caption`` adds a second pass on the clean caption);
- ``perturbed_image_features``: DropBlock on the layer-4 map of the same trunk pass, then
  only the attention pooling re-run (Sec. 3.2: after the last residual stage, before pooling);
- ``perturbed_text_features``: dropout on the pooled text-encoder output before the
  projection (Sec. 3.2: "after getting the text features from the text encoder");
- ``simclr_features_a/_b``: embeddings of the two strongly augmented views, drawn on the
  device from the clean batch (``views.StrongViews``) while the SimCLR branch is active;
- ``mlm_logits`` [B, K, V] at the K predicted positions and ``mlm_targets`` [B, K] (-100 unused).

Branches whose term is switched off (``configure_terms``) are not computed.
"""
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torch.utils.checkpoint import checkpoint

from openclip_unimlip.recipes.base_model import RecipeCLIP
from openclip_unimlip.recipes.config import active_terms, validate_terms
from openclip_unimlip.recipes.text_models import check_text_model
from openclip_unimlip.recipes.towers import text_states
from openclip_unimlip.recipes.unimlip.batchnorm import (
    batchnorm_stats_frozen,
    keep_frozen_batchnorm_in_eval,
    set_batchnorm_stats_frozen,
)
from openclip_unimlip.recipes.unimlip.config import TERMS, UniMlipCfg
from openclip_unimlip.recipes.unimlip.dropblock import DropBlock2d
from openclip_unimlip.recipes.unimlip.fusion import MaskedLanguageFusion
from openclip_unimlip.recipes.unimlip.masking import REPLACEMENTS, CaptionMasker
from openclip_unimlip.recipes.unimlip.views import StrongViews


def _simclr_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    # SLIP's image_mlp (Linear-BN-ReLU x2, Linear)
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


class UniMlip(RecipeCLIP):
    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, unimlip_cfg: Optional[dict] = None, **kwargs):
        cfg = UniMlipCfg.from_dict(unimlip_cfg)
        if "hf_model_name" not in text_cfg:
            raise ValueError("Uni-Mlip needs a Hugging Face text tower (text_cfg.hf_model_name)")
        # fail with one clear message before OpenCLIP's tower builder meets a missing model
        tokenizer = check_text_model(text_cfg["hf_model_name"], text_cfg.get("hf_tokenizer_name"))
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        if not isinstance(self.visual, ModifiedResNet):
            raise ValueError("Uni-Mlip perturbs the layer-4 map of OpenCLIP's ModifiedResNet: "
                             "vision_cfg.layers must be a list of four stage depths")
        self.cfg = cfg
        text_width = self.text.config.hidden_size
        grid_channels = self.visual.attnpool.k_proj.in_features

        self.image_perturbation = DropBlock2d(
            cfg.dropblock_prob, cfg.dropblock_size, per_channel=cfg.dropblock_per_channel)
        self.text_perturbation = nn.Dropout(cfg.text_dropout)
        mask_fraction, random_fraction = REPLACEMENTS[cfg.mlm_replacement]
        self.masker = CaptionMasker(
            vocab_size=self.text.config.vocab_size,
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=tokenizer.all_special_ids,
            subword_token_ids=[i for t, i in tokenizer.get_vocab().items() if t.startswith("##")],
            probability=cfg.mlm_probability,
            whole_word=cfg.mlm_whole_word,
            mask_fraction=mask_fraction,
            random_fraction=random_fraction,
        )
        self.fusion = MaskedLanguageFusion(
            width=text_width,
            layers=cfg.fusion_layers,
            heads=cfg.fusion_heads,
            vocab_size=self.text.config.vocab_size,
            image_embed_dim=embed_dim,
            mlp_ratio=cfg.fusion_mlp_ratio,
            grid_channels=grid_channels if cfg.fusion_image_tokens == "grid" else None,
        )
        image_size = self.visual.image_size
        self.strong_views = StrongViews(image_size[0] if isinstance(image_size, (tuple, list)) else image_size,
                                        crop_scale=cfg.view_crop_scale, augmentation=cfg.view_augmentation)
        self.simclr_head = (
            _simclr_mlp(embed_dim, cfg.simclr_head_hidden, cfg.simclr_head_dim) if cfg.simclr_head == "mlp" else None
        )
        self.configure_terms(active_terms(cfg.loss_weights))
        self.simclr_active = False
        self.checkpoint_trunk = False

    # ----- training-time switches -------------------------------------------------------
    def configure_terms(self, terms: Iterable[str]) -> None:
        """Compute only the branches of ``terms``; modules no active term uses stop training
        (so DDP, built without ``find_unused_parameters``, sees no parameter without gradient)."""
        self.active_terms = frozenset(validate_terms(terms, TERMS, "Uni-Mlip"))
        self.fusion.requires_grad_("mlm" in self.active_terms)
        if self.simclr_head is not None:
            self.simclr_head.requires_grad_("simclr" in self.active_terms)

    def set_simclr_active(self, active: bool) -> None:
        """Switch the SimCLR branch (the strong views are used only while it is on); BatchNorm
        statistics are frozen exactly while it is on, unless ``freeze_bn_with_simclr`` is off."""
        self.simclr_active = active
        if self.cfg.freeze_bn_with_simclr:
            set_batchnorm_stats_frozen(self.visual, active)

    @property
    def bn_stats_frozen(self) -> bool:
        return batchnorm_stats_frozen(self.visual)

    def train(self, mode: bool = True):
        super().train(mode)
        keep_frozen_batchnorm_in_eval(self.visual)
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)  # text tower (OpenCLIP's ResNet one is a no-op)
        self.checkpoint_trunk = enable
        self.fusion.set_grad_checkpointing(enable)

    # ----- forward ------------------------------------------------------------------------
    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """ModifiedResNet up to (and including) layer 4: the map the perturbation acts on."""
        v = self.visual
        checkpointed = self.checkpoint_trunk and torch.is_grad_enabled()
        for stage in (v.stem, v.layer1, v.layer2, v.layer3, v.layer4):
            x = checkpoint(stage, x, use_reentrant=False) if checkpointed else stage(x)
        return x

    def _text_states(self, ids: torch.Tensor):
        """Pooled (pre-projection) feature and last hidden states: HFTextEncoder.forward
        returns only the projection, and the text perturbation acts before it."""
        out, _, pooled = text_states(self.text, ids)
        return pooled, out.last_hidden_state

    def _forward_train(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        terms = self.active_terms
        use_views = self.simclr_active and ("simclr" in terms or self.cfg.feed_views_without_simclr)
        batch = image.shape[0]

        if use_views:
            # the clean view's normalisation is the one OpenCLIP's factory recorded on the tower
            preprocess_cfg = getattr(self.visual, "preprocess_cfg", None)
            if preprocess_cfg:
                self.strong_views.set_normalization(preprocess_cfg["mean"], preprocess_cfg["std"])
            view_a, view_b = self.strong_views(image)
        if use_views and self.bn_stats_frozen:
            # frozen statistics make the passes independent of batch composition: one pass
            maps = self._trunk(torch.cat([image, view_a, view_b])).split(batch)
        elif use_views:
            maps = [self._trunk(image), self._trunk(view_a), self._trunk(view_b)]
        else:
            maps = [self._trunk(image)]
        clean_map = maps[0]
        pool_inputs = [clean_map]
        if "image_perturbed_itc" in terms:
            pool_inputs.append(self.image_perturbation(clean_map))
        pool_inputs += maps[1:]
        pooled = self.visual.attnpool(torch.cat(pool_inputs)).split(batch)

        out = {"image_features": F.normalize(pooled[0], dim=-1)}
        if "image_perturbed_itc" in terms:
            out["perturbed_image_features"] = F.normalize(pooled[1], dim=-1)
        if use_views and "simclr" in terms:
            pooled_a, pooled_b = pooled[-2:]
            if self.simclr_head is not None:
                pooled_a, pooled_b = self.simclr_head(pooled_a), self.simclr_head(pooled_b)
            out["simclr_features_a"] = F.normalize(pooled_a, dim=-1)
            out["simclr_features_b"] = F.normalize(pooled_b, dim=-1)

        masked = self.masker(text) if "mlm" in terms else None
        text_pooled, text_states = self._text_states(masked.input_ids if masked is not None else text)
        if masked is not None and self.cfg.itc_on_clean_caption:
            text_pooled, _ = self._text_states(text)
        out["text_features"] = F.normalize(self.text.proj(text_pooled), dim=-1)
        if "text_perturbed_itc" in terms:
            out["perturbed_text_features"] = F.normalize(self.text.proj(self.text_perturbation(text_pooled)), dim=-1)

        if masked is not None:
            if self.fusion.uses_grid:
                image_tokens = clean_map.flatten(2).transpose(1, 2)
            else:
                image_tokens = out["image_features"]
            out["mlm_logits"] = self.fusion(text_states, image_tokens, masked.positions)
            out["mlm_targets"] = masked.targets

        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

