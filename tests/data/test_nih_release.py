"""NIH ChestX-ray14 as released: the real release in ../shared/data/nih-chestxray14 (current labels
file ``Data_Entry_2017_v2020.csv``, NIH's list files) read by ``read_nih`` and counted another way
(the csv module, plain list-file parsing, ``os.listdir``), and made-up releases in the older layout
(``Data_Entry_2017.csv`` with its trailing commas, ``images_0NN/images/``)."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openclip_unimlip.data.chest_xray import nih_entry_file, read_nih
from openclip_unimlip.data.releases import find_datasets

from paths import REPO

DATA = REPO.parent / "shared" / "data"
NIH = DATA / "nih-chestxray14"
# The 14 findings as Wang et al. name them (NIH's README_CHESTXRAY.pdf), written out here on purpose.
FINDINGS = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
real_release = pytest.mark.skipif(not NIH.is_dir(), reason=f"the real NIH ChestX-ray14 release is not at {NIH} "
                                                           "(../shared/data beside the checkout, as in CI)")


def _independent_rows(path: Path) -> dict[str, tuple[set, str]]:
    """Image name -> (its findings, its patient), parsed with the csv module."""
    with open(path, newline="") as handle:
        return {row["Image Index"]: (set(row["Finding Labels"].split("|")) - {"No Finding"}, row["Patient ID"].strip())
                for row in csv.DictReader(handle)}


def _images_on_disk(root: Path) -> dict[str, Path]:
    folders = [root / "images"] + [root / name / "images" for name in sorted(os.listdir(root))
                                   if name.startswith("images_")]
    return {name: folder / name for folder in folders if folder.is_dir() for name in os.listdir(folder)
            if name.endswith(".png")}


def _check_labels(split, rows: dict) -> None:
    assert set(split.label_names) == FINDINGS
    for path, targets in zip(split.image_paths, split.targets, strict=True):
        findings, _ = rows[path.name]
        assert {label for label, value in zip(split.label_names, targets) if value == 1.0} == findings
        assert set(np.unique(targets)) <= {0.0, 1.0}


@real_release
def test_the_current_release_is_found_and_its_labels_file_read():
    (status,) = find_datasets(DATA, ["nih"])
    assert status.status == "found" and status.path == NIH
    assert nih_entry_file(NIH) == NIH / "Data_Entry_2017_v2020.csv"


@real_release
def test_official_lists_counts_and_labels_match_an_independent_parse():
    rows = _independent_rows(NIH / "Data_Entry_2017_v2020.csv")
    on_disk = _images_on_disk(NIH)
    lists = {name: (NIH / f"{name}.txt").read_text().split() for name in ("train_val_list", "test_list")}
    assert not set(lists["train_val_list"]) & set(lists["test_list"])
    expected = {name: {image for image in listed if image in rows} for name, listed in lists.items()}
    assert all(image in on_disk for names in expected.values() for image in names)  # every listed image has a file

    splits = {split: read_nih(NIH, split, protocol="all14") for split in ("train", "valid", "test")}
    train_valid = [p.name for split in ("train", "valid") for p in splits[split].image_paths]
    assert len(train_valid) == len(set(train_valid)) == len(expected["train_val_list"])
    assert set(train_valid) == expected["train_val_list"]
    assert {p.name for p in splits["test"].image_paths} == expected["test_list"]
    assert len(splits["test"]) == len(expected["test_list"])
    assert all(path == on_disk[path.name] for split in splits.values() for path in split.image_paths)
    # valid is a patient holdout of the train/val list: no patient on both sides, about 5 % of them
    patients = {split: {rows[p.name][1] for p in splits[split].image_paths} for split in splits}
    assert not patients["train"] & patients["valid"] and not (patients["train"] | patients["valid"]) & patients["test"]
    assert len(patients["valid"]) == int(np.ceil(0.05 * len(patients["train"] | patients["valid"])))
    for split in splits.values():
        _check_labels(split, rows)


@real_release
def test_findings_without_a_positive_in_the_test_list_are_counted_another_way():
    """What the macro AUC leaves out on this copy (a finding with one class in the test split) is what
    an independent count of the test list's findings says, no more."""
    from openclip_unimlip.evaluation.classification import auc_report

    rows = _independent_rows(NIH / "Data_Entry_2017_v2020.csv")
    test = read_nih(NIH, "test", protocol="all14")
    listed = [name for name in (NIH / "test_list.txt").read_text().split() if name in rows]
    positives = {finding: sum(finding in rows[name][0] for name in listed) for finding in FINDINGS}
    single_class = {f for f, count in positives.items() if count in (0, len(listed))}
    report = auc_report(test.targets, np.random.default_rng(0).random(test.targets.shape), test.label_names)
    assert set(report.undefined_labels) == single_class
    assert report.macro_auc == pytest.approx(np.mean([a for a in report.per_label.values() if a is not None]))


# ----------------------------------------------------------------------------- made-up releases
ENTRIES = [  # name, findings, patient
    ("00000001_000.png", "Cardiomegaly|Effusion", 1),
    ("00000001_001.png", "No Finding", 1),
    ("00000002_000.png", "Hernia", 2),
    ("00000003_000.png", "Effusion|Mass|Nodule", 3),
    ("00000004_000.png", "Pneumothorax", 4),
    ("00000005_000.png", "No Finding", 5),
]
# Data_Entry_2017.csv's header as NIH released it: the bracketed names hold commas, and the line ends in one.
OLDER_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CURRENT_HEADER = OLDER_HEADER.rstrip(",")


def _write_release(root: Path, file_name: str, header: str, trailing: str, archives: bool) -> None:
    lines = [header] + [f"{name},{findings},0,{patient},58,M,PA,2682,2749,0.143,0.143{trailing}"
                        for name, findings, patient in ENTRIES]
    root.mkdir(parents=True, exist_ok=True)
    (root / file_name).write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(name for name, *_ in ENTRIES[:4]) + "\n")
    (root / "test_list.txt").write_text("\n".join(name for name, *_ in ENTRIES[4:]) + "\n")
    for i, (name, *_) in enumerate(ENTRIES):
        folder = root / (f"images_{1 + i // 3:03d}/images" if archives else "images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(folder / name)


@pytest.mark.parametrize("header, trailing", [(OLDER_HEADER, ","), (OLDER_HEADER, ""), (CURRENT_HEADER, ",")],
                         ids=["as-released", "header-only", "rows-only"])
def test_the_older_labels_file_and_the_archive_layout(tmp_path: Path, header: str, trailing: str):
    """The older file (as released, its header and every row end in a comma; also either alone) with
    the images in images_001/images/ and images_002/images/: the rows, labels and files as written."""
    root = tmp_path / "ChestX-ray14"
    _write_release(root, "Data_Entry_2017.csv", header, trailing, archives=True)
    assert nih_entry_file(root) == root / "Data_Entry_2017.csv"
    (status,) = find_datasets(tmp_path, ["nih"])
    assert status.status == "found"
    train = read_nih(root, "train", valid_fraction=0.0, protocol="all14")
    test = read_nih(root, "test", protocol="all14")
    assert [p.relative_to(root).as_posix() for p in train.image_paths + test.image_paths] == [
        f"images_{1 + i // 3:03d}/images/{name}" for i, (name, *_) in enumerate(ENTRIES)]
    assert train.patient_ids == ("1", "1", "2", "3")  # the Patient ID column, not a shifted one
    written = {name: set(findings.split("|")) - {"No Finding"} for name, findings, _ in ENTRIES}
    for split in (train, test):
        for path, targets in zip(split.image_paths, split.targets, strict=True):
            assert {label for label, value in zip(split.label_names, targets) if value} == written[path.name]


def test_the_current_file_wins_over_the_older_one_and_neither_is_one_clear_error(tmp_path: Path):
    root = tmp_path / "nih"
    _write_release(root, "Data_Entry_2017.csv", OLDER_HEADER, ",", archives=False)
    # the current file says otherwise about one image: its labels must be the ones read
    current = (root / "Data_Entry_2017.csv").read_text().replace("Hernia", "Edema")
    current = current.replace(OLDER_HEADER, CURRENT_HEADER)
    (root / "Data_Entry_2017_v2020.csv").write_text(current.replace(",\n", "\n"))
    assert nih_entry_file(root) == root / "Data_Entry_2017_v2020.csv"
    train = read_nih(root, "train", valid_fraction=0.0, protocol="all14")
    row = [p.name for p in train.image_paths].index("00000002_000.png")
    assert {label for label, value in zip(train.label_names, train.targets[row]) if value} == {"Edema"}
    for name in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"):
        (root / name).unlink()
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017_v2020.csv.*or Data_Entry_2017.csv"):
        read_nih(root, "test", protocol="all14")
    (status,) = find_datasets(tmp_path, ["nih"])
    assert status.status == "bad" and "Data_Entry_2017_v2020.csv" in status.message \
        and "Data_Entry_2017.csv" in status.message
