"""CheXclusion's published test patients as vendored (``openclip_unimlip/data/chexclusion_test_patients.json``).

Against the source files where a copy of LalehSeyyed/CheXclusion is at hand (a bare mirror or a
checkout, ``CHEXCLUSION_REPO``; counted here with the csv module), and everywhere against counts
and ids pinned from those files (``git show 278a4af:<path>``, counted with ``wc -l`` and
``sort -n -u``). The regeneration tool (``tools/chexclusion_test_lists.py``) is run on small
made-up files.
"""
import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from openclip_unimlip.data.cxr_protocols import CHEXCLUSION_TEST_PATIENTS_FILE, chexclusion_test_patients
from tools import chexclusion_test_lists

REPO = Path(os.environ.get("CHEXCLUSION_REPO", "/work/.mirror/LalehSeyyed+CheXclusion/repo"))
COMMIT = "278a4af18fbab9e9d48dfd3519e623840cd516b9"  # LalehSeyyed/CheXclusion, "Update README.md", 2021-11-01
# Per file at COMMIT (git show COMMIT:<path>): lines (no header: every line is an id), unique ids,
# the three smallest and three largest ids, and ids the file does not hold.
PINNED = {
    "chexpert": ("CXP/testSet_SubjID.csv", 22_274, 6_530, (3, 7, 13), (64720, 64723, 64734), (1, 64541)),
    "mimic": ("MIMIC/testSet_SubjID.csv", 36_421, 6_476, (10002559, 10005858, 10006501),
              (19995179, 19997540, 19998485), (10000032,)),
    "nih": ("NIH/testSet_PatientID.csv", 6_373, 1_835, (31, 33, 34), (30704, 30720, 30804), (1,)),
}


def _vendored() -> dict:
    return json.loads(CHEXCLUSION_TEST_PATIENTS_FILE.read_text())


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def _has_commit() -> bool:
    if shutil.which("git") is None or not REPO.exists():
        return False
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{COMMIT}^{{commit}}"],
                          capture_output=True).returncode == 0


needs_repo = pytest.mark.skipif(not _has_commit(), reason=f"no copy of LalehSeyyed/CheXclusion at {COMMIT[:7]} in "
                                                          f"{REPO} (set CHEXCLUSION_REPO)")


@needs_repo
@pytest.mark.parametrize("dataset", sorted(PINNED))
def test_vendored_list_is_the_source_files_unique_ids(dataset: str):
    path = PINNED[dataset][0]
    rows = list(csv.reader(io.StringIO(_git("show", f"{COMMIT}:{path}"))))
    assert all(len(row) == 1 and row[0].isdigit() for row in rows)  # one id per line, no header
    ids = {int(row[0]) for row in rows}
    entry = _vendored()["datasets"][dataset]
    assert len(entry["patients"]) == len(set(entry["patients"])) == len(ids)
    assert set(entry["patients"]) == ids and entry["rows"] == len(rows)
    assert entry["path"] == path and entry["blob"] == _git("rev-parse", f"{COMMIT}:{path}").strip()
    assert chexclusion_test_patients(dataset) == ids


@needs_repo
def test_the_tool_regenerates_the_vendored_file_byte_for_byte(tmp_path: Path):
    checkout = tmp_path / "CheXclusion"
    for path, *_ in PINNED.values():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(_git("show", f"{COMMIT}:{path}"))
    output = tmp_path / "lists.json"
    assert chexclusion_test_lists.main([str(checkout), "--commit", COMMIT, "--output", str(output)]) == 0
    assert output.read_bytes() == CHEXCLUSION_TEST_PATIENTS_FILE.read_bytes()


@pytest.mark.parametrize("dataset", sorted(PINNED))
def test_vendored_list_holds_the_pinned_counts_and_ids(dataset: str):
    path, rows, unique, first, last, absent = PINNED[dataset]
    document = _vendored()
    assert (document["repository"], document["commit"]) == ("LalehSeyyed/CheXclusion", COMMIT)
    entry = document["datasets"][dataset]
    assert (entry["path"], entry["rows"], len(entry["patients"])) == (path, rows, unique)
    assert entry["patients"] == sorted(set(entry["patients"]))
    assert tuple(entry["patients"][:3]) == first and tuple(entry["patients"][-3:]) == last
    listed = chexclusion_test_patients(dataset)
    assert len(listed) == unique and set(first + last) <= listed and not set(absent) & listed


def test_the_tool_reads_headerless_lists_and_refuses_other_lines(tmp_path: Path):
    checkout = tmp_path / "CheXclusion"
    contents = {"CXP/testSet_SubjID.csv": "3\n7\n7\n", "MIMIC/testSet_SubjID.csv": "10002559\n10002559\n",
                "NIH/testSet_PatientID.csv": "33\n31\n"}
    for path, text in contents.items():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(text)
    output = tmp_path / "lists.json"
    chexclusion_test_lists.main([str(checkout), "--commit", "0" * 40, "--output", str(output)])
    datasets = json.loads(output.read_text())["datasets"]
    # the first line is an id, not a header; unique and sorted; rows count every line
    assert {name: (entry["rows"], entry["patients"]) for name, entry in datasets.items()} == {
        "chexpert": (3, [3, 7]), "mimic": (2, [10002559]), "nih": (2, [31, 33])}
    if shutil.which("git"):  # the blob id is git's own
        hashed = subprocess.run(["git", "hash-object", str(checkout / "NIH/testSet_PatientID.csv")],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert datasets["nih"]["blob"] == hashed
    for bad in ("subject_id\n3\n", "3\n\n7\n"):
        (checkout / "CXP/testSet_SubjID.csv").write_text(bad)
        with pytest.raises(ValueError, match="expected one integer patient id per line"):
            chexclusion_test_lists.main([str(checkout), "--commit", "0" * 40, "--output", str(output)])
