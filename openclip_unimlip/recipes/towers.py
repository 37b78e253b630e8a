"""What the recipes' models need from OpenCLIP's towers beyond their ``forward``."""
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import VisionTransformer
from torch import nn


def require_vit(visual: nn.Module, recipe: str) -> VisionTransformer:
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
        raise ValueError(f"{recipe} works on the patch tokens of OpenCLIP's VisionTransformer without attentional "
                         "pooling: vision_cfg needs patch_size and an integer layers")
    return visual


def require_hf_text(text: nn.Module, recipe: str) -> HFTextEncoder:
    if not isinstance(text, HFTextEncoder):
        raise ValueError(f"{recipe} needs a Hugging Face text tower (text_cfg.hf_model_name)")
    return text


def text_states(text: HFTextEncoder, ids: torch.Tensor, output_hidden_states: bool = False):
    """One pass of the HF text tower before its projection: (model output, attention mask, pooled
    feature). ``HFTextEncoder.forward`` returns only the projection; the recipes also need the
    hidden states, and Uni-Mlip perturbs the pooled feature before the projection."""
    attention_mask = (ids != text.config.pad_token_id).long()
    out = text.transformer(input_ids=ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
    return out, attention_mask, text.pooler(out, attention_mask)


def text_pass(text: HFTextEncoder, ids: torch.Tensor, output_hidden_states: bool = False):
    """One pass of the HF text tower: (model output, attention mask, projected pooled feature)."""
    out, attention_mask, pooled = text_states(text, ids, output_hidden_states)
    return out, attention_mask, text.proj(pooled)
