"""MLIP (Liu et al., ISBI 2024) as we reconstruct it: masked contrastive learning with a
semantic-integrity weight, patch-sentence matching and masked patch reconstruction.

What is the paper's, MaCo's or ours: docs/methods/mlip-liu.md. In eval mode the model is
exactly OpenCLIP's ``CustomTextCLIP``. In train mode ``model(images, texts)`` returns,
batch-first:

- ``image_features`` [B, D]: the masked view's embedding (mean of its projected visible
  patch tokens, OpenCLIP's ``pool_type: avg``), ``text_features`` [B, D], ``logit_scale``;
- ``integrity_weights`` [B]: softplus(Linear(keep-mask));
- ``patch_embeddings`` [B, K, D] (visible patches), ``sentence_embeddings`` [B, S, D] and
  ``sentence_mask`` [B, S];
- ``reconstruction`` and ``reconstruction_target`` [B, N - K, patch² · 3] for the masked patches
  (the target is per-patch normalised only with ``norm_pix_loss``).

Outputs whose loss weight is 0 (``configure_terms``) are not computed.
"""
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from openclip_unimlip.recipes.base_model import RecipeCLIP
from openclip_unimlip.recipes.config import active_terms, validate_terms
from openclip_unimlip.recipes.mlip_liu.config import LIU_TERMS, LiuCfg
from openclip_unimlip.recipes.ops import (
    gather_tokens,
    keep_mask,
    normalize_patches,
    patchify,
    pool_sentences,
    project_tokens,
    random_patch_mask,
    sentence_boundaries,
    sentence_segments,
    vit_tokens,
)
from openclip_unimlip.recipes.text_models import check_text_model
from openclip_unimlip.recipes.towers import require_hf_text, require_vit, text_pass


def sentence_lookups(vocab: Dict[str, int], delimiter_ids: Iterable[int], special_ids: Iterable[int],
                     abbreviations: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The [vocab] boolean lookups of ``ops.sentence_boundaries`` for a tokenizer's vocabulary
    (token -> id; word pieces keep their "##" prefix)."""
    size = max(vocab.values()) + 1
    lookups = {name: torch.zeros(size, dtype=torch.bool)
               for name in ("is_delimiter", "keeps_period", "is_number", "opens_item")}
    abbreviations = {a.lower().rstrip(".") for a in abbreviations}
    for token, index in vocab.items():
        piece = token.startswith("##")  # the end of a longer word ("pneumothora" "##x") is no abbreviation
        word = token[2:] if piece else token
        lookups["is_number"][index] = word.isdigit()
        lookups["keeps_period"][index] = not piece and ((len(word) == 1 and word.isalpha())
                                                        or word.lower() in abbreviations)
        lookups["opens_item"][index] = token in (":", ";")
    for index in delimiter_ids:
        lookups["is_delimiter"][index] = lookups["opens_item"][index] = True
    for index in special_ids:
        lookups["opens_item"][index] = True
    return lookups


class IntegrityEstimator(nn.Module):
    """Per-sample weight of a masked view, w = softplus(Linear(keep-mask)); zero-initialised
    (as MaCo) so every view starts at w = ln 2 and the weighting is learned from there."""

    def __init__(self, num_patches: int):
        super().__init__()
        self.linear = nn.Linear(num_patches, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, kept: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.linear(kept)).squeeze(-1)


class MaskedPatchDecoder(nn.Module):
    """MAE-style decoder: visible encoder tokens plus a learned mask token at every masked
    position, through a few transformer blocks, to per-patch pixels."""

    def __init__(self, encoder_width: int, num_patches: int, patch_pixels: int, width: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, num_patches, width))
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """``visible`` [B, K, encoder_width] at ``keep`` [B, K] -> pixels [B, M, P] at ``masked`` [B, M]."""
        x = self.embed(visible)
        batch, width = x.shape[0], x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(batch, self.position.shape[1], width)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, width), x)
        x = self.blocks(full + self.position.to(x.dtype))
        return self.head(self.norm(gather_tokens(x, masked)))


class MlipLiu(RecipeCLIP):
    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, mlip_liu_cfg: Optional[dict] = None,
                 **kwargs):
        cfg = LiuCfg.from_dict(mlip_liu_cfg)
        if "hf_model_name" not in text_cfg:
            raise ValueError("MLIP (Liu) needs a Hugging Face text tower (text_cfg.hf_model_name)")
        tokenizer = check_text_model(text_cfg["hf_model_name"], text_cfg.get("hf_tokenizer_name"))
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        visual = require_vit(self.visual, "MLIP (Liu)")
        require_hf_text(self.text, "MLIP (Liu)")
        if visual.pool_type != "avg":
            raise ValueError("MLIP (Liu) embeds an image as the mean of its patch tokens (MaCo): "
                             "set vision_cfg.pool_type to 'avg'")
        self.cfg = cfg
        delimiter_ids = tokenizer.convert_tokens_to_ids(cfg.sentence_delimiters)
        if tokenizer.unk_token_id in delimiter_ids:
            raise ValueError(f"sentence_delimiters {cfg.sentence_delimiters} are not all tokens of the vocabulary")
        self.special_token_ids = tuple(tokenizer.all_special_ids)
        for name, lookup in sentence_lookups(tokenizer.get_vocab(), delimiter_ids, self.special_token_ids,
                                             cfg.sentence_abbreviations).items():
            self.register_buffer(name, lookup, persistent=False)

        num_patches = visual.grid_size[0] * visual.grid_size[1]
        self.patch_size = visual.patch_size[0]
        self.integrity = IntegrityEstimator(num_patches)
        self.decoder = MaskedPatchDecoder(
            encoder_width=visual.conv1.out_channels,
            num_patches=num_patches,
            patch_pixels=self.patch_size ** 2 * 3,
            width=cfg.decoder_width,
            depth=cfg.decoder_depth,
            heads=cfg.decoder_heads,
        )
        self.configure_terms(active_terms(cfg.loss_weights))

    def configure_terms(self, terms: Iterable[str]) -> None:
        """Compute only the outputs of ``terms``; modules no active term uses stop training
        (DDP, built without ``find_unused_parameters``, needs a gradient for every parameter)."""
        self.active_terms = frozenset(validate_terms(terms, LIU_TERMS, "MLIP (Liu)"))
        self.integrity.requires_grad_("masked_contrastive" in self.active_terms)
        self.logit_scale.requires_grad_("masked_contrastive" in self.active_terms)
        self.decoder.requires_grad_("reconstruction" in self.active_terms)

    def _forward_train(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        terms = self.active_terms
        num_patches = self.integrity.linear.in_features
        keep, masked = random_patch_mask(image.shape[0], num_patches, self.cfg.mask_ratio, device=image.device)
        pooled, tokens = vit_tokens(self.visual, image, keep)
        out = {"image_features": F.normalize(pooled, dim=-1)}
        if "masked_contrastive" in terms:
            out["integrity_weights"] = self.integrity(keep_mask(keep, num_patches).to(pooled.dtype))

        text_out, _, text_projected = text_pass(self.text, text)
        out["text_features"] = F.normalize(text_projected, dim=-1)
        if "patch_sentence" in terms:
            out["patch_embeddings"] = F.normalize(project_tokens(self.visual, tokens), dim=-1)
            boundaries = sentence_boundaries(text, self.is_delimiter, self.keeps_period, self.is_number,
                                             self.opens_item)
            content = ~torch.isin(text, torch.as_tensor(self.special_token_ids, device=text.device))
            segments = sentence_segments(boundaries, content, self.cfg.max_sentences)
            sentences, valid = pool_sentences(text_out.last_hidden_state, segments)
            out["sentence_embeddings"] = F.normalize(self.text.proj(sentences), dim=-1)
            out["sentence_mask"] = valid
        if "reconstruction" in terms and masked.shape[1] > 0:
            out["reconstruction"] = self.decoder(tokens, keep, masked)
            target = patchify(image, self.patch_size)
            if self.cfg.norm_pix_loss:
                target = normalize_patches(target)
            out["reconstruction_target"] = gather_tokens(target, masked)

        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out
