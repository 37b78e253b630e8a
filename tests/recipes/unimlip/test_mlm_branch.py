"""The MLM branch of the real ``unimlip-tiny``: what the fusion module is fed, and which logits
and targets come out, against tensors captured by hooks and recomputed independently here."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

# a tiny model: a second intra-op thread only adds contention
pytestmark = pytest.mark.usefixtures("one_thread")


def _images(batch=4, size=96, seed=0):
    return torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _capture(model):
    """Forward hooks on the masker (its output) and the fusion module (its real inputs and output)."""
    seen = {}
    model.masker.register_forward_hook(lambda m, args, out: seen.__setitem__("masked", out))
    model.fusion.register_forward_hook(lambda m, args, out: seen.update(fusion_args=args, fusion_out=out))
    return seen


def _deterministic_text(model):
    # BERT's dropout would make the recomputed states differ; everything else stays in train mode
    model.text.transformer.eval()


def _text_states(model, ids):
    attention_mask = (ids != model.text.config.pad_token_id).long()
    return model.text.transformer(input_ids=ids, attention_mask=attention_mask).last_hidden_state


def test_fusion_reads_the_masked_caption_states_and_this_samples_image_embedding(tiny_model, captions):
    model = tiny_model.train()
    _deterministic_text(model)
    seen = _capture(model)
    images = _images()
    model(images, captions)
    text_states, image_tokens, positions = seen["fusion_args"]
    masked = seen["masked"]
    assert (masked.input_ids != captions).any()  # the caption really was masked
    with torch.no_grad():
        expected_states = _text_states(model, masked.input_ids)
        clean_states = _text_states(model, captions)
        # the image embedding, independently: OpenCLIP's tower forward (same batch, so the same
        # BatchNorm batch statistics), L2-normalised as PMC-CLIP feeds it
        expected_image = F.normalize(model.visual(images), dim=-1)
    torch.testing.assert_close(text_states, expected_states, rtol=1e-4, atol=1e-5)
    assert (text_states - clean_states).abs().max() > 1e-2  # not the clean caption's states
    torch.testing.assert_close(image_tokens, expected_image, rtol=1e-4, atol=1e-5)
    assert torch.equal(positions, masked.positions)


def test_logits_at_a_position_predict_the_original_token_there(tiny_model, captions):
    model = tiny_model.train()
    _deterministic_text(model)
    seen = _capture(model)
    out = model(_images(), captions)
    text_states, image_tokens, positions = seen["fusion_args"]
    fusion = model.fusion
    length = captions.shape[1]
    with torch.no_grad():
        # PMC-CLIP's fusion input: caption states, the learned image token, the image embedding
        sequence = torch.cat([text_states, fusion.image_token.expand(len(captions), -1, -1),
                              fusion.image_proj(image_tokens).unsqueeze(1)], dim=1)
        hidden = fusion.transformer(sequence)
    assert hidden.shape[1] == length + 2
    targets = out["mlm_targets"]
    assert (targets != -100).any()
    for b in range(len(captions)):
        for k in range(positions.shape[1]):
            if targets[b, k] == -100:
                continue
            i = int(positions[b, k])
            assert int(targets[b, k]) == int(captions[b, i])  # the original token at i, not the masked one
            expected = fusion.vocab_proj(hidden[b, i])
            torch.testing.assert_close(out["mlm_logits"][b, k], expected, rtol=1e-4, atol=1e-5)
            if i + 1 < length:  # a read one position off would differ
                assert not torch.allclose(out["mlm_logits"][b, k], fusion.vocab_proj(hidden[b, i + 1]), atol=1e-3)


def test_grid_image_tokens_are_the_clean_layer4_map():
    model = open_clip.create_model("unimlip-tiny", output_dict=True, unimlip_cfg={
        "fusion_layers": 1, "fusion_heads": 6, "fusion_image_tokens": "grid"}).train()
    model.set_simclr_active(True)  # the strong views pass the trunk too: the grid must be the clean view's
    tokenizer = open_clip.get_tokenizer("unimlip-tiny")
    captions = tokenizer(["chest radiograph with a small left effusion", "CT of the head without findings"])
    maps = []
    model.visual.layer4.register_forward_hook(lambda m, args, out: maps.append(out.detach()))
    seen = _capture(model)
    images = _images(batch=2)
    model(images, captions)
    clean_map = torch.cat(maps)[:2]  # the clean images come first in the trunk's batch
    torch.testing.assert_close(seen["fusion_args"][1], clean_map.flatten(2).transpose(1, 2))
