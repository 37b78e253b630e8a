"""The text pass the two MLIP recipes share (``openclip_unimlip/recipes/towers.py``), held against
OpenCLIP's own text tower forward."""
import torch

from openclip_unimlip.recipes.towers import text_pass


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
