"""The GPU check's dry run on this CPU: the same two scripts a lent GPU machine runs, end to end."""
import json
import os
import subprocess
import sys

import pytest

from paths import REPO  # noqa: E402


@pytest.mark.slow
def test_carry_and_check_run_end_to_end_on_cpu(tmp_path):
    python = sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {**os.environ, "PYTHON": python}
    carry = tmp_path / "carry"
    subprocess.run(["bash", str(REPO / "scripts/gpu_carry.sh"), "--python-version", version, "--dest", str(carry),
                    "--data-samples", "48"], check=True, env=env, timeout=600)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO / "scripts/gpu_check.sh"), "--device", "cpu", "--size", "tiny", "--out", str(out),
         "--no-compile", "--iters", "1", "--data-samples", "48", "--data-workers", "1"],
        env={**env, "GPU_CARRY": str(carry)}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "gpu_check.json").read_text())
    assert all(stage["ok"] for stage in results["stages"].values())
    assert "4 skipped" in results["stages"]["cuda tests"]["summary"]  # no CUDA here: every cuda test skips
    rows = {r["variant"]: r for r in results["stages"]["step eager"]["report"]["rows"]}
    seconds = results["stages"]["step eager"]["report"]["seconds"]
    # the ratios are what the raw measurements give, and Uni-Mlip counts more FLOPs than CLIP
    assert rows["unimlip"]["gflops"] > rows["clip"]["gflops"] > 0
    time_ratio = seconds["unimlip"][0] / seconds["clip"][0]
    assert rows["unimlip"]["efficiency"] == pytest.approx(rows["unimlip"]["flop_ratio"] / time_ratio)
    data = results["stages"]["data"]
    assert data["three_view_cost"] == pytest.approx(data["single_view_per_s"] / data["three_view_per_s"])
    assert {t["target"].split(" ")[0] for t in results["targets"]} >= {"Uni-Mlip", "three-view"}
    assert (out / "gpu_check.md").read_text().startswith("# GPU check")
