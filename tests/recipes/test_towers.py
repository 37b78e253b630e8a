"""What the two MLIP recipes share of OpenCLIP's towers (``openclip_unimlip/recipes/towers.py``): the text
pass, held against OpenCLIP's own text tower forward (a BERT tower and a RoBERTa one, whose padding id
is not its lowest), and the towers each recipe accepts."""
import pytest
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import TextTransformer, VisionTransformer

from openclip_unimlip.recipes.towers import require_hf_text, require_vit, text_pass, text_states


def test_text_pass_is_openclips_text_tower_forward_with_pads_masked(li_model, tokens):
    text = li_model.text.eval()
    assert (tokens == text.config.pad_token_id).any(dim=1).all()  # every caption is padded
    try:
        with torch.no_grad():
            _, attention_mask, projected = text_pass(text, tokens)
            reference = text(tokens)
    finally:
        li_model.train()
    torch.testing.assert_close(projected, reference)
    assert torch.equal(attention_mask, (tokens != text.config.pad_token_id).long())


def _roberta_tower():
    """A small randomly initialised RoBERTa tower (no download): its padding id is 1 and its
    sequence start ``<s>`` is 0, below it, unlike BERT's, whose padding id 0 is the lowest."""
    from transformers import RobertaConfig

    config = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    torch.manual_seed(0)
    return HFTextEncoder("roberta-tiny", output_dim=8, config=config, pooler_type="mean_pooler",
                         proj_type="linear").eval()


def test_text_pass_masks_exactly_the_pads_whatever_id_pads():
    text = _roberta_tower()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 9, 2, 1, 1, 1, 1]])  # <s> … </s>, then pads
    with torch.no_grad():
        _, attention_mask, projected = text_pass(text, ids)
        reference = text(ids)  # OpenCLIP's own forward
    lengths = torch.tensor([5, 3])  # each caption's tokens before its pads, counted by hand
    assert torch.equal(attention_mask, (torch.arange(7) < lengths[:, None]).long())
    torch.testing.assert_close(projected, reference)


def test_hidden_states_are_kept_only_when_asked():
    """The recipes ask for every layer's states only where they read them (a 12-layer tower's states
    for a whole batch are not held by default)."""
    text = _roberta_tower()
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        assert text_pass(text, ids)[0].hidden_states is None
        assert text_states(text, ids)[0].hidden_states is None
        assert len(text_pass(text, ids, output_hidden_states=True)[0].hidden_states) == 3  # embeddings + 2 layers


def test_only_openclips_vit_without_attentional_pooling_and_an_hf_text_tower_are_accepted():
    vit = VisionTransformer(image_size=32, patch_size=16, width=16, layers=1, heads=2, mlp_ratio=2.0, output_dim=8)
    assert require_vit(vit, "MLIP (Li)") is vit
    pooled = VisionTransformer(image_size=32, patch_size=16, width=16, layers=1, heads=2, mlp_ratio=2.0,
                               output_dim=8, attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, heads=2, image_size=64, width=8)
    for visual in (pooled, resnet):
        with pytest.raises(ValueError, match="MLIP \\(Li\\) works on the patch tokens of OpenCLIP's VisionTransformer"):
            require_vit(visual, "MLIP (Li)")
    text = _roberta_tower()
    assert require_hf_text(text, "MLIP (Liu)") is text
    with pytest.raises(ValueError, match="MLIP \\(Liu\\) needs a Hugging Face text tower"):
        require_hf_text(TextTransformer(context_length=8, vocab_size=40, width=16, heads=2, layers=1), "MLIP (Liu)")
