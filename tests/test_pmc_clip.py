"""PMC-CLIP checkpoints (PMC-CLIP's key layout, made here at small width) initialise Uni-Mlip."""
import os
import subprocess
import sys

import open_clip
import pytest
import torch

from openclip_unimlip.pmc_clip import pmc_clip_to_unimlip


def _as_pmc_clip(state_dict):
    """Our keys written back in PMC-CLIP's layout, independently of the converter."""
    pmc = {}
    for key, value in state_dict.items():
        if key.startswith("text.transformer."):
            pmc["text_encoder." + key[len("text.transformer."):]] = value
        elif key.startswith("fusion.transformer."):
            pmc["fusion_module." + key[len("fusion.transformer."):]] = value
        elif key == "text.proj.weight":
            pmc["text_projection"] = value.t()
        elif key == "fusion.vocab_proj.weight":
            pmc["mlm_projection"] = value.t()
        elif key == "fusion.image_token":
            pmc["img_special_token"] = value
        else:
            pmc[key] = value
    width = state_dict["text.proj.weight"].shape[1]
    pmc.update({"positional_embedding": torch.zeros(32, width), "ln_final.weight": torch.ones(width),
                "ln_final.bias": torch.zeros(width), "text_encoder.pooler.dense.weight": torch.zeros(width, width),
                "text_encoder.pooler.dense.bias": torch.zeros(width)})
    return {"epoch": 100, "state_dict": {"module." + k: v for k, v in pmc.items()}, "optimizer": {}}


@pytest.fixture
def pmc_checkpoint(tmp_path):
    torch.manual_seed(1)
    # PMC-CLIP concatenates the image embedding with BERT states: embed_dim == text width
    source = open_clip.create_model("unimlip-tiny", embed_dim=384)
    path = tmp_path / "pmc_clip.pt"
    torch.save(_as_pmc_clip(source.state_dict()), path)
    return source, path


def test_converted_checkpoint_loads_through_pretrained(pmc_checkpoint, tmp_path):
    source, path = pmc_checkpoint
    out = tmp_path / "converted.pt"
    result = subprocess.run([sys.executable, "scripts/convert_pmc_clip.py", str(path), str(out),
                             "--model", "unimlip-tiny", "--embed-dim", "384"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "positional_embedding" in result.stdout and "text_encoder.pooler.dense.weight" in result.stdout
    model = open_clip.create_model("unimlip-tiny", embed_dim=384, pretrained=str(out))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_new_modules_are_initialised_and_reported(pmc_checkpoint):
    _, path = pmc_checkpoint
    model = open_clip.create_model("unimlip-tiny", embed_dim=384,
                                   unimlip_cfg={"fusion_layers": 2, "fusion_heads": 6, "simclr_head": "mlp", "simclr_head_hidden": 32, "simclr_head_dim": 16})
    converted, report = pmc_clip_to_unimlip(torch.load(path)["state_dict"], model)
    assert report.initialised and all(k.startswith("simclr_head.") for k in report.initialised)
    model.load_state_dict(converted)  # strict: complete


def test_keys_that_do_not_fit_are_refused(pmc_checkpoint):
    _, path = pmc_checkpoint
    state_dict = torch.load(path)["state_dict"]
    state_dict["module.itm_head.weight"] = torch.zeros(2, 384)
    del state_dict["module.fusion_module.resblocks.0.ln_1.weight"]
    model = open_clip.create_model("unimlip-tiny", embed_dim=384)
    with pytest.raises(ValueError, match=r"itm_head.weight.*missing \['fusion.transformer.resblocks.0.ln_1.weight'\]"):
        pmc_clip_to_unimlip(state_dict, model)
