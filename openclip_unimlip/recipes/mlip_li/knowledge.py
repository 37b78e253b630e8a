"""The knowledge file of the MLIP (Li) recipe: JSON Lines of medical entities, one per line,
``{"name": str, "category": str, "description": str}`` (format: docs/methods/mlip-li.md)."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

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
