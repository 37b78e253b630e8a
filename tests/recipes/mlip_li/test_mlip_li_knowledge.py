"""The shipped chest-specific knowledge file of MLIP (Li) is what scripts/build_knowledge.py builds
with its --topics filter, and every entity in it has a chest topic in the source dictionary."""
import json
import os
import subprocess
import sys
from collections import Counter
from importlib import resources

import pytest

from openclip_unimlip.recipes.mlip_li.knowledge import (
    Entity,
    build_entities,
    load_findings,
    load_knowledge,
    write_knowledge,
)

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


def test_an_entitys_text_is_the_documented_one():
    """docs/methods/mlip-li.md: the text tower encodes "<name> (<category>): <description>", or
    "<name>: <description>" for an empty category."""
    doc = (TESTS.parent / "docs" / "methods" / "mlip-li.md").read_text()
    assert '`"<name> (<category>): <description>"`' in doc and '`"<name>: <description>"`' in doc
    assert Entity("Pneumothorax", "Thoracic Imaging", "Imaging findings: x.").text() == (
        "Pneumothorax (Thoracic Imaging): Imaging findings: x.")
    assert Entity("Pneumothorax", "", "Imaging findings: x.").text() == "Pneumothorax: Imaging findings: x."


def test_a_bad_line_is_named_by_its_line_number_in_the_file(tmp_path):
    lines = ['{"name": "A", "category": "", "description": "a"}', "", '{"name": "B"}']
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bad_line = 1 + next(n for n, line in enumerate(path.read_text().splitlines()) if '"B"' in line)
    with pytest.raises(ValueError, match=f"k.jsonl:{bad_line}: 'description'"):
        load_knowledge(path)


def test_a_knowledge_file_is_written_into_new_folders(tmp_path):
    rows = [{"name": "A", "category": "Chest", "description": "a"}, {"name": "B", "category": "", "description": "b"}]
    path = tmp_path / "new" / "nested" / "k.jsonl"
    write_knowledge(rows, path)
    assert [(e.name, e.category, e.description) for e in load_knowledge(path)] == [tuple(r.values()) for r in rows]


def test_radiograph_findings_come_first_whatever_the_others_are_called():
    """Within an entity, XR findings first, the rest in the package's order: the package spells
    modalities freely ('mammography' in lower case sorts after 'XR')."""
    findings = [{"pathology_name": "Mass", "name": name, "modality": modality, "acr_topic": "Breast Imaging"}
                for name, modality in (("spiculated", "mammography"), ("round", "CT"), ("opacity", "XR"),
                                       ("shadowing", "US"))]
    (entity,) = build_entities(findings, max_entities=5, findings_per_entity=3)
    assert entity["description"] == "Imaging findings: opacity (XR); spiculated (mammography); round (CT)."


def test_building_without_the_source_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "radiology_semantic", None)  # as if not installed
    with pytest.raises(SystemExit, match="pip install radiology-semantic-dict"):
        load_findings()


def test_pathologies_with_radiograph_findings_come_first_whatever_the_others_are_called():
    """A pathology seen on plain radiographs (XR) before one seen only on 'mammography' (which sorts
    after 'XR'), even one with more findings."""
    findings = [{"pathology_name": "Calcification", "name": f"finding {n}", "modality": "mammography"}
                for n in range(3)]
    findings.append({"pathology_name": "Effusion", "name": "blunted angle", "modality": "XR"})
    assert [e["name"] for e in build_entities(findings, max_entities=1, findings_per_entity=1)] == ["Effusion"]


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text('{"name": "A", "description": "a"\n')
    with pytest.raises(ValueError, match="k.jsonl:1: not JSON"):
        load_knowledge(path)
