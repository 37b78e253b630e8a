"""The shipped chest-specific knowledge file of MLIP (Li) is what scripts/build_knowledge.py builds
with its --topics filter, and every entity in it has a chest topic in the source dictionary."""
import json
import os
import subprocess
import sys
from collections import Counter
from importlib import resources

import pytest

from paths import TESTS  # noqa: E402

SCRIPT = TESTS.parent / "scripts" / "build_knowledge.py"
SHIPPED_CHEST = TESTS.parent / "openclip_unimlip" / "recipes" / "mlip_li" / "knowledge" / "chest_entities.jsonl"
CHEST_TOPICS = ("Thoracic Imaging", "Cardiac Imaging", "Chest")


def test_chest_knowledge_file_is_the_scripts_topic_filtered_build(tmp_path):
    pytest.importorskip("radiology_semantic")  # the test extra (pyproject.toml) the shipped files come from
    out = tmp_path / "chest.jsonl"
    result = subprocess.run([sys.executable, str(SCRIPT), "--topics", *CHEST_TOPICS, "--output", str(out)],
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes() == SHIPPED_CHEST.read_bytes()

    findings = json.loads((resources.files("radiology_semantic") / "data" / "imaging_findings.json").read_text())
    topics = {}
    for finding in findings:
        name = (finding.get("pathology_name") or "").strip()
        if name and finding.get("acr_topic"):
            topics.setdefault(name, Counter())[finding["acr_topic"]] += 1
    entities = [json.loads(line) for line in SHIPPED_CHEST.read_text(encoding="utf-8").splitlines()]
    for entity in entities:  # an independent count of each pathology's most frequent topic
        assert topics[entity["name"]].most_common(1)[0][0] in CHEST_TOPICS, entity["name"]
    chest_pathologies = {n for n, c in topics.items() if c.most_common(1)[0][0] in CHEST_TOPICS}
    assert {e["name"] for e in entities} == chest_pathologies  # all of them, fewer than --max-entities

    bad = subprocess.run([sys.executable, str(SCRIPT), "--topics", "No Such Topic", "--output", str(tmp_path / "x")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "No Such Topic" in bad.stderr and not (tmp_path / "x").exists()
