"""``read_vqa_rad`` on the real VQA-RAD release (../shared/data/vqa-rad), counted another way, and a
short real fine-tune that must learn something an untrained model does not know."""
import xml.etree.ElementTree as ElementTree
from collections import Counter

import numpy as np
import pytest
import torch

from openclip_unimlip.evaluation.finetune import FitConfig
from openclip_unimlip.evaluation.vqa import VqaData, build_vqa_model, fine_tune_vqa, predict_answers
from openclip_unimlip.evaluation.vqa_datasets import AnswerSet, VqaDataset, normalize_answer, read_vqa_rad
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
    samples = read_vqa_rad(VQA_RAD, split)
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


# ----------------------------------------------------------------------------- a real fine-tune learns
TRAIN_QUESTIONS = 384  # the first 384 training questions: 12 steps of 32
SEEDS = (0, 1)
MARGIN = 0.25  # closed accuracy, fine-tuned minus untrained, averaged over SEEDS


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _closed_accuracy(model, preprocess_cfg, tokenizer, samples, answers) -> float:
    from openclip_unimlip.evaluation.finetune import image_transform

    loader = torch.utils.data.DataLoader(
        VqaDataset(samples, answers, image_transform(preprocess_cfg, is_train=False), tokenizer), batch_size=64)
    predictions, targets, _ = predict_answers(model, loader, torch.device("cpu"))
    return float(np.mean((predictions == targets) & (targets >= 0)))


@pytest.mark.slow
def test_a_short_fine_tune_answers_closed_questions_an_untrained_model_cannot(one_thread_module):
    """12 steps on real training questions, scored on the 272 closed test questions: the answer
    set has 431 classes, so an untrained head almost never says yes or no, while the fine-tuned
    one has learned at least that closed questions take a closed answer."""
    train_all = read_vqa_rad(VQA_RAD, "train")
    answers = AnswerSet.from_samples(train_all)
    closed_test = [s for s in read_vqa_rad(VQA_RAD, "test") if s.is_closed]
    data = VqaData(train_all[:TRAIN_QUESTIONS], None, closed_test, answers)
    untrained, trained = [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model, preprocess_cfg, tokenizer = build_vqa_model("unimlip-tiny", None, len(answers), pretrained_text=False)
        untrained.append(_closed_accuracy(model, preprocess_cfg, tokenizer, closed_test, answers))
        result = fine_tune_vqa(model, preprocess_cfg, tokenizer, data, batch_size=32,
                               fit_config=FitConfig(max_epochs=1, patience=None), seed=seed, progress=False)
        trained.append(result.test.closed)
    print(f"closed accuracy on {len(closed_test)} test questions: untrained {untrained}, fine-tuned {trained}")
    assert np.mean(trained) >= np.mean(untrained) + MARGIN, (untrained, trained)
