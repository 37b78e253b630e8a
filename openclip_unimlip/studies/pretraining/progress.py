"""Live progress of an ``open_clip_train`` run, read from the run's own log.

open_clip_train writes one line per logged step to ``<logs>/<name>/out.log``
(``open_clip_train/train.py``, ``train_one_epoch``)::

    Train Epoch: 0 [ 64/1792 (4%)] ... LR: 0.000100 ... Itc_loss: 0.11698 (0.11698) ... Loss: 7.2936 (7.2936)

with, per loss, the step's value and the running mean in brackets. The same parser serves the
report after the run (:func:`parse_train_log`) and a tqdm bar while it runs
(:func:`follow_training`), so the bar shows exactly what the log says: steps done out of the
run's total, the step's total loss, an ETA. Following the file rather than the trainer's
console keeps the trainer an unmodified ``python -m open_clip_train.main``.
"""
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

# "{seen:>{digits}}/{samples_per_epoch}": seen = steps in this epoch x global batch
_STEP_LINE = re.compile(r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<per_epoch>\d+) .*?"
                        r"LR: (?P<lr>\S+) Logit Scale: (?P<scale>\S+) (?P<losses>.*)$")
# f"{loss_name.capitalize()}: {loss_m.val:#.5g} ({loss_m.avg:#.5g})"
_LOSS_VALUE = re.compile(r"(?P<name>\w+): (?P<value>\S+) \(")


class StepParser:
    """Turns out.log lines into steps. The global batch is read off the run's first step line
    (always logged, after one step), and with it the steps per epoch."""

    def __init__(self) -> None:
        self.global_batch: Optional[int] = None
        self.steps_per_epoch: Optional[int] = None

    def parse(self, line: str) -> Optional[Dict[str, float]]:
        """The step a line logs (see :func:`parse_train_log`), or None for any other line."""
        match = _STEP_LINE.search(line)
        if match is None:
            return None
        epoch, seen, per_epoch = int(match["epoch"]), int(match["seen"]), int(match["per_epoch"])
        if self.global_batch is None:
            self.global_batch = seen
            # webdataset/synthetic: samples_per_epoch is a whole number of global batches
            self.steps_per_epoch = math.ceil(per_epoch / seen)
        step = {"step": epoch * self.steps_per_epoch + math.ceil(seen / self.global_batch),
                "epoch": epoch, "lr": float(match["lr"]), "logit_scale": float(match["scale"])}
        for loss in _LOSS_VALUE.finditer(match["losses"]):
            step[loss["name"].lower()] = float(loss["value"])
        return step


def parse_train_log(log_text: str) -> List[Dict[str, float]]:
    """Per logged step: ``step`` (1-based, global), ``epoch``, ``lr``, ``logit_scale`` and every
    logged loss under its trainer key (``itc_loss``, ..., ``loss`` the weighted total) at that
    step (not the running mean). Terms not computed at a step (SimCLR before its start epoch)
    are absent from that step's dict."""
    parser = StepParser()
    return [step for step in map(parser.parse, log_text.splitlines()) if step is not None]


class LogFollower:
    """The complete lines appended to a file since the last call; a file not there yet reads as
    empty (the trainer creates it after start-up), a half-written last line waits for its end."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read_lines(self) -> List[str]:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]


class TrainingProgress:
    """A tqdm bar over a run's steps, fed from its out.log by :meth:`poll`: ``epochs`` x the
    steps per epoch (known from the first step line), postfix the step's total loss and epoch.
    The time before the first step (start-up, data workers) does not count into the ETA."""

    def __init__(self, log_path: Path, epochs: int, desc: str, **tqdm_kwargs) -> None:
        self.epochs = epochs
        self.steps: List[Dict[str, float]] = []
        self._follower = LogFollower(log_path)
        self._parser = StepParser()
        self.bar = tqdm(total=None, desc=desc, unit="step", dynamic_ncols=True, **tqdm_kwargs)
        self.bar.set_postfix_str("starting open_clip_train", refresh=True)

    def poll(self) -> int:
        """Read what the log gained; returns the number of new steps."""
        new = [s for s in map(self._parser.parse, self._follower.read_lines()) if s is not None]
        if not new:
            return 0
        if not self.steps:  # the first step: now the total is known; restart the clock
            self.bar.reset(total=self.epochs * self._parser.steps_per_epoch)
        self.steps += new
        last = new[-1]
        self.bar.set_postfix_str(f"loss {last['loss']:.4g}, epoch {last['epoch']}", refresh=False)
        self.bar.update(last["step"] - self.bar.n)
        return len(new)

    def close(self, finished: bool = False) -> None:
        self.poll()
        if finished and self.steps:  # e.g. csv data, whose last partial batch is dropped
            self.bar.total = self.bar.n
        self.bar.close()

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def follow_training(process: subprocess.Popen, log_path: Path, epochs: int, desc: str,
                    poll_seconds: float = 1.0, **tqdm_kwargs) -> List[Dict[str, float]]:
    """Show a progress bar for the running ``process`` from its ``log_path`` until it exits;
    returns the steps seen (as :func:`parse_train_log`)."""
    with TrainingProgress(log_path, epochs, desc, **tqdm_kwargs) as progress:
        while process.poll() is None:
            progress.poll()
            time.sleep(poll_seconds)
        progress.close(finished=process.returncode == 0)
    return progress.steps
