"""The MedPix / VQA-RAD exclusion matches on the right key (issue 34). As ``data/medpix.py``
documents it: an image MATCHES a VQA-RAD image by image identity, its MedPix ``synpic`` id
being a VQA-RAD file's stem or its picture a perceptual near-duplicate of one; the exclusion
then leaves out the matched image's whole CASE (``U_id``), since one case's images are slices
and annotations of one study. So on a made-up pair of releases: an id overlap and a
near-duplicate under another name take their cases out, siblings included, while a VQA-RAD
file named like a MedPix case id, or like a prefix of a synpic id, takes nothing out. Each
count is checked against the one the test derives from the made-up releases' own listings.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from openclip_unimlip.data.medpix import EXCLUDED_NAME, VQA_RAD_IMAGE_DIR, convert_medpix, read_medpix
from openclip_unimlip.data.stored import load_pairs

# train cases and their images (MedPix image ids: <case>_<synpic id>)
TRAIN = {
    "MPX4001": ("MPX4001_synpic40010", "MPX4001_synpic40011"),  # synpic40010 is in VQA-RAD (other pixels)
    "MPX4002": ("MPX4002_synpic40020", "MPX4002_synpic40021"),  # synpic40020's picture is in VQA-RAD, renamed
    "MPX4003": ("MPX4003_synpic40030", "MPX4003_synpic40031"),  # VQA-RAD holds a file named MPX4003
    "MPX4004": ("MPX4004_synpic400400",),  # VQA-RAD holds synpic40040, a prefix of this id
    "MPX4005": ("MPX4005_synpic40050", "MPX4005_synpic40051"),  # nothing in VQA-RAD
}
OTHER_SPLITS = {"dev": {"MPX4101": ("MPX4101_synpic41010",)}, "test": {"MPX4201": ("MPX4201_synpic42010",)}}


def _picture(seed: int, size: int = 96) -> Image.Image:
    """A smooth random picture: distinct pictures lie far apart on both perceptual hashes."""
    small = np.random.default_rng(seed).uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def _releases(root: Path) -> tuple:
    medpix, vqa_rad = root / "MedPix-2-0", root / "vqa-rad"
    (medpix / "splitted_dataset").mkdir(parents=True)
    (medpix / "images").mkdir()
    pictures = {}
    for split, cases in {"train": TRAIN, **OTHER_SPLITS}.items():
        lines = []
        for case, image_ids in cases.items():
            for image_id in image_ids:
                pictures[image_id] = _picture(int(image_id.rsplit("synpic", 1)[1]))
                pictures[image_id].save(medpix / "images" / f"{image_id}.png")
                lines.append(json.dumps({
                    "Type": "MR", "U_id": case, "image": image_id, "Location": "Head", "Location Category": "Head",
                    "Description": {"Caption": f"axial MR image {image_id}", "Modality": "MR - T2", "Plane": "Axial",
                                    "Age": None, "Sex": None, "ACR Codes": None, "Figure Part": None}}))
        (medpix / "splitted_dataset" / f"descriptions_{split}.jsonl").write_text("\n".join(lines) + "\n")
    folder = vqa_rad / VQA_RAD_IMAGE_DIR
    folder.mkdir(parents=True)
    _picture(1).save(folder / "synpic40010.jpg")  # same id as a MedPix image, another picture
    pictures["MPX4002_synpic40020"].resize((128, 128)).save(folder / "synpic77777.jpg", quality=90)  # a copy
    _picture(2).save(folder / "MPX4003.jpg")  # a MedPix case id, no MedPix image
    _picture(3).save(folder / "synpic40040.jpg")  # a prefix of MPX4004's synpic id
    _picture(4).save(folder / "synpic12345.jpg")  # unrelated
    return medpix, vqa_rad


def _expected_cases(medpix: Path, vqa_rad: Path) -> set:
    """The cases to leave out, counted another way: the MedPix records (read as JSON here) whose
    ``image`` ends in ``_<stem of a VQA-RAD file>``, and the one picture the test copied."""
    stems = {p.stem for p in (vqa_rad / VQA_RAD_IMAGE_DIR).iterdir()}
    records = [json.loads(line) for line in (medpix / "splitted_dataset" / "descriptions_train.jsonl").open()]
    by_id = {r["image"]: r["U_id"] for r in records if r["image"].split("_", 1)[1] in stems}
    return set(by_id.values()) | {"MPX4002"}


def test_vqa_rad_matches_are_by_image_and_leave_out_their_whole_case(tmp_path):
    medpix, vqa_rad = _releases(tmp_path)
    expected_cases = _expected_cases(medpix, vqa_rad)
    assert expected_cases == {"MPX4001", "MPX4002"}
    expected_images = {i for case in expected_cases for i in TRAIN[case]}

    report = convert_medpix(medpix, tmp_path / "out", splits=("train",), exclude_vqa_rad=vqa_rad, image_size=96)
    excluded = pd.read_csv(tmp_path / "out" / EXCLUDED_NAME)
    assert set(excluded.image_id) == expected_images and set(excluded.case_id) == expected_cases
    reasons = dict(zip(excluded.image_id, excluded.reason, strict=True))
    assert "same id as" in reasons["MPX4001_synpic40011"] and "synpic40010.jpg" in reasons["MPX4001_synpic40011"]
    assert "near-duplicate of" in reasons["MPX4002_synpic40021"] and "synpic77777" in reasons["MPX4002_synpic40021"]
    # what pretraining reads: every other train image, the case-id and prefix coincidences included
    kept = {pair.key for pair in load_pairs(str(tmp_path / "out" / "train"))}
    all_train = {i for images in TRAIN.values() for i in images}
    assert kept == all_train - expected_images
    assert report.splits["train"].num_samples == len(all_train) - len(expected_images) == 5

    # the reader's own option drops the images VQA-RAD holds under their own id, and those alone
    read = {image.image_id for image in read_medpix(medpix, "train", exclude_vqa_rad=vqa_rad)}
    assert all_train - read == {"MPX4001_synpic40010"}
