"""One prepared check of the CUDA path, for a GPU machine that is lent for a few minutes.

    python -m tools.gpu_check --device cuda --size rn50 --out DIR      # from the repository root

runs, in this order and each under its own time budget, so that one failing stage still
leaves the others' numbers:

1. the tests marked ``cuda`` (``tests/test_cuda.py``: bf16 and fp16 + GradScaler steps,
   views on CUDA against their CPU definition, no host-device synchronisation);
2. the step benchmark (``bench.py``): plain CLIP against Uni-Mlip on the same towers, bf16
   autocast on CUDA, eager and with ``torch.compile``;
3. the data benchmark (``bench_data.py``): three-view against single-view samples/s.

It writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` and prints the markdown.
With ``--device cpu --size tiny`` the same stages run here, so the command is known to work
before a device is spent on it. ``scripts/gpu_carry.sh`` builds what has to travel and
``scripts/gpu_check.sh`` installs it and calls this module.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

# The targets of the GPU-readiness issue, checked against the measurements.
TARGET_STEP_EFFICIENCY = 0.95  # Uni-Mlip step efficiency against plain CLIP on the same towers
TARGET_THREE_VIEW_COST = 1.10  # three-view / single-view cost per sample
V100_MEMORY_MIB = 32 * 1024  # the paper trained 96 per 32 GB V100 (8 x V100, batch 768)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the dry run here")
    parser.add_argument("--size", choices=["tiny", "rn50"], default="rn50")
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per-device step batch (default: 96 for rn50, the paper's 768 over 8 GPUs; 8 for tiny)")
    parser.add_argument("--iters", type=int, default=5, help="timed step rounds (median reported)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile step benchmark")
    parser.add_argument("--data-root", default=None,
                        help="embedded shards for the data benchmark (built there when missing); default: skip it")
    parser.add_argument("--data-workers", type=int, default=16)
    parser.add_argument("--data-samples", type=int, default=640)
    parser.add_argument("--data-image-size", type=int, default=224)
    parser.add_argument("--tests", default="tests/test_cuda.py",
                        help="the cuda-marked tests to run, from the repository root ('' to skip)")
    parser.add_argument("--build-data-only", action="store_true",
                        help="build the data benchmark's shards in --data-root and stop (scripts/gpu_carry.sh)")
    parser.add_argument("--stage-timeout", type=float, default=240, help="seconds a subprocess stage may take")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 96 if args.size == "rn50" else 8
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but torch sees no CUDA device (use --device cpu for the dry run)")
    return args


def _stage(name: str, results: Dict, work: Callable[[], Dict]) -> None:
    """Runs one stage, recording its result or its error and its duration."""
    print(f"== {name}", flush=True)
    begin = time.perf_counter()
    try:
        results[name] = {"ok": True, **work()}
    except Exception as exc:  # one failing stage must not cost the others' numbers
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(results[name]["traceback"], flush=True)
    results[name]["seconds"] = round(time.perf_counter() - begin, 1)


def run_cuda_tests(tests: str, timeout: float) -> Dict:
    """The tests marked ``cuda``, in a subprocess (they skip where torch sees no CUDA)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", tests]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    print(output[-4000:], flush=True)
    summary = next((line for line in reversed(output.splitlines()) if " in " in line and "=" not in line[:1]), "")
    # pytest: 0 all passed, 5 none collected; anything else is a failure worth reading
    if done.returncode not in (0, 5):
        raise RuntimeError(f"cuda tests failed (exit {done.returncode}): {summary}")
    return {"returncode": done.returncode, "summary": summary.strip()}


def run_step(size: str, batch_size: int, device: str, iters: int, compile_model: bool) -> Dict:
    import torch

    from tools.bench import run_step_benchmark

    amp_dtype = torch.bfloat16 if device.startswith("cuda") else None
    report = run_step_benchmark(size, batch_size, device, ("clip", "unimlip"), warmup=2, iters=iters,
                                amp_dtype=amp_dtype, compile_model=compile_model)
    print(report.format_table(), flush=True)
    return {"report": report.to_dict(), "table": report.format_table()}


def data_shards(root: str, samples: int, image_size: int, workers: int):
    """The data benchmark's train shards, built when missing: two shards per worker at least,
    since open_clip_train asserts shards >= workers."""
    from tools.bench_data import embedded_shards

    return embedded_shards(root, samples, image_size, shard_size=max(1, samples // (2 * max(1, workers))))


def run_data(root: str, samples: int, image_size: int, workers: int, batch_size: int, device: str) -> Dict:
    import open_clip

    from tools.bench_data import format_data_table, run_data_benchmark

    shards = data_shards(root, samples, image_size, workers)
    measurements = run_data_benchmark(shards.pattern, shards.num_samples, open_clip.get_tokenizer("unimlip-tiny"),
                                      image_size, [workers], batch_size, 3, device)
    table = format_data_table(measurements)
    print(table, flush=True)
    single = next(m.median for m in measurements if m.pipeline == "single-view")
    three = next(m.median for m in measurements if m.pipeline == "three-view")
    return {"samples": shards.num_samples, "workers": workers, "single_view_per_s": single,
            "three_view_per_s": three, "three_view_cost": single / three, "table": table}


def _environment(device: str) -> Dict:
    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_mib"] = torch.cuda.get_device_properties(device).total_memory // 2 ** 20
    return info


def targets(results: Dict) -> List[Dict]:
    """Each target of the issue with its measured value and status (None where not measured)."""
    rows = []
    for name in ("step eager", "step compiled"):
        stage = results.get(name, {})
        unimlip = next((r for r in stage.get("report", {}).get("rows", []) if r["variant"] == "unimlip"), None)
        if unimlip is not None:
            rows.append({"target": f"Uni-Mlip step efficiency ({name.split()[1]}) >= {TARGET_STEP_EFFICIENCY}",
                         "value": round(unimlip["efficiency"], 3),
                         "met": unimlip["efficiency"] >= TARGET_STEP_EFFICIENCY})
            rows.append({"target": f"peak memory at this batch ({name.split()[1]}) fits a 32 GB V100",
                         "value": round(unimlip["peak_memory_mib"]),
                         "met": unimlip["peak_memory_mib"] < V100_MEMORY_MIB})
    data = results.get("data", {})
    if "three_view_cost" in data:
        rows.append({"target": f"three-view data cost <= {TARGET_THREE_VIEW_COST}x single-view, "
                               f"{data['workers']} workers",
                     "value": round(data["three_view_cost"], 3),
                     "met": data["three_view_cost"] <= TARGET_THREE_VIEW_COST})
    return rows


def format_markdown(results: Dict) -> str:
    env = results["environment"]
    lines = [f"# GPU check, {env['date']}", "",
             f"{env.get('gpu', 'CPU dry run')}; torch {env['torch']}; Python {env['python']}; {env['cpus']} CPUs", ""]
    for name, stage in results["stages"].items():
        status = "ok" if stage["ok"] else f"FAILED: {stage['error']}"
        lines.append(f"## {name} ({stage['seconds']} s): {status}")
        if stage.get("summary"):
            lines.append(f"pytest: {stage['summary']}")
        if stage.get("table"):
            lines += ["```", stage["table"], "```"]
        lines.append("")
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.build_data_only:
        if not args.data_root:
            raise SystemExit("--build-data-only needs --data-root")
        shards = data_shards(args.data_root, args.data_samples, args.data_image_size, args.data_workers)
        print(f"{shards.num_samples} train samples in {shards.pattern}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages: Dict = {}
    if args.tests:
        _stage("cuda tests", stages, lambda: run_cuda_tests(args.tests, args.stage_timeout))
    _stage("step eager", stages, lambda: run_step(args.size, args.batch_size, args.device, args.iters, False))
    if not args.no_compile:
        _stage("step compiled", stages, lambda: run_step(args.size, args.batch_size, args.device, args.iters, True))
    if args.data_root:
        _stage("data", stages, lambda: run_data(args.data_root, args.data_samples, args.data_image_size,
                                                 args.data_workers, args.batch_size, args.device))
    results = {"environment": _environment(args.device), "arguments": vars(args), "stages": stages}
    results["targets"] = targets(stages)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    markdown = format_markdown(results)
    (out / "gpu_check.md").write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
    return 0 if all(stage["ok"] for stage in stages.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
