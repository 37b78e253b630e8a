"""Every refusal says what is wrong in one clear message, before anything starts.

Trainer flags are refused by the patched ``parse_args``, before OpenCLIP creates the run folder;
model-level refusals are raised while the model is built, before a training step, a checkpoint
or ``params.txt`` (OpenCLIP writes it right after building the model)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
from transformers import AutoTokenizer

from openclip_unimlip.recipes.text_models import TextModelUnavailable, resolve_text_model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def trainer_args(logs: Path, name: str, *extra: str) -> list:
    return ["--model", "unimlip-tiny", "--dataset-type", "synthetic", "--train-num-samples", "8", "--batch-size", "4",
            "--epochs", "2", "--workers", "0", "--precision", "fp32", "--logs", str(logs), "--name", name, *extra]


@pytest.mark.parametrize("extra, message", [
    (["--siglip"], "--siglip is not supported with Uni-Mlip models (the ITC terms are CLIP's softmax loss)"),
    (["--distill-model", "RN50", "--distill-pretrained", "openai"],
     "distillation is not supported with Uni-Mlip models"),
    (["--horovod"], "horovod is not supported with Uni-Mlip models; use torchrun"),
], ids=["siglip", "distill", "horovod"])
def test_unsupported_trainer_flags_stop_before_the_run_folder(tmp_path, monkeypatch, extra, message):
    from open_clip_train.main import main

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)
    logs = tmp_path / "logs"
    with pytest.raises(SystemExit, match=re.escape(f"error: {message}")):
        main(trainer_args(logs, "refused", *extra))
    assert not logs.exists()  # nothing started
    # the same flags are OpenCLIP's business for its own models: not refused by us
    from open_clip_train.params import parse_args

    assert parse_args(["--model", "RN50", "--dataset-type", "synthetic", *extra]).model == "RN50"


def test_simclr_mlp_head_with_a_late_start_stops_before_the_run_folder(tmp_path):
    logs = tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, "-m", "open_clip_train.main",
         *trainer_args(logs, "late", "--unimlip-simclr-head", "mlp", "--unimlip-simclr-start-epoch", "1")],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert ("error: a SimCLR MLP head with --unimlip-simclr-start-epoch > 0 has no gradient in the first epochs, "
            "which DDP (built without find_unused_parameters) rejects; start SimCLR at epoch 0") in result.stderr
    assert not logs.exists()  # refused by the argument parser, before OpenCLIP made the run folder


def test_patches_imported_too_late_stop_before_the_trainer(tmp_path):
    logs = tmp_path / "logs"
    program = ("import sys, open_clip_train.main\n"
               "from openclip_unimlip.commands.train import main\n"
               f"main({trainer_args(logs, 'late-import')!r})\n")
    # with the .pth opted out, OpenCLIP's trainer binds its stock factories before the patches exist
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            env={**ENV, "OPENCLIP_UNIMLIP_DISABLE": "1"}, timeout=600)
    assert result.returncode != 0
    assert ("RuntimeError: open_clip_train.main was imported before the openclip-unimlip patches: it holds the stock "
            "factories. Import openclip_unimlip (or run python -m openclip_unimlip.commands.train) first."
            ) in result.stderr
    assert not logs.exists()  # nothing started


def test_vit_vision_tower_is_refused():
    vit = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}
    with pytest.raises(ValueError, match=re.escape(
            "Uni-Mlip perturbs the layer-4 map of OpenCLIP's ModifiedResNet: "
            "vision_cfg.layers must be a list of four stage depths")):
        open_clip.create_model("unimlip-tiny", vision_cfg=vit)
    # the same tower is fine for OpenCLIP's own CLIP: the refusal is ours, for our model only
    assert open_clip.create_model("ViT-B-32", vision_cfg=vit, embed_dim=64,
                                  text_cfg={"context_length": 8, "vocab_size": 100, "width": 64, "heads": 2,
                                            "layers": 1}) is not None


def test_tokenizer_without_a_mask_token_is_refused(tmp_path):
    # a real vocabulary (MiniLM's WordPiece) whose tokenizer has no [MASK]: MLM cannot mask anything
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(MINILM))
    tokenizer.mask_token = None
    tokenizer.save_pretrained(tmp_path / "no-mask")
    text_cfg = dict(open_clip.get_model_config("unimlip-tiny")["text_cfg"])
    text_cfg.update(hf_model_name=resolve_text_model(MINILM), hf_tokenizer_name=str(tmp_path / "no-mask"))
    with pytest.raises(TextModelUnavailable, match=re.escape(
            f"Tokenizer '{tmp_path / 'no-mask'}' has no mask token: the MLM term needs one.")):
        open_clip.create_model("unimlip-tiny", text_cfg=text_cfg)
