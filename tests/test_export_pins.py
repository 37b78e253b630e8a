"""The export's contents, piece by piece and without building a model (issue 26; the upload is
tested elsewhere): params.txt read back as open_clip_train wrote it, the run's flags in the exported
config, the model card's fields, the retrieval of the checkpoint's own epoch, clip_benchmark's result
files, the epoch of a checkpoint, and an MLIP (Li) knowledge file travelling under its own name.
References: open_clip_train's own writers (main.py l.288-293, train.py l.345-347, main.py l.496-523),
clip_benchmark's metric names, the literal values written."""
import dataclasses
import json
import pickle

import open_clip
import pytest
import torch

from openclip_unimlip import export
from openclip_unimlip.commands import export as export_command
from openclip_unimlip.recipes import RECIPES


def _params_txt(folder, values):
    """``params.txt`` as open_clip_train writes it (main.py l.289-293, verbatim)."""
    path = folder / "params.txt"
    with open(path, "w") as f:
        for name in sorted(values):
            f.write(f"{name}: {values[name]}\n")
    return path


def test_params_txt_reads_back_the_values_open_clip_train_wrote(tmp_path):
    values = {"model": "unimlip-tiny", "lr": 0.0005, "epochs": 2, "force_image_size": None, "lock_image": False,
              "image_mean": (0.48145466, 0.4578275, 0.40821073), "unimlip_view_crop_scale": [0.2, 1.0],
              "unimlip_text_dropout": 0.5, "train_data": "data/embedded/train/{00000..00009}.tar",
              "logs": str(tmp_path / "logs"), "name": "tiny-run", "precision": "fp32", "wd": 0.2}
    read = export.read_params(_params_txt(tmp_path, values))
    assert read == values
    assert [type(read[k]) for k in sorted(values)] == [type(values[k]) for k in sorted(values)]


def test_a_multi_line_flag_value_leaves_the_lines_after_it_read(tmp_path):
    """A value holding a line break (``--wandb-notes`` is free text) writes a line with no ``: ``: the
    flags written after it (sorted after ``wandb_notes``: ``wd``, ``workers``) are still read."""
    values = {"model": "unimlip-tiny", "wandb_notes": "pilot run\nsame data, longer schedule", "warmup": 100,
              "wd": 0.2, "workers": 4}
    read = export.read_params(_params_txt(tmp_path, values))
    assert {name: read[name] for name in ("model", "warmup", "wd", "workers")} == {
        "model": "unimlip-tiny", "warmup": 100, "wd": 0.2, "workers": 4}


def test_exported_config_is_the_registered_one_with_the_runs_flags_over_it():
    registered = open_clip.get_model_config("unimlip-tiny")
    params = {"unimlip_text_dropout": 0.5, "unimlip_dropblock_size": 2, "unimlip_fusion_image_tokens": "grid",
              "unimlip_no_bn_freeze": True, "force_image_size": 128, "force_context_length": 40}
    config, recipe = export.export_config("unimlip-tiny", params)
    assert recipe.config_key == "unimlip_cfg"
    assert config["unimlip_cfg"] == {**registered["unimlip_cfg"], "text_dropout": 0.5, "dropblock_size": 2,
                                     "fusion_image_tokens": "grid", "freeze_bn_with_simclr": False}
    assert config["unimlip_cfg"]["dropblock_size"] != registered["unimlip_cfg"]["dropblock_size"]  # the run's wins
    assert (config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"]) == (128, 40)
    assert {k: v for k, v in config.items() if k not in ("unimlip_cfg", "vision_cfg", "text_cfg")} == {
        k: v for k, v in registered.items() if k not in ("unimlip_cfg", "vision_cfg", "text_cfg")}
    assert open_clip.get_model_config("unimlip-tiny") == registered  # the registry is untouched
    # another recipe's flags leave an MLIP section as registered; its own weight flags reach it
    for name, flag, term in (("mlip-liu-tiny", "mlip_liu_reconstruction_weight", "reconstruction"),
                             ("mlip-li-tiny", "mlip_li_prototype_weight", "prototype")):
        registered = open_clip.get_model_config(name)
        config, _ = export.export_config(name, {"unimlip_text_dropout": 0.5})
        assert config == registered
        section = name.replace("-tiny", "").replace("-", "_") + "_cfg"
        config, _ = export.export_config(name, {flag: 0.25})
        assert config[section]["loss_weights"][term] == 0.25
        others = {k: v for k, v in registered.items() if k != section}
        assert {k: v for k, v in config.items() if k != section} == others


@pytest.mark.parametrize("recipe, tag", [(RECIPES[0], "unimlip"), (RECIPES[1], "mlip-liu"), (RECIPES[2], "mlip-li")])
def test_model_card_fields(recipe, tag):
    name = {"unimlip": "unimlip-tiny", "mlip-liu": "mlip-liu-tiny", "mlip-li": "mlip-li-tiny"}[tag]
    config = open_clip.get_model_config(name)
    params = {"model": name, "epochs": 10, "lr": 0.0005, "seed": 1, "train_data": "shards/{0..9}.tar",
              "dataset_type": "webdataset", "unimlip_text_dropout": 0.5, "logs": "/tmp/logs", "workers": 4}
    card = export.model_card(recipe, config, "my-model", params, 3, {"image_to_text_R@1": 0.123456, "n": 200},
                          "org/my-model", "mit")
    assert card["tags"] == ("clip", "openclip-unimlip", tag, "medical")
    assert card["license"] == "mit" and recipe.title in card["description"]
    details = card["details"]
    assert details["Recipe"] == recipe.title and details["Model config"] == name
    assert details["Text tower"] == config["text_cfg"]["hf_model_name"]
    assert details["Training data"] == "shards/{0..9}.tar (webdataset)" and details["Epoch"] == 3
    own = {"unimlip_text_dropout": 0.5} if tag == "unimlip" else {}  # only the recipe's own flags
    assert details["Training flags"] == {"model": name, "epochs": 10, "lr": 0.0005, "seed": 1,
                                         **own}  # no paths, no worker counts
    assert details["Retrieval"] == {"image_to_text_R@1": 0.1235, "n": 200}
    assert "create_model_from_pretrained('hf-hub:org/my-model')" in card["usage"]
    bare = export.model_card(recipe, config, "my-model", {}, None, {}, None, "other")["details"]
    assert (bare["Epoch"], bare["Retrieval"], bare["Training flags"]) == ("unknown", "not measured", "not recorded")


def _results(folder, epochs):
    """results.jsonl as open_clip_train appends it (train.py l.345-347): one row per evaluated epoch,
    its "epoch" the completed epoch, the number of the epoch_N.pt saved with it (main.py l.496-523)."""
    rows = [{"image_to_text_R@1": e / 10, "text_to_image_R@1": e / 20, "clip_val_loss": 1.0 / e, "epoch": e}
            for e in epochs]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_card_retrieval_is_the_checkpoints_own_epoch(tmp_path):
    _results(tmp_path, [1, 2, 3])
    checkpoint = tmp_path / "epoch_1.pt"
    assert export.find_retrieval(checkpoint, 1) == {"image_to_text_R@1": 0.1, "text_to_image_R@1": 0.05}
    assert export.find_retrieval(checkpoint, 2) == {"image_to_text_R@1": 0.2, "text_to_image_R@1": 0.1}
    assert export.find_retrieval(checkpoint, None) == {"image_to_text_R@1": 0.3, "text_to_image_R@1": 0.15}
    assert export.find_retrieval(tmp_path / "other" / "epoch_1.pt", 1) == {}  # no results.jsonl beside it
    # a run restarted from scratch in the same folder appends epochs 1.. again: epoch 2 is still epoch 2's row
    _results(tmp_path, [1, 2, 1])
    assert export.find_retrieval(checkpoint, 2) == {"image_to_text_R@1": 0.2, "text_to_image_R@1": 0.1}
    # epochs past 256 (JSON gives new int objects: compared by value)
    _results(tmp_path, [300, 301])
    assert export.find_retrieval(checkpoint, 300) == {"image_to_text_R@1": 30.0, "text_to_image_R@1": 15.0}
    # no row of the checkpoint's epoch: the last row, also when it is the only one
    _results(tmp_path, [4])
    assert export.find_retrieval(checkpoint, 7) == {"image_to_text_R@1": 0.4, "text_to_image_R@1": 0.2}


def test_retrieval_files_of_clip_benchmark_and_of_ours(tmp_path):
    """clip_benchmark writes {"dataset", "model", ..., "metrics": {...}}; its "image_retrieval_recall@K"
    is text -> image (text queries retrieve images), "text_retrieval_recall@K" image -> text."""
    path = tmp_path / "clip_benchmark.json"
    path.write_text(json.dumps({"dataset": "roco", "model": "local-dir:x", "task": "zeroshot_retrieval",
                                "metrics": {"image_retrieval_recall@1": 0.2, "text_retrieval_recall@5": 0.4}}))
    assert export.read_retrieval(path) == {"text_to_image_R@1": 0.2, "image_to_text_R@5": 0.4}
    path.write_text(json.dumps({"metrics": {"image_to_text_R@1": 0.5, "note": "ours"}}))
    assert export.read_retrieval(path) == {"image_to_text_R@1": 0.5}
    path.write_text(json.dumps({"image_to_text_R@10": 0.7}))
    assert export.read_retrieval(path) == {"image_to_text_R@10": 0.7}


@pytest.mark.parametrize("model", ["unimlip-tiny", "mlip-liu-tiny", "mlip-li-tiny"])
def test_the_runs_quick_gelu_and_patch_dropout_reach_the_config(model):
    registered = open_clip.get_model_config(model)
    assert not registered.get("quick_gelu")
    config, _ = export.export_config(model, {"force_quick_gelu": True, "force_patch_dropout": 0.25})
    assert config["quick_gelu"] is True and config["vision_cfg"]["patch_dropout"] == 0.25
    config, _ = export.export_config(model, {"force_quick_gelu": False, "force_patch_dropout": None})
    assert config == registered


def test_a_text_tower_named_by_a_path_of_this_machine_is_refused(monkeypatch, tmp_path):
    for key in ("hf_model_name", "hf_tokenizer_name"):
        config = open_clip.get_model_config("unimlip-tiny")
        config["text_cfg"][key] = str(tmp_path / "minilm")
        monkeypatch.setattr(export, "model_config", lambda name, config=config: config)
        with pytest.raises(ValueError, match=f"text_cfg.{key} of 'unimlip-tiny' is a path of this machine"):
            export.export_config("unimlip-tiny")


def test_checkpoint_epoch_from_its_name_or_its_contents(tmp_path):
    assert export._checkpoint_epoch(tmp_path / "epoch_7.pt") == 7  # the name suffices: the file is not read
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "epoch_latest.pt")
    assert export._checkpoint_epoch(tmp_path / "epoch_latest.pt") == 3
    torch.save({"state_dict": {}}, tmp_path / "final.pt")
    assert export._checkpoint_epoch(tmp_path / "final.pt") is None
    torch.save({"epoch": "3", "state_dict": {}}, tmp_path / "named.pt")
    assert export._checkpoint_epoch(tmp_path / "named.pt") is None  # an epoch that is not a number
    torch.save([torch.zeros(1)], tmp_path / "bare.pt")
    assert export._checkpoint_epoch(tmp_path / "bare.pt") is None  # not a dict at all
    # reading a checkpoint never unpickles an arbitrary object (torch.load's weights_only)
    torch.save({"epoch": 3, "note": _Pickled()}, tmp_path / "last.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        export._checkpoint_epoch(tmp_path / "last.pt")


class _Pickled:
    """Any class of a test module: what weights_only loading refuses."""


def test_the_run_folders_params_and_the_repo_name_reach_the_export(tmp_path, monkeypatch):
    """``<run>/checkpoints/epoch_N.pt`` finds ``<run>/params.txt``: the model, its flags and
    normalisation come from it; the card is named after the repo's name, not its organisation."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    values = {"model": "unimlip-tiny", "force_context_length": 40, "image_mean": (0.5, 0.4, 0.3),
              "image_std": (0.2, 0.25, 0.3), "unimlip_text_dropout": 0.5, "epochs": 2}
    (run / "params.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(values.items())))
    torch.manual_seed(0)
    model = open_clip.create_model("unimlip-tiny", pretrained_text=False,
                                   unimlip_cfg={**open_clip.get_model_config("unimlip-tiny")["unimlip_cfg"],
                                                "text_dropout": 0.5})
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               run / "checkpoints" / "epoch_2.pt")
    (tmp_path / "out").mkdir()  # an output folder made beforehand, empty
    created = []
    real_create_model = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: created.append(kwargs) or
                        real_create_model(*args, **kwargs))
    folder = export.export_checkpoint(run / "checkpoints" / "epoch_2.pt", tmp_path / "out", repo_id="an-org/a-name")
    # the checkpoint holds every weight: the text tower's base weights are never fetched
    assert [kwargs["pretrained_text"] for kwargs in created] == [False]
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["context_length"] == 40
    assert config["model_cfg"]["unimlip_cfg"]["text_dropout"] == 0.5
    assert (config["preprocess_cfg"]["mean"], config["preprocess_cfg"]["std"]) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    card = (folder / "README.md").read_text()
    assert "# Model card for a-name" in card and "an-org" not in card.split("\n# ")[1].splitlines()[0]
    # a repo id without an organisation, into a folder whose parents do not exist yet
    nested = tmp_path / "exports" / "runs" / "solo"
    export.export_checkpoint(run / "checkpoints" / "epoch_2.pt", nested, repo_id="solo-name")
    assert "# Model card for solo-name" in (nested / "README.md").read_text()


def test_a_knowledge_file_travels_under_its_own_name(tmp_path):
    knowledge = tmp_path / "mine.jsonl"
    knowledge.write_text(json.dumps({"name": "a", "category": "", "description": "b"}) + "\n")
    config = {**open_clip.get_model_config("mlip-li-tiny")}
    config["mlip_li_cfg"] = {**config["mlip_li_cfg"], "knowledge_file": str(knowledge)}
    out = tmp_path / "export"
    out.mkdir()
    recipe = next(r for r in RECIPES if r.config_key == "mlip_li_cfg")
    portable = export._portable_files(recipe, config, out)
    assert portable["mlip_li_cfg"] == {**config["mlip_li_cfg"], "knowledge_file": "mlip_li_knowledge.jsonl"}
    assert (out / "mlip_li_knowledge.jsonl").read_bytes() == knowledge.read_bytes()
    assert config["mlip_li_cfg"]["knowledge_file"] == str(knowledge)  # the caller's config is untouched
    for shipped in (None, "chest"):  # portable as they are: nothing copied
        other = tmp_path / f"export-{shipped}"
        other.mkdir()
        config["mlip_li_cfg"]["knowledge_file"] = shipped
        assert export._portable_files(recipe, config, other) == config and not any(other.iterdir())
    # a recipe with two portable files: one left unset does not keep the other at home
    two = dataclasses.replace(recipe, portable_files=(("vocabulary_file", "vocabulary.txt"), *recipe.portable_files))
    config["mlip_li_cfg"] = {**config["mlip_li_cfg"], "vocabulary_file": None, "knowledge_file": str(knowledge)}
    both = tmp_path / "export-two"
    both.mkdir()
    assert export._portable_files(two, config, both)["mlip_li_cfg"]["knowledge_file"] == "mlip_li_knowledge.jsonl"
    assert [p.name for p in both.iterdir()] == ["mlip_li_knowledge.jsonl"]


def test_export_script_hands_every_option_to_the_exporter(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(export, "export_checkpoint", lambda *args, **kwargs: calls.append((args, kwargs)) or tmp_path)
    export_command.main(["run/checkpoints/epoch_4.pt", "--output-dir", "out", "--model", "unimlip-tiny",
                         "--params", "p.txt", "--retrieval", "r.json", "--repo-id", "org/name", "--license", "mit"])
    ((args, kwargs),) = calls
    given = dict(zip(("checkpoint", "output_dir"), args), **kwargs)
    expected = {"checkpoint": "run/checkpoints/epoch_4.pt", "output_dir": "out", "model_name": "unimlip-tiny",
                "params_file": "p.txt", "retrieval_file": "r.json", "repo_id": "org/name", "license": "mit"}
    assert {k: str(given.get(k)) for k in expected} == expected
    assert not given.get("push")


def test_weights_of_another_model_are_explained(tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model("mlip-liu-tiny", pretrained_text=False)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in other.state_dict().items()}},
               tmp_path / "epoch_1.pt")
    message = r"do not fit the UniMlip model .* 150 missing \(fusion\.image_proj\.bias"
    with pytest.raises(export.WeightsDoNotFit, match=message):
        export.export_checkpoint(tmp_path / "epoch_1.pt", tmp_path / "out", model_name="unimlip-tiny")
    assert not (tmp_path / "out").exists()  # nothing written
