"""Export an ``open_clip_train`` checkpoint of one of our recipes the way OpenCLIP shares models.

An exported model is what OpenCLIP's own ``save_for_hf`` / ``push_to_hf_hub`` write, loadable as
``local-dir:FOLDER`` (and, pushed, as ``hf-hub:ORG/NAME``): an ``open_clip_config.json``
(``model_cfg`` with the recipe's key and the run's recipe flags applied, text towers named by hub
id; ``preprocess_cfg``), safetensors weights and the tokenizer's files, plus a model card
(``README.md``: recipe, training data, flags from the run's ``params.txt``, retrieval from
``--retrieval`` or the run's ``results.jsonl``). ``--push`` then uploads that folder with
huggingface_hub's own API (token: ``HF_TOKEN`` or ``hf auth login``; OpenCLIP 3.3's
``push_to_hf_hub`` imports hub functions that huggingface_hub 2.x no longer has).

    unimlip-export logs/unimlip-run/checkpoints/epoch_100.pt --output-dir exports/unimlip-rn50
    unimlip-export logs/unimlip-run/checkpoints/epoch_100.pt --output-dir exports/unimlip-rn50 \\
        --retrieval results/roco_retrieval.json --repo-id my-org/unimlip-rn50-pmcoa --push

(The command is ``commands/export.py``; ``python scripts/export_hf.py`` is the same command.)
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from openclip_unimlip.recipes import RECIPES, Recipe, model_config, recipe_for_config
from openclip_unimlip.recipes.run_params import find_run_dir, read_params
from openclip_unimlip.seam.hub import WeightsDoNotFit, weights_mismatch_message


class PushFailed(RuntimeError):
    """The upload of an export failed; the exported folder itself is complete."""


def _section_with_run_flags(recipe: Recipe, registered: dict, params: Dict[str, Any]) -> dict:
    # the run's recipe options that change the model (e.g. --unimlip-simclr-head mlp adds weights), read
    # back from params.txt through the recipe's options class
    flags = recipe.load_flags()
    if flags is None:
        return registered
    section = flags.from_values(params).model_section(registered)
    return json.loads(json.dumps(section))  # JSON's types (tuples become lists)


def export_config(model_name: str, params: Optional[Dict[str, Any]] = None) -> Tuple[dict, Recipe]:
    """The portable model config of a run of ``model_name`` with ``params`` (from its params.txt)."""
    params = params or {}
    config = model_config(model_name)
    recipe = recipe_for_config(config)
    if recipe is None:
        raise ValueError(f"{model_name!r} is not a model of an openclip-unimlip recipe "
                         f"(its config has none of {', '.join(r.config_key for r in RECIPES)}); "
                         "export it with OpenCLIP's own open_clip.push_to_hf_hub.save_for_hf")
    config[recipe.config_key] = _section_with_run_flags(recipe, config[recipe.config_key], params)
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


# OpenCLIP flags worth a line in the model card (besides the recipe's own flags)
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
    own = recipe.load_flags()
    own_flags = set(own.flag_names()) if own is not None else set()
    flags.update({k: v for k, v in sorted(params.items()) if k in own_flags})
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
        "(see openclip-unimlip's docs/training.md, \"Text towers offline\").\n")
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


def _portable_files(recipe: Recipe, config: dict, output_dir: Optional[Path]) -> dict:
    """``config`` with the files its recipe section names (``Recipe.portable_files``, e.g. MLIP (Li)'s
    knowledge file) travelling with the export: copied beside the config, named by their relative name."""
    section = config.get(recipe.config_key) or {}
    portable = dict(section)
    for key, name in recipe.portable_files:
        if not section.get(key) or not Path(section[key]).is_file():
            continue  # None or the name of a file shipped in the plugin: portable as it is
        if output_dir is not None:
            shutil.copyfile(section[key], output_dir / name)
        portable[key] = name
    return {**config, recipe.config_key: portable} if portable != section else config


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
    config = _portable_files(loaded["recipe"], loaded["config"], output_dir)
    save_for_hf(loaded["model"], loaded["tokenizer"], config, output_dir, safe_serialization=True)
    (output_dir / "README.md").write_text(generate_readme(dict(card), name), encoding="utf-8")
    if push:
        push_folder(output_dir, repo_id, private=private)
    return output_dir
