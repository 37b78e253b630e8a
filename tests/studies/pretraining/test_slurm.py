"""The SLURM launchers: their shape and recipe (no Slurm needed), then the shipped scripts under a
real Slurm on this machine (`.ci/install_slurm.sh`: slurmctld + two slurmd emulating two nodes)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from openclip_unimlip.studies.pretraining import slurm

from paths import REPO  # noqa: E402
from shards import write_shards

SCRIPTS = REPO / "scripts" / "slurm"
ONE_NODE, MULTINODE = SCRIPTS / "unimlip_1node_8gpu.sbatch", SCRIPTS / "unimlip_multinode.sbatch"
INSTALL = REPO / ".ci" / "install_slurm.sh"
SLURM_DIR = Path(os.environ.get("UNIMLIP_SLURM_DIR", "/var/tmp/openclip-unimlip-slurm"))


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "train", num_samples=64, per_shard=1)  # 64 shards: enough for 8 x 7 workers


def job_env(**variables):
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "unimlip", **variables}


# ---------------------------------------------------------------- without Slurm: the values


def test_shape_comes_from_the_allocation_and_keeps_the_paper_batch(shards, monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a Uni-Mlip run records its options
    env = job_env(TRAIN_DATA=shards, SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="32",
                  PRETRAINED="/ckpt/init.pt")
    command, env_updates, _ = slurm.launch_command("multinode", env, ["--val-frequency", "2"])
    torchrun = command[command.index("torch.distributed.run"):]
    assert torchrun[torchrun.index("--nnodes") + 1] == "2" and torchrun[torchrun.index("--nproc_per_node") + 1] == "4"
    assert command[command.index("--cpus-per-task") + 1] == "32"  # handed to srun explicitly (Slurm >= 22.05)
    args = parse_args(command[command.index("open_clip_train.main") + 2:])
    # the paper (Sec. 4.2): global batch 768, lr 1e-4, 100 epochs, cosine, AdamW
    assert 2 * 4 * args.batch_size == 768
    assert ((args.model, args.lr, args.epochs, args.lr_scheduler, args.opt)
            == ("unimlip-rn50", 1e-4, 100, "cosine", "adamw"))
    # PMC-CLIP's README training command: --warmup 500 --lr 1e-4 --wd 0.1 --crop-scale 0.5
    assert (args.warmup, args.wd, args.aug_cfg) == (500, 0.1, {"scale": (0.5, 1.0)})
    # PMC-CLIP's training/params.py get_default_params, ResNet branch (it sets no --beta*/--eps)
    assert (args.beta1, args.beta2, args.eps) == (0.9, 0.999, 1e-8)
    assert args.pretrained == "/ckpt/init.pt" and args.resume == "latest" and args.save_frequency == 1
    assert args.val_frequency == 2 and args.unimlip_simclr_start_epoch == 0
    # 32 CPUs for 4 processes: 7 loader workers + 1 thread each
    assert args.workers == 7 and env_updates["OMP_NUM_THREADS"] == "1"


def test_crop_scale_reaches_openclips_train_transform(shards):
    """The --aug-cfg the launcher writes is the RandomResizedCrop(scale=(0.5, 1)) of PMC-CLIP's
    transform.py (`RandomResizedCrop(image_size, scale=(crop_scale, 1.0))`, crop_scale 0.5)."""
    from open_clip.transform import AugmentationCfg, image_transform
    from open_clip_train.params import parse_args
    from torchvision.transforms import RandomResizedCrop

    args = parse_args(slurm.recipe_args(job_env(TRAIN_DATA=shards)))
    transform = image_transform(224, is_train=True, aug_cfg=AugmentationCfg(**args.aug_cfg))
    crops = [step for step in transform.transforms if isinstance(step, RandomResizedCrop)]
    assert len(crops) == 1 and crops[0].scale == (0.5, 1.0)


@pytest.mark.parametrize("variables, expected", [
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, (1, 4, 16)),
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:2,v100:2"}, (1, 4, 16)),
    ({"SLURM_GPUS_ON_NODE": "8", "GPUS_PER_NODE": "2"}, (1, 2, 32)),  # the override wins
    ({"SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "", "SLURM_CPUS_ON_NODE": "16"}, (1, 8, 2)),
])
def test_processes_per_node_from_slurm_variables(variables, expected):
    env = {"SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "64", **variables}
    shape = slurm.allocation_shape(env)
    assert (shape.nodes, shape.procs_per_node, shape.cpus_per_proc) == expected


@pytest.mark.parametrize("variables, message", [
    ({"TRAIN_DATA": ""}, "set TRAIN_DATA"),
    ({"GLOBAL_BATCH": "100"}, "GLOBAL_BATCH=100 must be a positive multiple of the 8 processes"),
    ({"SLURM_GPUS_ON_NODE": "0"}, "no GPUs in this allocation"),
    ({"SLURM_NNODES": "2"}, "this script trains on one node but the job has 2"),
    ({"SLURM_CPUS_PER_TASK": "4"}, "4 CPU(s) per node for 8 processes"),
    ({"CROP_SCALE": "2"}, "CROP_SCALE='2'"),
    ({"WORKERS": "9"}, "TRAIN_DATA has 64 shards for 8 processes x 9 workers"),
    ({"VAL_DATA": "/nowhere/val/00000.tar"}, "VAL_DATA: 1 of 1 shards do not exist"),
])
def test_bad_variables_stop_with_one_message(shards, variables, message):
    env = job_env(TRAIN_DATA=shards, SLURM_NNODES="1", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="64",
                  WORKERS="1")
    env.update(variables)
    with pytest.raises(slurm.LaunchError, match=re.escape(message)):
        slurm.launch_command("one-node", env, [])


def test_flags_the_launcher_owns_are_refused(shards):
    env = job_env(TRAIN_DATA=shards, SLURM_NNODES="1", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="64", WORKERS="1")
    with pytest.raises(slurm.LaunchError, match="use GLOBAL_BATCH"):
        slurm.launch_command("one-node", env, ["--batch", "4"])  # argparse's abbreviation of --batch-size
    with pytest.raises(slurm.LaunchError, match="refuses"):
        slurm.launch_command("one-node", env, ["--no-such-flag"])


def test_run_name_continues_on_resubmission_and_changes_with_the_recipe(shards):
    def name(**variables):
        return slurm.run_name(job_env(**variables), slurm.recipe_args(job_env(TRAIN_DATA=shards, **variables)))

    first = name(SLURM_JOB_ID="7")
    assert re.fullmatch(r"unimlip-[0-9a-f]{8}", first)
    assert name(SLURM_JOB_ID="8") == first          # a resubmitted job continues the run
    assert name(EPOCHS="200") == first              # so does one that extends it
    assert name(LR="5e-5") != first and name(GLOBAL_BATCH="512") != first
    assert name(NAME="mine") == "mine"


def test_checkpoint_cut_short_by_a_requeue_is_set_aside(tmp_path):
    """A requeue during OpenCLIP's torch.save leaves a truncated epoch_N.pt (seen under Slurm);
    after the launcher, OpenCLIP's own --resume latest picks the newest complete checkpoint."""
    import torch
    from open_clip_train.main import get_latest_checkpoint

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for epoch in (1, 2):
        torch.save({"epoch": epoch, "state_dict": {"w": torch.randn(64, 64)}}, checkpoints / f"epoch_{epoch}.pt")
    whole = (checkpoints / "epoch_2.pt").read_bytes()
    (checkpoints / "epoch_2.pt").write_bytes(whole[:len(whole) // 2])
    assert slurm.set_aside_incomplete_checkpoints(str(checkpoints)) == [str(checkpoints / "epoch_2.pt")]
    latest = get_latest_checkpoint(str(checkpoints), remote=False)
    assert latest == str(checkpoints / "epoch_1.pt")
    assert torch.load(latest, weights_only=True)["epoch"] == 1
    assert (checkpoints / "epoch_2.pt.incomplete").read_bytes() == whole[:len(whole) // 2]  # nothing lost


# ---------------------------------------------------------------- under a real Slurm


def _cluster_up(env) -> bool:
    result = subprocess.run(["sinfo", "-h", "-N", "-t", "idle,mixed,allocated", "-o", "%N"], env=env,
                            capture_output=True, text=True)
    return result.returncode == 0 and set(result.stdout.split()) == {"n1", "n2"}


@pytest.fixture(scope="session")
def slurm_env():
    """The environment a user has after activating the venv, pointed at the test cluster."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=str(SLURM_DIR / "slurm.conf"), HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    started = False
    if not (shutil.which("sbatch") and _cluster_up(env)):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            if os.environ.get("CI"):
                pytest.fail("CI must run the Slurm tests: run them as root on Debian (.ci/install_slurm.sh)")
            pytest.skip("no test Slurm cluster running, and installing or starting one needs root and apt-get "
                        "(.ci/install_slurm.sh)")
        result = subprocess.run(["bash", str(INSTALL), "start"], capture_output=True, text=True)
        if result.returncode != 0:
            if os.environ.get("CI") or shutil.which("slurmd"):
                pytest.fail(f".ci/install_slurm.sh failed:\n{result.stdout}{result.stderr}")
            pytest.skip(f"Slurm cannot be installed here (.ci/install_slurm.sh):\n{result.stderr[-2000:]}")
        started = True
    try:  # a job left from elsewhere would hold a node from these tests' jobs (one held n1 in a CI run)
        wait_for(lambda: not _cluster_report(env, "squeue", "-h"), 180, "the cluster's queue to empty")
    except AssertionError:
        pytest.fail(f"the test cluster is busy with other jobs; `bash {INSTALL.relative_to(REPO)} restart` "
                    f"forgets them:\n{_cluster_report(env)}")
    yield env
    if started:
        subprocess.run(["bash", str(INSTALL), "stop"], check=False)


def sbatch(env, *options, script=None, stdin=None, args=(), cwd=REPO, **variables) -> str:
    command = ["sbatch", "--parsable", "--gpus-per-node=0", *options]  # the test nodes have no GPU
    if script is not None:
        command += [str(script), *args]
    result = subprocess.run(command, env={**env, **variables}, cwd=cwd, capture_output=True, text=True,
                            input=None if stdin is None else Path(stdin).read_text())
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_state(env, job_id) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(predicate, timeout, what, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_done(env, job_id, out: Path, timeout=300) -> dict:
    def done():
        state = job_state(env, job_id)
        return state if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None

    try:
        return wait_for(done, timeout, f"job {job_id}")
    except AssertionError:
        reason = job_state(env, job_id).get("Reason")
        subprocess.run(["scancel", job_id], env=env)
        raise AssertionError(f"job {job_id} did not finish (reason: {reason}); the cluster:\n"
                             f"{_cluster_report(env)}\nits output:\n{_tail(out)}") from None


def _cluster_report(env, *command) -> str:
    """What one Slurm command prints (`command`), or the queue and the nodes' states."""
    commands = [command] if command else [("squeue",), ("sinfo", "-N")]
    return "".join(subprocess.run(list(each), env=env, capture_output=True, text=True).stdout for each in commands)


def _tail(path: Path) -> str:
    return path.read_text()[-4000:] if path.exists() else "(no output)"


def epoch_losses(log: str) -> list:
    """(epoch, mean training loss) of every epoch OpenCLIP's log shows trained to its end, in order."""
    completed = re.findall(r"Train Epoch: (\d+) \[.*\(100%\)\].* Loss: \S+ \((\S+)\)", log)
    return [(int(epoch), float(loss)) for epoch, loss in completed]


TINY_RUN = dict(MODEL="unimlip-tiny", PRECISION="fp32", GPUS_PER_NODE="1", WARMUP="2", LR="1e-3")


@pytest.mark.slow
@pytest.mark.parametrize("script, options, variables, message", [
    (MULTINODE, ["--nodes=2"], {"GLOBAL_BATCH": "9"}, "GLOBAL_BATCH=9 must be a positive multiple of the 2 processes"),
    (ONE_NODE, [], {"GPUS_PER_NODE": ""}, "no GPUs in this allocation"),
    (ONE_NODE, [], {"TRAIN_DATA": ""}, "set TRAIN_DATA"),
])
def test_bad_input_stops_before_open_clip_train(slurm_env, tmp_path, script, options, variables, message):
    train = write_shards(tmp_path / "train", num_samples=16, per_shard=8)
    job = sbatch(slurm_env, f"--chdir={tmp_path}", "--cpus-per-task=1", *options, stdin=script,
                 **{"TRAIN_DATA": train, **TINY_RUN, **variables})
    out = tmp_path / f"unimlip-{job}.out"
    state = wait_done(slurm_env, job, out, timeout=120)
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "1:0", _tail(out)
    text = out.read_text()
    assert f"openclip_unimlip.commands.slurm: {message}" in text and "nothing was started" in text
    assert "srun" not in text and not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- continuing on another shape


def _complete_epochs(checkpoints: Path) -> list:
    """The epochs whose checkpoint is whole (torch's zip archive has its directory written last)."""
    return sorted(int(path.stem.split("_")[1]) for path in checkpoints.glob("epoch_*.pt") if zipfile.is_zipfile(path))


def _freeze_after_first_checkpoint(env, job, work: Path, out: Path) -> tuple:
    """(checkpoints folder, epoch of the newest whole checkpoint) once the job has written one and is
    frozen (SIGSTOP): what it will resume from is then known."""
    checkpoints = wait_for(lambda: list(work.glob("logs/*/checkpoints")), 120, "the run directory")[0]
    wait_for(lambda: _complete_epochs(checkpoints) or job_state(env, job)["JobState"] != "RUNNING", 300,
             "the first checkpoint", interval=0.2)
    subprocess.run(["scontrol", "suspend", job], env=env, check=True)
    resume_epoch = max(_complete_epochs(checkpoints), default=0)
    assert 1 <= resume_epoch < 3, _tail(out)
    return checkpoints, resume_epoch


def _launches(log: str) -> list:
    """Per launch of OpenCLIP into the run's out.log (appended to by every launch): the world size and
    batch per process it recorded (its "Params:" block, what it also writes to params.txt) and the
    epochs it trained to their end (0-based, as OpenCLIP logs them) — read from the trainer's own log,
    not from the launcher's arithmetic."""
    launches = []
    for block in re.split(r"\n(?=.*\| INFO \| Params:)", log)[1:]:
        params = dict(re.findall(r"\| INFO \|   (world_size|batch_size|epochs|lr|name): (\S+)", block))
        launches.append((params, [epoch for epoch, _ in epoch_losses(block)]))
    return launches


def _one_run_of_every_epoch_once(work: Path, checkpoints: Path, resume_epoch: int, shapes: list) -> None:
    """What both continuations must leave: one run folder; two launches recording ``shapes`` (world
    size, batch per process) with the same epochs, lr and name; the first launch's epochs up to its
    checkpoint and the second's from there to 3 (OpenCLIP's own log); whole checkpoints 1..3."""
    assert [path.name for path in (work / "logs").iterdir()] == [checkpoints.parent.name]  # one run
    launches = _launches((checkpoints.parent / "out.log").read_text())
    assert [(params["world_size"], params["batch_size"]) for params, _ in launches] == shapes, launches
    assert len({tuple(params[key] for key in ("epochs", "lr", "name")) for params, _ in launches}) == 1
    (_, first), (_, second) = launches
    assert first[:resume_epoch] == list(range(resume_epoch)) and second == list(range(resume_epoch, 3))
    assert _complete_epochs(checkpoints) == [1, 2, 3]
    import torch

    assert torch.load(checkpoints / "epoch_3.pt", map_location="cpu", weights_only=False)["epoch"] == 3


@pytest.mark.slow
def test_a_requeue_onto_more_nodes_continues_the_run_for_exactly_the_configured_epochs(slurm_env, tmp_path):
    """Requeued from 1 node x 1 process onto 2 nodes x 1 (world size 1 -> 2): the same run folder, the
    global batch kept (8 = 1 x 8, then 2 x 4), epochs 1..3 trained once each across the two starts, and
    the second start's c10d rendezvous over the two nodes."""
    train = write_shards(tmp_path / "train", num_samples=16, per_shard=8)  # 2 shards: one per process
    job = sbatch(slurm_env, f"--chdir={tmp_path}", "--nodes=1", "--cpus-per-task=2", script=MULTINODE,
                 args=["--unimlip-no-bn-freeze"], TRAIN_DATA=train, GLOBAL_BATCH="8", EPOCHS="3", **TINY_RUN)
    out = tmp_path / f"unimlip-{job}.out"
    checkpoints, resume_epoch = _freeze_after_first_checkpoint(slurm_env, job, tmp_path, out)
    subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    wait_for(lambda: job_state(slurm_env, job)["JobState"] == "PENDING", 60, "the requeue")
    # the first start's batch step cleans its spool folder up after the job shows PENDING; started
    # again before that, slurmd refuses the launch ("File exists") and holds the job
    wait_for(lambda: not list(SLURM_DIR.glob(f"spool-*/job{int(job):05d}")), 60, "the first start's clean-up")
    # the requeued job gets another node shape: two nodes, one task each ("2-2": a bare 2 is refused)
    for change in ("NumTasks=2", "NumNodes=2-2"):
        subprocess.run(["scontrol", "update", f"jobid={job}", change], env=slurm_env, check=True)
    subprocess.run(["scontrol", "release", job], env=slurm_env, check=True)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm_env, check=True)
    state = wait_done(slurm_env, job, out)
    assert state["JobState"] == "COMPLETED" and state["NodeList"] == "n[1-2]", _tail(out)

    text = out.read_text()  # --open-mode=append: both starts of the job are in its output
    assert "(restart 0): 1 node(s) x 1 processes, global batch 8 = 1 x 8" in text
    assert "(restart 1): 2 node(s) x 1 processes, global batch 8 = 2 x 4" in text
    # the second start's rendezvous over two nodes: one rank on each node's torchrun, both local rank 0
    assert re.search(r"--rdzv_backend c10d --rdzv_endpoint \S+:\d+", text)
    assert {("0", "0", "2"), ("1", "0", "2")} <= set(re.findall(r"Process \(global: (\d), local (\d)\), total (\d)",
                                                              text)), _tail(out)
    _one_run_of_every_epoch_once(tmp_path, checkpoints, resume_epoch, [("1", "8"), ("2", "4")])
    params = (checkpoints.parent / "params.txt").read_text()  # OpenCLIP rewrites it at each launch
    assert "world_size: 2\n" in params and "batch_size: 4\n" in params


@pytest.mark.slow
def test_a_chained_job_on_fewer_processes_continues_the_run_for_exactly_the_configured_epochs(slurm_env, tmp_path):
    """A job on 1 node x 2 processes, cut short after its first checkpoint, then the README's chained
    --dependency=afterany job on 1 node x 1 process (world size 2 -> 1): the same run folder, the
    global batch kept (8 = 2 x 4, then 1 x 8), and epochs 1..3 trained once each across the two jobs."""
    work = tmp_path / "job"  # --chdir: the jobs run elsewhere than where they were submitted
    work.mkdir()
    train = write_shards(tmp_path / "train", num_samples=16, per_shard=8)  # 2 shards: one per process
    val = write_shards(tmp_path / "val", num_samples=8, per_shard=8, seed=1).replace("{00000..00000}", "00000")
    run_variables = dict(TRAIN_DATA=train, GLOBAL_BATCH="8", EPOCHS="3", **TINY_RUN)
    # SimCLR from the first epoch (statistics updating, so no warm-up): every epoch's loss has the same terms;
    # submitted by a relative path, with an argument holding slashes (both broke an old script)
    run_args = ["--val-data", val, "--unimlip-no-bn-freeze"]
    first = sbatch(slurm_env, f"--chdir={work}", "--cpus-per-task=2", script=ONE_NODE.relative_to(REPO),
                   args=run_args, **{**run_variables, "GPUS_PER_NODE": "2"})
    chained = sbatch(slurm_env, f"--chdir={work}", "--cpus-per-task=2", f"--dependency=afterany:{first}",
                     script=ONE_NODE.relative_to(REPO), args=run_args, **run_variables)
    first_out, chained_out = work / f"unimlip-{first}.out", work / f"unimlip-{chained}.out"
    checkpoints, resume_epoch = _freeze_after_first_checkpoint(slurm_env, first, work, first_out)
    subprocess.run(["scancel", first], env=slurm_env, check=True)  # as a time limit would end it
    state = wait_done(slurm_env, chained, chained_out)
    assert state["JobState"] == "COMPLETED", _tail(chained_out)

    assert "1 node(s) x 2 processes, global batch 8 = 2 x 4" in first_out.read_text()
    assert "1 node(s) x 1 processes, global batch 8 = 1 x 8" in chained_out.read_text()
    _one_run_of_every_epoch_once(work, checkpoints, resume_epoch, [("2", "4"), ("1", "8")])
    results = [json.loads(line)["epoch"] for line in (checkpoints / "results.jsonl").read_text().splitlines()]
    assert set(results) == {1, 2, 3}  # the val set (the slash argument) was evaluated every epoch
