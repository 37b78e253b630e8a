"""Build the MLIP (Li) recipe's default knowledge file from the PyPI package
``radiology-semantic-dict`` (MIT; ~8.3k imaging findings with modality, pathology and ACR topic).

One entity per pathology, pathologies with plain-radiograph (XR) findings first
(``recipes/mlip_li/knowledge.build_entities`` says how they are ranked and described).

    pip install radiology-semantic-dict
    # the default file, openclip_unimlip/recipes/mlip_li/knowledge/radiology_entities.jsonl:
    python scripts/build_knowledge.py
    # a chest-specific file (shipped as knowledge/chest_entities.jsonl, mlip_li_cfg knowledge_file "chest"):
    python scripts/build_knowledge.py --topics "Thoracic Imaging" "Cardiac Imaging" "Chest" \
        --output openclip_unimlip/recipes/mlip_li/knowledge/chest_entities.jsonl
"""
import argparse
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from openclip_unimlip.recipes.mlip_li.knowledge import (
    DEFAULT_KNOWLEDGE_FILE,
    build_entities,
    load_findings,
    write_knowledge,
)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the shipped file, in the package (the checkout's, in an editable install)
    parser.add_argument("--output", type=Path, default=DEFAULT_KNOWLEDGE_FILE)
    parser.add_argument("--max-entities", type=int, default=500)
    parser.add_argument("--findings", type=int, default=4, help="findings listed per entity")
    parser.add_argument("--topics", nargs="+", help="keep pathologies whose main ACR topic is one of these, "
                                                     "e.g. 'Thoracic Imaging' 'Cardiac Imaging'")
    args = parser.parse_args(argv)
    entities = build_entities(load_findings(), args.max_entities, args.findings, args.topics)
    if not entities:
        raise SystemExit(f"no pathology has its main ACR topic in {args.topics}")
    write_knowledge(entities, args.output)
    version = metadata.version("radiology-semantic-dict")
    print(f"wrote {len(entities)} entities from radiology-semantic-dict {version} to {args.output}")


def cli() -> None:
    """The ``unimlip-build-knowledge`` console command and ``scripts/build_knowledge.py``."""
    main()
