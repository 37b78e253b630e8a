"""Build the MLIP (Li) recipe's default knowledge file from the PyPI package
``radiology-semantic-dict`` (MIT; ~8.3k imaging findings with modality, pathology and ACR topic).

One entity per pathology: category = its most frequent ACR topic, description = up to
``--findings`` of its findings with their modality. Pathologies with plain-radiograph (XR)
findings come first (the configs target chest X-ray style data), then by number of findings.

    pip install radiology-semantic-dict
    python scripts/build_knowledge.py            # writes openclip_unimlip/recipes/mlip_li/knowledge/radiology_entities.jsonl
    # a chest-specific file (shipped as knowledge/chest_entities.jsonl, mlip_li_cfg knowledge_file "chest"):
    python scripts/build_knowledge.py --topics "Thoracic Imaging" "Cardiac Imaging" "Chest" \
        --output openclip_unimlip/recipes/mlip_li/knowledge/chest_entities.jsonl
"""
import argparse
import json
from collections import Counter, defaultdict
from importlib import metadata, resources
from pathlib import Path
from typing import Optional, Sequence

# the shipped file, in the package (the checkout's, in an editable install)
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "recipes" / "mlip_li" / "knowledge" / "radiology_entities.jsonl"


def load_findings() -> list:
    try:
        data = resources.files("radiology_semantic") / "data" / "imaging_findings.json"
    except ModuleNotFoundError:
        raise SystemExit("radiology-semantic-dict is not installed: pip install radiology-semantic-dict") from None
    return json.loads(data.read_text(encoding="utf-8"))


def build_entities(findings: list, max_entities: int, findings_per_entity: int, topics=None) -> list:
    """Entities ranked as the module docstring says; with ``topics``, only pathologies whose most
    frequent ACR topic is one of them."""
    by_pathology = defaultdict(list)
    for finding in findings:
        name = (finding.get("pathology_name") or "").strip()
        if name and (finding.get("name") or "").strip():
            by_pathology[name].append(finding)
    if topics:
        def main_topic(name):
            counts = Counter(f["acr_topic"] for f in by_pathology[name] if f.get("acr_topic"))
            return counts.most_common(1)[0][0] if counts else ""

        by_pathology = {n: items for n, items in by_pathology.items() if main_topic(n) in set(topics)}

    def rank(name):
        items = by_pathology[name]
        return (not any(f.get("modality") == "XR" for f in items), -len(items), name)

    entities = []
    for name in sorted(by_pathology, key=rank)[:max_entities]:
        items = by_pathology[name]
        # radiograph findings first, then the rest, each in the package's order
        items = sorted(items, key=lambda f: f.get("modality") != "XR")[:findings_per_entity]
        topics = Counter(f["acr_topic"] for f in by_pathology[name] if f.get("acr_topic"))
        described = [f"{f['name'].strip()} ({f['modality']})" if f.get("modality") else f["name"].strip() for f in items]
        entities.append({
            "name": name,
            "category": topics.most_common(1)[0][0] if topics else "",
            "description": "Imaging findings: " + "; ".join(described) + ".",
        })
    return entities


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--max-entities", type=int, default=500)
    parser.add_argument("--findings", type=int, default=4, help="findings listed per entity")
    parser.add_argument("--topics", nargs="+", help="keep pathologies whose main ACR topic is one of these, "
                                                     "e.g. 'Thoracic Imaging' 'Cardiac Imaging'")
    args = parser.parse_args(argv)
    entities = build_entities(load_findings(), args.max_entities, args.findings, args.topics)
    if not entities:
        raise SystemExit(f"no pathology has its main ACR topic in {args.topics}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        for entity in entities:
            f.write(json.dumps(entity, ensure_ascii=False) + "\n")
    version = metadata.version("radiology-semantic-dict")
    print(f"wrote {len(entities)} entities from radiology-semantic-dict {version} to {args.output}")


def cli() -> None:
    """The ``unimlip-build-knowledge`` console command and ``scripts/build_knowledge.py``."""
    main()
