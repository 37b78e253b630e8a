"""The knowledge file of the MLIP (Li) recipe: JSON Lines of medical entities, one per line,
``{"name": str, "category": str, "description": str}`` (format: docs/methods/mlip-li.md).
``load_knowledge`` reads one; ``build_entities`` and ``write_knowledge`` build the shipped ones from
radiology-semantic-dict (``scripts/build_knowledge.py``)."""
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence, Union

_SHIPPED_DIR = Path(__file__).resolve().parent / "knowledge"
# Built by scripts/build_knowledge.py from radiology-semantic-dict 1.4.0: "radiology" (the default,
# 500 entities of every topic, radiograph findings first) and "chest" (116 entities whose main ACR
# topic is thoracic, cardiac or chest imaging).
SHIPPED = {"radiology": _SHIPPED_DIR / "radiology_entities.jsonl", "chest": _SHIPPED_DIR / "chest_entities.jsonl"}
DEFAULT_KNOWLEDGE_FILE = SHIPPED["radiology"]


@dataclass(frozen=True)
class Entity:
    name: str
    category: str
    description: str

    def text(self) -> str:
        """What the text tower encodes to initialise this entity's prototype."""
        category = f" ({self.category})" if self.category else ""
        return f"{self.name}{category}: {self.description}"


def load_knowledge(path: Optional[Union[str, Path]] = None) -> List[Entity]:
    """Entities of a knowledge file: a path, a shipped name (``SHIPPED``) or ``None`` (the default),
    with one clear error per bad line."""
    path = SHIPPED.get(path, Path(path)) if path is not None else DEFAULT_KNOWLEDGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"knowledge file {path} does not exist (shipped names: {sorted(SHIPPED)})")
    entities, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with name, category, description")
        for key in ("name", "description"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
        category = row.get("category", "")
        if not isinstance(category, str):
            raise ValueError(f"{where}: 'category' must be a string")
        if row["name"] in seen:
            raise ValueError(f"{where}: duplicate entity name {row['name']!r}")
        seen.add(row["name"])
        entities.append(Entity(row["name"].strip(), category.strip(), row["description"].strip()))
    if not entities:
        raise ValueError(f"knowledge file {path} holds no entity")
    return entities


# ----- building the shipped files (scripts/build_knowledge.py) ---------------------------------
def load_findings() -> list:
    """The imaging findings of the PyPI package ``radiology-semantic-dict`` (MIT; ~8.3k findings with
    modality, pathology and ACR topic), which the shipped files are built from; it is not a
    dependency (the test extra pins the version they were built from)."""
    try:
        data = resources.files("radiology_semantic") / "data" / "imaging_findings.json"
    except ModuleNotFoundError:
        raise SystemExit("radiology-semantic-dict is not installed: pip install radiology-semantic-dict") from None
    return json.loads(data.read_text(encoding="utf-8"))


def build_entities(findings: list, max_entities: int, findings_per_entity: int,
                   topics: Optional[Sequence[str]] = None) -> list:
    """Knowledge-file rows from ``findings``: one entity per pathology, category = its most frequent
    ACR topic, description = up to ``findings_per_entity`` of its findings with their modality.
    Pathologies with plain-radiograph (XR) findings come first (the configs target chest X-ray style
    data), then by number of findings; the first ``max_entities`` are kept. With ``topics``, only
    pathologies whose most frequent ACR topic is one of them."""
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
        described = [f"{f['name'].strip()} ({f['modality']})" if f.get("modality") else f["name"].strip()
                     for f in items]
        entities.append({
            "name": name,
            "category": topics.most_common(1)[0][0] if topics else "",
            "description": "Imaging findings: " + "; ".join(described) + ".",
        })
    return entities


def write_knowledge(entities: Sequence[dict], path: Path) -> None:
    """``entities`` as a knowledge file (JSON Lines, UTF-8) at ``path``, its folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for entity in entities:
            f.write(json.dumps(entity, ensure_ascii=False) + "\n")
