"""Split discipline, as a property (issue 34): every step that selects something (the fine-tunes'
best epoch, the linear probe's ``C``, the VQA answer set) must see only the training and
validation splits. Each test runs the step twice, once with the test split replaced (other
images, scrambled labels), and checks that nothing but the test metric changed; then it scores
the test split itself (scikit-learn, a forward pass written here) and checks that the reported
test metric is that split's.

The models are a few-layer CNN (the property does not depend on the tower), the data are made up
so that the labels follow from the images.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from openclip_unimlip.data.chest_xray import CxrSplit
from openclip_unimlip.data.images import load_image
from openclip_unimlip.evaluation.classification import ClassificationData, fine_tune_classifier
from openclip_unimlip.evaluation.finetune import FitConfig, ImageClassifier, image_transform
from openclip_unimlip.evaluation.medpix_classification import (
    FineTuneSettings,
    LabelledSplit,
    fine_tune_softmax,
    linear_probe,
)

PREPROCESS = {"size": 24, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bicubic"}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: small tensor work on 2 shared cores

def _tower() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _images(folder: Path, levels: np.ndarray, seed: int) -> tuple[Path, ...]:
    """One grey PNG per level (its mean brightness), noise drawn with ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, level in enumerate(levels):
        pixels = np.clip(rng.normal(level, 25, (32, 32)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(pixels).convert("RGB").save(paths[-1])
    return tuple(paths)


def _scores_by_hand(model: nn.Module, paths, softmax: bool) -> np.ndarray:
    transform = image_transform(PREPROCESS, is_train=False)
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([transform(load_image(p)) for p in paths])).float()
    return (torch.softmax(logits, -1) if softmax else torch.sigmoid(logits)).numpy()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ----------------------------------------------------------------------------- chest X-ray fine-tune
def _cxr_split(folder: Path, targets: np.ndarray, seed: int, levels=None) -> CxrSplit:
    # label 0 ("Bright") follows the brightness; label 1 ("Any") is on for every other image
    levels = np.where(targets[:, 0] > 0, 190, 70) if levels is None else levels
    return CxrSplit(_images(folder, levels, seed), targets.astype(np.float32), ("Bright", "Any"),
                    tuple(f"p{i}" for i in range(len(targets))))


def _cxr_targets(count: int) -> np.ndarray:
    return np.stack([np.arange(count) % 2, (np.arange(count) // 2) % 2], axis=1)


def _fine_tune_cxr(data: ClassificationData):
    torch.manual_seed(0)
    classifier = ImageClassifier(_tower(), 8, 2)
    result = fine_tune_classifier(classifier, PREPROCESS, data, batch_size=8, lr=3e-3,
                                  fit_config=FitConfig(max_epochs=4, patience=None), seed=0, progress=False)
    return classifier, result


def test_chest_xray_fine_tune_selects_its_epoch_without_the_test_split(tmp_path):
    train = _cxr_split(tmp_path / "train", _cxr_targets(24), 1)
    valid = _cxr_split(tmp_path / "valid", _cxr_targets(8), 2)
    test = _cxr_split(tmp_path / "test", _cxr_targets(12), 3)
    scrambled_targets = test.targets[np.random.default_rng(4).permutation(len(test))]
    other_test = _cxr_split(tmp_path / "other", scrambled_targets, 5, levels=np.full(len(test), 128))

    model, result = _fine_tune_cxr(ClassificationData(train, valid, test))
    other_model, other = _fine_tune_cxr(ClassificationData(train, valid, other_test))
    assert [(r.train_loss, r.valid_score) for r in result.history.epochs] == [
        (r.train_loss, r.valid_score) for r in other.history.epochs]
    assert (result.history.best_epoch, result.valid_macro_auc) == (other.history.best_epoch, other.valid_macro_auc)
    assert _same_weights(model, other_model)
    assert result.test.macro_auc != other.test.macro_auc
    # the reported test AUC is the test split's, scored here by scikit-learn
    scores = _scores_by_hand(model, test.image_paths, softmax=False)
    expected = np.mean([roc_auc_score(test.targets[:, j], scores[:, j]) for j in range(2)])
    assert result.test.macro_auc == pytest.approx(expected, abs=1e-6)
    assert np.array_equal(result.test_targets, test.targets)


# ----------------------------------------------------------------------------- MedPix softmax fine-tune
def _labelled(folder: Path, targets: np.ndarray, seed: int, levels=None) -> LabelledSplit:
    levels = np.array([60, 130, 200])[targets] if levels is None else levels
    return LabelledSplit(_images(folder, levels, seed), targets.astype(np.int64), ("dark", "grey", "bright"), 0)


def _fine_tune_medpix(train, dev, test):
    torch.manual_seed(0)
    classifier = ImageClassifier(_tower(), 8, 3)
    settings = FineTuneSettings(batch_size=8, lr=3e-3, max_epochs=4, patience=None, min_epoch_images=24)
    return classifier, fine_tune_softmax(classifier, PREPROCESS, train, dev, test, settings, seed=0)


def test_medpix_fine_tune_selects_its_epoch_on_dev_only(tmp_path):
    classes = lambda n: np.arange(n) % 3  # noqa: E731
    train, dev = _labelled(tmp_path / "train", classes(24), 1), _labelled(tmp_path / "dev", classes(9), 2)
    test = _labelled(tmp_path / "test", classes(12), 3)
    other_test = _labelled(tmp_path / "other", np.random.default_rng(4).permutation(test.targets), 5,
                           levels=np.full(len(test), 128))

    model, result = _fine_tune_medpix(train, dev, test)
    other_model, other = _fine_tune_medpix(train, dev, other_test)
    assert {k: v for k, v in result.items() if k != "test_macro_auc"} == {
        k: v for k, v in other.items() if k != "test_macro_auc"}
    assert _same_weights(model, other_model)
    assert result["test_macro_auc"] != other["test_macro_auc"]
    probabilities = _scores_by_hand(model, test.images, softmax=True)
    expected = roc_auc_score(test.targets, probabilities, multi_class="ovr", average="macro")
    assert result["test_macro_auc"] == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- MedPix linear probe
def test_medpix_linear_probe_chooses_c_on_dev_only():
    rng = np.random.default_rng(0)

    def split(count):
        targets = np.arange(count) % 3
        return rng.normal(size=(count, 6)) + 0.8 * np.eye(3, 6)[targets], targets

    train, dev, test = split(60), split(30), split(30)
    result = linear_probe(*train, *dev, *test, num_classes=3)
    other_features = rng.normal(size=test[0].shape)
    other = linear_probe(*train, *dev, other_features, rng.permutation(test[1]), num_classes=3)
    assert (result["C"], result["valid_macro_auc"]) == (other["C"], other["valid_macro_auc"])
    assert result["test_macro_auc"] != other["test_macro_auc"]
    # the test number is the test split's: scikit-learn's own pipeline at the chosen C
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from openclip_unimlip.evaluation.linear_probe import MAX_ITER

    model = make_pipeline(StandardScaler(), LogisticRegression(C=result["C"], max_iter=MAX_ITER)).fit(*train)
    expected = roc_auc_score(test[1], model.predict_proba(test[0]), multi_class="ovr", average="macro")
    assert result["test_macro_auc"] == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- VQA answer set
def _slake(root: Path, test_answers) -> Path:
    """A made-up SLAKE release: the training answers differ from the test answers."""
    for name, level in (("a", 200), ("b", 50)):
        _images(root / "imgs" / name, np.array([level]), 0)

    def records(answers, start):
        return [{"qid": start + i, "img_name": f"{'ab'[i % 2]}/000.png", "question": f"question {i}?",
                 "answer": answer, "answer_type": "CLOSED" if answer in ("yes", "no") else "OPEN", "q_lang": "en"}
                for i, answer in enumerate(answers)]

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(records(["yes", "no", "lung", "heart"], 0)))
    (root / "validate.json").write_text(json.dumps(records(["yes", "lung"], 100)))
    (root / "test.json").write_text(json.dumps(records(test_answers, 200)))
    return root


def test_the_vqa_answer_set_comes_from_training_answers_alone(tmp_path):
    from openclip_unimlip.evaluation.vqa import load_vqa_data

    data = load_vqa_data("slake", _slake(tmp_path / "one", ["yes", "liver", "heart"]))
    other = load_vqa_data("slake", _slake(tmp_path / "two", ["no", "brain", "kidney", "spleen"]))
    assert data.answers.answers == other.answers.answers == ("heart", "lung", "no", "yes")
    assert [s.answer for s in data.test] == ["yes", "liver", "heart"]  # the test split is what was read
