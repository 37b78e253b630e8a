"""Sharing our models the OpenCLIP way: ``hf-hub:`` / ``local-dir:`` loading, and export.

An exported model is what OpenCLIP's own ``save_for_hf`` / ``push_to_hf_hub`` write: an
``open_clip_config.json`` (``model_cfg`` with the recipe's key, ``preprocess_cfg``), safetensors
weights and the tokenizer's files, plus a model card (``README.md``). Pushing uploads that folder
with huggingface_hub's own API (OpenCLIP 3.3's ``push_to_hf_hub`` imports hub functions that
huggingface_hub 2.x no longer has). The config names text towers by their hub id, never by a
path of the exporting machine; at load time they are resolved to local copies exactly as for the
built-in names (``text_models.resolve_text_model``).

Loading needs no API of ours: ``patches.py`` makes OpenCLIP's factory build the recipe's class
for any config carrying a recipe key (``build_custom_text_model``), whatever the name's schema.
"""
import argparse
import ast
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from openclip_unimlip.recipes import RECIPES, Recipe, model_config, recipe_for_config, recipe_for_kwargs
from openclip_unimlip.recipes.text_models import resolve_text_model

WEIGHTS_NAME = "open_clip_model.safetensors"  # OpenCLIP's HF_SAFE_WEIGHTS_NAME
KNOWLEDGE_NAME = "mlip_li_knowledge.jsonl"  # an MLIP (Li) export's own knowledge file, beside its config


class UnknownRecipe(TypeError):
    """A config section for a recipe this version of the plugin does not know (a TypeError, as
    OpenCLIP's factory would raise for the unexpected keyword)."""


class WeightsDoNotFit(RuntimeError):
    pass


class PushFailed(RuntimeError):
    """The upload of an export failed; the exported folder itself is complete."""


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


def _resolve_knowledge_file(kwargs: dict, fetch_beside_config: Optional[Callable[[str], str]]) -> None:
    # an export carries its own knowledge file under a relative name; OpenCLIP knows nothing of it
    section = kwargs.get("mlip_li_cfg") or {}
    if section.get("knowledge_file") == KNOWLEDGE_NAME and fetch_beside_config is not None:
        kwargs["mlip_li_cfg"] = {**section, "knowledge_file": fetch_beside_config(KNOWLEDGE_NAME)}


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
    _resolve_knowledge_file(kwargs, fetch_beside_config)
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
            "other --unimlip-* flags): export the run's checkpoint again with scripts/export_hf.py, which reads "
            "the flags from its params.txt.")


def resolving_hf_tokenizer(tokenizer_name, *args, **kwargs):
    """OpenCLIP's ``HFTokenizer`` with a hub id resolved to its local copy (for our configs only)."""
    from open_clip.tokenizer import HFTokenizer

    if isinstance(tokenizer_name, str):
        tokenizer_name = resolve_text_model(tokenizer_name)
    return HFTokenizer(tokenizer_name, *args, **kwargs)


# ----- export ----------------------------------------------------------------------------------
def read_params(path: Path) -> Dict[str, Any]:
    """``open_clip_train``'s ``params.txt`` (``name: str(value)`` per line) as Python values."""
    params = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, sep, text = line.partition(": ")
        if not sep:
            continue
        try:
            params[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name] = text  # paths, model names, ...
    return params


def find_run_dir(checkpoint: Path) -> Optional[Path]:
    """The run folder of ``<logs>/<name>/checkpoints/epoch_N.pt`` (the one holding ``params.txt``)."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / "params.txt").is_file():
            return folder
    return None


def _unimlip_section(registered: dict, params: Dict[str, Any]) -> dict:
    # the --unimlip-* flags that change the model (e.g. --unimlip-simclr-head mlp adds weights)
    from openclip_unimlip.recipes.unimlip import flags as unimlip_flags

    defaults = vars(unimlip_flags.build_parser().parse_args([]))
    options = argparse.Namespace(**{k: params.get(k, v) for k, v in defaults.items()})
    if options.unimlip_view_crop_scale is not None:
        options.unimlip_view_crop_scale = list(options.unimlip_view_crop_scale)
    section = {**registered, **unimlip_flags.cfg_overrides(options)}
    if "view_crop_scale" in section and section["view_crop_scale"] is not None:
        section["view_crop_scale"] = list(section["view_crop_scale"])  # JSON
    return section


def export_config(model_name: str, params: Optional[Dict[str, Any]] = None) -> Tuple[dict, Recipe]:
    """The portable model config of a run of ``model_name`` with ``params`` (from its params.txt)."""
    params = params or {}
    config = model_config(model_name)
    recipe = recipe_for_config(config)
    if recipe is None:
        raise ValueError(f"{model_name!r} is not a model of an openclip-unimlip recipe "
                         f"(its config has none of {', '.join(r.config_key for r in RECIPES)}); "
                         "export it with OpenCLIP's own open_clip.push_to_hf_hub.save_for_hf")
    if recipe.config_key == "unimlip_cfg":
        config["unimlip_cfg"] = _unimlip_section(config["unimlip_cfg"], params)
    if params.get("force_image_size") is not None:
        config["vision_cfg"]["image_size"] = params["force_image_size"]
    if params.get("force_context_length") is not None:
        config["text_cfg"]["context_length"] = params["force_context_length"]
    if params.get("force_patch_dropout") is not None:
        config["vision_cfg"]["patch_dropout"] = params["force_patch_dropout"]
    if params.get("force_quick_gelu"):
        config["quick_gelu"] = True
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = config["text_cfg"].get(key)
        if name and Path(name).is_absolute():
            raise ValueError(f"text_cfg.{key} of {model_name!r} is a path of this machine ({name}); name the "
                             "text tower by its Hugging Face hub id, so the export loads elsewhere")
    return config, recipe


# OpenCLIP flags worth a line in the model card (besides every --unimlip-* flag)
_CARD_FLAGS = ("model", "pretrained", "epochs", "batch_size", "world_size", "accum_freq", "lr", "wd", "warmup",
               "lr_scheduler", "precision", "seed", "lock_image", "lock_text", "force_image_size")
_RETRIEVAL_PREFIXES = ("image_to_text_", "text_to_image_")


def read_retrieval(path: Path) -> Dict[str, float]:
    """Retrieval metrics from ``scripts/eval_retrieval.py --output``, clip_benchmark's output JSON or a
    flat ``{metric: value}`` JSON."""
    from openclip_unimlip.evaluation.clip_benchmark_export import from_clip_benchmark_metrics

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    metrics = data.get("metrics", data)
    renamed = from_clip_benchmark_metrics(metrics)
    return renamed or {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def find_retrieval(checkpoint: Path, epoch: Optional[int]) -> Dict[str, float]:
    """OpenCLIP's own validation retrieval (``--val-data``) of the checkpoint's epoch, from the
    ``results.jsonl`` it writes beside the checkpoints; empty when there is none."""
    results = checkpoint.parent / "results.jsonl"
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if epoch is None or r.get("epoch") == epoch] or rows[-1:]
    if not rows:
        return {}
    return {k: v for k, v in rows[-1].items() if k.startswith(_RETRIEVAL_PREFIXES)}


def model_card(recipe: Recipe, config: dict, name: str, params: Dict[str, Any], epoch: Optional[int],
               retrieval: Dict[str, float], repo_id: Optional[str], license: str) -> dict:
    """The ``model_card`` dict of OpenCLIP's ``push_to_hf_hub`` (rendered by its ``generate_readme``)."""
    text_tower = config["text_cfg"].get("hf_model_name", "OpenCLIP text transformer")
    flags = {k: params[k] for k in _CARD_FLAGS if k in params}
    flags.update({k: v for k, v in sorted(params.items()) if k.startswith(("unimlip_", "mlip_"))})
    training = params.get("train_data") or "not recorded (no params.txt beside the checkpoint)"
    details = {
        "Recipe": recipe.title,
        "Model config": params.get("model", name),
        "Text tower": text_tower,
        "Training data": f"{training} ({params['dataset_type']})" if params.get("dataset_type") else training,
        "Epoch": epoch if epoch is not None else "unknown",
        "Training flags": flags or "not recorded",
        "Retrieval": {k: round(v, 4) if isinstance(v, float) else v for k, v in retrieval.items()}
                     or "not measured",
    }
    reference = f"hf-hub:{repo_id}" if repo_id else f"local-dir:/path/to/{name}"
    usage = (
        "Install `openclip-unimlip` (it registers the recipe in OpenCLIP at import), then:\n\n"
        "```python\nimport open_clip\n"
        f"model, preprocess = open_clip.create_model_from_pretrained('{reference}')\n"
        f"tokenizer = open_clip.get_tokenizer('{reference}')\n```\n\n"
        f"The text tower `{text_tower}` is loaded from the Hugging Face cache or a local copy "
        "(see the openclip-unimlip README, \"Text tower offline\").\n")
    return {
        "tags": ("clip", "openclip-unimlip", recipe.config_key.removesuffix("_cfg").replace("_", "-"), "medical"),
        "license": license,
        "description": f"A {recipe.title} model trained with `open_clip_train` and openclip-unimlip.",
        "details": details,
        "usage": usage,
    }


def _checkpoint_epoch(checkpoint: Path) -> Optional[int]:
    # open_clip_train names its checkpoints epoch_N.pt (and epoch_latest.pt, whose dict says N)
    number = checkpoint.stem.removeprefix("epoch_")
    if checkpoint.stem.startswith("epoch_") and number.isdigit():
        return int(number)
    import torch

    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return data.get("epoch") if isinstance(data, dict) and isinstance(data.get("epoch"), int) else None


def load_for_export(checkpoint: Path, model_name: Optional[str] = None,
                    params_file: Optional[Path] = None) -> Dict[str, Any]:
    """Model (eval mode, the checkpoint's weights), tokenizer, portable config, recipe, params and
    epoch of an ``open_clip_train`` checkpoint; every input checked before anything is written."""
    import open_clip

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    run_dir = find_run_dir(checkpoint)
    params_file = Path(params_file) if params_file else (run_dir / "params.txt" if run_dir else None)
    params = read_params(params_file) if params_file else {}
    model_name = model_name or params.get("model")
    if not model_name:
        raise ValueError(f"no params.txt beside {checkpoint} names the model: pass --model")
    config, recipe = export_config(model_name, params)
    preprocess = {"mean": params.get("image_mean"), "std": params.get("image_std"),
                  "interpolation": params.get("image_interpolation"), "resize_mode": params.get("image_resize_mode")}
    model = open_clip.create_model(
        model_name, pretrained_text=False, force_image_size=params.get("force_image_size"),
        force_context_length=params.get("force_context_length"), force_preprocess_cfg=preprocess,
        **{recipe.config_key: config[recipe.config_key]})
    try:
        open_clip.load_checkpoint(model, str(checkpoint))
    except RuntimeError:
        raise WeightsDoNotFit(weights_mismatch_message(model, str(checkpoint))) from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name, context_length=config["text_cfg"].get("context_length"))
    return {"model": model, "tokenizer": tokenizer, "config": config, "recipe": recipe, "params": params,
            "epoch": _checkpoint_epoch(checkpoint)}


def _portable_knowledge(config: dict, output_dir: Optional[Path]) -> dict:
    """An MLIP (Li) config whose knowledge file travels with the export (copied beside the config)."""
    section = config.get("mlip_li_cfg")
    if not section or not section.get("knowledge_file") or not Path(section["knowledge_file"]).is_file():
        return config  # None or the name of a file shipped in the plugin: portable as it is
    if output_dir is not None:
        shutil.copyfile(section["knowledge_file"], output_dir / KNOWLEDGE_NAME)
    return {**config, "mlip_li_cfg": {**section, "knowledge_file": KNOWLEDGE_NAME}}


def check_push(repo_id: Optional[str]) -> None:
    """Everything a push needs that can be known without the network: a valid repo id, a token
    where huggingface_hub looks for one (``HF_TOKEN``, ``hf auth login``), and not offline."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import validate_repo_id

    if not repo_id:
        raise ValueError("pushing needs a repo id (--repo-id org/name)")
    validate_repo_id(repo_id)  # an HFValidationError (a ValueError) naming what is wrong
    if constants.is_offline_mode():
        raise ValueError("pushing needs the network, but HF_HUB_OFFLINE is set: unset it, or export "
                         "without --push and upload the folder later with `hf upload`")
    if get_token() is None:
        raise ValueError("pushing needs a Hugging Face token with write access: log in with `hf auth login` "
                         "or set HF_TOKEN")


def push_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported ``folder`` to the Hugging Face model repo ``repo_id`` in one commit, with
    huggingface_hub's own ``HfApi().create_repo`` (``private``; an existing repo is kept as it is)
    and ``upload_folder``; token and endpoint from huggingface_hub's usual places (``HF_TOKEN`` or
    ``hf auth login``; ``HF_ENDPOINT``). Returns the commit's URL; any failure is one
    ``PushFailed`` naming the repo, the reason and how to retry."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message=f"Upload {folder.name} (exported by openclip-unimlip)")
    except Exception as error:  # HTTP status, connection, metadata validation: the export stands either way
        reason = " ".join(f"{type(error).__name__}: {error}".split()).rstrip(".")
        raise PushFailed(f"Uploading {folder} to the Hugging Face repo {repo_id} ({api.endpoint}) failed: "
                         f"{reason}. The export in {folder} is complete; upload it again with "
                         f"`hf upload {repo_id} {folder}`.") from error
    return commit.commit_url


def export_checkpoint(
        checkpoint: Path,
        output_dir: Path,
        model_name: Optional[str] = None,
        params_file: Optional[Path] = None,
        retrieval_file: Optional[Path] = None,
        repo_id: Optional[str] = None,
        push: bool = False,
        license: str = "other",
        private: bool = False,
) -> Path:
    """Export an ``open_clip_train`` checkpoint with OpenCLIP's ``save_for_hf`` into ``output_dir``
    (config, safetensors weights, tokenizer, README.md model card); with ``push``, then upload that
    folder to ``repo_id`` (``push_folder``; checked by ``check_push`` before anything is written).
    Returns ``output_dir``."""
    from open_clip.push_to_hf_hub import generate_readme, save_for_hf

    output_dir = Path(output_dir)
    if push:
        check_push(repo_id)
    if (output_dir / "open_clip_config.json").exists():
        raise FileExistsError(f"{output_dir} already holds an exported model; choose another --output-dir")
    retrieval = read_retrieval(retrieval_file) if retrieval_file else None
    loaded = load_for_export(checkpoint, model_name, params_file)
    if retrieval is None:
        retrieval = find_retrieval(Path(checkpoint), loaded["epoch"])
    name = repo_id.split("/")[-1] if repo_id else output_dir.name
    card = model_card(loaded["recipe"], loaded["config"], name, loaded["params"], loaded["epoch"], retrieval,
                      repo_id, license)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = _portable_knowledge(loaded["config"], output_dir)
    save_for_hf(loaded["model"], loaded["tokenizer"], config, output_dir, safe_serialization=True)
    (output_dir / "README.md").write_text(generate_readme(dict(card), name), encoding="utf-8")
    if push:
        push_folder(output_dir, repo_id, private=private)
    return output_dir
