"""studies/experiment.py's settings and the training command it hands ``open_clip_train``, read back
by ``open_clip_train``'s own (patched) parser: every setting lands in the flag a user would pass, the
defaults are OpenCLIP's or the documented ones, the subprocess's environment keeps the run offline,
and the per-epoch val metrics are read as ``open_clip_train`` writes them. The whole run, for real:
tests/studies/test_demo.py."""
import json
import sys
from dataclasses import fields

import pytest

from openclip_unimlip.studies import experiment
from openclip_unimlip.studies.experiment import DataConfig, ExperimentData, MedpixConfig, PretrainConfig

from paths import REPO  # noqa: E402

DATA = ExperimentData(name="embedded", train_data="shards/train-{00000..00003}.tar", train_num_samples=1800,
                      val_data="shards/val-00000.tar", val_num_samples=200, eval_data="shards/val-00000.tar",
                      eval_num_samples=200, eval_split="val", description="four train shards")
# every field away from its default, so that a flag reading the wrong field shows
CHANGED = PretrainConfig(model="unimlip-rn50", epochs=7, batch_size=48, lr=3e-4, warmup=25, wd=0.05, workers=3,
                         seed=11, device="cuda", precision="amp", unimlip_flags=["--unimlip-simclr-start-epoch", "5"],
                         extra_flags=["--grad-clip-norm", "1.0"])


@pytest.fixture
def trainer_parse(monkeypatch):
    """open_clip_train's parser, patched by the plugin (the ``--unimlip-*`` flags), its state restored."""
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    return parse_args


@pytest.mark.parametrize("with_val", [True, False])
def test_the_command_is_open_clip_trains_with_every_setting_in_its_flag(tmp_path, trainer_parse, with_val):
    command = experiment.pretrain_command(CHANGED, DATA, tmp_path / "logs", "row-1", with_val=with_val)
    assert command[:3] == [sys.executable, "-m", "open_clip_train.main"]
    args = trainer_parse(command[3:])
    read = {name: getattr(args, name) for name in ("model", "dataset_type", "train_data", "train_num_samples",
                                                    "epochs", "batch_size", "lr", "warmup", "wd", "workers", "seed",
                                                    "device", "precision", "logs", "name", "log_every_n_steps",
                                                    "save_frequency", "val_data", "val_num_samples",
                                                    "unimlip_simclr_start_epoch", "grad_clip_norm")}
    assert read == {
        "model": "unimlip-rn50", "dataset_type": "webdataset", "train_data": DATA.train_data,
        "train_num_samples": 1800, "epochs": 7, "batch_size": 48, "lr": 3e-4, "warmup": 25, "wd": 0.05,
        "workers": 3, "seed": 11, "device": "cuda", "precision": "amp", "logs": str(tmp_path / "logs"),
        "name": "row-1", "log_every_n_steps": 1,  # every step in out.log: the loss curves read it
        "save_frequency": 0,  # main.py l.518: the final epoch is saved regardless
        "val_data": DATA.val_data if with_val else None, "val_num_samples": 200 if with_val else None,
        "unimlip_simclr_start_epoch": 5, "grad_clip_norm": 1.0}
    assert DATA.eval_data not in command[command.index("--train-data"):command.index("--train-data") + 2]
    assert command[-4:] == ["--unimlip-simclr-start-epoch", "5", "--grad-clip-norm", "1.0"]  # the caller's last


def test_more_workers_than_train_shards_is_refused_before_anything_starts(tmp_path):
    """webdataset hands each worker whole shards: with 4 shards, 4 workers run and 5 are refused."""
    assert experiment.num_shards(DATA.train_data) == 4
    assert experiment.num_shards("a-{0..1}-{0..2}.tar") == 2 * 3 and experiment.num_shards("one.tar") == 1
    experiment.pretrain_command(PretrainConfig(workers=4), DATA, tmp_path, "ok")
    with pytest.raises(ValueError, match=r"^--workers 5 exceeds the 4 train shards$"):
        experiment.pretrain_command(PretrainConfig(workers=5), DATA, tmp_path, "too-many")
    assert not (tmp_path / "too-many").exists()


def test_defaults_are_open_clip_trains_or_the_documented_ones(trainer_parse):
    openclip = trainer_parse(["--model", "unimlip-tiny"])
    tiny = json.loads((REPO / "model_configs" / "unimlip-tiny.json").read_text())
    pretrain = PretrainConfig()
    assert pretrain.wd == openclip.wd == 0.2 and pretrain.seed == openclip.seed == 0  # OpenCLIP's own
    assert (pretrain.model, pretrain.device, pretrain.unimlip_flags, pretrain.extra_flags) == (
        "unimlip-tiny", "cpu", [], [])  # runs offline on CPU (README)
    # ours, the settings docs/demo.md names: lr 1e-3 with 10 warm-up steps, fp32 on CPU
    assert (pretrain.lr, pretrain.warmup, pretrain.precision) == (1e-3, 10, "fp32")
    assert (pretrain.epochs, pretrain.batch_size, pretrain.workers) == (3, 32, 1)  # ours: the small runs' size
    assert {f.name for f in fields(PretrainConfig)} == {"model", "epochs", "batch_size", "lr", "warmup", "wd",
                                                       "workers", "seed", "device", "precision", "unimlip_flags",
                                                       "extra_flags"}
    data = DataConfig(root="data")
    # docs/demo.md: 2000 pairs, 1800 train and 200 val, at unimlip-tiny's input size, 4 train shards
    assert data.num_samples == 2000 and data.image_size == tiny["vision_cfg"]["image_size"] == 96
    assert round(data.num_samples * data.val_fraction) == 200 and data.val_fraction == 0.1
    assert -(-1800 // data.shard_size) == 4 and data.shard_size == 500 and data.seed == 0
    medpix = MedpixConfig(root="data", release="MedPix-2-0")
    assert (medpix.image_size, medpix.shard_size) == (tiny["vision_cfg"]["image_size"], 500)


def test_the_training_process_runs_offline_and_keeps_the_callers_environment(monkeypatch):
    monkeypatch.setenv("UNIMLIP_TEST_MARKER", "kept")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    env = experiment.training_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_VERBOSITY"] == "error"
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["UNIMLIP_TEST_MARKER"] == "kept"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # a caller's own choice stands
    assert experiment.training_env()["TOKENIZERS_PARALLELISM"] == "true"


def test_val_metrics_are_open_clip_trains_results_jsonl_line_by_line(tmp_path):
    run_dir = tmp_path / "run"
    assert experiment._read_val_metrics(run_dir) == []  # no val pass: no file
    (run_dir / "checkpoints").mkdir(parents=True)
    epochs = [{"epoch": 1, "image_to_text_R@1": 0.1}, {"epoch": 2, "image_to_text_R@1": 0.25}]
    # open_clip_train appends one json.dumps line per val pass (train.py l.345-347, evaluate)
    with open(run_dir / "checkpoints" / "results.jsonl", "a+") as f:
        for metrics in epochs:
            f.write(json.dumps(metrics))
            f.write("\n")
        f.write("\n")
    assert experiment._read_val_metrics(run_dir) == epochs


def test_mean_r1_is_the_mean_of_the_two_directions():
    metrics = {"image_to_text_R@1": 0.2, "text_to_image_R@1": 0.05, "image_to_text_R@10": 0.9}
    assert experiment.mean_r1(metrics) == pytest.approx(0.125)
