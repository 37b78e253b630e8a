"""Pins of the SLURM launcher's checks and command (no Slurm needed), each against an independent
reference: literal values worked out by hand from the allocation, what OpenCLIP's own parser
(``open_clip_train.params.parse_args``) and sample counter (``open_clip_train.data.get_dataset_size``)
make of the arguments and shards, and the kernel's ephemeral port range
(``/proc/sys/net/ipv4/ip_local_port_range``). They cover the refusals of values on either side of
a limit (owned flags, CROP_SCALE, NNODES, GPUs, shards per worker, GLOBAL_BATCH 0), which shards
need a sample count and which are never looked for, WORKERS 0, and the command's extra arguments,
summary, environment and rendezvous port."""
import json
import re
from pathlib import Path

import pytest

from openclip_unimlip.studies.pretraining import slurm

from shards import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 8 one-sample shards: exactly one per process of an 8-GPU node with WORKERS=1
    return write_shards(tmp_path_factory.mktemp("train"), num_samples=8, per_shard=1, size=16)


def job_env(shards, **variables):
    """One node, 8 GPUs, 64 CPUs, one loader worker per process."""
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "unimlip", "TRAIN_DATA": shards, "SLURM_NNODES": "1",
            "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "64", "WORKERS": "1", **variables}


def _train_args(command):
    return command[command.index("open_clip_train.main") + 2:]


@pytest.fixture
def trainer_parse(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    return parse_args


# ---------------------------------------------------------------- refusals on either side


@pytest.mark.parametrize("extra, variable", [
    (["--batch-size", "1000"], "GLOBAL_BATCH"),  # larger than the launcher's 96 = 768 / 8
    (["--batch-size", "1"], "GLOBAL_BATCH"),  # smaller
    (["--name", "zzz"], "NAME"),  # sorts after the launcher's unimlip-<hash>
    (["--name", "aaa"], "NAME"),
    (["--logs", "/zzz"], "LOGS"),
    (["--logs", "/aaa"], "LOGS"),
])
def test_a_flag_the_launcher_owns_is_refused_whatever_its_value(shards, tmp_path, extra, variable):
    env = job_env(shards, LOGS=str(tmp_path / "logs"))
    with pytest.raises(slurm.LaunchError, match=re.escape(f"set by the launcher: use {variable} instead")):
        slurm.launch_command("one-node", env, extra)


@pytest.mark.parametrize("value", ["0", "-0.5", "abc", "1.5"])
def test_a_crop_scale_outside_zero_to_one_is_refused(shards, value):
    with pytest.raises(slurm.LaunchError, match=re.escape(f"CROP_SCALE={value!r}: the smallest crop's area")):
        slurm.recipe_args(job_env(shards, CROP_SCALE=value))


def test_a_crop_scale_of_one_is_the_whole_image(shards, trainer_parse):
    args = trainer_parse(slurm.recipe_args(job_env(shards, CROP_SCALE="1")))
    assert args.aug_cfg == {"scale": (1.0, 1.0)}


def test_nnodes_may_use_fewer_nodes_than_the_job_but_not_more():
    allocation = {"SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "16"}
    assert slurm.allocation_shape({**allocation, "NNODES": "1"}) == slurm.Shape(1, 4, 4)
    assert slurm.allocation_shape({**allocation, "NNODES": "2"}) == slurm.Shape(2, 4, 4)
    with pytest.raises(slurm.LaunchError, match=re.escape("NNODES=3 but the job has 2 node(s)")):
        slurm.allocation_shape({**allocation, "NNODES": "3"})


def test_a_job_without_any_gpu_variable_is_refused_with_the_launchers_message():
    with pytest.raises(slurm.LaunchError, match="no GPUs in this allocation"):
        slurm.allocation_shape({"SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "16"})


@pytest.mark.parametrize("value, processes", [("8", 8), ("a100:8", 8), ("gpu:a100:4,v100:2", 6)])
def test_slurm_gpus_per_node_counts_every_form_it_documents(value, processes):
    shape = slurm.allocation_shape({"SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_PER_NODE": value})
    assert shape.procs_per_node == processes


@pytest.mark.parametrize("value", ["gpu:2(IDX:0-1)", "a100:x"])
def test_an_unreadable_slurm_gpus_per_node_is_refused(value):
    with pytest.raises(slurm.LaunchError, match=re.escape(
            f"cannot read a GPU count from SLURM_GPUS_PER_NODE={value!r}; set GPUS_PER_NODE")):
        slurm.allocation_shape({"SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_PER_NODE": value})


def test_exactly_one_shard_per_worker_is_enough(shards, trainer_parse):
    """8 shards for 8 processes: OpenCLIP asserts shards >= processes x workers (data.py)."""
    command, _, _ = slurm.launch_command("one-node", job_env(shards, WORKERS="1"), [])
    assert trainer_parse(_train_args(command)).workers == 1
    with pytest.raises(slurm.LaunchError, match=re.escape("TRAIN_DATA has 8 shards for 8 processes x 2 workers")):
        slurm.launch_command("one-node", job_env(shards, WORKERS="2"), [])


# ---------------------------------------------------------------- zero is a value, not "unset"


def test_global_batch_zero_is_refused_not_replaced_by_the_default(shards):
    with pytest.raises(slurm.LaunchError, match=re.escape("GLOBAL_BATCH=0 must be a positive multiple")):
        slurm.launch_command("one-node", job_env(shards, GLOBAL_BATCH="0"), [])
    for unset in ({}, {"GLOBAL_BATCH": ""}):  # unset or empty: the paper's 768
        command, _, summary = slurm.launch_command("one-node", job_env(shards, **unset), [])
        assert "global batch 768 = 8 x 96" in summary


def test_workers_zero_loads_in_the_training_process(shards, tmp_path, trainer_parse):
    """WORKERS=0 reaches OpenCLIP as --workers 0; each process still reads a shard of its own, so 7
    shards for 8 processes are refused."""
    command, env_updates, summary = slurm.launch_command("one-node", job_env(shards, WORKERS="0"), [])
    assert trainer_parse(_train_args(command)).workers == 0
    assert "0 workers + 8 threads per process" in summary  # 64 CPUs / 8 processes, none for loaders
    seven = write_shards(tmp_path / "seven", num_samples=7, per_shard=1, size=16)
    with pytest.raises(slurm.LaunchError, match=re.escape("TRAIN_DATA has 7 shards for 8 processes x 0 workers")):
        slurm.launch_command("one-node", job_env(seven, WORKERS="0"), [])


# ---------------------------------------------------------------- which shards need a sample count


@pytest.fixture(scope="module")
def uncounted(tmp_path_factory):
    """8 shards with neither sizes.json nor __len__ beside them."""
    root = tmp_path_factory.mktemp("uncounted")
    pattern = write_shards(root, num_samples=8, per_shard=1, size=16)
    (root / "sizes.json").unlink()
    return pattern


def test_training_shards_without_a_sample_count_need_train_num_samples(uncounted):
    from open_clip_train.data import get_dataset_size

    assert get_dataset_size(uncounted) == (None, 8)  # what OpenCLIP itself then refuses to train on
    with pytest.raises(slurm.LaunchError, match=re.escape(
            "TRAIN_DATA: no sizes.json or __len__ beside the shards: set TRAIN_NUM_SAMPLES")):
        slurm.launch_command("one-node", job_env(uncounted), [])
    slurm.launch_command("one-node", job_env(uncounted, TRAIN_NUM_SAMPLES="8"), [])


def test_validation_shards_without_a_sample_count_are_accepted(shards, uncounted, trainer_parse):
    command, _, _ = slurm.launch_command("one-node", job_env(shards, VAL_DATA=uncounted), [])
    assert trainer_parse(_train_args(command)).val_data == uncounted


def test_a_sizes_json_missing_a_shard_is_refused(tmp_path):
    from open_clip_train.data import get_dataset_size

    root = tmp_path / "train"
    pattern = write_shards(root, num_samples=8, per_shard=1, size=16)
    sizes = json.loads((root / "sizes.json").read_text())
    del sizes["00007.tar"]
    (root / "sizes.json").write_text(json.dumps(sizes))
    with pytest.raises(KeyError):  # what OpenCLIP would raise in every rank
        get_dataset_size(pattern)
    message = "TRAIN_DATA: cannot read the sample count beside the shards"
    with pytest.raises(slurm.LaunchError, match=re.escape(message)):
        slurm.launch_command("one-node", job_env(pattern), [])


@pytest.mark.parametrize("urls", ["pipe:cat /nowhere/{0..1}.tar", "s3://bucket/nowhere/{0..1}.tar"])
def test_remote_shards_are_counted_but_never_looked_for(urls):
    assert slurm._check_shards("TRAIN_DATA", urls, "TRAIN_NUM_SAMPLES", required=False) == 2


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize("extra", [
    ["--val-frequency", "3", "--unimlip-no-bn-freeze"], ["--val-frequency", "3"], ["--unimlip-no-bn-freeze"],
    ["--val-frequency", "3", "--unimlip-no-bn-freeze", "--log-every-n-steps", "7"]], ids=len)
def test_extra_arguments_come_once_after_the_launchers_own(shards, tmp_path, trainer_parse, extra):
    env = job_env(shards, LOGS=str(tmp_path / "logs"))
    command, _, _ = slurm.launch_command("one-node", env, extra)
    args = _train_args(command)
    assert all(args.count(flag) == 1 for flag in extra if flag.startswith("--"))
    assert args[-len(extra):] == extra
    assert args.index("--logs") < args.index("--name") < len(args) - len(extra)
    assert trainer_parse(args).val_frequency == (3 if "--val-frequency" in extra else 1)


def test_the_summary_names_the_run_folder_and_the_batch_split(shards, tmp_path):
    logs = tmp_path / "logs"
    command, _, summary = slurm.launch_command("one-node", job_env(shards, LOGS=str(logs), NAME="paper-run"), [])
    assert summary.endswith(f"run {logs / 'paper-run'}")
    assert "job 42 (restart 0): 1 node(s) x 8 processes, global batch 768 = 8 x 96, 1 workers + 7 threads" in summary


@pytest.mark.parametrize("variables, offline", [({}, "1"), ({"HF_HUB_OFFLINE": "0"}, "0")])
def test_compute_nodes_run_offline_unless_the_job_says_otherwise(shards, variables, offline):
    _, env_updates, _ = slurm.launch_command("one-node", job_env(shards, **variables), [])
    assert env_updates["HF_HUB_OFFLINE"] == offline


def test_a_multinode_rendezvous_port_is_an_ephemeral_one(shards):
    """Without RDZV_PORT the port is one the kernel hands out for binding port 0: inside its
    ephemeral range, never a fixed or privileged port."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    env = job_env(shards, SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="16", RDZV_HOST="node-a")
    command, _, _ = slurm.launch_command("multinode", env, [])
    host, port = command[command.index("--rdzv_endpoint") + 1].rsplit(":", 1)
    assert host == "node-a" and low <= int(port) <= high


def test_one_node_mode_is_checked_by_value(shards):
    mode = "".join(["one", "-node"])  # equal to "one-node", not the same object
    env = job_env(shards, SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="16")
    with pytest.raises(slurm.LaunchError, match=re.escape("this script trains on one node but the job has 2")):
        slurm.launch_command(mode, env, [])
    command, _, _ = slurm.launch_command(mode, job_env(shards), [])
    assert "--standalone" in command  # and a one-node launch by that name rendezvous locally


def test_the_run_is_named_after_the_job_or_unimlip(shards):
    paper = slurm.launch_command("one-node", job_env(shards, SLURM_JOB_NAME="paper"), [])[2]
    assert re.search(r"/paper-[0-9a-f]{8}$", paper)
    env = job_env(shards)
    del env["SLURM_JOB_NAME"]
    assert re.search(r"/unimlip-[0-9a-f]{8}$", slurm.launch_command("one-node", env, [])[2])


def test_a_variable_that_is_not_an_integer_is_named(shards):
    with pytest.raises(slurm.LaunchError, match=re.escape("SLURM_NNODES='two' is not an integer")):
        slurm.launch_command("one-node", job_env(shards, SLURM_NNODES="two"), [])


def test_missing_shards_are_counted_and_the_first_is_named(tmp_path):
    pattern = write_shards(tmp_path / "train", num_samples=3, per_shard=1, size=16)
    first, second = sorted((tmp_path / "train").rglob("*.tar"))[:2]
    first.unlink()
    second.unlink()
    with pytest.raises(slurm.LaunchError, match=re.escape(f"TRAIN_DATA: 2 of 3 shards do not exist, e.g. {first}")):
        slurm.launch_command("one-node", job_env(pattern, SLURM_GPUS_ON_NODE="1", SLURM_CPUS_PER_TASK="2"), [])


def test_the_smallest_batch_and_the_fewest_cpus(shards):
    """One process may train with a global batch of 1; one CPU per process still gets one loader worker."""
    env = job_env(shards, SLURM_GPUS_ON_NODE="1", SLURM_CPUS_PER_TASK="2", GLOBAL_BATCH="1")
    assert "global batch 1 = 1 x 1" in slurm.launch_command("one-node", env, [])[2]
    env = job_env(shards, SLURM_CPUS_PER_TASK="8")
    del env["WORKERS"]
    assert ", 1 workers + 1 threads per process" in slurm.launch_command("one-node", env, [])[2]
