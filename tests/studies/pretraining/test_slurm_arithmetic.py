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


# ---------------------------------------------------------------- continuing on another shape

# (nodes, processes per node, CPUs per task): the paper's 8 GPUs on one node, then continuations on
# 2 nodes x 4, 4 x 8 (world size 32) and 1 x 1
SHAPES = [(1, 8, "64"), (2, 4, "64"), (4, 8, "64"), (1, 1, "8")]


def _shape_env(shards, logs, nodes, gpus, cpus, **variables):
    return job_env(shards, SLURM_NNODES=str(nodes), SLURM_GPUS_ON_NODE=str(gpus), SLURM_CPUS_PER_TASK=cpus,
                   WORKERS="1", RDZV_PORT="29555", LOGS=str(logs), **variables)


@pytest.fixture
def trainer_parse(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    return parse_args


def test_another_shape_changes_only_the_batch_per_process(shards, tmp_path, trainer_parse):
    """What open_clip_train is given on each shape, parsed by its own parser: the same run (logs, name,
    --resume latest), the same epochs, lr, schedule and every other value, and the batch per process
    that keeps the global batch 768: nothing else follows the allocation (WORKERS fixed here)."""
    parsed = []
    for nodes, gpus, cpus in SHAPES:
        command, _, _ = slurm.launch_command("multinode", _shape_env(shards, tmp_path, nodes, gpus, cpus), [])
        parsed.append((nodes * gpus, vars(trainer_parse(command[command.index("open_clip_train.main") + 2:]))))
    assert [world * args["batch_size"] for world, args in parsed] == [768] * len(SHAPES)
    first_world, first = parsed[0]
    for world, args in parsed[1:]:
        assert {key for key in first if args[key] != first[key]} == ({"batch_size"} if world != first_world else set())
    assert (first["resume"], first["epochs"], first["lr"]) == ("latest", 100, 1e-4)


def test_a_shape_that_splits_the_global_batch_unevenly_is_refused_before_anything_starts(shards, tmp_path):
    """5 nodes x 8 = 40 processes cannot share 768 samples evenly: the launcher stops with one message
    (it never rounds the batch per process, which would change the run's global batch and so its lr)."""
    with pytest.raises(slurm.LaunchError, match=re.escape(
            "GLOBAL_BATCH=768 must be a positive multiple of the 40 processes (5 node(s) x 8)")):
        slurm.launch_command("multinode", _shape_env(shards, tmp_path, 5, 8, "64"), [])
    assert not any(tmp_path.iterdir())  # no run folder


@pytest.mark.parametrize("written, finished", [(3, True), (2, False)])
def test_a_chained_job_on_another_shape_sees_the_run_finished_only_at_its_last_epoch(
        shards, tmp_path, monkeypatch, capsys, written, finished):
    """The last job of a chain exits at once on any shape once the run has epoch_EPOCHS.pt, and trains
    while that checkpoint is missing: the launcher's only epoch arithmetic (the rest is OpenCLIP's
    ``range(checkpoint epoch, --epochs)``)."""
    from openclip_unimlip.commands import slurm as command

    names = set()
    for nodes, gpus, cpus in SHAPES:
        env = _shape_env(shards, tmp_path, nodes, gpus, cpus, EPOCHS="3", GLOBAL_BATCH="64")
        args, name = slurm.train_args(env, slurm.allocation_shape(env))
        names.add(name)
        checkpoints = tmp_path / name / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / f"epoch_{written}.pt").write_bytes(zipfile_bytes())
        execs = []
        monkeypatch.setattr(command.os, "environ", env)
        monkeypatch.setattr(command.os, "execvp", lambda *argv: execs.append(argv))  # not srun here
        command.main(["multinode"])
        out = capsys.readouterr().out
        assert ("the run already finished" in out) == finished and bool(execs) == (not finished), out
    assert len(names) == 1  # every shape looks into the same run


def zipfile_bytes() -> bytes:
    """A whole checkpoint as the launcher sees one: a zip archive (torch's format)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.pkl", b"")
    return buffer.getvalue()


def test_every_recipe_argument_but_the_epochs_enters_the_run_name(shards):
    """The docstring's promise, argument by argument: replacing any one token of the recipe, a flag or
    its value, gives a new run, except ``--epochs`` and its value (a longer run continues)."""
    env = job_env(shards, SLURM_NNODES="1", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="64", WORKERS="1")
    recipe = slurm.recipe_args(env)
    first = slurm.run_name(env, recipe)
    epochs = recipe.index("--epochs")
    for position in range(len(recipe)):
        changed = [*recipe[:position], recipe[position] + "x", *recipe[position + 1:]]
        if position == epochs + 1:
            assert slurm.run_name(env, changed) == first
        elif position != epochs:
            assert slurm.run_name(env, changed) != first, (position, recipe[position])
