"""Pins of the SLURM launcher's arithmetic (no Slurm needed): the run name across allocation
shapes, the rendezvous endpoint, the threads each process gets, and the global batch split over
every process (tests/mutations/evaluation_data_launcher.toml)."""
import re

import pytest

from openclip_unimlip.studies.pretraining import slurm

from shards import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 64 one-sample shards: enough for 8 processes x 7 workers
    return write_shards(tmp_path_factory.mktemp("train"), num_samples=64, per_shard=1, size=16)


def job_env(shards, **variables):
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "unimlip", "TRAIN_DATA": shards, **variables}


def _value(command, flag):
    return command[command.index(flag) + 1]


def test_run_name_is_the_same_on_another_allocation_shape(shards):
    """A resubmission on another shape continues the run: the name hashes the recipe, not the batch
    per process or the workers, which both differ here (2 x 4 GPUs, 8 CPUs each: batch 96, 7
    workers; 1 x 8 GPUs, 2 CPUs each: batch 96, 1 worker; 1 x 4 GPUs: batch 192)."""
    shapes = [slurm.Shape(nodes=2, procs_per_node=4, cpus_per_proc=8),
              slurm.Shape(nodes=1, procs_per_node=8, cpus_per_proc=2),
              slurm.Shape(nodes=1, procs_per_node=4, cpus_per_proc=4)]
    launched = [slurm.train_args(job_env(shards), shape) for shape in shapes]
    assert [(_value(args, "--batch-size"), _value(args, "--workers")) for args, _ in launched] == [
        ("96", "7"), ("96", "1"), ("192", "3")]
    names = {name for _, name in launched}
    assert len(names) == 1 and re.fullmatch(r"unimlip-[0-9a-f]{8}", names.pop())
    assert all(_value(args, "--name") == name for args, name in launched)


def test_multinode_rendezvous_endpoint_from_the_variables(shards):
    env = job_env(shards, SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="16", WORKERS="1",
                  RDZV_HOST="node-a", RDZV_PORT="29555")
    command, _, summary = slurm.launch_command("multinode", env, [])
    assert (_value(command, "--rdzv_endpoint"), _value(command, "--rdzv_id"), _value(command, "--rdzv_backend")) == (
        "node-a:29555", "42", "c10d")
    assert "rendezvous node-a:29555" in summary
    del env["RDZV_PORT"]  # then a port free now on this (the first) node
    host, port = _value(slurm.launch_command("multinode", env, [])[0], "--rdzv_endpoint").rsplit(":", 1)
    assert host == "node-a" and 0 < int(port) < 65536


@pytest.mark.parametrize("cpus_per_task, gpus, workers, threads", [
    ("64", "4", "3", "13"),  # 16 CPUs a process: 3 loader workers leave 13 for the training loop
    ("16", "2", "5", "3"),
    ("16", "8", None, "1"),  # 2 CPUs a process: the default 1 worker leaves 1
    ("8", "8", "4", "1"),  # more workers than CPUs: still one thread
])
def test_threads_are_the_cpus_the_loader_workers_leave(shards, cpus_per_task, gpus, workers, threads):
    env = job_env(shards, SLURM_NNODES="1", SLURM_GPUS_ON_NODE=gpus, SLURM_CPUS_PER_TASK=cpus_per_task)
    if workers is not None:
        env["WORKERS"] = workers
    command, env_updates, summary = slurm.launch_command("one-node", env, [])
    assert env_updates["OMP_NUM_THREADS"] == threads
    assert f"{_value(command, '--workers')} workers + {threads} threads per process" in summary


def test_a_users_omp_num_threads_is_kept(shards):
    env = job_env(shards, SLURM_NNODES="1", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="64", WORKERS="3",
                  OMP_NUM_THREADS="5")
    _, env_updates, _ = slurm.launch_command("one-node", env, [])
    assert env_updates["OMP_NUM_THREADS"] == "5"


def test_global_batch_is_split_over_every_process_of_every_node(shards):
    env = job_env(shards, SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="16", WORKERS="1",
                  RDZV_PORT="29555")
    message = "GLOBAL_BATCH=12 must be a positive multiple of the 8 processes"
    with pytest.raises(slurm.LaunchError, match=re.escape(message)):
        slurm.launch_command("multinode", {**env, "GLOBAL_BATCH": "12"}, [])  # 12 = 3 x 4 GPUs of one node
    command, _, summary = slurm.launch_command("multinode", {**env, "GLOBAL_BATCH": "16"}, [])
    assert _value(command, "--batch-size") == "2" and "global batch 16 = 8 x 2" in summary
