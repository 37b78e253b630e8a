"""The SLURM launcher's SimCLR start follows the trainer's rule (tests/seam/test_simclr_start.py):
SIMCLR_START_EPOCH unset is 0 with PRETRAINED (the paper) and the trainer's warm-up from scratch,
and a requeue continues the same run in the same phase. Checked on the arguments the launcher
hands to ``open_clip_train.main``, parsed by its patched parser (no Slurm needed)."""
import re

import pytest

from openclip_unimlip.studies.pretraining import slurm

from shards import write_shards


@pytest.fixture
def trainer_parse(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    return parse_args


@pytest.fixture
def job(tmp_path, trainer_parse):
    """A job's environment; the launcher parses its arguments with the trainer's parser (state restored)."""
    shards = write_shards(tmp_path / "train", num_samples=8, per_shard=1)

    def job(**variables):
        return {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "unimlip", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "2",
                "SLURM_CPUS_PER_TASK": "4", "WORKERS": "1", "TRAIN_DATA": shards, "LOGS": str(tmp_path / "logs"),
                **variables}

    return job


def _launched(env):
    """The open_clip_train arguments of the launch and its run name."""
    command, _, _ = slurm.launch_command("one-node", env, [])
    args = command[command.index("open_clip_train.main") + 2:]
    return args, args[args.index("--name") + 1]


@pytest.mark.parametrize("variables, start", [
    ({}, 50),  # from scratch: the trainer's warm-up, half of EPOCHS 100
    ({"EPOCHS": "10"}, 5),
    ({"PRETRAINED": "/ckpt/init.pt"}, 0),  # the paper: SimCLR + frozen BN from PMC-CLIP's weights on
    ({"PRETRAINED": "/ckpt/init.pt", "SIMCLR_START_EPOCH": "3"}, 3),  # explicit wins
    ({"SIMCLR_START_EPOCH": "7"}, 7),
])
def test_the_start_follows_pretrained_unless_given(job, trainer_parse, variables, start):
    args, _ = _launched(job(**variables))
    assert trainer_parse(args).unimlip_simclr_start_epoch == start


def test_a_pretrained_run_keeps_its_name_and_a_scratch_run_ignores_epochs(job):
    """A PRETRAINED run's arguments are those of an explicit SIMCLR_START_EPOCH=0 (what the launcher
    always wrote before), so its name, and the run a requeue continues, is the same; a run from scratch
    leaves the start to the trainer, so a longer EPOCHS continues it too."""
    pretrained = _launched(job(PRETRAINED="/ckpt/init.pt"))
    assert pretrained == _launched(job(PRETRAINED="/ckpt/init.pt", SIMCLR_START_EPOCH="0"))
    assert "--unimlip-simclr-start-epoch" in pretrained[0]
    scratch_args, scratch = _launched(job())
    assert "--unimlip-simclr-start-epoch" not in scratch_args
    assert _launched(job(EPOCHS="200"))[1] == scratch and _launched(job(SLURM_JOB_ID="43"))[1] == scratch
    assert _launched(job(SIMCLR_START_EPOCH="3"))[1] != scratch  # another start: another run


def test_a_requeue_with_a_longer_epochs_keeps_the_start_of_the_first_launch(job, trainer_parse, tmp_path):
    args, name = _launched(job())
    first = trainer_parse(args)
    assert first.unimlip_simclr_start_epoch == 50
    run_dir = tmp_path / "logs" / name
    run_dir.mkdir(parents=True)
    with open(run_dir / "params.txt", "w") as f:  # as open_clip_train.main writes it (3.3, main.py 288-293)
        for key in sorted(vars(first)):
            f.write(f"{key}: {getattr(first, key)}\n")
    args, same = _launched(job(EPOCHS="200", SLURM_JOB_ID="43", SLURM_RESTART_COUNT="1"))
    assert same == name
    assert trainer_parse(args).unimlip_simclr_start_epoch == 50  # not 100: the run stays in its phase


def test_an_explicit_zero_from_scratch_stops_the_launch_with_the_trainers_message(job):
    with pytest.raises(slurm.LaunchError, match=re.escape(
            "open_clip_train refuses these arguments (error: SimCLR with frozen BatchNorm statistics from epoch 0 "
            "without --pretrained (--unimlip-simclr-start-epoch 0) keeps the statistics at their initial values")):
        slurm.launch_command("one-node", job(SIMCLR_START_EPOCH="0"), [])
    args, _ = _launched(job(SIMCLR_START_EPOCH="0", PRETRAINED="/ckpt/init.pt"))  # with weights: the paper's
    assert args[args.index("--unimlip-simclr-start-epoch") + 1] == "0"


def test_epochs_too_few_for_the_warmup_stop_the_launch(job):
    with pytest.raises(slurm.LaunchError, match=re.escape("--epochs 1 without --pretrained leaves no epoch")):
        slurm.launch_command("one-node", job(EPOCHS="1"), [])
