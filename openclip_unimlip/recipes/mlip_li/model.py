"""MLIP (Li et al., CVPR 2024) as we reconstruct it: global contrast with a divergence encoder,
token↔patch alignment weighted by [CLS] attention, and knowledge-initialised prototypes.

What is the paper's, MGCA's or ours: docs/methods/mlip-li.md. The "divergence encoder" is
our reading: each encoder also produces a second, diverged view of its input (the text tower a
second pass with other dropout masks, the image tower a pass on a random subset of the patches),
contrasted with the first view. In eval mode the model is exactly OpenCLIP's ``CustomTextCLIP``.
In train mode ``model(images, texts)`` returns, batch-first:

- ``image_features``, ``text_features`` [B, D], ``logit_scale`` (OpenCLIP's keys);
- ``divergence_image_features``, ``divergence_text_features`` [B, D]: the diverged views;
- ``token_embeddings`` [B, L, D], ``token_weights`` [B, L] (0 for special tokens and pads)
  and ``patch_embeddings`` [B, N, D];
- ``image_prototype_scores`` and ``text_prototype_scores`` [B, K].
"""
import contextlib
from typing import Dict, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg
from torch import nn

from openclip_unimlip.recipes.base_model import RecipeCLIP
from openclip_unimlip.recipes.config import active_terms, validate_terms
from openclip_unimlip.recipes.mlip_li.config import LI_TERMS, LiCfg
from openclip_unimlip.recipes.mlip_li.knowledge import load_knowledge
from openclip_unimlip.recipes.ops import project_tokens, random_patch_mask, vit_tokens
from openclip_unimlip.recipes.text_models import check_text_model
from openclip_unimlip.recipes.towers import require_hf_text, require_vit, text_pass

_KNOWLEDGE_CHUNK = 64  # entities encoded per pass when initialising the prototypes


def cls_attention(layer_attention: nn.Module, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[CLS]→token attention of a BERT self-attention layer on its input ``states`` [B, L, W],
    averaged over heads: [B, L]. Recomputed from the layer's query/key projections, so it works
    whatever attention kernel the model runs (SDPA returns no weights)."""
    heads, head_dim = layer_attention.num_attention_heads, layer_attention.attention_head_size
    batch, length, _ = states.shape
    query = layer_attention.query(states[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
    key = layer_attention.key(states).view(batch, length, heads, head_dim).transpose(1, 2)
    scores = (query @ key.transpose(-1, -2)).squeeze(2) * head_dim ** -0.5  # [B, heads, L]
    scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


def clipped_token_weights(attention: torch.Tensor, valid: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Attention clipped to the [low, high] quantiles of each sample's valid tokens, then
    normalised to sum 1 over them (MGCA); 0 elsewhere."""
    values = attention.float().masked_fill(~valid, float("nan"))
    bounds = torch.nanquantile(values, torch.tensor([low, high], device=values.device), dim=1)  # [2, B]
    clipped = values.clamp(min=bounds[0].unsqueeze(1), max=bounds[1].unsqueeze(1)).nan_to_num(0.0)
    return clipped / clipped.sum(dim=1, keepdim=True).clamp(min=1e-12)


class MlipLi(RecipeCLIP):
    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, mlip_li_cfg: Optional[dict] = None, **kwargs):
        cfg = LiCfg.from_dict(mlip_li_cfg)
        if "hf_model_name" not in text_cfg:
            raise ValueError("MLIP (Li) needs a Hugging Face text tower (text_cfg.hf_model_name)")
        tokenizer = check_text_model(text_cfg["hf_model_name"], text_cfg.get("hf_tokenizer_name"))
        entities = load_knowledge(cfg.knowledge_file)
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        require_vit(self.visual, "MLIP (Li)")
        text = require_hf_text(self.text, "MLIP (Li)")
        config = text.config
        no_dropout = not (getattr(config, "hidden_dropout_prob", 0)
                          or getattr(config, "attention_probs_dropout_prob", 0))
        if cfg.loss_weights["divergence"] > 0 and no_dropout:
            raise ValueError("MLIP (Li)'s divergence encoder diverges the text view by dropout: the text tower has "
                             "no dropout, so both text views would be identical (set loss_weights.divergence, or "
                             "--mlip-li-divergence-weight, to 0)")
        try:
            self._last_text_attention()
        except AttributeError:
            raise ValueError("MLIP (Li) reads the [CLS] attention of a BERT-family text tower "
                             "(transformer.encoder.layer[-1].attention.self)") from None
        self.cfg = cfg
        self.special_token_ids = tuple(tokenizer.all_special_ids)
        self.entity_names = [e.name for e in entities]
        knowledge_ids = tokenizer([e.text() for e in entities], padding="longest", truncation=True,
                                  max_length=text_cfg.get("context_length", CLIPTextCfg.context_length),
                                  return_tensors="pt")["input_ids"]
        self.register_buffer("knowledge_token_ids", knowledge_ids, persistent=False)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(len(entities), embed_dim), dim=-1))
        # set once the prototypes hold the knowledge embeddings; saved, so a resumed run keeps its prototypes
        self.register_buffer("prototypes_initialized", torch.zeros((), dtype=torch.bool))
        self.prototypes_frozen = False  # set per epoch by set_epoch (open_clip_train calls it)
        self.configure_terms(active_terms(cfg.loss_weights))

    def _last_text_attention(self) -> nn.Module:
        # looked up, not stored: an attribute would register the layer twice in the state dict
        return self.text.transformer.encoder.layer[-1].attention.self

    def configure_terms(self, terms: Iterable[str]) -> None:
        """Compute only the outputs of ``terms``; parameters no active term uses stop training
        (DDP, built without ``find_unused_parameters``, needs a gradient for every parameter)."""
        self.active_terms = frozenset(validate_terms(terms, LI_TERMS, "MLIP (Li)"))
        self.prototypes.requires_grad_("prototype" in self.active_terms)
        self.logit_scale.requires_grad_("global" in self.active_terms)

    def set_epoch(self, epoch: int) -> None:
        """Freeze the prototypes during the first ``freeze_prototypes_epochs`` epochs (MGCA,
        mgca_module.py l.54, l.340-343). The plugin's trainer hook calls this at every epoch start;
        a model trained without it never freezes them."""
        self.prototypes_frozen = epoch < self.cfg.freeze_prototypes_epochs

    def drop_frozen_gradients(self) -> None:
        """While the prototypes are frozen, unset their gradient (None), as MGCA's
        ``on_after_backward`` does (mgca_module.py l.340-343): the optimizer then skips them, so
        AdamW neither counts steps nor keeps moments for them, nor decays them, and its first update
        after the freeze is a fresh AdamW's. Call it after backward (and DDP's all-reduce), before
        the optimizer step; the plugin's trainer hook does, as an optimizer step pre-hook."""
        if self.prototypes_frozen:
            self.prototypes.grad = None

    @torch.no_grad()
    def initialize_prototypes(self) -> None:
        """Prototypes := projected text embeddings of the knowledge entities (eval-mode tower)."""
        was_training = self.text.training
        self.text.eval()
        embeddings = [self.text(ids) for ids in self.knowledge_token_ids.split(_KNOWLEDGE_CHUNK)]
        self.text.train(was_training)
        self.prototypes.copy_(F.normalize(torch.cat(embeddings).float(), dim=-1).to(self.prototypes.dtype))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # kernels may differ in the last bit across devices: every rank takes rank 0's
            torch.distributed.broadcast(self.prototypes.data, src=0)
        self.prototypes_initialized.fill_(True)

    def _forward_train(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        terms = self.active_terms
        if "prototype" in terms and not bool(self.prototypes_initialized):
            self.initialize_prototypes()
        pooled, tokens = vit_tokens(self.visual, image)
        text_out, attention_mask, text_projected = text_pass(self.text, text, output_hidden_states="local" in terms)
        out = {"image_features": F.normalize(pooled, dim=-1), "text_features": F.normalize(text_projected, dim=-1)}
        if "divergence" in terms:
            keep, _ = random_patch_mask(image.shape[0], tokens.shape[1], 1.0 - self.cfg.divergence_image_keep,
                                        device=image.device)
            diverged_image, _ = vit_tokens(self.visual, image, keep)
            _, _, diverged_text = text_pass(self.text, text)
            out["divergence_image_features"] = F.normalize(diverged_image, dim=-1)
            out["divergence_text_features"] = F.normalize(diverged_text, dim=-1)
        if "local" in terms:
            special = torch.as_tensor(self.special_token_ids, device=text.device)
            valid = attention_mask.bool() & ~torch.isin(text, special)
            with torch.no_grad():
                attention = cls_attention(self._last_text_attention(), text_out.hidden_states[-2], attention_mask)
                low, high = self.cfg.attention_percentiles
                out["token_weights"] = clipped_token_weights(attention, valid, low, high).to(pooled.dtype)
            out["token_embeddings"] = F.normalize(self.text.proj(text_out.last_hidden_state), dim=-1)
            out["patch_embeddings"] = F.normalize(project_tokens(self.visual, tokens), dim=-1)
        if "prototype" in terms:
            prototypes = self.prototypes
            if self.prototypes_frozen:
                # a zero gradient, which DDP (built without find_unused_parameters) needs for every
                # parameter; drop_frozen_gradients unsets it before the optimizer step, as MGCA
                prototypes = prototypes.detach() + 0.0 * prototypes
            prototypes = F.normalize(prototypes, dim=-1)
            out["image_prototype_scores"] = out["image_features"] @ prototypes.T
            out["text_prototype_scores"] = out["text_features"] @ prototypes.T
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


@contextlib.contextmanager
def prototype_freeze(model: MlipLi, epoch: int, optimizer, args) -> Iterator[None]:
    """MLIP (Li)'s epoch hook: MGCA's first-epoch prototype freeze (``set_epoch``), with the frozen
    prototypes' gradient unset before each optimizer step (after backward and DDP's all-reduce), so
    the optimizer skips them (``drop_frozen_gradients``)."""
    model.set_epoch(epoch)
    handle = optimizer.register_step_pre_hook(lambda *_: model.drop_frozen_gradients())
    try:
        yield
    finally:
        handle.remove()
