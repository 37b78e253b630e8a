"""Chest X-ray readers on small datasets written here in each official layout."""
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from names import run_time_name
from PIL import Image

from openclip_unimlip.data.chest_xray import (
    CHEXPERT_LABELS,
    CxrSplit,
    mimic_image_path,
    read_chexpert,
    read_cxr_split,
    read_mimic_cxr,
    read_nih,
    training_subset,
)
from openclip_unimlip.data.images import load_image

from dicom import write_dicom


def _write_image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((20, 24), value, dtype=np.uint8)
    pixels[::3] = 255 - value  # some structure, so JPEG has something to encode
    Image.fromarray(pixels).save(path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- CheXpert

CHEXPERT_TRAIN = [
    # patient, study, view, Cardiomegaly, Edema (None: blank)
    ("patient00001", 1, "frontal", 1.0, -1.0),
    ("patient00001", 1, "lateral", 1.0, -1.0),
    ("patient00002", 1, "frontal", 0.0, None),
    ("patient00003", 1, "frontal", -1.0, 1.0),
    ("patient00003", 2, "frontal", None, 0.0),
    ("patient00004", 1, "frontal", 1.0, 0.0),
    ("patient00005", 1, "frontal", 0.0, 1.0),
    ("patient00006", 1, "frontal", -1.0, -1.0),
]
CHEXPERT_VALID = [("patient64541", 1, "frontal", 1.0, 0.0), ("patient64542", 1, "frontal", 0.0, 1.0)]


def _chexpert_csv(root: Path, folder: str, rows: list) -> pd.DataFrame:
    records = []
    for patient, study, view, cardiomegaly, edema in rows:
        relative = f"{folder}/{patient}/study{study}/view1_{view}.jpg"
        _write_image(root / relative)
        record = {"Path": f"CheXpert-v1.0-small/{relative}", "Sex": "Female", "Age": 60,
                  "Frontal/Lateral": view.capitalize(), "AP/PA": "PA" if view == "frontal" else ""}
        record.update({label: None for label in CHEXPERT_LABELS})
        record.update({"Cardiomegaly": cardiomegaly, "Edema": edema})
        records.append(record)
    return pd.DataFrame(records)


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    _chexpert_csv(root, "train", CHEXPERT_TRAIN).to_csv(root / "train.csv", index=False)
    _chexpert_csv(root, "valid", CHEXPERT_VALID).to_csv(root / "valid.csv", index=False)
    return root


def test_chexpert_uncertain_policy_blank_and_frontal_views(chexpert_root: Path):
    labels = ["Cardiomegaly", "Edema"]
    ones = read_chexpert(chexpert_root, "train", labels, "u_ones", valid_fraction=0.0, protocol="all14")
    zeros = read_chexpert(chexpert_root, "train", labels, "u_zeros", valid_fraction=0.0, protocol="all14")
    frontal = [row for row in CHEXPERT_TRAIN if row[2] == "frontal"]
    assert len(ones) == len(frontal) == 7  # the lateral view is dropped

    def expected(uncertain: float) -> np.ndarray:
        mapping = {1.0: 1.0, 0.0: 0.0, -1.0: uncertain, None: 0.0}
        return np.array([[mapping[row[3]], mapping[row[4]]] for row in frontal], dtype=np.float32)

    np.testing.assert_array_equal(ones.targets, expected(1.0))
    np.testing.assert_array_equal(zeros.targets, expected(0.0))
    assert ones.image_paths[0] == chexpert_root / "train/patient00001/study1/view1_frontal.jpg"
    assert ones.label_names == ("Cardiomegaly", "Edema")
    with_lateral = read_chexpert(chexpert_root, "train", labels, frontal_only=False, valid_fraction=0.0,
                                 protocol="all14")
    assert len(with_lateral) == 8


def test_chexpert_splits_partition_patients_and_test_is_official_valid(chexpert_root: Path):
    train = read_chexpert(chexpert_root, "train", valid_fraction=0.3, protocol="all14")
    valid = read_chexpert(chexpert_root, "valid", valid_fraction=0.3, protocol="all14")
    test = read_chexpert(chexpert_root, "test", protocol="all14")
    assert len(train) + len(valid) == 7
    assert set(train.patient_ids).isdisjoint(valid.patient_ids)
    assert len(set(valid.patient_ids)) == 2  # ceil(0.3 * 6 patients)
    assert set(train.image_paths).isdisjoint(valid.image_paths)
    again = read_chexpert(chexpert_root, "valid", valid_fraction=0.3, protocol="all14")
    assert valid.image_paths == again.image_paths  # fixed
    assert test.patient_ids == ("patient64541", "patient64542")
    assert test.targets.shape == (2, len(CHEXPERT_LABELS))


# ----------------------------------------------------------------------------- MIMIC-CXR

# MIMIC-CXR-JPG as PhysioNet ships it (physionet.org/content/mimic-cxr-jpg, 2.0.0 and 2.1.0,
# "Files" and "Data Description"): gzipped CSVs beside files/p1x/p<subject>/s<study>/<dicom_id>.jpg;
# column order as documented; labels 1.0 / 0.0 / -1.0 / blank; ViewPosition may be blank.
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_CHEXPERT_COLUMNS = ("subject_id", "study_id", *sorted(CHEXPERT_LABELS))  # alphabetical in the file
MIMIC_IMAGES = [
    # subject, study, dicom_id, ViewPosition, split
    (10000032, 50414267, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", "train"),
    (10000032, 50414267, "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train"),
    (10000764, 57375967, "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", "train"),
    (10000898, 50771383, "7ed1bf3f-8b8fbb1d-ef2cef3b-54a5a5ec-9bd7f9a8", "", "train"),  # no view recorded
    (10001038, 58224300, "c5ce4ead-4ac1a4c5-d7e9c2a3-0e4d3b9a-5a5e1f2c", "PA", "train"),  # study not labelled
    (11000183, 52201189, "3a1f5c90-6e2b8d47-91c0a4e3-d7f8b6a2-0c9e1d3f", "PA", "validate"),
    (19000024, 53356183, "8b2d4e6f-1a3c5e7a-9c1e3a5b-7d9f1b3d-5f7a9c1e", "AP", "test"),
]
MIMIC_LABELS_BY_STUDY = {  # study -> (Atelectasis, Edema); other observations blank
    50414267: ("1.0", "-1.0"), 57375967: ("", "1.0"), 50771383: ("1.0", "1.0"),
    52201189: ("0.0", "1.0"), 53356183: ("-1.0", "0.0"),
}


def _write_table(path: Path, columns: tuple, rows: list) -> None:
    text = ",".join(columns) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text)


@pytest.fixture(params=[".csv.gz", ".csv"], ids=["as-shipped-gz", "unpacked-csv"])
def mimic_root(tmp_path: Path, request) -> Path:
    root = _mkdir(tmp_path / "mimic-cxr-jpg" / "2.0.0")
    suffix = request.param
    _write_table(root / f"mimic-cxr-2.0.0-split{suffix}", MIMIC_SPLIT_COLUMNS,
                 [(d, t, s, split) for s, t, d, _, split in MIMIC_IMAGES])
    _write_table(root / f"mimic-cxr-2.0.0-metadata{suffix}", MIMIC_METADATA_COLUMNS,
                 [(d, s, t, "CHEST (PA AND LAT)", view, 3056, 2544, 21800506, 213014.531, "CHEST (PA AND LAT)",
                   {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}.get(view, ""), "Erect")
                  for s, t, d, view, _ in MIMIC_IMAGES])
    chexpert_rows = []
    for study, (atelectasis, edema) in MIMIC_LABELS_BY_STUDY.items():
        subject = next(s for s, t, *_ in MIMIC_IMAGES if t == study)
        values = {"Atelectasis": atelectasis, "Edema": edema}
        chexpert_rows.append((subject, study, *(values.get(label, "") for label in MIMIC_CHEXPERT_COLUMNS[2:])))
    _write_table(root / f"mimic-cxr-2.0.0-chexpert{suffix}", MIMIC_CHEXPERT_COLUMNS, chexpert_rows)
    for subject, study, dicom, _, _ in MIMIC_IMAGES:
        _write_image(mimic_image_path(root, subject, study, dicom, ".jpg"))
    return root


def test_mimic_official_splits_views_and_labels(mimic_root: Path):
    train = read_mimic_cxr(mimic_root, "train", ["Atelectasis", "Edema"], uncertain="u_zeros", protocol="all14")
    # the lateral view, the image without a view and the unlabelled study are dropped
    assert [p.stem for p in train.image_paths] == [MIMIC_IMAGES[0][2], MIMIC_IMAGES[2][2]]
    assert train.image_paths[0] == (mimic_root / "files/p10/p10000032/s50414267"
                                    / "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")
    np.testing.assert_array_equal(train.targets, [[1.0, 0.0], [0.0, 1.0]])
    with_lateral = read_mimic_cxr(mimic_root, "train", ["Atelectasis", "Edema"], frontal_only=False,
                                  protocol="all14")
    assert len(with_lateral) == 4 and with_lateral.targets[3].tolist() == [1.0, 1.0]
    valid = read_mimic_cxr(mimic_root, "valid", ["Atelectasis"], protocol="all14")
    test = read_mimic_cxr(mimic_root, "test", ["Atelectasis"], uncertain="u_ones", protocol="all14")
    assert valid.patient_ids == ("11000183",) and test.patient_ids == ("19000024",)
    np.testing.assert_array_equal(test.targets, [[1.0]])
    all_labels = read_mimic_cxr(mimic_root, "test", protocol="all14").label_names
    assert all_labels == tuple(sorted(CHEXPERT_LABELS))  # the file's order


def test_mimic_missing_table_names_the_shipped_file(mimic_root: Path):
    next(mimic_root.glob("mimic-cxr-2.0.0-split.csv*")).unlink()
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2.0.0-split.csv.gz \(or its unpacked .csv\)"):
        read_mimic_cxr(mimic_root, "train", protocol="all14")


def test_mimic_dicom_files(mimic_root: Path):
    subject, study, dicom, _, _ = MIMIC_IMAGES[-1]
    path = mimic_image_path(mimic_root, subject, study, dicom, ".dcm")
    write_dicom(path, np.arange(480).reshape(20, 24))
    test = read_mimic_cxr(mimic_root, "test", image_suffix=".dcm", protocol="all14")
    assert test.image_paths == (path,)
    assert load_image(path).size == (24, 20)
    with pytest.raises(FileNotFoundError, match="1 image file"):
        read_mimic_cxr(mimic_root, "valid", image_suffix=".dcm", protocol="all14")


# ----------------------------------------------------------------------------- NIH ChestX-ray14

@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    entries = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 1),
        ("00000001_001.png", "No Finding", 1),
        ("00000002_000.png", "Hernia", 2),
        ("00000003_000.png", "Effusion", 3),
        ("00000004_000.png", "Mass|Nodule", 4),
        ("00000005_000.png", "No Finding", 5),
    ]
    pd.DataFrame([{"Image Index": name, "Finding Labels": findings, "Follow-up #": 0, "Patient ID": patient,
                   "Patient Age": 50, "Patient Gender": "M", "View Position": "PA"}
                  for name, findings, patient in entries]).to_csv(_mkdir(root) / "Data_Entry_2017.csv", index=False)
    (root / "train_val_list.txt").write_text("\n".join(name for name, *_ in entries[:4]) + "\n")
    (root / "test_list.txt").write_text("\n".join(name for name, *_ in entries[4:]) + "\n")
    for i, (name, *_) in enumerate(entries):  # both archive layouts at once
        _write_image(root / ("images" if i % 2 else "images_001/images") / name)
    return root


def test_nih_official_lists_and_pipe_labels(nih_root: Path):
    train = read_nih(nih_root, "train", valid_fraction=0.0, protocol="all14")
    test = read_nih(nih_root, "test", ["Mass", "Nodule", "Effusion"], protocol="all14")
    assert [p.name for p in train.image_paths] == ["00000001_000.png", "00000001_001.png",
                                                  "00000002_000.png", "00000003_000.png"]
    assert train.image_paths[0] == nih_root / "images_001/images/00000001_000.png"
    assert train.targets[0, [1, 2]].tolist() == [1.0, 1.0] and train.targets[0].sum() == 2  # Cardiomegaly, Effusion
    assert train.targets[1].sum() == 0  # No Finding
    assert train.targets[2, -1] == 1.0  # Hernia
    np.testing.assert_array_equal(test.targets, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    valid = read_nih(nih_root, "valid", valid_fraction=0.3, protocol="all14")
    rest = read_nih(nih_root, "train", valid_fraction=0.3, protocol="all14")
    assert len(valid) + len(rest) == 4 and set(valid.patient_ids).isdisjoint(rest.patient_ids)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_fail_with_clear_messages(chexpert_root: Path, nih_root: Path):
    with pytest.raises(ValueError, match=r"unknown label column\(s\) \['Cardiomegally'\]"):
        read_chexpert(chexpert_root, "train", ["Cardiomegally"], protocol="all14")
    with pytest.raises(ValueError, match=r"unknown label column\(s\) \['Pleural Effusion'\]"):
        read_nih(nih_root, "train", ["Pleural Effusion"], protocol="all14")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_cxr_split("nih", nih_root, "val")
    with pytest.raises(ValueError, match="unknown dataset 'padchest'"):
        read_cxr_split("padchest", nih_root, "train")
    with pytest.raises(ValueError, match="unknown uncertain-label policy 'u_ignore'"):
        read_chexpert(chexpert_root, "train", uncertain="u_ignore", protocol="all14")
    (chexpert_root / "train/patient00002/study1/view1_frontal.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 image file.*patient00002"):
        read_chexpert(chexpert_root, "train", valid_fraction=0.0, protocol="all14")
    (nih_root / "test_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_list.txt"):
        read_nih(nih_root, "test", protocol="all14")


# ----------------------------------------------------------------------------- label fractions

def _synthetic_split(size: int) -> CxrSplit:
    return CxrSplit(tuple(Path(f"{i}.png") for i in range(size)), np.zeros((size, 1), np.float32), ("x",),
                    tuple(str(i) for i in range(size)))


def test_training_fractions_are_seeded_nested_subsets():
    split = _synthetic_split(1000)
    one, ten, full = (set(training_subset(split, f, seed=3).image_paths) for f in (0.01, 0.1, 1.0))
    assert (len(one), len(ten), len(full)) == (10, 100, 1000)
    assert one < ten < full
    assert training_subset(split, 0.1, seed=3).image_paths == training_subset(split, 0.1, seed=3).image_paths
    assert set(training_subset(split, 0.1, seed=4).image_paths) != ten
    subset = training_subset(split, 0.1, seed=3).image_paths
    assert list(subset) == sorted(subset, key=lambda p: int(p.stem))  # file order kept
    assert len(training_subset(_synthetic_split(12), 0.01, seed=0)) == 1
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            training_subset(split, fraction, seed=0)


@pytest.mark.parametrize("protocol", ["all14", "chexclusion"])
def test_split_names_are_compared_by_value(chexpert_root: Path, mimic_root: Path, nih_root: Path, protocol):
    roots = {"chexpert": chexpert_root, "mimic": mimic_root, "nih": nih_root}
    for dataset, root in roots.items():
        for split in ("train", "valid", "test"):
            literal = read_cxr_split(dataset, root, split, protocol=protocol)
            built = read_cxr_split(dataset, root, run_time_name(split), protocol=protocol)
            assert built.image_paths == literal.image_paths, (dataset, split)


def test_every_reader_checks_the_image_files_by_default(chexpert_root: Path, mimic_root: Path, nih_root: Path):
    (chexpert_root / "train/patient00002/study1/view1_frontal.jpg").unlink()
    for missing_one in (lambda: read_cxr_split("chexpert", chexpert_root, "train", protocol="all14"),
                        lambda: read_chexpert(chexpert_root, "train", valid_fraction=0.0, protocol="all14")):
        with pytest.raises(FileNotFoundError, match="1 image file.*patient00002"):
            missing_one()
    for path in read_cxr_split("mimic", mimic_root, "test", protocol="all14").image_paths:
        path.unlink()
    with pytest.raises(FileNotFoundError, match="image file"):
        read_mimic_cxr(mimic_root, "test", protocol="all14")
    for path in read_cxr_split("nih", nih_root, "test", protocol="all14").image_paths:
        path.unlink()
    with pytest.raises(FileNotFoundError, match="image file"):
        read_nih(nih_root, "test", protocol="all14")


def test_missing_images_are_counted_and_the_first_five_named(nih_root: Path):
    entries = pd.read_csv(nih_root / "Data_Entry_2017.csv")
    extra = [f"000001{i:02d}_000.png" for i in range(4)]  # listed, never written
    more = pd.DataFrame([{**entries.iloc[0].to_dict(), "Image Index": name, "Patient ID": 100 + i}
                         for i, name in enumerate(extra)])
    pd.concat([entries, more]).to_csv(nih_root / "Data_Entry_2017.csv", index=False)
    with open(nih_root / "train_val_list.txt", "a") as listed:
        listed.write("\n".join(extra) + "\n")

    def listed_paths():
        return read_nih(nih_root, "train", protocol="all14", valid_fraction=0.0, check_files=False).image_paths

    for path in listed_paths():
        path.unlink(missing_ok=True)
    paths = listed_paths()  # a missing image is looked for in images/
    assert len(paths) == 8
    with pytest.raises(FileNotFoundError) as refused:
        read_nih(nih_root, "train", protocol="all14", valid_fraction=0.0)
    message = str(refused.value)
    assert message.startswith("8 image file(s) missing, e.g. ")
    assert [str(path) in message for path in paths] == [True] * 5 + [False] * 3
