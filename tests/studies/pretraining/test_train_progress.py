"""The progress bar and the report read open_clip_train's own log lines: produced here by the
trainer's real ``train_one_epoch`` (its formatting code path) on a toy model whose loss records
the values it returns, so the parsed steps and losses are checked against what was computed."""
import io
import logging
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch
from open_clip_train.train import train_one_epoch
from torch import nn

from openclip_unimlip.studies.pretraining.progress import (
    LogFollower,
    TrainingProgress,
    follow_training,
    parse_train_log,
)

EPOCHS, BATCHES, BATCH, LOG_EVERY, LR = 2, 4, 4, 2, 0.0125
# logged: batch indices 0 and 2 (every 2nd) and 3 (the epoch's last), per epoch
LOGGED_STEPS = [1, 3, 4, 5, 7, 8]


class ToyCLIP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(6, 3)
        self.text = nn.Embedding(10, 3)
        self.logit_scale = nn.Parameter(torch.tensor(2.5))

    def forward(self, images, texts):
        return {"image_features": self.image(images), "text_features": self.text(texts).mean(1),
                "logit_scale": self.logit_scale.exp()}


class Loader:
    """What train_one_epoch reads of OpenCLIP's DataInfo.dataloader."""
    num_batches, num_samples = BATCHES, BATCHES * BATCH

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class RecordingLoss(nn.Module):
    """Two terms, as a Uni-Mlip loss returns them; every call's values are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, image_features, text_features, logit_scale, output_dict=False):
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(len(logits))
        losses = {"itc_loss": nn.functional.cross_entropy(logits, labels),
                  "mlm_loss": (image_features - text_features).pow(2).mean()}
        self.calls.append({k: v.item() for k, v in losses.items()} | {"loss": sum(losses.values()).item()})
        return losses


@pytest.fixture(scope="module")
def trainer_log():
    """(out.log text as open_clip_train writes it, the loss values of every step)."""
    torch.manual_seed(0)
    model, loss = ToyCLIP(), RecordingLoss()
    batches = [(torch.randn(BATCH, 6), torch.randint(0, 10, (BATCH, 5))) for _ in range(BATCHES)]
    data = {"train": SimpleNamespace(set_epoch=lambda epoch: None, dataloader=Loader(batches))}
    args = Namespace(device="cpu", precision="fp32", distill=False, accum_freq=1, skip_scheduler=True,
                     grad_clip_norm=None, log_every_n_steps=LOG_EVERY, world_size=1, batch_size=BATCH, rank=0,
                     local_rank=0, wandb=False, horovod=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    log = io.StringIO()
    handler = logging.StreamHandler(log)  # open_clip_train/logger.py's format, as in out.log
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", datefmt="%Y-%m-%d,%H:%M:%S"))
    root_level = logging.root.level
    logging.root.addHandler(handler)
    logging.root.setLevel(logging.INFO)
    try:
        for epoch in range(EPOCHS):
            logging.info(f"Start epoch {epoch}")
            train_one_epoch(model, data, loss, epoch, optimizer, None, None, None, args)
    finally:
        logging.root.removeHandler(handler)
        logging.root.setLevel(root_level)
    return log.getvalue(), loss.calls


def test_parse_train_log_reads_the_trainers_steps_and_losses(trainer_log):
    text, calls = trainer_log
    assert text.count("Train Epoch:") == len(LOGGED_STEPS)  # the fixture produced real trainer lines
    steps = parse_train_log(text)
    assert [s["step"] for s in steps] == LOGGED_STEPS
    assert [s["epoch"] for s in steps] == [0, 0, 0, 1, 1, 1]
    for step in steps:
        computed = calls[step["step"] - 1]  # the loss was called once per step, in order
        for key in ("itc_loss", "mlm_loss", "loss"):  # logged with 5 significant digits
            assert step[key] == pytest.approx(computed[key], rel=1e-4, abs=1e-6), (step["step"], key)
        assert step["lr"] == pytest.approx(LR)
    assert len({s["loss"] for s in steps}) == len(steps)  # the step's value, not a constant


def test_progress_bar_follows_a_growing_log(trainer_log, tmp_path):
    text, calls = trainer_log
    lines = text.splitlines(keepends=True)
    log_path = tmp_path / "out.log"
    output = io.StringIO()
    progress = TrainingProgress(log_path, EPOCHS, "run", file=output)
    assert progress.poll() == 0 and progress.bar.total is None  # the trainer has not written its log yet

    first_step = next(i for i, line in enumerate(lines) if "Train Epoch:" in line)
    with log_path.open("w") as log:
        log.write("".join(lines[:first_step]) + lines[first_step][:40])  # half of the first step line
        log.flush()
        assert progress.poll() == 0 and progress.bar.n == 0
        log.write(lines[first_step][40:])
        log.flush()
        assert progress.poll() == 1
        assert (progress.bar.n, progress.bar.total) == (1, EPOCHS * BATCHES)
        assert f"loss {calls[0]['loss']:.4g}" in str(progress.bar)
        log.write("".join(lines[first_step + 1:]))
        log.flush()
        assert progress.poll() == len(LOGGED_STEPS) - 1
    assert progress.bar.n == EPOCHS * BATCHES
    assert f"loss {calls[-1]['loss']:.4g}, epoch {EPOCHS - 1}" in str(progress.bar)
    progress.close(finished=True)
    assert progress.steps == parse_train_log(text)


def test_log_follower_returns_complete_lines_once(tmp_path):
    path = tmp_path / "log"
    follower = LogFollower(path)
    assert follower.read_lines() == []
    path.write_bytes("a\nb".encode())
    assert follower.read_lines() == ["a"]
    with path.open("ab") as file:
        file.write("é\nc\n".encode())
    assert follower.read_lines() == ["bé", "c"]
    assert follower.read_lines() == []


def test_follow_training_tracks_a_process_writing_its_log(trainer_log, tmp_path):
    text, _ = trainer_log
    source, log_path = tmp_path / "source.log", tmp_path / "run" / "out.log"
    source.write_text(text)
    writer = ("import sys, time, pathlib; out = pathlib.Path(sys.argv[2]); out.parent.mkdir(); time.sleep(0.1)\n"
              "with out.open('w') as log:\n"
              "    for line in open(sys.argv[1]):\n"
              "        log.write(line[:20]); log.flush(); time.sleep(0.01); log.write(line[20:]); log.flush()\n")
    process = subprocess.Popen([sys.executable, "-c", writer, str(source), str(log_path)])
    output = io.StringIO()
    steps = follow_training(process, log_path, EPOCHS, "run", poll_seconds=0.005, file=output)
    assert process.returncode == 0
    assert steps == parse_train_log(text)
    assert f"{EPOCHS * BATCHES}/{EPOCHS * BATCHES}" in output.getvalue().split("\r")[-1]
