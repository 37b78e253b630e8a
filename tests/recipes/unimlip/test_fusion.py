"""The fused-modal branch against PMC-CLIP's checkpoint layout (tests/fixtures/pmc_clip_state_dict_keys.json,
read from a real PMC-CLIP checkpoint's keys and shapes): built from the widths that file implies, its
parameters are the ones a PMC-CLIP checkpoint converts into, key for key and shape for shape (no
projection where the image embedding is as wide as the fusion, no bias on the vocabulary)."""
import inspect
import json

import open_clip
import torch

from openclip_unimlip.recipes.unimlip.fusion import MaskedLanguageFusion
from openclip_unimlip.recipes.unimlip.pmc_clip import convert_pmc_clip_state_dict

from paths import FIXTURES

PMC_CLIP_FUSION = ("fusion_module.", "mlm_projection", "img_special_token")


def test_the_fusion_holds_pmc_clips_parameters_key_for_key_and_shape_for_shape():
    keys = json.loads((FIXTURES / "pmc_clip_state_dict_keys.json").read_text())["keys"]
    shapes = {key.removeprefix("module."): tuple(shape) for key, (_, shape) in keys.items()}
    fusion_shapes = {key: shape for key, shape in shapes.items() if key.startswith(PMC_CLIP_FUSION)}
    width, vocab_size = shapes["mlm_projection"]  # PMC-CLIP multiplies x @ mlm_projection
    layers = len({key.split(".")[2] for key in fusion_shapes if key.startswith("fusion_module.resblocks.")})
    mlp_ratio = shapes["fusion_module.resblocks.0.mlp.c_fc.weight"][0] / width
    image_embed_dim = shapes["text_projection"][1]  # the joint embedding the pooled image feature lives in
    assert mlp_ratio == 4  # the module's default ratio, left to it below
    # 8 heads: PMC-CLIP's RN50_fusion4 config (../shared/notes/openclip-3.3-seams.md); shapes do not show it
    fusion = MaskedLanguageFusion(width, layers, 8, vocab_size, image_embed_dim)

    converted, report = convert_pmc_clip_state_dict(
        {key: torch.empty(shape, device="meta") for key, shape in fusion_shapes.items()})
    assert not report.unexpected
    assert {f"fusion.{key}": tuple(value.shape) for key, value in fusion.state_dict().items()} == {
        key: tuple(value.shape) for key, value in converted.items()}


def test_gradient_checkpointing_is_turned_on_as_openclips_models_turn_it_on():
    """``open_clip_train --grad-checkpointing`` calls ``model.set_grad_checkpointing()`` without an
    argument; the fusion's method has OpenCLIP's CLIP default (read from its signature)."""
    fusion = MaskedLanguageFusion(16, 1, 2, 10, 16)
    fusion.set_grad_checkpointing()
    assert inspect.signature(open_clip.CLIP.set_grad_checkpointing).parameters["enable"].default is True
    assert fusion.transformer.grad_checkpointing is True
    fusion.set_grad_checkpointing(False)
    assert fusion.transformer.grad_checkpointing is False


def test_the_vocabulary_projection_starts_as_openclips_text_projection():
    """Initialised as OpenCLIP initialises a text tower's output projection (TextTransformer's
    ``init_parameters``: normal with std width ** -0.5), compared by the spread measured on both."""
    torch.manual_seed(0)
    fusion = MaskedLanguageFusion(64, 1, 2, 4000, 64)
    reference = open_clip.transformer.TextTransformer(context_length=4, vocab_size=10, width=64, heads=2, layers=1,
                                                      output_dim=4000)
    assert reference.text_projection.shape == fusion.vocab_proj.weight.T.shape
    ratio = fusion.vocab_proj.weight.std().item() / reference.text_projection.std().item()
    assert abs(ratio - 1) < 0.02
