"""The pre-training recipes the plugin brings to OpenCLIP, keyed by a marker in the model JSON.

A recipe is a model class (built by OpenCLIP's factory for configs carrying its key) and a
loss factory ``(args, model_cfg) -> nn.Module`` (returned by OpenCLIP's ``create_loss``).
Adding a recipe means adding a config, a model class, a loss and one line here.
"""
import importlib
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Recipe:
    config_key: str  # top-level key in the model JSON that marks the recipe
    model_class: str  # "module:Class"
    loss_factory: str  # "module:function" taking (args, model_cfg)

    def load_model_class(self):
        return _load(self.model_class)

    def create_loss(self, args, model_cfg: dict):
        return _load(self.loss_factory)(args, model_cfg)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


RECIPES = (
    Recipe("unimlip_cfg", "openclip_unimlip.model:UniMlip", "openclip_unimlip.train_args:create_unimlip_loss"),
    Recipe("mlip_liu_cfg", "openclip_unimlip.mlip.liu:MlipLiu", "openclip_unimlip.mlip.losses:create_mlip_liu_loss"),
    Recipe("mlip_li_cfg", "openclip_unimlip.mlip.li:MlipLi", "openclip_unimlip.mlip.losses:create_mlip_li_loss"),
)


def recipe_for_config(model_cfg: Optional[dict]) -> Optional[Recipe]:
    return next((r for r in RECIPES if model_cfg and r.config_key in model_cfg), None)


def recipe_for(model_name) -> Optional[Recipe]:
    """The recipe of a registered model name, or None for every other model."""
    if not isinstance(model_name, str):
        return None
    from open_clip import get_model_config

    return recipe_for_config(get_model_config(model_name.replace("/", "-")))
