"""Fixtures of the MLIP recipes' tests, shared by ``mlip_liu/``, ``mlip_li/`` and the tests of the
modules the recipes share (``test_ops.py``, ``test_towers.py``). Module-scoped: each test module
builds its own models. This file also puts ``tests/recipes`` on the path (pytest's rootdir-less
import of a conftest), so the tests import ``mlip_helpers``."""
import pytest
import torch

from openclip_unimlip.recipes.mlip_li.knowledge import DEFAULT_KNOWLEDGE_FILE

from mlip_helpers import build_li_model

CAPTIONS = ["heart size is normal. small left pleural effusion. no pneumothorax.",
            "lungs are clear",
            "no focal consolidation. mild cardiomegaly.",
            "dark square. lower right."]


@pytest.fixture(scope="module")
def small_knowledge(tmp_path_factory):
    """The first 16 default entities: encoding all 500 costs ~10 s of CPU per model."""
    path = tmp_path_factory.mktemp("knowledge") / "entities.jsonl"
    path.write_text("".join(DEFAULT_KNOWLEDGE_FILE.read_text().splitlines(keepends=True)[:16]))
    return str(path)


@pytest.fixture(scope="module")
def models(small_knowledge):
    import open_clip

    torch.manual_seed(0)
    return {"mlip-liu-tiny": open_clip.create_model("mlip-liu-tiny", output_dict=True),
            "mlip-li-tiny": build_li_model(small_knowledge)}


@pytest.fixture(scope="module")
def batch():
    import open_clip

    tokenizer = open_clip.get_tokenizer("mlip-liu-tiny")
    texts = tokenizer(["heart size is normal. small left pleural effusion. no pneumothorax.",
                       "a bright square in the upper left of the image",
                       "lungs are clear. no focal consolidation.",
                       "dark square. lower right."])
    return torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)), texts


@pytest.fixture(scope="module")
def tokens():
    import open_clip

    return open_clip.get_tokenizer("mlip-liu-tiny")(CAPTIONS)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def li_model(small_knowledge):
    import open_clip

    registered = open_clip.get_model_config("mlip-li-tiny")["mlip_li_cfg"]
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-li-tiny", output_dict=True,
                                   mlip_li_cfg={**registered, "knowledge_file": small_knowledge,
                                                "divergence_image_keep": 0.25})
    model.configure_terms(["global", "divergence", "local"])
    return model
