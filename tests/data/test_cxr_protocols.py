"""Classification protocols pinned against their sources, on small CSVs written in each release's layout.

The expected label sets and uncertainty mappings below are transcribed from the cited files, line
by line; expected targets and counts are made from the raw CSVs with pandas, not with the readers.
The "patients" split's test patients are compared with CheXclusion's published lists, read from
the vendored JSON with the json module (its contents are pinned in test_chexclusion_test_lists.py).
"""
import csv
import gzip
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from names import run_time_name

from openclip_unimlip.data.chest_xray import read_chexpert, read_cxr_split, read_mimic_cxr, read_nih
from openclip_unimlip.data.cxr_protocols import CHEXCLUSION_TEST_PATIENTS_FILE, HOLDOUT_SEED
from openclip_unimlip.studies.benchmark.tables import _split_note

from paths import REPO

BLANK = ""

# ----- transcribed references ---------------------------------------------------------------------
# LalehSeyyed/CheXclusion @278a4af, CXP/dataset.py lines 29-43 (self.PRED_LABEL).
CHEXCLUSION_CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
# CheXclusion MIMIC/dataset.py lines 29-43; line 34's 'Airspace Opacity' is MIMIC-CXR-JPG's 'Lung Opacity' column.
CHEXCLUSION_MIMIC_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
# CheXclusion NIH/dataset.py lines 27-41.
CHEXCLUSION_NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# CheXclusion CXP/dataset.py and MIMIC/dataset.py lines 62-66: the target is the CSV value if it is > 0, else 0.
CHEXCLUSION_TARGET = {"1.0": 1.0, "0.0": 0.0, "-1.0": 0.0, BLANK: 0.0}
# CheXclusion MIMIC/main.py line 12: ".../new_split/8-1-1/..." (80/10/10 by patient).
CHEXCLUSION_HELD_OUT_FRACTION = 1 / 10
# CheXclusion CXP/testSet_SubjID.csv (headerless, one patient number per line): of the chexpert_root
# fixture's patients (1-20 and valid.csv's 64541-64544) it lists 3, 7, 13, 16 and 18 (grep -x, by hand).
CHEXCLUSION_LISTED_IN_CHEXPERT_FIXTURE = {"patient00003", "patient00007", "patient00013", "patient00016",
                                          "patient00018"}
PUBLISHED = "test: CheXclusion's published test patients"
FELL_BACK = "none of CheXclusion's published test patients is in this data"

# HKU-MedAI/MGCA @680fe4a, mgca/constants.py lines 51-57 (CHEXPERT_COMPETITION_TASKS).
MGCA_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# mgca/constants.py lines 60-66 (CHEXPERT_UNCERTAIN_MAPPINGS): the target of an uncertain (-1) label.
MGCA_UNCERTAIN = {"Atelectasis": 1, "Cardiomegaly": 0, "Consolidation": 0, "Edema": 1, "Pleural Effusion": 1}
# mgca/datasets/classification_dataset.py line 62: fillna(0) -> blank is 0.

# denizlab/MIMICCXR-MultiModal-SelfSupervision @e010eb7, downstream_eval/chexpert/train.py lines 49-51
# (class_names) and lines 86-101 with policy "ones" (line 255): 1 -> 1, -1 -> 1, other values and blank -> 0.
HUANG_CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)

HUANG_TARGET = {"1.0": 1.0, "0.0": 0.0, "-1.0": 1.0, BLANK: 0.0}


def mgca_target(label: str, value: str) -> float:
    return {"1.0": 1.0, "0.0": 0.0, "-1.0": float(MGCA_UNCERTAIN[label]), BLANK: 0.0}[value]


# ----- release layouts ----------------------------------------------------------------------------
# CheXpert-v1.0(-small) train.csv / valid.csv header as released.
CHEXPERT_HEADER = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_CSV_LABELS = CHEXPERT_HEADER[5:]
# mimic-cxr-2.0.0-chexpert.csv: subject_id, study_id, then the observations in alphabetical order.
MIMIC_CSV_LABELS = tuple(sorted(CHEXPERT_CSV_LABELS))
# Data_Entry_2017.csv header as released (its bracketed names hold commas, so they split in two).
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _raw(path: Path) -> pd.DataFrame:
    """The CSV as text cells, blanks as "" (so values compare with the transcribed tables)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write_chexpert(root: Path, train_patients, valid_patients) -> Path:
    rng = np.random.default_rng(0)
    train_rows, valid_rows = [], []
    for patient in train_patients:
        for study in range(1, 1 + rng.integers(1, 3)):
            views = ["frontal", "lateral"] if rng.random() < 0.6 else ["frontal"]
            for number, view in enumerate(views, start=1):
                values = rng.choice(["1.0", "0.0", "-1.0", BLANK], size=len(CHEXPERT_CSV_LABELS))
                path = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/view{number}_{view}.jpg"
                train_rows.append((path, "Female", 60, view.capitalize(), "AP" if view == "frontal" else BLANK,
                                   *values))
    for patient in valid_patients:  # the expert-labelled valid.csv holds 0/1 only
        for number, view in enumerate(["frontal", "lateral"], start=1):
            values = rng.choice(["1.0", "0.0"], size=len(CHEXPERT_CSV_LABELS))
            valid_rows.append((f"CheXpert-v1.0-small/valid/patient{patient:05d}/study1/view{number}_{view}.jpg",
                               "Male", 70, view.capitalize(), "PA" if view == "frontal" else BLANK, *values))
    _write_csv(root / "train.csv", CHEXPERT_HEADER, train_rows)
    _write_csv(root / "valid.csv", CHEXPERT_HEADER, valid_rows)
    return root


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    return _write_chexpert(tmp_path_factory.mktemp("chexpert") / "CheXpert-v1.0-small", range(1, 21),
                           range(64541, 64545))


def _chexpert_raw(root: Path) -> pd.DataFrame:
    train, valid = _raw(root / "train.csv"), _raw(root / "valid.csv")
    raw = pd.concat([train.assign(file="train.csv"), valid.assign(file="valid.csv")], ignore_index=True)
    raw["path"] = [str(root / Path(*Path(p).parts[1:])) for p in raw["Path"]]
    raw["patient"] = raw["Path"].str.split("/").str[2]
    return raw.set_index("path")


def _read_all(reader, root: Path, **kwargs) -> dict:
    return {split: reader(root, split, check_files=False, **kwargs) for split in ("train", "valid", "test")}


def _expected_targets(raw: pd.DataFrame, split, labels, target) -> np.ndarray:
    """Each image's targets, looked up by path in the raw CSV and mapped with the transcribed table."""
    rows = raw.loc[[str(p) for p in split.image_paths]]
    return np.array([[target(label, rows[label].iloc[i]) for label in labels] for i in range(len(rows))],
                    dtype=np.float32).reshape(len(rows), len(labels))


def _check_patient_split(splits: dict, raw_patients: pd.Series, listed: frozenset = frozenset()) -> None:
    """By patient: disjoint patients, ceil(10%) of them in valid; test is ``listed`` (the data's
    patients in CheXclusion's published list) or, when none is, ceil(10%) of them too."""
    patients = {name: set(split.patient_ids) for name, split in splits.items()}
    assert not (patients["train"] & patients["valid"] or patients["train"] & patients["test"]
                or patients["valid"] & patients["test"])
    count = raw_patients.astype(str).nunique()
    held_out = math.ceil(CHEXCLUSION_HELD_OUT_FRACTION * count)
    assert len(patients["valid"]) == held_out
    if listed:
        assert patients["test"] == set(listed)
    else:
        assert len(patients["test"]) == held_out
    assert len(patients["train"]) == count - held_out - len(patients["test"])


def _positives(splits: dict) -> np.ndarray:
    return sum(split.targets.sum(axis=0) for split in splits.values())


# ----- CheXpert -----------------------------------------------------------------------------------

def test_chexpert_default_is_chexclusion_all_labels_u_zeros_all_views_patient_split(chexpert_root: Path):
    raw = _chexpert_raw(chexpert_root)
    splits = _read_all(read_chexpert, chexpert_root)
    default = {split: read_cxr_split("chexpert", chexpert_root, split, check_files=False) for split in splits}
    assert all(default[s].image_paths == splits[s].image_paths for s in splits)
    for split in splits.values():
        assert split.label_names == CHEXCLUSION_CHEXPERT_LABELS
        expected = _expected_targets(raw, split, CHEXCLUSION_CHEXPERT_LABELS, lambda _, v: CHEXCLUSION_TARGET[v])
        np.testing.assert_array_equal(split.targets, expected)
    # every image of train.csv and valid.csv, lateral views included, in exactly one split
    read = [str(p) for split in splits.values() for p in split.image_paths]
    assert sorted(read) == sorted(raw.index) and (raw["Frontal/Lateral"] == "Lateral").any()
    _check_patient_split(splits, raw["patient"], CHEXCLUSION_LISTED_IN_CHEXPERT_FIXTURE)
    positives = [(raw[label] == "1.0").sum() for label in CHEXCLUSION_CHEXPERT_LABELS]  # U-Zeros: only the 1s
    np.testing.assert_array_equal(_positives(splits), positives)
    described = splits["test"].settings.describe(CHEXCLUSION_CHEXPERT_LABELS)
    assert described["name"] == "chexclusion" and described["split_note"].startswith(PUBLISHED)


def test_chexpert_mgca_five_labels_per_label_mapping_frontal_official_test(chexpert_root: Path):
    raw = _chexpert_raw(chexpert_root)
    splits = _read_all(read_chexpert, chexpert_root, protocol="mgca")
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    for split in splits.values():
        assert split.label_names == MGCA_LABELS
        np.testing.assert_array_equal(split.targets, _expected_targets(raw, split, MGCA_LABELS, mgca_target))
    assert sorted(map(str, splits["test"].image_paths)) == sorted(frontal.index[frontal["file"] == "valid.csv"])
    training = [str(p) for name in ("train", "valid") for p in splits[name].image_paths]
    assert sorted(training) == sorted(frontal.index[frontal["file"] == "train.csv"])
    positives = [(frontal[label] == "1.0").sum() + (frontal[label] == "-1.0").sum() * MGCA_UNCERTAIN[label]
                 for label in MGCA_LABELS]
    np.testing.assert_array_equal(_positives(splits), positives)
    # the fixture exercises both mappings: uncertain Cardiomegaly (U-Zeros) and Edema (U-Ones) in the frontal views
    assert (frontal["Cardiomegaly"] == "-1.0").any() and (frontal["Edema"] == "-1.0").any()


def test_chexpert_all14_is_huang_et_al_rule(chexpert_root: Path):
    raw = _chexpert_raw(chexpert_root)
    splits = _read_all(read_chexpert, chexpert_root, protocol="all14")
    for split in splits.values():
        assert split.label_names == HUANG_CHEXPERT_LABELS
        expected = _expected_targets(raw, split, HUANG_CHEXPERT_LABELS, lambda _, v: HUANG_TARGET[v])
        np.testing.assert_array_equal(split.targets, expected)
        assert (raw.loc[[str(p) for p in split.image_paths], "Frontal/Lateral"] == "Frontal").all()
    assert {p.parts[-4] for p in splits["test"].image_paths} == {"valid"}


def test_patient_split_ignores_the_view_rule(chexpert_root: Path):
    every_view = read_chexpert(chexpert_root, "test", check_files=False)
    frontal = read_chexpert(chexpert_root, "test", frontal_only=True, check_files=False)
    assert set(frontal.image_paths) == {p for p in every_view.image_paths if p.stem.endswith("frontal")}
    assert frontal.settings.name == "chexclusion+views"


def test_explicit_arguments_replace_the_protocol_and_are_named(chexpert_root: Path):
    raw = _chexpert_raw(chexpert_root)
    ones = read_chexpert(chexpert_root, "train", uncertain="u_ones", check_files=False)
    np.testing.assert_array_equal(
        ones.targets, _expected_targets(raw, ones, CHEXCLUSION_CHEXPERT_LABELS, lambda _, v: HUANG_TARGET[v]))
    assert ones.settings.name == "chexclusion+uncertain"
    mapping = {"Edema": 1.0, "Atelectasis": 0.0}
    mixed = read_chexpert(chexpert_root, "train", ["Edema", "Atelectasis"], uncertain=mapping, protocol="mgca",
                          check_files=False)
    expected = _expected_targets(raw, mixed, ["Edema", "Atelectasis"],
                                 lambda label, v: mapping[label] if v == "-1.0" else CHEXCLUSION_TARGET[v])
    np.testing.assert_array_equal(mixed.targets, expected)
    assert mixed.settings.describe(mixed.label_names)["uncertain"] == mapping


# ----- MIMIC-CXR ----------------------------------------------------------------------------------

def _write_mimic(root: Path, subjects) -> Path:
    rng = np.random.default_rng(1)
    split_rows, metadata_rows, label_rows = [], [], []
    for subject in subjects:
        official = rng.choice(["train", "train", "validate", "test"])
        for study in range(subject * 10, subject * 10 + rng.integers(1, 3)):
            for image, view in enumerate(rng.choice(["PA", "AP", "LATERAL", BLANK], size=rng.integers(1, 4))):
                dicom = f"{subject:08x}-{study:08x}-{image:04d}"
                split_rows.append((dicom, study, subject, official))
                metadata_rows.append((dicom, subject, study, "CHEST (PA AND LAT)", view, 3056, 2544, 21800506,
                                      213014.531, "CHEST (PA AND LAT)", "", "Erect"))
            # every subject's first study is labelled; some later ones have no row in the labeler file
            if study == subject * 10 or rng.random() < 0.5:
                label_rows.append((subject, study, *rng.choice(["1.0", "0.0", "-1.0", BLANK], len(MIMIC_CSV_LABELS))))
    _write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
               ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"), metadata_rows)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ("subject_id", "study_id", *MIMIC_CSV_LABELS), label_rows)
    return root


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> Path:
    return _write_mimic(tmp_path_factory.mktemp("mimic") / "mimic-cxr-jpg" / "2.0.0", range(10000000, 10000020))


def _mimic_raw(root: Path) -> pd.DataFrame:
    split = _raw(root / "mimic-cxr-2.0.0-split.csv.gz")
    metadata = _raw(root / "mimic-cxr-2.0.0-metadata.csv.gz")[["dicom_id", "ViewPosition"]]
    labels = _raw(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    raw = split.merge(metadata, on="dicom_id").merge(labels, on=["subject_id", "study_id"], how="left",
                                                     indicator=True)
    raw["path"] = [str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
                   for s, t, d in zip(raw["subject_id"], raw["study_id"], raw["dicom_id"])]
    return raw.set_index("path")


def test_mimic_chexclusion_labels_u_zeros_all_views_patient_split(mimic_root: Path):
    raw = _mimic_raw(mimic_root)
    splits = _read_all(read_mimic_cxr, mimic_root)
    labelled = raw[raw["_merge"] == "both"]
    for split in splits.values():
        assert split.label_names == CHEXCLUSION_MIMIC_LABELS
        expected = _expected_targets(raw, split, CHEXCLUSION_MIMIC_LABELS, lambda _, v: CHEXCLUSION_TARGET[v])
        np.testing.assert_array_equal(split.targets, expected)
    assert sorted(str(p) for s in splits.values() for p in s.image_paths) == sorted(labelled.index)
    assert set(labelled["ViewPosition"]) >= {"LATERAL", BLANK}  # lateral and unrecorded views are kept
    _check_patient_split(splits, raw["subject_id"])  # no fixture subject is in CheXclusion's list
    assert FELL_BACK in splits["test"].settings.describe()["split_note"]
    np.testing.assert_array_equal(_positives(splits),
                                  [(labelled[label] == "1.0").sum() for label in CHEXCLUSION_MIMIC_LABELS])


def test_mimic_mgca_five_labels_frontal_official_split(mimic_root: Path):
    raw = _mimic_raw(mimic_root)
    splits = _read_all(read_mimic_cxr, mimic_root, protocol="mgca")
    frontal = raw[(raw["_merge"] == "both") & raw["ViewPosition"].isin(["PA", "AP"])]
    for name, split in splits.items():
        assert split.label_names == MGCA_LABELS
        np.testing.assert_array_equal(split.targets, _expected_targets(raw, split, MGCA_LABELS, mgca_target))
        official = {"train": "train", "valid": "validate", "test": "test"}[name]
        assert sorted(map(str, split.image_paths)) == sorted(frontal.index[frontal["split"] == official])
    positives = [(frontal[label] == "1.0").sum() + (frontal[label] == "-1.0").sum() * MGCA_UNCERTAIN[label]
                 for label in MGCA_LABELS]
    np.testing.assert_array_equal(_positives(splits), positives)


# ----- NIH ChestX-ray14 ---------------------------------------------------------------------------

def _write_nih(root: Path, patients) -> Path:
    rng = np.random.default_rng(2)
    rows, names = [], []
    for patient in patients:
        for follow_up in range(rng.integers(1, 4)):
            found = rng.choice(CHEXCLUSION_NIH_LABELS, size=rng.integers(0, 3), replace=False)
            name = f"{patient:08d}_{follow_up:03d}.png"
            names.append(name)
            findings = "|".join(found) or "No Finding"
            rows.append(f"{name},{findings},{follow_up},{patient},58,M,PA,2682,2749,0.143,0.143,")
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:-5]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[-5:]) + "\n")
    return root


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory) -> Path:
    return _write_nih(tmp_path_factory.mktemp("nih"), range(1, 21))


def test_nih_chexclusion_labels_and_patient_split(nih_root: Path):
    entries = pd.read_csv(nih_root / "Data_Entry_2017.csv")
    splits = _read_all(read_nih, nih_root)
    for split in splits.values():
        assert split.label_names == CHEXCLUSION_NIH_LABELS
    assert sorted(p.name for s in splits.values() for p in s.image_paths) == sorted(entries["Image Index"])
    _check_patient_split(splits, entries["Patient ID"])  # no fixture patient is in CheXclusion's list
    assert FELL_BACK in splits["test"].settings.describe()["split_note"]
    positives = [entries["Finding Labels"].str.contains(rf"(?:^|\|){label}(?:\||$)").sum()
                 for label in CHEXCLUSION_NIH_LABELS]
    np.testing.assert_array_equal(_positives(splits), positives)
    official = read_nih(nih_root, "test", check_files=False, protocol="all14")
    assert [p.name for p in official.image_paths] == (nih_root / "test_list.txt").read_text().split()


# ----- the "patients" split: CheXclusion's published test patients, or the seeded fallback -------------

READERS = {"chexpert": read_chexpert, "mimic": read_mimic_cxr, "nih": read_nih}
# Made-up releases whose patients include some of CheXclusion's listed test patients and some others
# (the listed ones: CXP 3, 7, 13, 16, 18; MIMIC 10002559, 10005858, 10006501; NIH 31, 33, 34, 67; the
# others are in no list), and releases with none of them.
MIXED_LAYOUTS = {
    "chexpert": lambda root: _write_chexpert(root / "CheXpert-v1.0-small", range(1, 21), range(64541, 64545)),
    "mimic": lambda root: _write_mimic(root, [*range(10000000, 10000012), 10002559, 10005858, 10006501]),
    "nih": lambda root: _write_nih(root, [*range(1, 16), 31, 33, 34, 67]),
}
UNLISTED_LAYOUTS = {
    "chexpert": lambda root: _write_chexpert(root / "CheXpert-v1.0-small", [1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 14],
                                             range(64541, 64545)),
    "mimic": lambda root: _write_mimic(root, range(10000000, 10000020)),
    "nih": lambda root: _write_nih(root, range(1, 21)),
}


def _listed(dataset: str) -> set:
    """CheXclusion's published test patients of ``dataset``, read from the vendored file with json."""
    return set(json.loads(CHEXCLUSION_TEST_PATIENTS_FILE.read_text())["datasets"][dataset]["patients"])


def _release(dataset: str, root: Path) -> pd.DataFrame:
    """Each image the chexclusion reader keeps (path), its patient as the reader names it (patient) and
    as CheXclusion's lists write it (number: CheXpert's patient00003 is 3), from the raw files."""
    if dataset == "chexpert":
        raw = _chexpert_raw(root)
        return pd.DataFrame({"path": raw.index, "patient": raw["patient"].to_numpy(),
                             "number": raw["patient"].str.removeprefix("patient").astype(int).to_numpy()})
    if dataset == "mimic":
        raw = _mimic_raw(root)
        raw = raw[raw["_merge"] == "both"]  # studies without labels are dropped
        return pd.DataFrame({"path": raw.index, "patient": raw["subject_id"].to_numpy(),
                             "number": raw["subject_id"].astype(int).to_numpy()})
    entries = pd.read_csv(root / "Data_Entry_2017.csv", dtype=str)
    return pd.DataFrame({"path": [str(root / "images" / name) for name in entries["Image Index"]],
                         "patient": entries["Patient ID"], "number": entries["Patient ID"].astype(int)})


def _patients(splits: dict) -> dict:
    return {name: set(split.patient_ids) for name, split in splits.items()}


def _seeded_split(release: pd.DataFrame) -> dict:
    """The "patients" rule before the published lists, written out: the patients sorted (by number),
    permuted with HOLDOUT_SEED; the first ceil(10%) test, the next ceil(10%) valid, the rest train."""
    patients = release.drop_duplicates("number").sort_values("number")["patient"].tolist()
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(patients))
    held_out = math.ceil(CHEXCLUSION_HELD_OUT_FRACTION * len(patients))
    parts = {"test": order[:held_out], "valid": order[held_out:2 * held_out], "train": order[2 * held_out:]}
    return {name: {patients[i] for i in part} for name, part in parts.items()}


@pytest.mark.parametrize("dataset", sorted(MIXED_LAYOUTS))
def test_patient_split_tests_on_chexclusions_published_test_patients(dataset: str, tmp_path: Path):
    root = MIXED_LAYOUTS[dataset](tmp_path)
    release, listed = _release(dataset, root), _listed(dataset)
    in_list = release["number"].isin(listed)
    assert in_list.any() and not in_list.all()  # the layout holds listed and unlisted patients
    splits = _read_all(READERS[dataset], root)
    patients = _patients(splits)
    assert patients["test"] == set(release.loc[in_list, "patient"])
    assert sorted(str(p) for p in splits["test"].image_paths) == sorted(release.loc[in_list, "path"])
    # valid (ours): ceil(10%) of all the patients, drawn from the others (sorted) with HOLDOUT_SEED
    others = release.loc[~in_list].drop_duplicates("number").sort_values("number")["patient"].tolist()
    held_out = math.ceil(CHEXCLUSION_HELD_OUT_FRACTION * release["number"].nunique())
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(others))
    assert patients["valid"] == {others[i] for i in order[:held_out]}
    assert patients["train"] == set(others) - patients["valid"]
    assert not (patients["train"] & patients["valid"] or (patients["train"] | patients["valid"]) & patients["test"])
    read = [str(p) for split in splits.values() for p in split.image_paths]
    assert sorted(read) == sorted(release["path"])  # every image in exactly one split
    found = release.loc[in_list, "number"].nunique()
    notes = {split.settings.describe()["split_note"] for split in splits.values()}
    assert len(notes) == 1
    note = notes.pop()
    assert note.startswith(f"{PUBLISHED} ({found:,} of the list's {len(listed):,} found in this data)")
    assert note in _split_note(dataset, splits["test"].settings.describe())  # Table 1's note


@pytest.mark.parametrize("dataset", sorted(UNLISTED_LAYOUTS))
def test_patient_split_without_listed_patients_is_the_seeded_80_10_10_split(dataset: str, tmp_path: Path):
    root = UNLISTED_LAYOUTS[dataset](tmp_path)
    release = _release(dataset, root)
    assert not release["number"].isin(_listed(dataset)).any()
    splits = _read_all(READERS[dataset], root)
    assert _patients(splits) == _seeded_split(release)
    assert sorted(str(p) for split in splits.values() for p in split.image_paths) == sorted(release["path"])
    described = splits["test"].settings.describe()
    assert described["split_note"].startswith("test: a seeded 10 % patient holdout") and FELL_BACK in described[
        "split_note"]
    assert described["split_note"] in _split_note(dataset, described)


# ----- bad combinations ---------------------------------------------------------------------------

def test_bad_combinations_stop_with_one_message(chexpert_root: Path, nih_root: Path):
    with pytest.raises(ValueError, match="protocol 'mgca' defines no NIH ChestX-ray14 classification; "
                                         "use one of 'chexclusion', 'all14'"):
        read_cxr_split("nih", nih_root, "train", protocol="mgca")
    with pytest.raises(ValueError, match="NIH ChestX-ray14 has no uncertain labels"):
        read_cxr_split("nih", nih_root, "train", uncertain="u_ones")
    with pytest.raises(ValueError, match="NIH ChestX-ray14 has no uncertain labels and frontal views only"):
        read_cxr_split("nih", nih_root, "train", frontal_only=False)
    with pytest.raises(ValueError, match=r"protocol 'mgca' maps uncertain labels of .* not of \['No Finding'\]"):
        read_chexpert(chexpert_root, "train", ["Edema", "No Finding"], protocol="mgca")
    with pytest.raises(ValueError, match="valid_fraction applies to the official split rule only"):
        read_chexpert(chexpert_root, "train", valid_fraction=0.1)
    with pytest.raises(ValueError, match="unknown protocol 'convirt'"):
        read_cxr_split("chexpert", chexpert_root, "train", protocol="convirt")


def _load_script():
    """The CLI module behind ``scripts/finetune_classification.py``."""
    return importlib.import_module("openclip_unimlip.commands.finetune_classification")


def test_script_refuses_bad_combinations_before_training(nih_root: Path, tmp_path: Path, capsys):
    script = _load_script()
    common = ["--dataset", "nih", "--data-root", str(nih_root), "--model", "not-built", "--output-dir",
              str(tmp_path)]
    for extra, message in [(["--protocol", "mgca"], "protocol 'mgca' defines no NIH ChestX-ray14"),
                           (["--uncertain", "u_zeros"], "NIH ChestX-ray14 has no uncertain labels"),
                           (["--all-views", "--frontal-only"], "not allowed with argument")]:
        with pytest.raises(SystemExit) as error:
            script.main([*common, *extra])
        assert error.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# ----- the protocol tables and the settings, read as properties --------------------------------------
# The view rule of each protocol and dataset, from the sources each DatasetProtocol cites: CheXclusion
# reads every view (CXP/MIMIC/NIH dataset.py keep all rows), MGCA frontal only
# (classification_dataset.py:47-49, :101-103), Huang et al. frontal (chexpert/train.py:23,29); NIH
# holds frontal views only, so no rule is applied there.
FRONTAL_ONLY = {("chexclusion", "chexpert"): False, ("chexclusion", "mimic"): False, ("chexclusion", "nih"): False,
                ("mgca", "chexpert"): True, ("mgca", "mimic"): True,
                ("all14", "chexpert"): True, ("all14", "mimic"): True, ("all14", "nih"): False}


def test_every_protocols_view_rule_is_its_sources():
    from openclip_unimlip.data.cxr_protocols import PROTOCOLS

    assert {(name, dataset): rule.frontal_only for name, protocol in PROTOCOLS.items()
            for dataset, rule in protocol.datasets.items()} == FRONTAL_ONLY
    with pytest.raises(AttributeError):  # frozen: a run cannot change the table another run reads
        PROTOCOLS["mgca"].datasets["chexpert"].frontal_only = False
    with pytest.raises(AttributeError):
        PROTOCOLS["mgca"].name = "other"


def test_settings_compare_names_by_value_not_identity():
    from openclip_unimlip.data.cxr_protocols import chexclusion_patient_id, resolve_settings

    for dataset in ("chexpert", "mimic", "nih"):
        assert resolve_settings(run_time_name(dataset)).describe() == resolve_settings(dataset).describe()
    with pytest.raises(ValueError, match="NIH ChestX-ray14 has no uncertain labels"):
        resolve_settings(run_time_name("nih"), uncertain="u_ones")
    assert chexclusion_patient_id(run_time_name("chexpert"), "patient00003") == 3
    assert chexclusion_patient_id(run_time_name("mimic"), 10000032) == 10000032
    assert chexclusion_patient_id("nih", "x") is None


def test_a_view_rule_either_way_is_an_override_and_labels_are_described():
    from openclip_unimlip.data.cxr_protocols import DATASET_LABELS, resolve_settings

    all_views = resolve_settings("chexpert", "mgca", frontal_only=False)  # MGCA's frontal rule turned off
    assert (all_views.frontal_only, all_views.overrides, all_views.name) == (False, ("views",), "mgca+views")
    assert resolve_settings("chexpert", "mgca", frontal_only=True).overrides == ()  # its own rule: no override
    assert resolve_settings("chexpert", "mgca").describe()["labels"] == [
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]  # MGCA constants.py:51-57
    assert resolve_settings("chexpert", "all14").describe()["labels"] == list(DATASET_LABELS["chexpert"])
    with pytest.raises(AttributeError):  # frozen: a reader's split note goes on a copy, never on shared settings
        all_views.frontal_only = True


@pytest.mark.parametrize("num_patients", [10, 37, 95])
def test_the_seeded_patient_split_is_80_10_10_by_patient(num_patients):
    from openclip_unimlip.data.cxr_protocols import patient_split_mask

    rng = np.random.default_rng(num_patients)
    patient_ids = pd.Series(np.repeat(np.arange(100, 100 + num_patients), rng.integers(1, 4, num_patients)))
    masks = {split: patient_split_mask(patient_ids, split) for split in ("train", "valid", "test")}
    assert (masks["train"].astype(int) + masks["valid"] + masks["test"] == 1).all()  # each image in one split
    patients = {split: set(patient_ids[mask]) for split, mask in masks.items()}
    held_out = math.ceil(0.1 * num_patients)
    assert (len(patients["test"]), len(patients["valid"]), len(patients["train"])) == (
        held_out, held_out, num_patients - 2 * held_out)
    # the documented seed: docs/evaluation.md states the value the module holds
    documented = (REPO / "docs" / "evaluation.md").read_text()
    assert f"`HOLDOUT_SEED` = {HOLDOUT_SEED}," in documented and HOLDOUT_SEED == 0
