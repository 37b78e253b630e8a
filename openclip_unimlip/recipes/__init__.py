"""The pre-training recipes the plugin brings to OpenCLIP, keyed by a marker in the model JSON.

A recipe is a model class (built by OpenCLIP's factory for configs carrying its key) and a
loss factory ``(args, model_cfg) -> nn.Module`` (returned by OpenCLIP's ``create_loss``).

Each recipe is a peer sub-package (``unimlip/``, ``mlip_liu/``, ``mlip_li/``: model, loss, the
recipe's config section or flags, its own pieces); the modules beside them are what recipes
share: this registry, the base model class (``base_model``), cross-rank gathering
(``distributed``), text-tower resolution (``text_models``), config-section checks (``config``),
and ViT / HF-text operations (``ops``, ``towers``). Adding a recipe means one folder, one model
JSON in ``model_configs/`` and one line in ``RECIPES``.
"""
import importlib
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Recipe:
    config_key: str  # top-level key in the model JSON that marks the recipe
    model_class: str  # "module:Class"
    loss_factory: str  # "module:function" taking (args, model_cfg)
    title: str  # the method and its paper, for model cards

    def load_model_class(self):
        return _load(self.model_class)

    def create_loss(self, args, model_cfg: dict):
        return _load(self.loss_factory)(args, model_cfg)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


RECIPES = (
    Recipe("unimlip_cfg", "openclip_unimlip.recipes.unimlip.model:UniMlip", "openclip_unimlip.recipes.unimlip.flags:create_unimlip_loss",
           "Uni-Mlip (Bawazir & Wu, Unified Self-supervision for Medical Vision Language Pre-training)"),
    Recipe("mlip_liu_cfg", "openclip_unimlip.recipes.mlip_liu.model:MlipLiu", "openclip_unimlip.recipes.mlip_liu.loss:create_mlip_liu_loss",
           "MLIP (Liu et al., ISBI 2024), as reconstructed by openclip-unimlip"),
    Recipe("mlip_li_cfg", "openclip_unimlip.recipes.mlip_li.model:MlipLi", "openclip_unimlip.recipes.mlip_li.loss:create_mlip_li_loss",
           "MLIP (Li et al., CVPR 2024), as reconstructed by openclip-unimlip"),
)


def recipe_for_config(model_cfg: Optional[dict]) -> Optional[Recipe]:
    return next((r for r in RECIPES if model_cfg and r.config_key in model_cfg), None)


def recipe_for_kwargs(model_kwargs: dict) -> Optional[Recipe]:
    """The recipe whose key is among a model constructor's keyword arguments."""
    return next((r for r in RECIPES if r.config_key in model_kwargs), None)


def model_config(model_name) -> Optional[dict]:
    """The model config OpenCLIP's factory would build for ``model_name``, or None.

    Names with a schema (``hf-hub:org/name``, ``local-dir:/path``) are read where OpenCLIP reads
    them, unchanged; only built-in names get the factory's ``/`` -> ``-`` clean-up. A config that
    cannot be read gives None, so the caller hands the name to OpenCLIP, which reports the problem.
    """
    if not isinstance(model_name, str):
        return None
    from open_clip import get_model_config
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(model_name)
    if schema is None:
        return get_model_config(identifier.replace("/", "-"))
    try:
        return get_model_config(model_name)
    except Exception:  # missing folder/file, hub unreachable, bad JSON: OpenCLIP says which
        return None


def recipe_for(model_name) -> Optional[Recipe]:
    """The recipe of a model name (built-in, ``hf-hub:`` or ``local-dir:``), or None for every other model."""
    return recipe_for_config(model_config(model_name))
