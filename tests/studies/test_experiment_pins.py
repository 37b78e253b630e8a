"""studies/experiment.py's settings and the training command it hands ``open_clip_train``, read back
by ``open_clip_train``'s own (patched) parser: every setting lands in the flag a user would pass, the
defaults are OpenCLIP's or the documented ones, the subprocess's environment keeps the run offline,
and the per-epoch val metrics are read as ``open_clip_train`` writes them. The whole run, for real:
tests/studies/test_demo.py."""
import json
import logging
import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openclip_unimlip.data.stored import load_pairs
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
    if with_val:  # open_clip_train's own val pass is on unless asked off
        assert experiment.pretrain_command(CHANGED, DATA, tmp_path / "logs", "row-1") == command


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


# ----- run_pretraining, with open_clip_train played by a small Python process ---------------------------
# It writes what open_clip_train writes where it writes it (out.log with two step lines in its format,
# results.jsonl, checkpoints/epoch_<N>.pt), prints a console of known length and exits as told.
STAND_IN = r"""
import json, os, sys, time
logs, name, epochs, exit_code, checkpoint = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
run = os.path.join(logs, name)
os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
with open(os.path.join(run, "pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(run, "env.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")}, f)
with open(os.path.join(run, "out.log"), "w") as f:
    for step, loss in ((1, 5.5), (2, 4.25)):
        f.write(f"2026-01-01,00:00:0{step} | INFO | Train Epoch: 0 [ {32 * step}/64 ({50 * step}%)] Data (t): 0.1 "
                f"Batch (t): 1.0, 32.0/s, 32.0/s/gpu LR: 0.000100 Logit Scale: 14.286 Loss: {loss} ({loss})\n")
with open(os.path.join(run, "checkpoints", "results.jsonl"), "a+") as f:
    f.write(json.dumps({"epoch": epochs, "image_to_text_R@1": 0.5}) + "\n")
if checkpoint == "write":
    open(os.path.join(run, "checkpoints", f"epoch_{epochs}.pt"), "wb").close()
print("HEAD" + "x" * int(os.environ.get("STAND_IN_CONSOLE", "5000")) + "TAIL", flush=True)
time.sleep(float(os.environ.get("STAND_IN_SECONDS", "0.3")))
if exit_code < 0:  # killed by a signal, as the kernel's OOM killer ends a trainer
    os.kill(os.getpid(), -exit_code)
sys.exit(exit_code)
"""


class StandIn:
    """run_pretraining's command replaced by the stand-in's; the real commands are recorded in
    ``commands``. ``exit_code`` and ``checkpoint`` ("write" or "none") set how the run ends."""

    def __init__(self):
        self.commands, self.exit_code, self.checkpoint = [], 0, "write"
        self.real = experiment.pretrain_command

    def __call__(self, config, data, logs, name, with_val=True):
        self.commands.append(self.real(config, data, logs, name, with_val=with_val))
        return [sys.executable, "-c", STAND_IN, str(logs), name, str(config.epochs), str(self.exit_code),
                self.checkpoint]


@pytest.fixture
def stand_in(monkeypatch):
    trainer = StandIn()
    monkeypatch.setattr(experiment, "pretrain_command", trainer)
    monkeypatch.setattr(experiment, "follow_training", lambda process, *a, **k: None)
    return trainer


def _run(tmp_path, name="run-a", **options):
    """A run under ``<tmp_path>/study/logs``, folders not there yet (run_pretraining makes it)."""
    return experiment.run_pretraining(PretrainConfig(epochs=2), DATA, tmp_path / "study" / "logs", name, **options)


def test_a_finished_run_returns_its_checkpoint_steps_val_metrics_and_command(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("STAND_IN_SECONDS", "1.5")
    run = _run(tmp_path, progress=False)
    run_dir = tmp_path / "study" / "logs" / "run-a"
    assert (run.name, run.run_dir, run.checkpoint) == ("run-a", run_dir, run_dir / "checkpoints" / "epoch_2.pt")
    assert [(s["step"], s["loss"]) for s in run.steps] == [(1, 5.5), (2, 4.25)]
    assert run.val_metrics == [{"epoch": 2, "image_to_text_R@1": 0.5}]
    assert 1.5 <= run.seconds < 120  # the stand-in's 1.5 s, timed around the process
    ran = [sys.executable, "-c", STAND_IN, str(tmp_path / "study" / "logs"), "run-a", "2", "0", "write"]
    assert (run_dir / "command.txt").read_text() == " ".join(ran) + "\n"
    real = stand_in.commands[0]
    assert real[real.index("--name") + 1] == "run-a" and "--val-data" in real
    assert json.loads((run_dir / "env.json").read_text()) == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def test_a_failed_run_raises_with_the_console_tail(tmp_path, stand_in):
    stand_in.exit_code = 3
    with pytest.raises(RuntimeError) as error:
        _run(tmp_path, with_val=False)
    head, tail = str(error.value).split("\n", 1)
    assert head == "pretraining 'run-a' failed (exit 3):"
    assert len(tail) == 4000 and tail.endswith("x" * 3995 + "TAIL\n")  # the last 4000 characters, not the head
    assert "--val-data" not in stand_in.commands[0]


def test_a_trainer_killed_by_a_signal_fails_even_with_a_checkpoint(tmp_path, stand_in, monkeypatch):
    """A negative exit status (killed by a signal) is a failure, whatever the run wrote; a short
    console is quoted whole, from its first character."""
    monkeypatch.setenv("STAND_IN_CONSOLE", "10")
    stand_in.exit_code = -signal.SIGKILL
    with pytest.raises(RuntimeError) as error:
        _run(tmp_path)
    assert str(error.value) == f"pretraining 'run-a' failed (exit {-signal.SIGKILL}):\nHEAD{'x' * 10}TAIL\n"
    assert (tmp_path / "study" / "logs" / "run-a" / "checkpoints" / "epoch_2.pt").is_file()


def test_a_run_that_exits_0_without_its_checkpoint_raises(tmp_path, stand_in):
    stand_in.checkpoint = "none"
    with pytest.raises(RuntimeError) as error:
        _run(tmp_path)
    checkpoint = tmp_path / "study" / "logs" / "run-a" / "checkpoints" / "epoch_2.pt"
    head, tail = str(error.value).split("\n", 1)
    assert head == f"pretraining 'run-a' exited without writing {checkpoint}:"
    assert len(tail) == 4000 and tail.endswith("TAIL\n")


def test_the_progress_bar_follows_the_run_unless_asked_not_to(tmp_path, stand_in, monkeypatch):
    followed = []
    monkeypatch.setattr(experiment, "follow_training",
                        lambda process, log_path, epochs, desc: followed.append((log_path, epochs, desc)))
    _run(tmp_path, name="with-bar")
    _run(tmp_path, name="without-bar", progress=False)
    assert followed == [(tmp_path / "study" / "logs" / "with-bar" / "out.log", 2, "with-bar")]


def test_an_interrupted_run_leaves_no_trainer_running(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_SECONDS", "60")

    def interrupted(process, log_path, epochs, desc):
        while not (log_path.parent / "pid").is_file():
            time.sleep(0.05)
        raise KeyboardInterrupt  # Ctrl-C while the trainer runs

    monkeypatch.setattr(experiment, "follow_training", interrupted)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    pid = int((tmp_path / "study" / "logs" / "run-a" / "pid").read_text())
    assert time.monotonic() - start < 30
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


# ----- ensure_medpix_data on a made-up release with bad rows ----------------------------------------------
def _medpix_release(root: Path, missing: str) -> Path:
    """A MedPix 2.0 release layout (``splitted_dataset/descriptions_<split>.jsonl``, ``images/``): two
    cases a split, two images a case, one of them a VQA-RAD case (MPX1007) in train; the image
    ``missing`` is listed but not in ``images/``."""
    (root / "splitted_dataset").mkdir(parents=True)
    (root / "images").mkdir()
    cases = {"train": ("MPX1007", "MPX4001"), "dev": ("MPX4101", "MPX4102"), "test": ("MPX4201", "MPX4202")}
    for split, split_cases in cases.items():
        lines = []
        for case in split_cases:
            for k in range(2):
                image_id = f"{case}_synpic{case[3:]}{k}"
                colour = tuple(int(c) for c in np.random.default_rng(int(case[3:]) * 2 + k).integers(0, 256, 3))
                if image_id != missing:  # every picture its own colour: a copy would be a duplicate-image bad row
                    Image.new("RGB", (24, 24), colour).save(root / "images" / f"{image_id}.png")
                lines.append(json.dumps({"Type": "CT", "U_id": case, "image": image_id, "Location": "Head",
                                         "Location Category": "Head",
                                         "Description": {"Caption": f"Axial CT {image_id} of the head",
                                                         "Plane": "Axial", "Modality": "CT", "Age": None, "Sex": None,
                                                         "ACR Codes": None, "Figure Part": None}}))
        (root / "splitted_dataset" / f"descriptions_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("missing, warned", [("MPX4001_synpic40010", "pretrain"), ("MPX4201_synpic42011", "eval")])
def test_medpix_data_warns_of_each_conversions_bad_rows_and_names_its_splits(tmp_path, caplog, missing, warned):
    from openclip_unimlip.data.medpix import VQA_RAD_CASES

    assert "MPX1007" in VQA_RAD_CASES
    release = _medpix_release(tmp_path / "MedPix-2-0", missing)
    caplog.set_level(logging.WARNING)
    data = experiment.ensure_medpix_data(MedpixConfig(root=str(tmp_path / "cache"), release=str(release),
                                                      image_size=16, shard_size=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    report = tmp_path / "cache" / warned / "bad_rows.csv"
    assert warnings == [f"MedPix: 1 bad rows left out, listed in {report}"]
    assert missing in report.read_text()
    # train without the VQA-RAD case's 2 images, the dev split for open_clip_train's val, test scored
    assert (data.name, data.eval_split) == ("medpix", "test")
    assert data.train_num_samples == 2 - (warned == "pretrain")
    assert (data.val_num_samples, data.eval_num_samples) == (4, 4 - (warned == "eval"))
    assert [len(load_pairs(p)) for p in (data.train_data, data.val_data, data.eval_data)] == [
        data.train_num_samples, data.val_num_samples, data.eval_num_samples]
    assert {p.key.split("_")[0] for p in load_pairs(data.val_data)} == {"MPX4101", "MPX4102"}
    assert {p.key.split("_")[0] for p in load_pairs(data.eval_data)} == {"MPX4201", "MPX4202"}
    assert (f"{data.train_num_samples} images (2 images of the {len(VQA_RAD_CASES)} cases with a VQA-RAD image "
            "left out, ours)") in data.description
    assert f"val on the 4 dev images, retrieval on the {data.eval_num_samples} test images" in data.description


def _pairs_table(folder: Path, count: int) -> Path:
    """A csv table of ``count`` image-caption pairs, each 96 px image its own colour."""
    (folder / "images").mkdir()
    lines = []
    for i in range(count):
        colour = tuple(int(c) for c in np.random.default_rng(i).integers(0, 256, 3))
        Image.new("RGB", (96, 96), colour).save(folder / "images" / f"{i}.png")
        lines.append(f"{folder / 'images' / f'{i}.png'}\tan image of colour number {i}\n")
    table = folder / "pairs.csv"
    table.write_text("filepath\ttitle\n" + "".join(lines))
    return table


def test_evaluation_draws_its_pairs_and_its_untrained_weights_under_seed_0_by_default(tmp_path):
    """The demo scores the pairs ``sample_pairs`` draws under seed 0 and the untrained model open_clip_train
    starts from under ``--seed 0`` (it seeds torch before building the model)."""
    from openclip_unimlip.data.stored import sample_pairs

    table = _pairs_table(tmp_path, 7)

    def keys(pairs):
        return [p.key for p in pairs]

    def evaluate(**seeds):
        return experiment.evaluate_checkpoint("unimlip-tiny", None, str(table), num_samples=4, batch_size=8, **seeds)

    default, explicit = evaluate(), evaluate(seed=0, init_seed=0)
    assert keys(default.pairs) == keys(explicit.pairs) == keys(sample_pairs(load_pairs(str(table)), 4, 0))
    assert torch.equal(default.image_features, explicit.image_features)
    assert keys(sample_pairs(load_pairs(str(table)), 4, 1)) != keys(default.pairs)  # the seed matters here
    assert keys(evaluate(seed=1).pairs) != keys(default.pairs)
    assert not torch.allclose(evaluate(init_seed=1).image_features, default.image_features)


def test_evaluation_samples_2000_pairs_and_512_images_for_precise_bn_in_batches_of_64(tmp_path, monkeypatch):
    """Sec. 4.2: retrieval on 2000 randomly selected test pairs; docs/ablation.md: BatchNorm statistics
    re-estimated on 512 clean train images. Read from the calls to ``sample_pairs`` (the data here is smaller)."""
    from openclip_unimlip.data import stored

    table = _pairs_table(tmp_path, 3)
    drawn = []

    def recorded(pairs, num_samples, seed):
        drawn.append((len(pairs), num_samples, seed))
        return stored.sample_pairs(pairs, num_samples, seed)

    reestimated = []

    def reestimate(tower, preprocess, images, batch_size, device):
        reestimated.append((len(images), batch_size))

    monkeypatch.setattr(experiment, "sample_pairs", recorded)
    monkeypatch.setattr(experiment, "reestimate_batchnorm_statistics", reestimate)
    experiment.evaluate_checkpoint("unimlip-tiny", None, str(table), reestimate_bn_on=str(table))
    assert drawn == [(3, 2000, 0), (3, 512, 0)]
    # ours: batches of 64, the evaluation's (a deeper BatchNorm's statistics depend on the batches)
    assert reestimated == [(3, 64)]


def test_medpix_needs_its_release_folder_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="^--dataset medpix needs --data-root: the MedPix-2-0 folder"):
        experiment.check_medpix_root(None)
    with pytest.raises(ValueError):
        experiment.check_medpix_root(tmp_path)  # a folder that is not the release
    assert experiment.check_medpix_root(_medpix_release(tmp_path / "MedPix-2-0", missing="")) is None
