"""``read_vqa_rad`` on the real VQA-RAD release (../shared/data/vqa-rad), counted another way (the XML
file; the JSON read with the json module alone), and a short real fine-tune with the CPU preset's
layout that must beat the most-common-answer row."""
import json
import xml.etree.ElementTree as ElementTree
from collections import Counter

import pytest
import torch

from openclip_unimlip.data.vqa_releases import normalize_answer, read_vqa_rad
from openclip_unimlip.evaluation.finetune import FitConfig
from openclip_unimlip.evaluation.vqa import (
    build_vqa_model,
    fine_tune_vqa,
    load_vqa_data,
    majority_answer_accuracy,
)
from openclip_unimlip.studies.benchmark.engine import PRESETS

from paths import REPO

VQA_RAD = REPO.parent / "shared" / "data" / "vqa-rad"
pytestmark = pytest.mark.skipif(not VQA_RAD.is_dir(), reason=f"the real VQA-RAD release is not at {VQA_RAD} "
                                                              "(../shared/data beside the checkout, as in CI)")


@pytest.fixture(scope="module")
def xml_rows() -> list[dict]:
    """Every question of the release's XML file (not the JSON the reader reads), as plain dicts."""
    root = ElementTree.parse(VQA_RAD / "VQA_RAD Dataset Public.xml").getroot()
    return [{child.tag: (child.text or "") for child in question} for question in root.findall("question")]


def _xml_split(rows: list[dict], split: str) -> list[dict]:
    is_test = split == "test"
    return [row for row in rows if row["phrase_type"].startswith("test_") == is_test]


def test_the_release_holds_2248_rows_in_four_phrase_types(xml_rows):
    assert len(xml_rows) == 2248
    assert Counter(row["phrase_type"] for row in xml_rows) == {
        "freeform": 1206, "para": 591, "test_freeform": 308, "test_para": 143}
    assert Counter(row["answer_type"] for row in xml_rows) == {"CLOSED": 1297, "OPEN": 949, "CLOSED ": 2}


@pytest.mark.parametrize("split, questions, closed, open_, images", [
    ("train", 1797, 1027, 770, 313),
    ("test", 451, 272, 179, 203),
])
def test_split_counts_match_the_xml_release(xml_rows, split, questions, closed, open_, images):
    samples = read_vqa_rad(VQA_RAD, split, vqa_rad_split="no-frames")  # the XML's rows, no frame added
    rows = _xml_split(xml_rows, split)
    xml_closed = sum(row["answer_type"].strip() == "CLOSED" for row in rows)
    assert (len(samples), sum(s.is_closed for s in samples), sum(not s.is_closed for s in samples)) \
        == (len(rows), xml_closed, len(rows) - xml_closed) == (questions, closed, open_)
    assert len({s.image_path.name for s in samples}) == len({row["image_name"] for row in rows}) == images
    # the same questions with the same answers, not only the same number of them
    assert Counter((s.question, s.answer, s.answer_type) for s in samples) == Counter(
        (row["question"].strip(), normalize_answer(row["answer"]), row["answer_type"].strip()) for row in rows)


def test_the_questions_use_314_of_the_315_release_images(xml_rows):
    folder = VQA_RAD / "VQA_RAD Image Folder"
    on_disk = {path.name for path in folder.iterdir()}
    used = {s.image_path.name for split in ("train", "test") for s in read_vqa_rad(VQA_RAD, split)}
    assert used == {row["image_name"] for row in xml_rows}
    assert len(on_disk) == 315 and len(used) == 314
    assert on_disk - used == {"synpic35356.jpg"}  # in the folder, asked about by no question


@pytest.fixture(scope="module")
def json_rows() -> list[dict]:
    """The release's JSON, read with the json module and nothing of the package."""
    return json.loads((VQA_RAD / "VQA_RAD Dataset Public.json").read_text(encoding="utf-8"))


def _norm(answer) -> str:
    return " ".join(str(answer).lower().split()).rstrip(".").strip()


def _plain_splits(rows: list[dict]) -> dict:
    """(image, question, answer, answer type) of each split, counted from the plain JSON: the standard
    training set is every non-test row's question and every row's frame that is not "NULL"."""
    def entry(row, question):
        return row["image_name"], question.strip(), _norm(row["answer"]), row["answer_type"].strip()

    is_test = [row["phrase_type"] in ("test_freeform", "test_para") for row in rows]
    no_frames = [entry(row, row["question"]) for row, test in zip(rows, is_test) if not test]
    frames = [entry(row, row["question_frame"]) for row in rows if row["question_frame"] != "NULL"]
    return {"no-frames": no_frames, "standard": no_frames + frames,
            "test": [entry(row, row["question"]) for row, test in zip(rows, is_test) if test]}


def _entries(samples) -> Counter:
    return Counter((s.image_path.name, s.question, s.answer, s.answer_type) for s in samples)


def test_standard_split_is_3064_questions_with_284_frames_of_test_questions(json_rows):
    frames = [row for row in json_rows if row["question_frame"] != "NULL"]
    assert len(frames) == 1267
    assert Counter(row["phrase_type"] for row in frames) == {
        "freeform": 552, "para": 431, "test_freeform": 165, "test_para": 119}  # 284 from test rows: the leak
    plain = _plain_splits(json_rows)
    train, test = read_vqa_rad(VQA_RAD, "train"), read_vqa_rad(VQA_RAD, "test")
    assert (len(train), len(test)) == (len(plain["standard"]), len(plain["test"])) == (3064, 451)
    assert _entries(train) == Counter(plain["standard"]) and _entries(test) == Counter(plain["test"])
    assert len(read_vqa_rad(VQA_RAD, "train", vqa_rad_split="no-frames")) == 1797 == 3064 - len(frames)


@pytest.mark.parametrize("split, unseen", [("standard", 47), ("no-frames", 115)])
def test_test_answers_never_seen_in_training(json_rows, split, unseen):
    plain = _plain_splits(json_rows)
    trained = {answer for _, _, answer, _ in plain[split]}
    assert sum(answer not in trained for _, _, answer, _ in plain["test"]) == unseen
    data = load_vqa_data("vqa-rad", VQA_RAD, vqa_rad_split=split)
    assert sum(data.answers.index(s.answer) < 0 for s in data.test) == unseen


@pytest.mark.parametrize("split", ["standard", "no-frames"])
def test_majority_answer_accuracy_against_plain_json_counts(json_rows, split):
    plain = _plain_splits(json_rows)
    correct = Counter()
    for kind in ("CLOSED", "OPEN"):
        counts = Counter(answer for _, _, answer, answer_type in plain[split] if answer_type == kind)
        majority = sorted(a for a, n in counts.items() if n == max(counts.values()))[0]
        correct[kind] = sum(answer == majority for _, _, answer, answer_type in plain["test"] if answer_type == kind)
    data = load_vqa_data("vqa-rad", VQA_RAD, vqa_rad_split=split)
    accuracy = majority_answer_accuracy(data.train, data.test)
    assert accuracy.closed == pytest.approx(correct["CLOSED"] / 272)
    assert accuracy.open == pytest.approx(correct["OPEN"] / 179)
    assert accuracy.overall == pytest.approx((correct["CLOSED"] + correct["OPEN"]) / 451)


# ----------------------------------------------------------------------------- a real fine-tune learns
# Of the CPU preset's 10 epochs: on a dev split carved from training, 6 reached 42.6 % overall against the
# most-common-answer row's 23.9 % (seed 0; docs/real-data.md, "VQA on a CPU"). 4 were too few: 35.0 %
# on the test split, 3.1 points above that row, too close to trust.
SHORT_EPOCHS = 6
MARGIN = 0.03  # overall accuracy above the most-common-answer row, 451 test questions


@pytest.mark.slow
def test_a_short_cpu_preset_fine_tune_beats_the_most_common_answer_row():
    """Six epochs of the CPU preset (frozen, cached question states; each image transformed once) on
    the standard split, with torch's default threads (2 cores, idle: 163 s and 42.6 %; with one
    thread it took 266 s), scored on all 451 test questions: the model, told
    nothing about answer types, must beat answering each question with its type's most common
    training answer (31.9 %). With the text transformer trained on every step, one epoch of the
    old preset ended at or below that row whatever the initialisation."""
    recipe = PRESETS["cpu"].vqa
    data = load_vqa_data("vqa-rad", VQA_RAD, vqa_rad_split=recipe.vqa_rad_split)
    majority = majority_answer_accuracy(data.train, data.test).overall
    torch.manual_seed(0)
    model, preprocess_cfg, tokenizer = build_vqa_model("unimlip-tiny", None, len(data.answers), recipe.image_size,
                                                       recipe.map_tokens, freeze_text=recipe.freeze_text)
    result = fine_tune_vqa(model, preprocess_cfg, tokenizer, data, batch_size=recipe.batch_size,
                           encoder_lr=recipe.encoder_lr, fusion_lr=recipe.fusion_lr,
                           fit_config=FitConfig(SHORT_EPOCHS, None), seed=0, progress=False, augment=recipe.augment)
    print(f"overall accuracy on {len(data.test)} test questions: {result.test.overall:.4f}, most common answer "
          f"{majority:.4f}")
    assert result.test.overall >= majority + MARGIN, (result.test, majority)
