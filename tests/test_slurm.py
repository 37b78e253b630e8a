"""The SLURM launchers build a valid open_clip_train command with the paper's recipe."""
import subprocess

import pytest


def train_args(gpus, **env):
    script = f"source scripts/slurm/common.sh && unimlip_train_args {gpus}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRAIN_DATA": "/data/pmcoa/{00000..00164}.tar", **env})


def test_paper_recipe_split_over_gpus_parses_in_open_clip_train(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip import patches

    # parsing a Uni-Mlip run records its options for the rest of the process: undo after the test
    monkeypatch.setattr(patches, "_trainer_options", None)

    result = train_args(16, PRETRAINED="/ckpt/init.pt", SLURM_JOB_ID="42")
    assert result.returncode == 0, result.stderr
    args = parse_args(result.stdout.split("\n")[:-1])
    assert (args.model, args.batch_size, args.lr, args.epochs, args.lr_scheduler) == ("unimlip-rn50", 48, 1e-4, 100, "cosine")
    assert args.pretrained == "/ckpt/init.pt" and args.name == "unimlip-42" and args.resume == "latest"
    assert args.unimlip_simclr_start_epoch == 0


@pytest.mark.parametrize("script", ["unimlip_1node_8gpu.sbatch", "unimlip_multinode.sbatch"])
def test_launchers_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", f"scripts/slurm/{script}"]).returncode == 0


def test_indivisible_global_batch_is_refused():
    result = train_args(7)
    assert result.returncode != 0 and "not divisible" in result.stderr
