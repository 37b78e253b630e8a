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

from openclip_unimlip.data.medpix import (
    MEDPIX_SPLITS,
    PLACEHOLDER_CAPTION,
    VQA_RAD_CASES,
    VQA_RAD_OVERLAP,
    MedpixImage,
    convert_medpix,
    medpix_rows,
    read_medpix,
    vqa_rad_overlap,
)
from openclip_unimlip.data.near_duplicates import MAX_DISTANCE
from openclip_unimlip.data.shards import BadRow

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
    # half a release is not the release: the split files without the images, the images alone
    half = tmp_path / "half"
    shutil.copytree(MEDPIX / "splitted_dataset", half / "splitted_dataset")
    with pytest.raises(ValueError, match="not the MedPix 2.0 release"):
        read_medpix(half, "test")
    shutil.rmtree(half / "splitted_dataset")
    (half / "images").symlink_to(MEDPIX / "images", target_is_directory=True)
    with pytest.raises(ValueError, match="not the MedPix 2.0 release"):
        read_medpix(half, "test")


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

    if VQA_RAD.is_dir():  # dev holds one case with a VQA-RAD image: its 4 images go, by case
        report = convert_medpix(MEDPIX, tmp_path / "dev", splits=("dev",), exclude_vqa_rad=VQA_RAD,
                                formats="csv")
        dev = split_lines("dev")
        matched_cases = {r["U_id"] for r in dev if r["image"] in VQA_RAD_OVERLAP}
        left_out = {r["image"] for r in dev if r["U_id"] in matched_cases}
        placeholders = sum(r["Description"]["Caption"] == PLACEHOLDER_CAPTION for r in dev
                           if r["U_id"] not in matched_cases)
        assert len(left_out) == 4 and placeholders == 6
        assert report.splits["val"].num_samples == len(dev) - len(left_out) - placeholders
        assert report.bad_rows["empty_caption"] == placeholders
        assert set(pd.read_csv(tmp_path / "dev" / "excluded.csv").image_id) == left_out

    report = convert_medpix(MEDPIX, tmp_path / "test", splits=("test",), exclude_cases=sorted(VQA_RAD_CASES),
                            formats="csv")
    test = split_lines("test")
    assert report.splits["test"].num_samples == sum(r["U_id"] not in VQA_RAD_CASES for r in test) == 200 - 6


def _dhash_phash_by_hand(path):
    """dHash and pHash computed here from their definitions (Neal Krawetz's; ImageHash's sizes: dHash
    a 9x8 greyscale thumbnail, pHash the 8x8 low frequencies of a 32x32 one's DCT-II, against their median)."""
    from scipy.fft import dct

    from openclip_unimlip.data.shards import to_rgb
    with Image.open(path) as image:
        grey = to_rgb(image).convert("L")
    small = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    dhash = (small[:, 1:] > small[:, :-1]).flatten()
    pixels = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8]
    phash = (low > np.median(low)).flatten()
    return phash, dhash


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason=f"the VQA-RAD release is not at {VQA_RAD}")
def test_cases_left_out_for_vqa_rad_are_every_case_with_a_copy_or_near_copy_of_a_vqa_rad_image():
    from openclip_unimlip.data.medpix import exclusion_by_case, test_set_matches
    from openclip_unimlip.data.near_duplicates import image_hashes

    matches = test_set_matches(MEDPIX, [VQA_RAD / "VQA_RAD Image Folder"], workers=2)
    # the annotated copy the issue found, under another id, and the 19 same-id images
    assert "MPX1792_synpic24221" in matches and "synpic24220" in matches["MPX1792_synpic24221"]
    assert VQA_RAD_OVERLAP <= set(matches)
    assert set(exclusion_by_case(MEDPIX, matches)) == VQA_RAD_CASES
    records = [r for split in MEDPIX_SPLITS for r in split_lines(split)]
    case_of = {r["image"]: r["U_id"] for r in records}
    assert {case_of[i] for i in matches} == VQA_RAD_CASES
    # the hashes against the definitions computed here (a bit or two may differ at resampling ties)
    for image_id in ("MPX1792_synpic24221", "MPX2028_synpic34055"):
        ours = image_hashes(MEDPIX / "images" / f"{image_id}.png")
        by_hand = _dhash_phash_by_hand(MEDPIX / "images" / f"{image_id}.png")
        assert all((a != b).sum() <= 2 for a, b in zip(ours, by_hand))
    # both sides of the threshold: two different head CTs (MedPix vs ROCO) at pHash 6 are not matched
    roco = DATA / "roco-dataset" / "data" / "test" / "radiology" / "images" / "PMC4275821_gr1.jpg"
    if roco.is_file():
        p1, d1 = image_hashes(MEDPIX / "images" / "MPX2471_synpic4188.png")
        p2, d2 = image_hashes(roco)
        assert (p1 != p2).sum() > MAX_DISTANCE >= (d1 != d2).sum()


@pytest.mark.parametrize("split, expected", [("train", 15), ("dev", 6), ("test", 0)])
def test_placeholder_captions_are_bad_rows_for_the_converter(split, expected):
    placeholders = {r["image"] for r in split_lines(split) if "Replace this" in r["Description"]["Caption"]}
    assert len(placeholders) == expected  # /work/shared/data issue count: 21 in all
    bad = [row for row in medpix_rows(MEDPIX, (split,)) if isinstance(row, BadRow)]
    assert all(row.reason == "empty_caption" for row in bad)
    assert {row.source for row in bad} == {
        f"splitted_dataset/descriptions_{split}.jsonl:{n}" for n, r in enumerate(split_lines(split), 1)
        if r["image"] in placeholders}


def test_a_malformed_line_is_a_bad_row_for_the_converter_and_an_error_for_the_reader(tmp_path):
    release = tmp_path / "MedPix-2-0"
    small_release(release, per_split=2)
    train_file = release / "splitted_dataset" / "descriptions_train.jsonl"
    train_file.write_text(train_file.read_text() + '{"Type": "CT", "U_id": "MPX1"}\n')  # no image, no Description
    report = convert_medpix(tmp_path, tmp_path / "out", splits=("train",))
    bad = pd.read_csv(report.report_path)
    assert bad.reason.tolist() == ["malformed_row"]
    assert bad.source.tolist() == ["splitted_dataset/descriptions_train.jsonl:4"]
    assert report.splits["train"].num_samples == 3
    with pytest.raises(ValueError, match="malformed MedPix record at splitted_dataset/descriptions_train.jsonl:4"):
        read_medpix(tmp_path, "train")


def test_a_malformed_line_in_the_middle_is_one_bad_row_and_counts_towards_the_limit(tmp_path):
    release = tmp_path / "MedPix-2-0"
    small_release(release, per_split=3)
    train_file = release / "splitted_dataset" / "descriptions_train.jsonl"
    lines = train_file.read_text().splitlines(keepends=True)
    # 5 records after a blank line (line 2, skipped), the second malformed
    train_file.write_text(lines[0] + "\n{not json\n" + "".join(lines[1:]))
    expected = [f"splitted_dataset/descriptions_train.jsonl:{n}" for n in (1, *range(3, len(lines) + 3))]

    rows = list(medpix_rows(release, ("train",)))
    assert [row.source for row in rows] == expected  # reading goes on after the bad line
    assert [isinstance(row, BadRow) for row in rows] == [False, True, False, False, False]
    # the limit keeps the first records of the file, a malformed one among them
    assert [row.source for row in medpix_rows(release, ("train",), limit=3)] == expected[:3]


def test_the_excluded_list_has_exactly_its_three_columns_and_the_options_are_keywords(tmp_path):
    import csv
    import inspect

    from openclip_unimlip.data.medpix import test_set_matches  # a module-level import would be collected

    case = split_lines("test")[0]["U_id"]
    convert_medpix(MEDPIX, tmp_path, splits=("test",), exclude_cases=[case], formats="csv")
    with open(tmp_path / "excluded.csv", newline="") as table:
        header, *rows = list(csv.reader(table))
    assert header == ["image_id", "case_id", "reason"]
    assert rows == [[r["image"], case, "listed case"] for r in split_lines("test") if r["U_id"] == case]

    for function, positional in ((medpix_rows, ["root", "splits"]), (read_medpix, ["root", "split"]),
                                 (convert_medpix, ["root", "out_dir"]),
                                 (test_set_matches, ["medpix_root", "test_image_dirs"])):
        parameters = inspect.signature(function).parameters.values()
        assert [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional
        assert not [p for p in parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY]


def test_a_limit_above_the_small_integers_keeps_that_many_records():
    assert len(list(medpix_rows(MEDPIX, ("train",), limit=300))) == 300 < len(split_lines("train"))


def test_an_unknown_split_is_refused_before_any_image_is_hashed(tmp_path, monkeypatch):
    import openclip_unimlip.data.medpix as medpix

    def hashing(*args, **kwargs):
        raise AssertionError("the images were hashed before the splits were checked")

    monkeypatch.setattr(medpix, "test_set_matches", hashing)
    with pytest.raises(ValueError, match="unknown MedPix split"):
        convert_medpix(MEDPIX, tmp_path / "out", splits=("train", "validation"), exclude_like=[tmp_path])
    assert not (tmp_path / "out").exists()


def test_rows_carry_the_release_caption_as_written_by_default():
    records = split_lines("test")
    rows = [row for row in medpix_rows(MEDPIX, ("test",)) if not isinstance(row, BadRow)]
    captions = [(r["image"], r["Description"]["Caption"]) for r in records]
    assert [(row.key, row.caption) for row in rows] == [(key, text) for key, text in captions
                                                        if text != PLACEHOLDER_CAPTION]


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_the_command_refuses_a_limit_below_one_before_writing(tmp_path, capsys, limit):
    from openclip_unimlip.commands import convert_medpix as command

    with pytest.raises(SystemExit) as stopped:
        command.main(["--root", str(MEDPIX), "--out", str(tmp_path / "out"), "--limit", limit])
    assert stopped.value.code == 2 and f"--limit must be at least 1 (records per split), got {limit}" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
