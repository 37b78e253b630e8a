"""The seam reaches recipes only through the registry (issue 28): no module of ``seam/`` imports a
recipe's sub-package or names a recipe, read from the source itself; and a fourth recipe, added
the way docs/recipes.md, "Adding a recipe", says (a model class, a loss factory, one model JSON, one registry
line), is built by ``open_clip.create_model``, gets its loss from ``open_clip.create_loss`` and its
epoch hook from ``open_clip_train``'s ``train_one_epoch``, with no change to the seam."""
import argparse
import ast
import contextlib
import dataclasses
import json

import open_clip
import pytest
import torch
from torch import nn

import openclip_unimlip.recipes as registry
from openclip_unimlip.recipes import RECIPES, Recipe
from openclip_unimlip.recipes.base_model import RecipeCLIP

from paths import REPO  # noqa: E402

SEAM = REPO / "openclip_unimlip" / "seam"
RECIPE_PACKAGES = sorted({r.model_class.split(":")[0].rsplit(".", 1)[0] for r in RECIPES})


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_no_seam_module_imports_a_recipe_package():
    assert RECIPE_PACKAGES == ["openclip_unimlip.recipes.mlip_li", "openclip_unimlip.recipes.mlip_liu",
                               "openclip_unimlip.recipes.unimlip"]
    for path in sorted(SEAM.glob("*.py")):
        for name in _imports(path):
            assert not any(name == p or name.startswith(p + ".") for p in RECIPE_PACKAGES), (path.name, name)


def test_no_seam_module_names_a_recipe():
    # the recipes' config keys, packages, flag prefix, classes, titles and their own config keys
    names = {r.config_key for r in RECIPES} | {"." + p.rsplit(".", 1)[1] for p in RECIPE_PACKAGES}
    names |= {"--unimlip-", "UniMlip", "MlipLi", "MlipLiu", "Uni-Mlip", "MLIP (", "knowledge_file", "simclr"}
    for path in sorted(SEAM.glob("*.py")):
        tree = ast.parse(path.read_text())
        code = [n for n in ast.walk(tree) if isinstance(n, (ast.Constant, ast.Name, ast.Attribute))]
        for node in code:
            text = (node.value if isinstance(node, ast.Constant) else node.id if isinstance(node, ast.Name)
                    else node.attr)
            if isinstance(text, str) and not _is_docstring(tree, node):
                assert not any(name in text for name in names), (path.name, text)


def _is_docstring(tree, node) -> bool:
    for owner in ast.walk(tree):
        body = getattr(owner, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and body[0].value is node:
            return True
    return False


# ----- a fourth recipe, added as docs/recipes.md says ----------------------------------------------
class ToyRecipe(RecipeCLIP):
    """A CustomTextCLIP whose training output adds one batch-first tensor."""

    def __init__(self, embed_dim, vision_cfg, text_cfg, toy_cfg=None, **kwargs):
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        self.toy_scale = float((toy_cfg or {}).get("scale", 1.0))
        self.epochs_seen = []

    def _forward_train(self, image, text):
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        return {"image_features": image_features, "text_features": text_features,
                "logit_scale": self.logit_scale.exp(), "toy_distance": (image_features - text_features).pow(2).sum(1)}


class ToyLoss(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, image_features, text_features, logit_scale, toy_distance, output_dict=False):
        losses = {"toy_loss": self.scale * toy_distance.mean()}
        return losses if output_dict else sum(losses.values())


def create_toy_loss(args, model_cfg):
    return ToyLoss(model_cfg["toy_cfg"]["scale"])


@contextlib.contextmanager
def toy_epoch(model, epoch, optimizer, args):
    model.epochs_seen.append(epoch)
    yield


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    config = {**open_clip.get_model_config("unimlip-tiny")}
    del config["unimlip_cfg"]
    config["toy_cfg"] = {"scale": 0.25}
    path = tmp_path / "toy-tiny.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)  # the one model JSON
    recipe = Recipe("toy_cfg", f"{__name__}:ToyRecipe", f"{__name__}:create_toy_loss", "A toy recipe",
                    epoch_hook=f"{__name__}:toy_epoch")  # the one registry line
    monkeypatch.setattr(registry, "RECIPES", (*RECIPES, recipe))
    yield recipe


def test_a_fourth_recipe_needs_no_change_to_the_seam(toy_recipe):
    from open_clip_train.train import train_one_epoch

    model = open_clip.create_model("toy-tiny", pretrained_text=False)
    assert type(model) is ToyRecipe and model.toy_scale == 0.25
    loss = open_clip.create_loss(argparse.Namespace(model="toy-tiny", distill=False, siglip=False, local_loss=False,
                                                    gather_with_grad=False, rank=0, world_size=1, horovod=False))
    assert isinstance(loss, ToyLoss) and loss.scale == 0.25
    tokenizer = open_clip.get_tokenizer("toy-tiny")
    batch = (torch.randn(4, 3, 96, 96), tokenizer(["a", "b", "c", "d"]))

    class Data:
        class dataloader:  # noqa: N801
            num_batches, num_samples = 1, 4

            def __iter__(self):
                return iter([batch])

        dataloader = dataloader()

        def set_epoch(self, epoch):
            pass

    args = argparse.Namespace(device="cpu", precision="fp32", accum_freq=1, distill=False, skip_scheduler=True,
                              grad_clip_norm=None, horovod=False, log_every_n_steps=1, batch_size=4, world_size=1,
                              rank=0, local_rank=0, wandb=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, {"train": Data()}, loss, 3, optimizer, None, None, None, args)
    assert model.epochs_seen == [3]  # the recipe's epoch hook ran around OpenCLIP's epoch
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("text.") for k in changed)


def test_the_registry_dataclass_lists_the_hooks_the_readme_names():
    hooks = {f.name for f in dataclasses.fields(Recipe)}
    assert {"config_key", "model_class", "loss_factory", "flags", "epoch_hook", "portable_files"} <= hooks
