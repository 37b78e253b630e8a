"""Regenerate ``openclip_unimlip/data/chexclusion_test_patients.json`` from a CheXclusion checkout.

    python -m tools.chexclusion_test_lists /path/to/CheXclusion      # from the repository root

CheXclusion (Seyyed-Kalantari et al., PSB 2021; github.com/LalehSeyyed/CheXclusion) publishes the
patients of its test split, one line per test image (README.md, "Reproducing the results": "we
have provided the patient ID per test splits"): ``CXP/testSet_SubjID.csv``,
``MIMIC/testSet_SubjID.csv`` and ``NIH/testSet_PatientID.csv``. The files have no header: every
line, the first included, is one patient id (at commit 278a4af the first lines are ``3``,
``10002559`` and ``31``, and each file is sorted ascending). Read with pandas' default
``header=0``, that first id would become a column name and one row would be lost (CheXpert:
22,273 rows and 6,529 patients instead of 22,274 and 6,530), so the lines are parsed here one by
one and any line that is not a plain integer stops the run.

The vendored file keeps each list's unique ids, sorted, one JSON line per dataset, with the
repository, the commit, each file's path, its git blob id (so a checkout of another commit with
the same file is recognised) and its row count. The commit is read from the checkout (``git
rev-parse HEAD``) unless ``--commit`` names it (a checkout without ``.git``).
"""
import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

REPOSITORY = "LalehSeyyed/CheXclusion"
OUTPUT = Path(__file__).resolve().parents[1] / "openclip_unimlip" / "data" / "chexclusion_test_patients.json"
# dataset -> (file in the CheXclusion checkout, what one id is, in that dataset's own terms)
SOURCES = {
    "chexpert": ("CXP/testSet_SubjID.csv", "CheXpert patient number: Path's patient00003 is 3"),
    "mimic": ("MIMIC/testSet_SubjID.csv", "MIMIC-CXR subject_id"),
    "nih": ("NIH/testSet_PatientID.csv", "NIH ChestX-ray14 Patient ID"),
}


def git_blob_id(data: bytes) -> str:
    """The id git gives a file with these bytes (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_ids(path: Path) -> list[int]:
    """One patient id per line, every line (no header); a blank or non-integer line is an error."""
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip().isdigit():
            raise ValueError(f"{path}:{number}: expected one integer patient id per line, got {line!r}")
        ids.append(int(line))
    return ids


def checkout_commit(checkout: Path) -> str:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{checkout} is not a git checkout: give its commit with --commit")
    return result.stdout.strip()


def build(checkout: Path, commit: str) -> dict:
    datasets = {}
    for dataset, (relative, meaning) in SOURCES.items():
        path = checkout / relative
        ids = read_ids(path)
        datasets[dataset] = {"path": relative, "blob": git_blob_id(path.read_bytes()), "id": meaning,
                             "rows": len(ids), "patients": sorted(set(ids))}
    return {
        "about": "CheXclusion's published test patients (unique ids, sorted); regenerate with "
                 "tools/chexclusion_test_lists.py. Its train/valid split is not published.",
        "repository": REPOSITORY,
        "commit": commit,
        "datasets": datasets,
    }


def dumps(document: dict) -> str:
    """Indented JSON with each dataset on one line (the lists are long; a line per id would be 15,000 lines)."""
    head = {key: value for key, value in document.items() if key != "datasets"}
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    datasets = [f"    {json.dumps(name)}: {json.dumps(entry, separators=(',', ':'))}"
                for name, entry in document["datasets"].items()]
    return "{\n" + "\n".join(lines) + '\n  "datasets": {\n' + ",\n".join(datasets) + "\n  }\n}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of LalehSeyyed/CheXclusion (its working tree)")
    parser.add_argument("--commit", help="the checkout's commit (default: git rev-parse HEAD in the checkout)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)
    document = build(args.checkout, args.commit or checkout_commit(args.checkout))
    args.output.write_text(dumps(document))
    for name, entry in document["datasets"].items():
        print(f"{name}: {entry['path']}, {entry['rows']:,} rows, {len(entry['patients']):,} patients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
