"""SimCLR's start epoch, and with it the BatchNorm freeze, follows from ``--pretrained``, on what
``open_clip_train.main`` builds (its patched parser, factories and ``train_one_epoch``).

From pretrained weights SimCLR and frozen statistics start at once, as the paper from PMC-CLIP's
(sec. 4.2). From scratch a warm-up of half the epochs comes first (ours, from the paper's own schedule:
PMC-CLIP's 100 epochs without SimCLR, then 100 with it), so the frozen statistics are never the
initial ones (mean 0, variance 1). An explicit ``--unimlip-simclr-start-epoch`` wins, except an
explicit 0 that would freeze the initial statistics, which is refused before the run folder. A
resumed run keeps the start of its first launch, read back from the ``params.txt`` OpenCLIP wrote."""
import logging
import os
import re
import subprocess
import sys

import open_clip
import pytest
import torch

from train_data import InMemoryData

ENV_ARGS = ["--model", "unimlip-tiny", "--dataset-type", "synthetic", "--precision", "fp32"]
INITIAL_STATISTICS = "keeps the statistics at their initial values (mean 0, variance 1) for the whole run"


@pytest.fixture
def trainer(monkeypatch):
    """``(parse_args, open_clip_train.main)``, the plugin's per-run state restored afterwards."""
    import open_clip_train.main as main
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)
    return parse_args, main


def _parse(trainer, *argv):
    parse_args, _ = trainer
    return parse_args([*ENV_ARGS, *argv])


def _build(trainer, *argv):
    """As ``open_clip_train.main.main``: parse, then the model and the loss from ``args``."""
    _, main = trainer
    args = _parse(trainer, *argv)
    args.device, args.rank, args.world_size, args.local_rank = "cpu", 0, 1, 0  # init_distributed_device
    args.distill = False
    args.wandb = False
    model, _, _ = main.create_model_and_transforms(
        args.model, args.pretrained, precision=args.precision, device=args.device, jit=args.torchscript,
        force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
        force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
        image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image, output_dict=True, cache_dir=args.cache_dir)
    return args, model, main.create_loss(args)


def _train_epoch(trainer, args, model, loss, epoch, captions):
    """One step of the trainer's own ``train_one_epoch`` at ``epoch`` (learning rate 0: only the
    BatchNorm statistics can move); returns the output keys and every visual BatchNorm's statistics."""
    _, main = trainer
    seen = []
    hook = model.register_forward_hook(lambda m, i, out: seen.append(set(out)))
    batch = (torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(epoch)), captions[:2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    main.train_one_epoch(model, {"train": InMemoryData([batch])}, loss, epoch, optimizer, None, lambda step: None, None,
                         args)
    hook.remove()
    return seen[-1], _statistics(model.state_dict())


def _statistics(state_dict):
    return {k: v.clone() for k, v in state_dict.items()
            if k.startswith("visual.") and k.endswith(("running_mean", "running_var"))}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _write_params_as_openclip(args, run_dir):
    """``params.txt`` exactly as ``open_clip_train.main`` writes it after building the model (3.3, main.py
    lines 288-293: ``for name in sorted(vars(args)): f.write(f"{name}: {val}\\n")``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "params.txt", "w") as f:
        for name in sorted(vars(args)):
            f.write(f"{name}: {getattr(args, name)}\n")


# ----- the start each command line resolves to (parsed as open_clip_train.main parses it) ----------
@pytest.mark.parametrize("epochs, start", [(200, 100), (5, 2), (4, 2)], ids=["paper-schedule", "odd", "even"])
def test_from_scratch_the_warmup_is_half_the_epochs(trainer, epochs, start):
    # 200: the paper's whole schedule, SimCLR from PMC-CLIP's epoch 100 on (sec. 4.2)
    assert _parse(trainer, "--epochs", str(epochs)).unimlip_simclr_start_epoch == start


@pytest.mark.parametrize("argv, start", [
    (["--unimlip-simclr-start-epoch", "3"], 3),
    (["--unimlip-simclr-start-epoch", "1", "--pretrained", "any.pt"], 1),
    (["--unimlip-simclr-start-epoch", "0", "--pretrained", "any.pt"], 0),
    (["--unimlip-simclr-start-epoch", "0", "--unimlip-no-bn-freeze"], 0),  # the naive baseline: nothing frozen
    (["--unimlip-simclr-start-epoch", "0", "--unimlip-simclr-weight", "0"], 0),  # no views: nothing frozen
    (["--unimlip-no-bn-freeze"], 0),  # nothing frozen: no warm-up needed
    (["--unimlip-simclr-weight", "0"], 0),
    (["--unimlip-simclr-weight", "0", "--unimlip-feed-views"], 2),  # the views alone freeze the statistics too
], ids=["explicit", "explicit-pretrained", "zero-pretrained", "zero-no-freeze", "zero-no-views", "no-freeze",
        "no-views", "views-without-simclr"])
def test_an_explicit_start_wins_and_nothing_frozen_needs_no_warmup(trainer, argv, start):
    assert _parse(trainer, "--epochs", "4", *argv).unimlip_simclr_start_epoch == start


def test_an_explicit_zero_from_scratch_is_refused_before_the_run_folder(trainer, tmp_path):
    _, main = trainer
    refusal = re.escape("error: SimCLR with frozen BatchNorm statistics from epoch 0 without --pretrained "
                        f"(--unimlip-simclr-start-epoch 0) {INITIAL_STATISTICS}")
    with pytest.raises(SystemExit, match=refusal):
        _parse(trainer, "--epochs", "4", "--unimlip-simclr-start-epoch", "0")
    logs = tmp_path / "logs"
    with pytest.raises(SystemExit, match=refusal):
        main.main([*ENV_ARGS, "--train-num-samples", "4", "--batch-size", "2", "--epochs", "2", "--workers", "0",
                   "--logs", str(logs), "--name", "refused", "--unimlip-simclr-start-epoch", "0"])
    assert not logs.exists()  # nothing started


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1"], "--epochs 1 without --pretrained leaves no epoch for the warm-up"),
    (["--epochs", "4", "--unimlip-simclr-head", "mlp"],
     "a SimCLR MLP head needs SimCLR from epoch 0 (DDP, built without find_unused_parameters, rejects a head without "
     "gradient), but without --pretrained SimCLR with frozen BatchNorm statistics waits for a warm-up (until epoch 2)"),
    (["--epochs", "4", "--unimlip-simclr-head", "".join(["ml", "p"])],  # as typed: not the interned literal
     "a SimCLR MLP head needs SimCLR from epoch 0"),
], ids=["one-epoch", "mlp-head", "mlp-head-as-typed"])
def test_a_warmup_the_run_cannot_hold_is_refused(trainer, argv, message):
    with pytest.raises(SystemExit, match=re.escape(f"error: {message}")):
        _parse(trainer, *argv)
    # each of the ways out the message names is accepted
    assert _parse(trainer, *argv, "--pretrained", "any.pt").unimlip_simclr_start_epoch == 0
    assert _parse(trainer, *argv, "--unimlip-no-bn-freeze").unimlip_simclr_start_epoch == 0


# ----- resume: the start of the first launch, whatever --epochs or --pretrained say now -------------
def _first_launch(trainer, tmp_path, *argv):
    args = _parse(trainer, "--epochs", "4", "--logs", str(tmp_path), "--name", "run", *argv)
    _write_params_as_openclip(args, tmp_path / "run")
    return args


def test_a_resumed_run_keeps_the_start_of_its_first_launch(trainer, tmp_path):
    assert _first_launch(trainer, tmp_path).unimlip_simclr_start_epoch == 2
    run = ["--logs", str(tmp_path), "--name", "run"]
    # a longer run (docs/training.md: "--epochs 8 --resume latest") would derive 4: the first launch's 2 stays
    assert _parse(trainer, *run, "--epochs", "8", "--resume", "latest").unimlip_simclr_start_epoch == 2
    assert _parse(trainer, *run, "--epochs", "8").unimlip_simclr_start_epoch == 4  # a new run derives afresh
    by_path = str(tmp_path / "run" / "checkpoints" / "epoch_3.pt")  # OpenCLIP's layout; the file need not exist
    assert _parse(trainer, "--epochs", "8", "--resume", by_path).unimlip_simclr_start_epoch == 2
    # an explicit start still wins on resume
    assert _parse(trainer, *run, "--epochs", "8", "--resume", "latest",
                  "--unimlip-simclr-start-epoch", "3").unimlip_simclr_start_epoch == 3


def test_a_resumed_pretrained_run_keeps_epoch_0_without_repeating_pretrained(trainer, tmp_path):
    assert _first_launch(trainer, tmp_path, "--pretrained", "init.pt").unimlip_simclr_start_epoch == 0
    resumed = _parse(trainer, "--logs", str(tmp_path), "--name", "run", "--epochs", "8", "--resume", "latest")
    assert resumed.unimlip_simclr_start_epoch == 0  # not a warm-up of 4 epochs in the middle of the run


def test_resuming_a_run_that_froze_the_initial_statistics_is_refused(trainer, tmp_path):
    """A run launched before the warm-up existed (the old default 0, no --pretrained) is not continued silently."""
    args = _parse(trainer, "--epochs", "4", "--logs", str(tmp_path), "--name", "run")
    args.unimlip_simclr_start_epoch = 0  # what the old default recorded
    _write_params_as_openclip(args, tmp_path / "run")
    with pytest.raises(SystemExit, match=re.escape(
            f"(as the run's first launch recorded in {tmp_path / 'run' / 'params.txt'}) {INITIAL_STATISTICS}: "
            "start a new run")):
        _parse(trainer, "--logs", str(tmp_path), "--name", "run", "--epochs", "4", "--resume", "latest")


# ----- from scratch and from pretrained weights, on the built model's BatchNorm statistics ------------
def test_from_scratch_statistics_update_through_the_warmup_then_freeze(trainer, captions, caplog):
    """The plain command from scratch: epoch 0 (the warm-up) updates the statistics without views;
    from the start epoch SimCLR runs with them frozen, at values the warm-up trained."""
    caplog.set_level(logging.INFO)
    args, model, loss = _build(trainer, "--epochs", "2")
    assert args.unimlip_simclr_start_epoch == 1
    initial = _statistics(model.state_dict())
    keys, after_warmup = _train_epoch(trainer, args, model, loss, 0, captions)
    assert "simclr_features_a" not in keys and not _equal(after_warmup, initial)  # updating, no views
    keys, after_simclr = _train_epoch(trainer, args, model, loss, 1, captions)
    assert {"simclr_features_a", "simclr_features_b"} <= keys and _equal(after_simclr, after_warmup)  # frozen
    # one line says what was chosen and why, at the first epoch only
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Uni-Mlip: SimCLR phase")]
    assert chosen == ["Uni-Mlip: SimCLR phase from epoch 1: no --pretrained: a warm-up of half of --epochs 2 without "
                      "SimCLR first (ours; the paper gives SimCLR the second half of its schedule, sec. 4.2)"]


def test_from_pretrained_weights_simclr_and_frozen_statistics_from_epoch_0(trainer, captions, tmp_path):
    """The checkpoint's statistics (not the initial ones) are the frozen ones from the first step."""
    torch.manual_seed(0)
    pretrained = open_clip.create_model("unimlip-tiny")
    with torch.no_grad():
        for name, buffer in pretrained.named_buffers():
            if name.startswith("visual.") and name.endswith(("running_mean", "running_var")):
                buffer.copy_(torch.rand_like(buffer) + 0.5)  # neither 0 nor 1
    checkpoint = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), checkpoint)
    saved = _statistics(pretrained.state_dict())
    del pretrained

    args, model, loss = _build(trainer, "--epochs", "4", "--pretrained", str(checkpoint))
    assert args.unimlip_simclr_start_epoch == 0
    keys, after_epoch_0 = _train_epoch(trainer, args, model, loss, 0, captions)
    assert {"simclr_features_a", "simclr_features_b"} <= keys
    assert _equal(after_epoch_0, saved)


# ----- a real run from scratch through open_clip_train.main, then its resume -------------------------
@pytest.mark.slow
def test_a_real_run_from_scratch_ends_with_trained_statistics_and_resumes_in_phase(tmp_path):
    """Two one-step epochs from scratch with the plain command (no start flag): the first updates the
    statistics, the second runs SimCLR with them frozen; the final checkpoint's statistics are not the
    initial ones (the old default, SimCLR and the freeze from epoch 0, left them at mean 0, variance 1).
    Resumed with more epochs, the run keeps its start (1, where 4 epochs would derive 2)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "logs"
    common = [sys.executable, "-m", "open_clip_train.main", *ENV_ARGS, "--train-num-samples", "4", "--batch-size",
              "4", "--workers", "0", "--lr", "1e-4", "--warmup", "1", "--logs", str(logs), "--name", "scratch",
              "--save-frequency", "0"]
    first = subprocess.run([*common, "--epochs", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (logs / "scratch" / "out.log").read_text()
    assert "Uni-Mlip: SimCLR phase from epoch 1: no --pretrained" in log
    assert "Uni-Mlip epoch 0: SimCLR off, BatchNorm statistics updating" in log
    assert "Uni-Mlip epoch 1: SimCLR on, BatchNorm statistics frozen" in log
    checkpoint = logs / "scratch" / "checkpoints" / "epoch_2.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    means = {k: v for k, v in state.items() if k.startswith("visual.") and k.endswith("running_mean")}
    variances = {k: v for k, v in state.items() if k.startswith("visual.") and k.endswith("running_var")}
    assert means and len(means) == len(variances)
    assert not any(torch.equal(v, torch.zeros_like(v)) for v in means.values())
    assert not any(torch.equal(v, torch.ones_like(v)) for v in variances.values())
    del state

    resumed = subprocess.run([*common, "--epochs", "4", "--resume", "latest"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = (logs / "scratch" / "out.log").read_text().split("Start epoch 2")[-1]
    assert "Uni-Mlip epoch 2: SimCLR on, BatchNorm statistics frozen" in after
    log = (logs / "scratch" / "out.log").read_text()
    assert "Uni-Mlip: SimCLR phase from epoch 1: the run's first launch chose it" in log
    assert "unimlip_simclr_start_epoch: 1" in (logs / "scratch" / "params.txt").read_text()
