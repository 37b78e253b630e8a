"""``python -m openclip_unimlip.commands.slurm`` (what the sbatch scripts run) without a Slurm: its
help, its one message on bad input, and a launch in a child process whose ``srun`` is a stand-in on
PATH that records its arguments: what the command printed before it became ``srun`` (exec drops
whatever Python had not flushed) and the command it handed over. Seconds; the real Slurm runs are
tests/studies/pretraining/test_slurm.py's."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openclip_unimlip.commands import slurm as slurm_command
from openclip_unimlip.studies.pretraining.slurm import RECIPE

from shards import write_shards

JOB = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "unimlip", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "1",
       "SLURM_CPUS_PER_TASK": "2", "WORKERS": "1", "GLOBAL_BATCH": "8", "EPOCHS": "2"}


@pytest.mark.parametrize("argv, status", [([], 2), (["--help"], 0), (["-h"], 0)])
def test_help_lists_every_recipe_variable_with_its_default(argv, status, capsys):
    assert slurm_command.main(argv) == status
    text = capsys.readouterr().out
    assert "one-node" in text and "multinode" in text
    for name, default, source in RECIPE:
        line = next(line for line in text.splitlines() if line.split()[:1] == [name])
        assert (default or "(derived)") == line.split()[1] and source in line


def test_bad_input_is_one_message_and_status_1(monkeypatch, capsys):
    for name, value in JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TRAIN_DATA", raising=False)
    assert slurm_command.main(["one-node"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("openclip_unimlip.commands.slurm: ") and err.rstrip().endswith("; nothing was started")
    assert "set TRAIN_DATA" in err and err.count("\n") == 1


def _launch(tmp_path: Path, *args: str) -> tuple:
    """Run the command in a child process with a recording ``srun`` first on PATH: (its stdout, the
    arguments srun received, one per line)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "srun-args"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    srun.chmod(0o755)
    train = write_shards(tmp_path / "train", num_samples=8, per_shard=8)
    # stdout block-buffered, as Slurm's output file is: what is not flushed before the exec is lost
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "SBATCH_")) and key != "PYTHONUNBUFFERED"}
    env.update(JOB, TRAIN_DATA=train, LOGS=str(tmp_path / "logs"), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    result = subprocess.run([sys.executable, "-m", "openclip_unimlip.commands.slurm", *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, record.read_text().splitlines() if record.exists() else None


def test_a_launch_prints_its_plan_and_becomes_srun_with_the_users_arguments(tmp_path):
    out, srun_args = _launch(tmp_path, "one-node", "--val-frequency", "2")
    summary, shown = out.splitlines()  # printed and flushed before the exec, into a pipe
    assert summary.startswith("openclip_unimlip.commands.slurm: job 42 (restart 0): 1 node(s) x 1 processes")
    assert shlex.split(shown)[:2] == ["+", "srun"] and srun_args == shlex.split(shown)[2:]
    train = srun_args[srun_args.index("--") + 1:]
    assert train[train.index("--val-frequency") + 1] == "2" and train[train.index("--epochs") + 1] == "2"


def test_a_cut_short_checkpoint_is_set_aside_and_said_before_the_launch(tmp_path):
    out, _ = _launch(tmp_path, "one-node")  # the run's folder, from the first launch's summary
    checkpoints = Path(out.split("run ")[1].split()[0]) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / "epoch_1.pt").write_bytes(b"PK\x03\x04 cut short")
    out, srun_args = _launch(tmp_path, "one-node")
    assert f"{checkpoints / 'epoch_1.pt'} was cut short while being written" in out.splitlines()[0]
    assert (checkpoints / "epoch_1.pt.incomplete").exists() and srun_args


def test_a_finished_run_starts_nothing(tmp_path):
    out, _ = _launch(tmp_path, "one-node")
    checkpoints = Path(out.split("run ")[1].split()[0]) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 2}, checkpoints / "epoch_2.pt")  # EPOCHS=2: the last epoch's checkpoint, whole
    (tmp_path / "srun-args").unlink()
    out, srun_args = _launch(tmp_path, "one-node")
    final = checkpoints / "epoch_2.pt"
    assert out.strip() == f"openclip_unimlip.commands.slurm: the run already finished ({final}); nothing to do"
    assert srun_args is None


def test_a_help_flag_after_the_mode_goes_to_open_clip_train_and_is_refused(tmp_path, monkeypatch, capsys):
    """Everything after the mode is open_clip_train's: ``one-node -h`` is not the launcher's help."""
    for name, value in JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAIN_DATA", write_shards(tmp_path / "train", num_samples=8, per_shard=8))
    monkeypatch.setenv("LOGS", str(tmp_path / "logs"))
    assert slurm_command.main(["one-node", "-h"]) == 1
    assert "open_clip_train refuses these arguments (see above); nothing was started" in capsys.readouterr().err
