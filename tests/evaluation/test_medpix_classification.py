"""MedPix 2.0 classification (``evaluation/medpix_classification.py``): the macro one-vs-rest AUC
against scikit-learn, the stratified subsets counted another way, the labels and refusals on
hand-made releases, and what the fine-tune gives ``fit`` and reports (``fit`` replaced by a
recorder whose epochs' dev scores all differ)."""
import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import SequentialSampler

from openclip_unimlip.data.medpix import MedpixImage
from openclip_unimlip.evaluation import medpix_classification
from openclip_unimlip.evaluation.finetune import EpochRecord, FitHistory, ImageClassifier, image_transform
from openclip_unimlip.evaluation.medpix_classification import (
    FineTuneSettings,
    LabelledSplit,
    fine_tune_softmax,
    label_of,
    load_medpix_classification,
    macro_ovr_auc,
    stratified_subset,
)


def test_macro_ovr_auc_is_scikit_learns_when_every_class_occurs():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[targets]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert macro_ovr_auc(targets, probabilities) == pytest.approx(
        roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"))


def test_macro_ovr_auc_leaves_out_a_class_without_test_images():
    rng = np.random.default_rng(1)
    targets = rng.choice([0, 2, 3], 100)  # class 1 has no image
    probabilities = rng.dirichlet(np.ones(4), 100)
    by_hand = np.mean([roc_auc_score(targets == j, probabilities[:, j]) for j in (0, 2, 3)])
    assert macro_ovr_auc(targets, probabilities) == pytest.approx(by_hand)


def test_stratified_subsets_hold_every_class_are_nested_and_seeded():
    targets = np.repeat(np.arange(5), [742, 264, 263, 257, 127])  # MedPix train's location classes
    subsets = {f: stratified_subset(targets, f, seed=3) for f in (0.01, 0.1, 1.0)}
    for fraction, subset in subsets.items():
        counts = Counter(targets[subset])
        assert counts == {c: max(1, round(fraction * n)) for c, n in Counter(targets).items()}
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0]) == set(range(len(targets)))
    assert np.array_equal(stratified_subset(targets, 0.1, 3), subsets[0.1])
    assert not np.array_equal(stratified_subset(targets, 0.1, 4), subsets[0.1])


# ----------------------------------------------------------------------------- reading the labels
def _image(folder: Path, name: str, location: str = "Thorax", modality: str = "CT", plane: str = "Axial",
           write: bool = True) -> MedpixImage:
    path = folder / f"{name}.png"
    if write:
        Image.fromarray(np.full((8, 8, 3), len(name) * 20 % 256, dtype=np.uint8)).save(path)
    return MedpixImage(name, name.split("_")[0], path, "a caption", modality, "", location, plane, "")


def test_labels_read_the_release_fields_and_planes_map_to_three_classes(tmp_path):
    assert [label_of(_image(tmp_path, f"MPX1_{p}", plane=p), "plane") for p in
            ("Axial", "Transverse", "Coronal", "Sagittal", "3D Reconstruction", "")] == [
        "Axial", "Axial", "Coronal", "Sagittal", None, None]
    image = _image(tmp_path, "MPX2_a", location="Head", modality="MR", plane="Coronal")
    assert (label_of(image, "location_category"), label_of(image, "modality_type")) == ("Head", "MR")
    assert label_of(_image(tmp_path, "MPX3_a", location=""), "location_category") is None  # a null field
    # a name built at run time, as argparse gives it
    assert label_of(_image(tmp_path, "MPX4_a", plane="Transverse"), "".join(["pla", "ne"])) == "Axial"
    with pytest.raises(ValueError, match="unknown MedPix label"):
        label_of(image, "modality")


@pytest.fixture
def release(tmp_path, monkeypatch):
    """Three splits of hand-made images, read through ``read_medpix``'s place."""
    splits = {
        "train": [_image(tmp_path, "MPX1_t1", "Thorax"), _image(tmp_path, "MPX1_t2", "Head"),
                  _image(tmp_path, "MPX2_t3", "Thorax"), _image(tmp_path, "MPX3_t4", "")],
        "dev": [_image(tmp_path, "MPX4_d1", "Head"), _image(tmp_path, "MPX4_d2", "Spine and Muscles"),
                _image(tmp_path, "MPX5_d3", "Thorax")],
        "test": [_image(tmp_path, "MPX6_e1", "Thorax"), _image(tmp_path, "MPX6_e2", "Head")],
    }
    monkeypatch.setattr(medpix_classification, "read_medpix", lambda root, split: splits[split])
    return splits


def test_the_classes_are_the_training_splits_and_other_images_are_counted_out(release):
    data = load_medpix_classification("unused", "location_category")
    assert data.classes == ("Head", "Thorax") == data.dev.classes == data.test.classes
    assert (list(data.train.targets), data.train.left_out) == ([1, 0, 1], 1)  # the null location left out
    assert (list(data.dev.targets), data.dev.left_out) == ([0, 1], 1)  # Spine: no training image
    assert [p.name for p in data.dev.images] == ["MPX4_d1.png", "MPX5_d3.png"]
    assert data.train.class_counts() == dict(Counter(["Thorax", "Head", "Thorax"]))
    assert data.dev.select([1]).class_counts() == {"Head": 0, "Thorax": 1}
    for value, field in ((data, "label"), (data.train, "left_out")):  # shared by every run of a grid
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, getattr(value, field))
    release["train"].append(_image(release["train"][0].image.parent, "MPX7_t6", "Abdomen"))
    assert load_medpix_classification("unused", "location_category").classes == ("Abdomen", "Head", "Thorax")


def test_a_release_that_cannot_be_classified_is_refused_before_training(release, tmp_path):
    release["train"][:] = [image for image in release["train"] if image.location_category != "Head"]  # one class
    with pytest.raises(ValueError, match="has 1 class\\(es\\) of 'location_category'; at least 2"):
        load_medpix_classification("unused", "location_category")
    release["train"].append(_image(tmp_path, "MPX7_t5", "Head"))
    release["dev"][:] = [_image(tmp_path, "MPX8_d4", "Abdomen")]  # no dev image of a training class
    with pytest.raises(ValueError, match="the MedPix dev split has no image with a 'location_category' class"):
        load_medpix_classification("unused", "location_category")
    release["dev"][:] = [_image(tmp_path, f"MPX9_m{i}", "Head", write=False) for i in range(4)]
    with pytest.raises(FileNotFoundError, match=r"^4 MedPix image file\(s\) missing, e\.g\. [^,]+, [^,]+, [^,]+$"):
        load_medpix_classification("unused", "location_category")


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, 2.0])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match="training fraction must be in"):
        stratified_subset(np.arange(10) % 2, fraction, seed=0)


def test_a_class_too_small_for_its_share_keeps_one_image():
    targets = np.repeat([0, 1], [20, 300])  # 1 % of 20 rounds to 0: the class keeps one image
    assert Counter(targets[stratified_subset(targets, 0.01, seed=0)]) == {0: 1, 1: 3}


# ----------------------------------------------------------------------------- what the fine-tune is given
def _split(folder: Path, targets, prefix: str) -> LabelledSplit:
    paths = []
    for i, target in enumerate(targets):
        paths.append(folder / f"{prefix}{i}.png")
        Image.fromarray(np.full((16, 16, 3), 60 + 60 * target, dtype=np.uint8)).save(paths[-1])
    return LabelledSplit(tuple(paths), np.array(targets, dtype=np.int64), ("a", "b", "c"), 0)


def test_the_fine_tune_trains_seeded_augmented_epochs_and_reports_the_best_dev_epoch(tmp_path, monkeypatch):
    train, dev = _split(tmp_path, [0, 1, 2, 0, 1], "t"), _split(tmp_path, [0, 1, 2], "d")
    one_class_dev = _split(tmp_path, [1, 1], "o")
    test = _split(tmp_path, [2, 1, 0, 1], "e")
    preprocess = {"size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bicubic"}
    received, scored = {}, []
    predict = medpix_classification.predict_softmax

    def recorded_fit(model, optimizer, train_loader, loss_fn, fit_config, device, validate, progress):
        received.update(loader=train_loader, optimizer=optimizer, validate=validate)
        return FitHistory([EpochRecord(1, 1.0, 0.55), EpochRecord(2, 0.9, 0.64), EpochRecord(3, 0.8, 0.81),
                           EpochRecord(4, 0.7, 0.60)], 3)

    monkeypatch.setattr(medpix_classification, "fit", recorded_fit)
    monkeypatch.setattr(medpix_classification, "predict_softmax", lambda model, loader, *args: (
        scored.append(loader), predict(model, loader, *args))[1])
    torch.manual_seed(0)
    classifier = ImageClassifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4, 3)
    settings = FineTuneSettings(batch_size=2, lr=1e-3, max_epochs=3, patience=None, min_epoch_images=12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 1.0
    result = fine_tune_softmax(classifier, preprocess, train, dev, test, settings)  # the default seed
    assert (result["valid_macro_auc"], result["best_epoch"], result["epochs_run"]) == (0.81, 3, 4)
    loader = received["loader"]
    assert loader.sampler.num_samples == 12 and loader.sampler.generator.initial_seed() == 0
    assert repr(loader.dataset.transform) == repr(image_transform(preprocess, is_train=True))
    assert type(received["optimizer"]) is torch.optim.Adam
    # the test split scored once, in order, on the eval transform; its AUC is scikit-learn's of that pass
    (test_loader,) = scored
    assert isinstance(test_loader.sampler, SequentialSampler) and list(test_loader.dataset.split.images) == list(
        test.images) and repr(test_loader.dataset.transform) == repr(image_transform(preprocess, is_train=False))
    targets, probabilities = predict(classifier, test_loader, torch.device("cpu"))
    assert result["test_macro_auc"] == pytest.approx(
        np.mean([roc_auc_score(targets == j, probabilities[:, j]) for j in range(3)]))
    # the dev score: its loader in order on the eval transform; a dev split with one class scores lowest
    score = received["validate"](classifier)
    assert scored[-1].dataset.split is dev and repr(scored[-1].dataset.transform) == repr(test_loader.dataset.transform)
    assert score == pytest.approx(macro_ovr_auc(*predict(classifier, scored[-1], torch.device("cpu"))))
    monkeypatch.setattr(medpix_classification, "fit", lambda *args, **kwargs: (
        received.update(nan_score=kwargs["validate"](args[0])), FitHistory([EpochRecord(1, 1.0, 0.5)], 1))[1])
    fine_tune_softmax(classifier, preprocess, train, one_class_dev, test, settings)
    assert received["nan_score"] == -math.inf
