"""Scripts without a test of their own, each run end to end at a tiny size as a user runs it
(a subprocess, from a folder other than the checkout), and their outputs checked."""
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from paths import TESTS  # noqa: E402

SCRIPTS = TESTS.parent / "scripts"
SHIPPED_KNOWLEDGE = TESTS.parent / "openclip_unimlip" / "recipes" / "mlip_li" / "knowledge" / "radiology_entities.jsonl"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_script(name, *args, cwd):
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow  # ~20-50 s on 2 shared cores: three tiny models timed, FLOPs counted
def test_bench_train_step_script(tmp_path):
    variants = ["clip", "unimlip", "+mlm"]
    result = run_script("bench_train_step.py", "--sizes", "tiny", "--batch-size", "2", "--device", "cpu",
                        "--variants", *variants[1:], "--warmup", "0", "--iters", "2", "--threads", "1", "--json",
                        cwd=tmp_path)
    report, = json.loads(result.stdout)["reports"]
    assert (report["model"], report["batch_size"], report["device"]) == ("unimlip-tiny", 2, "cpu")
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == variants  # clip is always measured: every ratio refers to it
    for variant, row in rows.items():
        assert row["step_ms"] > 0 and row["gflops"] > 0 and math.isfinite(row["efficiency"]), variant
        seconds = report["seconds"][variant]
        assert len(seconds) == 2 and all(s > 0 for s in seconds)
        # the ratios follow from the raw timings and FLOPs printed beside them
        assert row["step_ms"] == pytest.approx(1000 * statistics.median(seconds))
        clip_seconds = statistics.median(report["seconds"]["clip"])
        assert row["time_ratio"] == pytest.approx(statistics.median(seconds) / clip_seconds)
        assert row["flop_ratio"] == pytest.approx(row["gflops"] / rows["clip"]["gflops"])
        assert row["efficiency"] == pytest.approx(row["flop_ratio"] / row["time_ratio"])
    # three image passes, a fusion transformer and a vocabulary projection are more work than CLIP
    assert rows["unimlip"]["gflops"] > rows["+mlm"]["gflops"] > rows["clip"]["gflops"]


@pytest.mark.slow  # ~15-30 s: builds the embedded dataset's shards, then reads them four times
def test_bench_data_script(tmp_path):
    root = tmp_path / "shards"
    result = run_script("bench_data.py", "--root", root, "--num-samples", "24", "--image-size", "32",
                        "--workers", "0", "--batch-size", "4", "--epochs", "2", "--device", "cpu", "--json",
                        cwd=tmp_path)
    measurements = json.loads(result.stdout)
    assert [(m["pipeline"], m["workers"]) for m in measurements] == [("single-view", 0), ("three-view", 0)]
    for m in measurements:
        assert len(m["samples_per_second"]) == 2
        assert all(rate > 0 and math.isfinite(rate) for rate in m["samples_per_second"])
        assert m["median"] == pytest.approx(statistics.median(m["samples_per_second"]))
    sizes = [json.loads(p.read_text()) for p in root.rglob("sizes.json")]
    assert sizes and 0 < sum(sum(s.values()) for s in sizes) <= 24  # the shards it built and read


def _knowledge_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_knowledge_script_rebuilds_the_shipped_file(tmp_path):
    default = tmp_path / "default.jsonl"
    result = run_script("build_knowledge.py", "--output", default, cwd=tmp_path)
    assert "wrote 500 entities from radiology-semantic-dict 1.4.0" in result.stdout
    assert default.read_bytes() == SHIPPED_KNOWLEDGE.read_bytes()  # the shipped file is what the script builds

    tiny = tmp_path / "tiny.jsonl"
    run_script("build_knowledge.py", "--output", tiny, "--max-entities", "3", "--findings", "2", cwd=tmp_path)
    entities, shipped = _knowledge_lines(tiny), _knowledge_lines(SHIPPED_KNOWLEDGE)
    assert [e["name"] for e in entities] == [e["name"] for e in shipped[:3]]  # the same ranking, cut
    findings = json.loads((resources.files("radiology_semantic") / "data" / "imaging_findings.json").read_text())
    for entity in entities:
        described = entity["description"].removeprefix("Imaging findings: ").removesuffix(".").split("; ")
        assert len(described) == 2
        of_pathology = {f"{f['name'].strip()} ({f['modality']})" for f in findings
                        if (f.get("pathology_name") or "").strip() == entity["name"]}
        assert set(described) <= of_pathology, entity["name"]
    assert any("(XR)" in d for d in entities[0]["description"].split("; "))  # radiograph findings rank first


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def test_convert_roco_script(tmp_path):
    """ROCO's release layout (data/<split>/radiology/{captions.txt, dlinks.txt, images/})."""
    pairs = {}
    for split, official in (("train", "train"), ("val", "validation"), ("test", "test")):
        folder = tmp_path / "roco-dataset" / "data" / official / "radiology"
        (folder / "images").mkdir(parents=True)
        captions, links = [], []
        for j in range(3 if split == "train" else 2):
            n = len(pairs) + 1
            roco_id = f"ROCO_{n:05d}"
            captions.append(f"{roco_id}\t Chest radiograph {n} showing a {split} finding. ")
            links.append(f"{roco_id}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/x/PMC{700 + n}.tar.gz -P /path/to/Dir"
                         f"\tfig{n}.jpg")
            (folder / "images" / f"{roco_id}.jpg").write_bytes(_jpeg(n))
            pairs[roco_id] = (split, f"Chest radiograph {n} showing a {split} finding.", _jpeg(n))
        (folder / "captions.txt").write_text("\n".join(captions) + "\n")
        (folder / "dlinks.txt").write_text("\n".join(links) + "\n")

    out = tmp_path / "out"
    result = run_script("convert_roco.py", "--root", tmp_path / "roco-dataset", "--out", out, "--shard-size", "2",
                        "--format", "both", cwd=tmp_path)
    assert "7 rows read, 7 kept, 0 rejected" in result.stdout

    found = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            found.setdefault(key, {"split": shard.parent.name})[ext] = data
    assert set(found) == set(pairs)
    for key, (split, caption, image) in pairs.items():
        assert found[key]["split"] == split
        assert found[key]["txt"].decode() == caption
        assert found[key]["jpg"] == image
        assert json.loads(found[key]["json"])["pmc_id"] == f"PMC{700 + int(key[5:])}"
    assert json.loads((out / "train" / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 1}
    test_csv = pd.read_csv(out / "csv" / "test.csv", sep="\t")
    assert sorted(test_csv["title"]) == sorted(c for s, c, _ in pairs.values() if s == "test")
    assert all((out / "csv" / p).read_bytes() in {i for _, _, i in pairs.values()} for p in test_csv["filepath"])
