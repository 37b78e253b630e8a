"""Loading our models the OpenCLIP way: built-in names, ``hf-hub:`` and ``local-dir:``.

Loading needs no API of ours: ``patches.py`` makes OpenCLIP's factory build the recipe's class
for any config carrying a recipe key (``build_custom_text_model``), whatever the name's schema.
An exported config (``openclip_unimlip.export``, the ``unimlip-export`` command) names text towers by
their hub id, never by a path of the exporting machine; at load time they are resolved to local
copies exactly as for the built-in names (``text_models.resolve_text_model``), and a file a recipe
keeps beside its config (``Recipe.portable_files``) is fetched from beside it.
"""
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

from openclip_unimlip.recipes import RECIPES, recipe_for_kwargs
from openclip_unimlip.recipes.text_models import resolve_text_model


class UnknownRecipe(TypeError):
    """A config section for a recipe this version of the plugin does not know (a TypeError, as
    OpenCLIP's factory would raise for the unexpected keyword)."""


class WeightsDoNotFit(RuntimeError):
    pass


# ----- loading --------------------------------------------------------------------------------
def resolve_text_cfg(text_cfg: Any) -> Any:
    """``text_cfg`` with its hub ids replaced by local copies where there are (a new dict)."""
    if not isinstance(text_cfg, dict):
        return text_cfg
    resolved = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if isinstance(resolved.get(key), str):
            resolved[key] = resolve_text_model(resolved[key])
    return resolved


def _custom_text_parameters() -> frozenset:
    from open_clip.model import CustomTextCLIP

    return frozenset(inspect.signature(CustomTextCLIP.__init__).parameters)


def _fetch_portable_files(recipe, kwargs: dict, fetch_beside_config: Optional[Callable[[str], str]]) -> None:
    # an export carries the recipe's own files under relative names; OpenCLIP knows nothing of them
    section = kwargs.get(recipe.config_key) or {}
    for key, name in recipe.portable_files:
        if section.get(key) == name and fetch_beside_config is not None:
            section = {**section, key: fetch_beside_config(name)}
    if section:
        kwargs[recipe.config_key] = section


def build_custom_text_model(fetch_beside_config: Optional[Callable[[str], str]] = None, **kwargs):
    """What OpenCLIP's factory calls ``CustomTextCLIP(**model_cfg)`` gets while the plugin is on:
    the recipe's class for a config with a recipe key (text towers resolved to local copies),
    OpenCLIP's own ``CustomTextCLIP`` with the same arguments for every other config."""
    from open_clip.model import CustomTextCLIP

    recipe = recipe_for_kwargs(kwargs)
    if recipe is None:
        unknown = sorted(k for k in kwargs if k.endswith("_cfg") and k not in _custom_text_parameters())
        if unknown:
            raise UnknownRecipe(
                f"The model config has {', '.join(repr(k) for k in unknown)}, a section no recipe of this "
                f"openclip-unimlip knows (known: {', '.join(r.config_key for r in RECIPES)}): it was written by "
                "another version of the plugin or another plugin. Install that version, or fix the config.")
        return CustomTextCLIP(**kwargs)
    kwargs["text_cfg"] = resolve_text_cfg(kwargs["text_cfg"])
    _fetch_portable_files(recipe, kwargs, fetch_beside_config)
    return recipe.load_model_class()(**kwargs)


def custom_text_model_builder(fetch_beside_config: Optional[Callable[[str], str]] = None) -> Callable:
    """``build_custom_text_model`` for one ``create_model`` call, under OpenCLIP's class name (the
    factory logs ``model_class.__name__``)."""
    def CustomTextCLIP(**kwargs):  # noqa: N802
        return build_custom_text_model(fetch_beside_config, **kwargs)

    return CustomTextCLIP


def source_fetcher(model_name: str, cache_dir: Optional[str] = None) -> Optional[Callable[[str], str]]:
    """For a ``local-dir:`` / ``hf-hub:`` name, a function giving the local path of a file beside
    its config (downloaded into the Hugging Face cache for a hub repo); None for built-in names."""
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(model_name) if isinstance(model_name, str) else (None, None)
    if schema == "local-dir":
        return lambda name: str(Path(identifier) / name)
    if schema == "hf-hub":
        def fetch(name: str) -> str:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(identifier, name, cache_dir=cache_dir)
        return fetch
    return None


def weights_mismatch_message(model, checkpoint_path: str) -> str:
    """Which tensors of a checkpoint do not fit a model, in one message."""
    from open_clip.factory import load_state_dict

    theirs = load_state_dict(checkpoint_path)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    reshaped = sorted(k for k in set(ours) & set(theirs) if tuple(ours[k].shape) != tuple(theirs[k].shape))

    def listed(keys, describe=str):
        shown = ", ".join(describe(k) for k in keys[:3])
        return f"{shown}{', ...' if len(keys) > 3 else ''}"

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({listed(unexpected)})")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape ("
                     + listed(reshaped, lambda k: f"{k}: file {list(theirs[k].shape)}, model {list(ours[k].shape)}")
                     + ")")
    return (f"The weights in {checkpoint_path} do not fit the {type(model).__name__} model its config describes: "
            f"{'; '.join(parts) or 'they differ'}. They were saved from another model config (e.g. trained with "
            "other recipe flags): export the run's checkpoint again with unimlip-export (scripts/export_hf.py), "
            "which reads the flags from its params.txt.")


def resolving_hf_tokenizer(tokenizer_name, *args, **kwargs):
    """OpenCLIP's ``HFTokenizer`` with a hub id resolved to its local copy (for our configs only)."""
    from open_clip.tokenizer import HFTokenizer

    if isinstance(tokenizer_name, str):
        tokenizer_name = resolve_text_model(tokenizer_name)
    return HFTokenizer(tokenizer_name, *args, **kwargs)
