"""MedPix 2.0 reader and converter on the real release at ../shared/data/medpix-2.0.

Counts are checked against counts made another way: plain ``json`` over the split files and the
PNG files on disk; the VQA-RAD overlap against a listing of the VQA-RAD image folder.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openclip_unimlip.data.medpix import (MEDPIX_SPLITS, VQA_RAD_OVERLAP, MedpixImage, convert_medpix,
                                          read_medpix, vqa_rad_overlap)

from paths import REPO  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MEDPIX = DATA / "medpix-2.0"
VQA_RAD = DATA / "vqa-rad"

pytestmark = pytest.mark.skipif(
    not (MEDPIX / "Descriptions.json").is_file(),
    reason=f"the real MedPix 2.0 release is not at {MEDPIX} (../shared/data beside the checkout; CI has it)")


def split_lines(split):
    """The records of an official split file, read with plain json."""
    path = MEDPIX / "splitted_dataset" / f"descriptions_{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("split", MEDPIX_SPLITS)
def test_counts_per_split_type_and_location_equal_the_json_files(split):
    records = split_lines(split)
    images = read_medpix(MEDPIX, split)
    assert len(images) == len(records)
    assert Counter(i.modality_type for i in images) == Counter(r["Type"] for r in records)
    assert Counter(i.location_category for i in images) == Counter(r["Location Category"] for r in records)
    assert [i.image_id for i in images] == [r["image"] for r in records]
    assert [i.caption for i in images] == [r["Description"]["Caption"] for r in records]
    assert all(isinstance(i, MedpixImage) and i.image.is_file() for i in images)


def test_the_official_splits_partition_the_release_by_case():
    on_disk = {path.stem for path in (MEDPIX / "images").glob("*.png")}
    described = {record["image"] for record in json.loads((MEDPIX / "Descriptions.json").read_text())}
    per_split = {split: {i.image_id for i in read_medpix(MEDPIX, split)} for split in MEDPIX_SPLITS}
    assert sum(map(len, per_split.values())) == len(on_disk) == len(described)
    assert set().union(*per_split.values()) == on_disk == described
    cases = {split: {i.case_id for i in read_medpix(MEDPIX, split)} for split in MEDPIX_SPLITS}
    assert not (cases["train"] & cases["dev"]) and not (cases["train"] & cases["test"]) \
        and not (cases["dev"] & cases["test"])


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason=f"the VQA-RAD release is not at {VQA_RAD}")
def test_vqa_rad_overlap_equals_a_listing_of_both_image_folders():
    vqa_rad_files = {path.name for path in (VQA_RAD / "VQA_RAD Image Folder").iterdir()}
    expected = {path.stem for path in (MEDPIX / "images").glob("*.png")
                if path.stem.split("_", 1)[1] + ".jpg" in vqa_rad_files}
    assert len(expected) == 19  # /work/shared/data/README.md: "19 images also appear in VQA-RAD"
    assert vqa_rad_overlap(MEDPIX, VQA_RAD) == expected == VQA_RAD_OVERLAP
    for split in MEDPIX_SPLITS:
        kept = {i.image_id for i in read_medpix(MEDPIX, split, exclude_vqa_rad=VQA_RAD)}
        everything = {i.image_id for i in read_medpix(MEDPIX, split)}
        assert kept == everything - expected


def test_a_folder_that_is_not_the_release_is_refused_with_one_message(tmp_path):
    with pytest.raises(ValueError, match="not the MedPix 2.0 release"):
        read_medpix(DATA, "train")
    with pytest.raises(ValueError, match="not the MedPix 2.0 release"):
        convert_medpix(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="unknown MedPix split"):
        read_medpix(MEDPIX, "validation")


def test_the_repository_root_holding_the_release_folder_is_accepted(tmp_path):
    (tmp_path / "MedPix-2-0").symlink_to(MEDPIX, target_is_directory=True)
    assert [i.image_id for i in read_medpix(tmp_path, "test")] == [r["image"] for r in split_lines("test")]


def small_release(root: Path, per_split: int = 3) -> dict:
    """A copy of the release with the first records of each split plus the first RGBA image of
    train; the first dev record's image deleted, the first test record's caption emptied."""
    records = {split: split_lines(split)[:per_split] for split in MEDPIX_SPLITS}
    rgba = next(r for r in split_lines("train")
                if Image.open(MEDPIX / "images" / f"{r['image']}.png").mode == "RGBA")
    records["train"].append(rgba)
    records["test"][0]["Description"]["Caption"] = "  "
    (root / "splitted_dataset").mkdir(parents=True)
    (root / "images").mkdir()
    for split, rows in records.items():
        (root / "splitted_dataset" / f"descriptions_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for r in rows:
            shutil.copy(MEDPIX / "images" / f"{r['image']}.png", root / "images")
    (root / "images" / f"{records['dev'][0]['image']}.png").unlink()
    return {"records": records, "rgba": rgba["image"], "missing": records["dev"][0]["image"],
            "empty": records["test"][0]["image"]}


def read_shards(pattern_dir: Path):
    import webdataset as wds

    shards = sorted(str(p) for p in pattern_dir.glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False).decode("pilrgb")}


def test_conversion_reads_back_through_webdataset_equal_to_the_source(tmp_path):
    release = small_release(tmp_path / "MedPix-2-0")
    report = convert_medpix(tmp_path, tmp_path / "out", formats="both")

    bad = pd.read_csv(report.report_path)
    assert sorted(zip(bad.reason, bad.detail.str.contains(release["missing"]) | (bad.reason == "empty_caption"))) \
        == [("empty_caption", True), ("missing_image", True)]
    assert bad.source.tolist() == ["splitted_dataset/descriptions_dev.jsonl:1",
                                  "splitted_dataset/descriptions_test.jsonl:1"]
    assert report.rows_read == 10 and report.num_kept == 8
    assert {name: split.num_samples for name, split in report.splits.items()} == {"train": 4, "val": 2, "test": 2}

    source = {r["image"]: (split, r) for split, rows in release["records"].items() for r in rows}
    shard_split = {"train": "train", "dev": "val", "test": "test"}
    for name in ("train", "val", "test"):
        for key, sample in read_shards(tmp_path / "out" / name).items():
            split, record = source[key]
            assert shard_split[split] == name
            assert sample["txt"] == " ".join(record["Description"]["Caption"].split())
            assert sample["json"]["location_category"] == record["Location Category"]
            assert sample["json"]["type"] == record["Type"] and sample["json"]["split"] == split
            with Image.open(MEDPIX / "images" / f"{key}.png") as original:
                expected = np.asarray(original.convert("RGB"))  # every MedPix RGBA image is opaque
            assert np.array_equal(np.asarray(sample["png"]), expected), key
    assert release["rgba"] in read_shards(tmp_path / "out" / "train")

    csv = pd.read_csv(tmp_path / "out" / "csv" / "val.csv", sep="\t")
    assert len(csv) == 2 and all(Path(p).is_file() for p in csv.filepath)

    again = convert_medpix(tmp_path, tmp_path / "out", formats="both")  # resumable: nothing rewritten
    assert again.shards_written == 0 and again.shards_skipped == 3


def test_caption_prefix_limit_image_size_and_exclusion(tmp_path):
    out = tmp_path / "out"
    report = convert_medpix(MEDPIX, out, splits=("test",), caption_prefix=True, limit=4, image_size=96)
    assert report.splits["test"].num_samples == 4
    samples = read_shards(out / "test")
    for record in split_lines("test")[:4]:
        d = record["Description"]
        expected = f"{d['Modality']}, {d['Plane']}. {' '.join(d['Caption'].split())}"
        assert samples[record["image"]]["txt"] == expected
        assert min(samples[record["image"]]["png"].size) == 96
    assert pd.read_csv(out / "excluded.csv").empty

    if VQA_RAD.is_dir():
        overlap = vqa_rad_overlap(MEDPIX, VQA_RAD)
        report = convert_medpix(MEDPIX, tmp_path / "dev", splits=("dev",), exclude_vqa_rad=VQA_RAD,
                                formats="csv")
        dev = {r["image"] for r in split_lines("dev")}
        assert report.splits["val"].num_samples == len(dev - overlap)
        assert set(pd.read_csv(tmp_path / "dev" / "excluded.csv").image_id) == dev & overlap

    report = convert_medpix(MEDPIX, tmp_path / "test", splits=("test",), exclude_ids=VQA_RAD_OVERLAP, formats="csv")
    test = {r["image"] for r in split_lines("test")}
    assert report.splits["test"].num_samples == len(test - VQA_RAD_OVERLAP)


def test_a_malformed_line_is_a_bad_row_for_the_converter_and_an_error_for_the_reader(tmp_path):
    release = tmp_path / "MedPix-2-0"
    small_release(release, per_split=2)
    train_file = release / "splitted_dataset" / "descriptions_train.jsonl"
    train_file.write_text(train_file.read_text() + '{"Type": "CT", "U_id": "MPX1"}\n')  # no image, no Description
    report = convert_medpix(tmp_path, tmp_path / "out", splits=("train",))
    bad = pd.read_csv(report.report_path)
    assert bad.reason.tolist() == ["malformed_row"] and bad.source.tolist() == ["splitted_dataset/descriptions_train.jsonl:4"]
    assert report.splits["train"].num_samples == 3
    with pytest.raises(ValueError, match="malformed MedPix record at splitted_dataset/descriptions_train.jsonl:4"):
        read_medpix(tmp_path, "train")
