"""Uni-Mlip pre-training from inside a Slurm batch job, shaped by the allocation.

``python -m openclip_unimlip.commands.slurm one-node|multinode [open_clip_train args]`` (the console
command ``unimlip-slurm``) is what ``scripts/slurm/*.sbatch`` run; its logic is
``openclip_unimlip.studies.pretraining.slurm``. Living in the package, it needs no path to the
repository (``sbatch`` runs a copy of the script, so the script cannot find files beside it), and
works the same whether the job was submitted by path, by a relative path with ``--chdir``, from
stdin, or requeued.

It reads the shape from Slurm (nodes, GPUs and CPUs per node), the recipe from environment
variables (the paper's values by default, see ``RECIPE``), checks everything before launching and
then replaces itself with ``srun … torchrun … -m open_clip_train.main``. Anything wrong stops it
with one message and nothing started (no run directory, no rank).
"""
import hashlib
import json
import os
import socket
import sys
import zipfile
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions
from openclip_unimlip.recipes.unimlip.phases import default_simclr_start

# (variable, default, source) — the documented recipe; README "SLURM" lists the same.
RECIPE = (
    ("MODEL", "unimlip-rn50", "paper Sec. 4.2: modified ResNet-50 + PubMedBERT"),
    ("GLOBAL_BATCH", "768", "paper Sec. 4.2: batch 768 over 8 V100"),
    ("EPOCHS", "100", "paper Sec. 4.2"),
    ("LR", "1e-4", "paper Sec. 4.2 (also PMC-CLIP's README)"),
    # The paper keeps PMC-CLIP's hyper-parameters for its PMC-CLIP run and starts Uni-Mlip from that
    # model, but names no warmup, weight decay or crop for Uni-Mlip: carrying PMC-CLIP's over is ours.
    ("WARMUP", "500", "PMC-CLIP's README training command: --warmup 500"),
    ("WD", "0.1", "PMC-CLIP's README training command: --wd 0.1"),
    ("CROP_SCALE", "0.5", "PMC-CLIP's README: --crop-scale 0.5 = RandomResizedCrop(scale=(0.5, 1))"),
    ("PRECISION", "amp", "ours (the paper trains on V100s; OpenCLIP's mixed precision)"),
    # unset: 0 with PRETRAINED (paper Sec. 4.2: SimCLR + frozen BN from the start when initialised from
    # PMC-CLIP), else left to the trainer: half of EPOCHS (ours), kept by requeues (see recipe_args)
    ("SIMCLR_START_EPOCH", "",
     "0 with PRETRAINED (paper Sec. 4.2); without, the trainer's warm-up: EPOCHS // 2 (ours)"),
)


MODES = ("one-node", "multinode")  # scripts/slurm/unimlip_1node_8gpu.sbatch, unimlip_multinode.sbatch


class LaunchError(ValueError):
    """A launch that cannot work; the message says what to change."""


@dataclass(frozen=True)
class Shape:
    nodes: int
    procs_per_node: int
    cpus_per_proc: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def _gpus_per_node(value: str) -> int:
    """Slurm's ``--gpus-per-node`` value as a count: ``8``, ``a100:8``, ``gpu:a100:4,v100:2``."""
    try:
        return sum(int(part.rsplit(":", 1)[-1]) for part in value.split(","))
    except ValueError:
        raise LaunchError(f"cannot read a GPU count from SLURM_GPUS_PER_NODE={value!r}; set GPUS_PER_NODE") from None


def allocation_shape(env: Mapping[str, str]) -> Shape:
    """Nodes, processes per node (one per GPU) and CPUs per process, from Slurm or the overrides."""
    nodes = _int(env, "NNODES") or _int(env, "SLURM_NNODES") or _int(env, "SLURM_JOB_NUM_NODES")
    if not nodes:
        raise LaunchError("SLURM_NNODES is not set: run inside a Slurm job (sbatch), or set NNODES")
    allocated_nodes = _int(env, "SLURM_NNODES") or nodes
    if nodes > allocated_nodes:
        raise LaunchError(f"NNODES={nodes} but the job has {allocated_nodes} node(s)")

    procs = _int(env, "GPUS_PER_NODE")
    if procs is None:
        procs = _int(env, "SLURM_GPUS_ON_NODE")
    if procs is None and env.get("SLURM_GPUS_PER_NODE"):
        procs = _gpus_per_node(env["SLURM_GPUS_PER_NODE"])
    if not procs or procs < 1:
        raise LaunchError(
            "no GPUs in this allocation (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE unset or 0): "
            "submit with --gpus-per-node N, or set GPUS_PER_NODE=N (N processes per node; on a CPU-only "
            "allocation they train on the CPU)")

    cpus = _int(env, "SLURM_CPUS_PER_TASK") or _int(env, "SLURM_CPUS_ON_NODE")
    if not cpus:
        raise LaunchError("neither SLURM_CPUS_PER_TASK nor SLURM_CPUS_ON_NODE is set: submit with --cpus-per-task")
    if cpus < procs:
        raise LaunchError(f"{cpus} CPU(s) per node for {procs} processes: submit with --cpus-per-task >= {procs}")
    return Shape(nodes=nodes, procs_per_node=procs, cpus_per_proc=cpus // procs)


def _recipe(env: Mapping[str, str]) -> dict:
    return {name: env.get(name) or default for name, default, _ in RECIPE}


def _crop_scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not 0 < scale <= 1:
        raise LaunchError(f"CROP_SCALE={value!r}: the smallest crop's area fraction, in (0, 1]")
    return scale


def recipe_args(env: Mapping[str, str], extra: Sequence[str] = ()) -> List[str]:
    """The open_clip_train arguments that define the run, whatever the allocation (no batch per
    process, workers, log folder or name): what the run name is derived from."""
    if not env.get("TRAIN_DATA"):
        raise LaunchError("set TRAIN_DATA to the training shards, "
                          "e.g. TRAIN_DATA='/data/pmcoa/train/{00000..00164}.tar'")
    recipe = _recipe(env)
    args = ["--model", recipe["MODEL"], "--train-data", env["TRAIN_DATA"], "--dataset-type", "webdataset",
            "--epochs", recipe["EPOCHS"], "--lr", recipe["LR"], "--warmup", recipe["WARMUP"], "--wd", recipe["WD"],
            "--aug-cfg", f"scale=({_crop_scale(recipe['CROP_SCALE'])}, 1.0)",
            "--lr-scheduler", "cosine", "--opt", "adamw", "--precision", recipe["PRECISION"],
            "--save-frequency", "1", "--resume", "latest", "--report-to", "tensorboard"]
    # With PRETRAINED, the trainer's rule gives 0 whatever EPOCHS is: written out, the same arguments, so
    # the same run name, as before the trainer derived it. From scratch the start depends on EPOCHS: the
    # trainer derives it at the first launch and reads it back on every resume, so the name leaves it
    # out and a longer EPOCHS still continues the run.
    start = _int(recipe, "SIMCLR_START_EPOCH")
    pretrained = bool(env.get("PRETRAINED"))
    if start is None and pretrained:
        start = default_simclr_start(pretrained, _int(recipe, "EPOCHS"))
    args += UniMlipOptions(simclr_start_epoch=start).to_argv()
    if env.get("PRETRAINED"):
        args += ["--pretrained", env["PRETRAINED"]]
    if env.get("TRAIN_NUM_SAMPLES"):
        args += ["--train-num-samples", env["TRAIN_NUM_SAMPLES"]]
    if env.get("VAL_DATA"):
        args += ["--val-data", env["VAL_DATA"]]
        if env.get("VAL_NUM_SAMPLES"):
            args += ["--val-num-samples", env["VAL_NUM_SAMPLES"]]
    return args + list(extra)


def run_name(env: Mapping[str, str], recipe: Sequence[str]) -> str:
    """``NAME``, or ``<job name>-<hash of the recipe>``: resubmitting the same command (after a time
    limit, or chained with --dependency=afterany) continues the same run through ``--resume latest``;
    changing any recipe argument except EPOCHS starts a new run. The hash leaves out what depends on
    the allocation (batch per process, workers), so a resubmission on another shape continues too."""
    if env.get("NAME"):
        return env["NAME"]
    without_epochs = list(recipe)
    index = without_epochs.index("--epochs")
    del without_epochs[index:index + 2]
    digest = hashlib.sha256(json.dumps([_recipe(env)["GLOBAL_BATCH"], *without_epochs]).encode()).hexdigest()
    return f"{env.get('SLURM_JOB_NAME') or 'unimlip'}-{digest[:8]}"


def _check_shards(label: str, urls: str, num_samples_variable: str, required: bool) -> int:
    """Checks that local shards exist; returns their count. Requires a sample count (sizes.json or
    __len__ beside the shards, as OpenCLIP reads them) when ``required``."""
    from open_clip_train.data import expand_urls, get_dataset_size

    shards, _ = expand_urls(urls)
    local = [shard for shard in shards if "://" not in shard and not shard.startswith("pipe:")]
    missing = [shard for shard in local if not os.path.exists(shard)]
    if missing:
        raise LaunchError(f"{label}: {len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}")
    if required:
        try:
            num_samples, _ = get_dataset_size(urls)
        except (KeyError, ValueError, OSError) as error:
            raise LaunchError(f"{label}: cannot read the sample count beside the shards ({error!r})") from None
        if not num_samples:
            raise LaunchError(f"{label}: no sizes.json or __len__ beside the shards: set {num_samples_variable}")
    return len(shards)


def train_args(env: Mapping[str, str], shape: Shape, extra: Sequence[str] = ()) -> Tuple[List[str], str]:
    """The full, checked open_clip_train argument list for this allocation, and the run name."""
    recipe = recipe_args(env, extra)
    global_batch = _int(env, "GLOBAL_BATCH")
    if global_batch is None:  # unset: the recipe's; an explicit 0 is refused below, not replaced
        global_batch = int(_recipe({})["GLOBAL_BATCH"])
    if global_batch < 1 or global_batch % shape.world_size:
        raise LaunchError(
            f"GLOBAL_BATCH={global_batch} must be a positive multiple of the {shape.world_size} processes "
            f"({shape.nodes} node(s) x {shape.procs_per_node}): change GLOBAL_BATCH or the allocation")
    workers = _int(env, "WORKERS")
    if workers is None:  # ours: one CPU per process for the training loop, the others load data
        workers = max(1, shape.cpus_per_proc - 1)  # an explicit 0 stays: OpenCLIP loads in the process
    name = run_name(env, recipe)
    logs = env.get("LOGS") or os.path.join(os.getcwd(), "logs")
    owned = ["--batch-size", str(global_batch // shape.world_size), "--workers", str(workers),
             "--logs", logs, "--name", name]
    args = recipe[:len(recipe) - len(extra)] + owned + list(extra)
    _check_args(args, owned_values={"batch_size": ("GLOBAL_BATCH", global_batch // shape.world_size),
                                    "logs": ("LOGS", logs), "name": ("NAME", name)},
                world_size=shape.world_size)
    return args, name


def _check_args(args: List[str], owned_values: dict, world_size: int) -> None:
    from open_clip_train.params import parse_args

    try:
        parsed = parse_args(args)
    except SystemExit as exit_:  # argparse has printed its message; the plugin's refusals carry theirs
        detail = exit_.code if isinstance(exit_.code, str) else "see above"
        raise LaunchError(f"open_clip_train refuses these arguments ({detail})") from exit_
    for field, (variable, value) in owned_values.items():
        if getattr(parsed, field) != value:
            raise LaunchError(f"--{field.replace('_', '-')} is set by the launcher: use {variable} instead")
    shards = _check_shards("TRAIN_DATA", parsed.train_data, "TRAIN_NUM_SAMPLES", parsed.train_num_samples is None)
    if not parsed.dataset_resampled and shards < world_size * max(1, parsed.workers):
        raise LaunchError(  # OpenCLIP asserts this in every rank after start-up
            f"TRAIN_DATA has {shards} shards for {world_size} processes x {parsed.workers} workers: "
            f"OpenCLIP needs one shard per worker; lower WORKERS or write more shards")
    if parsed.val_data:  # OpenCLIP evaluates the whole val set when it has no sample count
        _check_shards("VAL_DATA", parsed.val_data, "VAL_NUM_SAMPLES", required=False)


def launch_command(mode: str, env: Mapping[str, str], extra: Sequence[str]) -> Tuple[List[str], dict, str]:
    """(argv to exec, environment updates, one-line summary) for ``mode`` one-node or multinode."""
    if mode not in MODES:
        raise LaunchError(f"mode must be one-node or multinode, not {mode!r}")
    if not env.get("SLURM_JOB_ID"):
        raise LaunchError("not inside a Slurm job: submit the script with sbatch")
    shape = allocation_shape(env)
    if mode == "one-node" and shape.nodes != 1:
        raise LaunchError(f"this script trains on one node but the job has {shape.nodes}: "
                          "use scripts/slurm/unimlip_multinode.sbatch")
    args, name = train_args(env, shape, extra)
    global_batch = shape.world_size * int(args[args.index("--batch-size") + 1])
    workers = int(args[args.index("--workers") + 1])
    # ours: what the loader workers leave of the process's CPUs goes to the training loop's threads
    threads = env.get("OMP_NUM_THREADS") or str(max(1, shape.cpus_per_proc - workers))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(shape.nodes),
                "--nproc_per_node", str(shape.procs_per_node)]
    if mode == "one-node":
        torchrun += ["--standalone"]  # torchrun picks a free local port itself
        endpoint = "local"
    else:
        host = env.get("RDZV_HOST") or socket.gethostname()  # the batch step runs on the job's first node
        port = _int(env, "RDZV_PORT") or _free_port()
        endpoint = f"{host}:{port}"
        torchrun += ["--rdzv_id", env["SLURM_JOB_ID"], "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint]
    srun = ["srun", "--nodes", str(shape.nodes), "--ntasks", str(shape.nodes), "--ntasks-per-node", "1",
            # Slurm 22.05+ no longer hands the job's --cpus-per-task to srun: without this every
            # torchrun and its loader workers would share one CPU on clusters that bind tasks
            "--cpus-per-task", str(shape.cpus_per_proc * shape.procs_per_node), "--kill-on-bad-exit=1"]
    # "--": torchrun's own parser would otherwise take OpenCLIP's --logs
    argv = srun + torchrun + ["-m", "open_clip_train.main", "--"] + args
    summary = (f"job {env['SLURM_JOB_ID']} (restart {env.get('SLURM_RESTART_COUNT', '0')}): "
               f"{shape.nodes} node(s) x {shape.procs_per_node} processes, global batch {global_batch} = "
               f"{shape.world_size} x {args[args.index('--batch-size') + 1]}, {workers} workers + "
               f"{threads} threads per process, rendezvous {endpoint}, "
               f"run {os.path.join(args[args.index('--logs') + 1], name)}")
    return argv, {"OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE") or "1"}, summary


def _free_port() -> int:
    # A port free on the job's first node now; torchrun binds it a moment later, there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def set_aside_incomplete_checkpoints(checkpoint_dir: str) -> List[str]:
    """Renames checkpoints whose writing was cut short to ``<name>.incomplete``, so that
    ``--resume latest`` takes the newest complete one. OpenCLIP writes ``epoch_N.pt`` in place, so a
    requeue or time limit during the save leaves a truncated file it would then fail to load; torch's
    format is a zip archive whose directory is written last, so a truncated one is not a zip."""
    set_aside = []
    if os.path.isdir(checkpoint_dir):
        for name in sorted(os.listdir(checkpoint_dir)):
            path = os.path.join(checkpoint_dir, name)
            if name.endswith(".pt") and not zipfile.is_zipfile(path):
                os.replace(path, path + ".incomplete")
                set_aside.append(path)
    return set_aside
