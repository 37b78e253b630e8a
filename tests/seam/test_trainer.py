"""Uni-Mlip through OpenCLIP's own trainer: flags, phases, accumulation, torchrun, resume."""
import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import webdataset as wds

from openclip_unimlip.recipes.unimlip.views import StrongViews

from shards import write_shards
from train_data import InMemoryData

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TERMS_LOGGED = ("Itc_loss", "Image_perturbed_itc_loss", "Text_perturbed_itc_loss", "Mlm_loss")


def run(cmd, cwd, timeout=600):
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return result


def common_args(logs, name, epochs=2, batch_size=8):
    return ["--model", "unimlip-tiny", "--batch-size", str(batch_size), "--epochs", str(epochs), "--workers", "1",
            "--precision", "fp32", "--lr", "5e-4", "--warmup", "1", "--logs", str(logs), "--name", name,
            "--log-every-n-steps", "1", "--seed", "0"]


def logged_losses(log_text):
    return [float(m) for m in re.findall(r" Loss: ([0-9.]+) \(", log_text)]


def test_help_lists_the_plugin_flags(tmp_path):
    result = run([sys.executable, "-m", "open_clip_train.main", "--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("--unimlip-simclr-start-epoch", "--unimlip-mlm-weight", "--unimlip-simclr-temperature",
                 "--unimlip-dropblock-prob", "--train-data"):
        assert flag in result.stdout


@pytest.mark.parametrize("extra, message", [
    (["--unimlip-mlm-weight", "-1"], "loss weights must be >= 0"),
    (["--unimlip-simclr-start-epoch", "5"], "SimCLR would never run"),
    (["--unimlip-dropblock-prob", "1.5"], "dropblock_prob must be in [0, 1)"),
    (["--unimlip-fusion-image-tokens", "patches"], "fusion_image_tokens"),
    (["--unimlip-mlm-wieght", "1"], "unrecognized Uni-Mlip arguments"),
])
def test_bad_values_are_refused_by_the_parser(tmp_path, monkeypatch, extra, message):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)
    with pytest.raises(SystemExit, match=re.escape(message)):
        parse_args(["--dataset-type", "synthetic", *common_args(tmp_path / "logs", "bad"), *extra])


def test_bad_values_stop_the_trainer_before_it_starts(tmp_path):
    result = run([sys.executable, "-m", "open_clip_train.main", "--dataset-type", "synthetic",
                  *common_args(tmp_path / "logs", "bad"), "--unimlip-mlm-weight", "-1"], tmp_path)
    assert result.returncode != 0
    assert "loss weights must be >= 0" in result.stderr
    assert not (tmp_path / "logs" / "bad").exists()  # nothing started


def test_plugin_flags_are_refused_for_other_models(tmp_path):
    result = run([sys.executable, "-m", "open_clip_train.main", "--model", "RN50", "--dataset-type", "synthetic",
                  "--unimlip-mlm-weight", "1"], tmp_path)
    assert result.returncode != 0 and "apply only to Uni-Mlip models" in result.stderr


# ----- --accum-freq: same gradients as one batch of twice the size ---------------------------------
def _deterministic_model():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("unimlip-tiny", output_dict=True)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.text.transformer.config.attention_probs_dropout_prob = 0.0
    model.configure_terms(["itc", "simclr"])  # the deterministic terms (see the test's docstring)
    model.set_simclr_active(True)
    # fixed views (greyscale, flipped): a double batch and two micro-batches see the same ones
    model.strong_views = StrongViews(96, jitter_p=0, grayscale_p=1, blur_p=0, flip_p=1)
    return model


def _one_step(batches, accum_freq, model=None):
    from open_clip_train.train import train_one_epoch

    from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss
    from openclip_unimlip.seam import patches

    model = model or _deterministic_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    args = argparse.Namespace(device="cpu", precision="fp32", accum_freq=accum_freq, distill=False,
                              skip_scheduler=True, grad_clip_norm=None, horovod=False, log_every_n_steps=1,
                              batch_size=len(batches[0][0]), world_size=1, rank=0, local_rank=0, wandb=False)
    # no trainer options: the phase is the model's own (set above), not one a test before this left
    # behind in the plugin's per-run state (a from-scratch parse would turn SimCLR off at epoch 0)
    with mock.patch.object(patches, "_training_run", None):
        train_one_epoch(model, {"train": InMemoryData(batches)}, UniMlipLoss(weights={"image_perturbed_itc": 0,
                        "text_perturbed_itc": 0, "mlm": 0}), 0, optimizer, None, None, None, args)
    return {k: model.state_dict()[k] - before[k] for k in before if before[k].is_floating_point()}


def test_accum_freq_matches_a_double_batch(captions):
    """ITC and SimCLR (BatchNorm frozen; the views of a batch are redrawn identically when OpenCLIP
    feeds it again) are deterministic functions of the batch, so OpenCLIP's feature-caching
    accumulation reproduces the double batch's gradients exactly. It cannot for
    MLM, DropBlock and text dropout (fresh random masks on the re-computed forward pass) nor with
    updating BatchNorm statistics (micro-batch statistics); and OpenCLIP counts ``logit_scale``'s
    gradient once per micro-batch, a property of its trainer, so that parameter is left out."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 96, 96, generator=g)
    texts = torch.cat([captions, captions.flip(0)])
    accumulated = _one_step([(images[:4], texts[:4]), (images[4:], texts[4:])], accum_freq=2)
    double = _one_step([(images, texts)], accum_freq=1)
    assert double["visual.attnpool.c_proj.weight"].abs().sum() > 0
    for key, delta in double.items():
        if key != "logit_scale":
            torch.testing.assert_close(accumulated[key], delta, atol=2e-6, rtol=1e-4, msg=key)


def test_accum_freq_recomputes_the_cached_random_views(captions):
    """Random views: OpenCLIP's second (gradient) pass over a micro-batch draws the same views as
    its first (caching) pass, so the cached and the recomputed features agree."""
    model = _deterministic_model()
    model.strong_views = StrongViews(96)
    drawn = []
    model.strong_views.register_forward_hook(lambda module, inputs, views: drawn.append(views[0]))
    images = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    texts = torch.cat([captions, captions.flip(0)])
    _one_step([(images[:4], texts[:4]), (images[4:], texts[4:])], accum_freq=2, model=model)
    assert len(drawn) == 4  # two caching passes, then two gradient passes
    assert not torch.equal(drawn[0], drawn[1])
    assert torch.equal(drawn[0], drawn[2]) and torch.equal(drawn[1], drawn[3])


# ----- end to end through open_clip_train -----------------------------------------------------------
def _write_csv(shard_pattern_root: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in wds.WebDataset(str(shard_pattern_root / "00000.tar"), shardshuffle=False):
        path = out / f"{sample['__key__']}.png"
        path.write_bytes(sample["png"])
        rows.append({"filepath": str(path), "title": sample["txt"].decode()})
    table = out / "train.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "title"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return table


@pytest.mark.slow
def test_csv_and_synthetic_through_the_explicit_entry_point(tmp_path):
    write_shards(tmp_path / "shards", num_samples=32)
    table = _write_csv(tmp_path / "shards", tmp_path / "csv")
    for kind, data in (("csv", ["--train-data", str(table), "--csv-img-key", "filepath"]),
                       ("synthetic", ["--train-num-samples", "16"])):
        # one epoch from scratch has no room for the warm-up before frozen statistics: keep them updating
        result = run([sys.executable, "-m", "openclip_unimlip.commands.train", "--dataset-type", kind, *data,
                      *common_args(tmp_path / "logs", kind, epochs=1), "--workers", "0", "--unimlip-no-bn-freeze"],
                     tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        log = (tmp_path / "logs" / kind / "out.log").read_text()
        assert all(term in log for term in (*TERMS_LOGGED, "Simclr_loss")), kind


@pytest.mark.slow
def test_torchrun_two_processes_train_log_checkpoint_and_resume(tmp_path):
    pattern = write_shards(tmp_path / "shards", num_samples=64, per_shard=16)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "open_clip_train.main", "--"]  # "--": torchrun's own parser would take --logs
    data = ["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", "64",
            "--save-frequency", "1", "--unimlip-simclr-start-epoch", "1", "--report-to", "tensorboard"]
    first = run([*torchrun, *data, *common_args(tmp_path / "logs", "run", epochs=2)], tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    run_dir = tmp_path / "logs" / "run"
    log = (run_dir / "out.log").read_text()
    epoch0, epoch1 = log.split("Start epoch 1")
    assert "Simclr_loss" not in epoch0 and "Simclr_loss" in epoch1
    assert all(term in log for term in TERMS_LOGGED)
    assert "SimCLR on, BatchNorm statistics frozen" in epoch1
    losses = logged_losses(epoch0)
    assert losses[-1] < losses[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/itc_loss", "train/simclr_loss", "train/mlm_loss", "train/loss"} <= set(events.Tags()["scalars"])

    epoch_1 = torch.load(run_dir / "checkpoints" / "epoch_1.pt", map_location="cpu")
    epoch_2 = torch.load(run_dir / "checkpoints" / "epoch_2.pt", map_location="cpu")
    stats = [k for k in epoch_1["state_dict"] if k.startswith("module.visual") and "running_" in k]
    assert stats and all(torch.equal(epoch_1["state_dict"][k], epoch_2["state_dict"][k]) for k in stats)
    assert any(k.startswith("module.fusion.") for k in epoch_2["state_dict"])

    resumed = run([*torchrun, *data, *common_args(tmp_path / "logs", "run", epochs=3), "--resume", "latest"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = (run_dir / "out.log").read_text()
    assert "(epoch 2)" in log and "Start epoch 2" in log and "Train Epoch: 2" in log
    after_resume = log.split("Start epoch 2")[1]
    assert "Uni-Mlip epoch 2: SimCLR on, BatchNorm statistics frozen" in after_resume
    assert logged_losses(after_resume)[0] < losses[0]  # continues from the trained state
    assert torch.load(run_dir / "checkpoints" / "epoch_3.pt", map_location="cpu")["epoch"] == 3
