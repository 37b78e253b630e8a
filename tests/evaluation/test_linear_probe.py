"""The linear probe (``evaluation/linear_probe.py``): C is chosen on the validation split alone, the
test macro AUC is scikit-learn's ``roc_auc_score`` of an independently refitted model, single-class
labels are handled as documented, and the features are the frozen tower's on the eval transform."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from openclip_unimlip.data.chest_xray import CxrSplit
from openclip_unimlip.evaluation.classification import ClassificationData
from openclip_unimlip.evaluation.finetune import image_transform
from openclip_unimlip.evaluation.linear_probe import (
    DEFAULT_PROBE_C_GRID,
    image_features,
    multilabel_probe,
    probe_chest_xray,
    select_c,
)

from paths import REPO

LABELS = ("a", "b", "c")


def _features_and_targets(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Six features, three labels each driven by one feature plus noise (a probe can learn them)."""
    features = rng.normal(size=(n, 6))
    logits = features[:, :3] * np.array([2.0, 1.0, 0.5]) + rng.normal(size=(n, 3))
    return features, (logits > 0.3).astype(np.float32)


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    return [_features_and_targets(rng, n) for n in (80, 60, 60)]


def _fit(c: float, features: np.ndarray, targets: np.ndarray) -> LogisticRegression:
    """Another solver than the probe's (lbfgs, to a tight tolerance): the same optimum."""
    return LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000).fit(features, targets)


def _independent_valid_aucs(train, valid) -> dict[float, float]:
    """Per C of the grid: the validation macro AUC of a per-label logistic regression fitted here."""
    scaler = StandardScaler().fit(train[0])
    aucs = {}
    for c in DEFAULT_PROBE_C_GRID:
        scores = [_fit(c, scaler.transform(train[0]), train[1][:, j]).predict_proba(scaler.transform(valid[0]))[:, 1]
                  for j in range(len(LABELS))]
        aucs[c] = np.mean([roc_auc_score(valid[1][:, j], scores[j]) for j in range(len(LABELS))])
    return aucs


def test_the_c_grid_is_the_one_the_docs_report():
    """docs/evaluation.md (chest X-ray) and docs/real-data.md (MedPix) give the grid users read."""
    for doc in ("evaluation.md", "real-data.md"):
        grid = re.search(r"C`? ∈ \{([^}]*)\}", (REPO / "docs" / doc).read_text()).group(1)
        assert tuple(float(c) for c in grid.split(",")) == DEFAULT_PROBE_C_GRID, doc


@pytest.mark.parametrize("scores, chosen", [
    ({10.0: 0.6, 0.1: 0.7, 1.0: 0.7, 0.01: 0.5}, 0.1),  # the highest wins, the smallest C of a tie
    ({0.01: 0.8, 0.1: 0.7, 1.0: 0.6, 10.0: 0.5}, 0.01),  # a lower score never replaces a higher one
    ({0.01: math.nan, 0.1: 0.4, 1.0: math.nan, 10.0: 0.4}, 0.1),  # NaN loses to any number, even first
    ({0.01: 0.4, 0.1: math.nan, 1.0: 0.3, 10.0: math.nan}, 0.01),  # and a NaN after a number never wins
    ({0.01: math.nan, 0.1: math.nan, 1.0: math.nan, 10.0: math.nan}, 0.01),  # all undefined: the smallest C
])
def test_select_c_keeps_the_best_score_the_smallest_c_of_a_tie_and_never_a_nan(scores, chosen):
    """A toy fit whose validation score per C is written by hand, the grid given out of order."""
    def fit(c: float):
        return lambda features: np.full(len(features), scores[c])

    c, score, predict = select_c(fit, np.zeros((2, 1)), lambda predictions: float(predictions[0]), c_grid=list(scores))
    assert c == chosen
    assert score == scores[chosen] or math.isnan(score) and math.isnan(scores[chosen])
    assert predict(np.zeros((1, 1)))[0] == score or math.isnan(score)


def test_c_is_chosen_on_valid_and_the_test_auc_is_sklearns(splits):
    train, valid, test = splits
    result = multilabel_probe(*train, *valid, *test, LABELS)
    valid_aucs = _independent_valid_aucs(train, valid)
    best = max(valid_aucs.values())
    assert result["C"] == min(c for c, auc in valid_aucs.items() if auc == best)
    assert result["valid_macro_auc"] == pytest.approx(best, abs=1e-12)

    scaler = StandardScaler().fit(train[0])
    per_label = [roc_auc_score(test[1][:, j], _fit(result["C"], scaler.transform(train[0]), train[1][:, j])
                               .predict_proba(scaler.transform(test[0]))[:, 1]) for j in range(len(LABELS))]
    assert result["test_macro_auc"] == pytest.approx(np.mean(per_label), abs=1e-12)
    assert [result["test_per_label_auc"][label] for label in LABELS] == pytest.approx(per_label, abs=1e-12)
    assert result["test_macro_auc"] > 0.7 and result["constant_labels"] == [] and result["train_images"] == 80


def test_test_labels_take_no_part_in_choosing_c(splits):
    train, valid, test = splits
    result = multilabel_probe(*train, *valid, *test, LABELS)
    scrambled_targets = test[1][np.random.default_rng(5).permutation(len(test[1]))]
    scrambled = multilabel_probe(*train, *valid, test[0], scrambled_targets, LABELS)
    assert (scrambled["C"], scrambled["valid_macro_auc"]) == (result["C"], result["valid_macro_auc"])
    assert scrambled["test_macro_auc"] != result["test_macro_auc"]
    # and the valid labels do choose it: scrambling them changes the choice's score
    scrambled_valid = multilabel_probe(*train, valid[0], valid[1][::-1].copy(), *test, LABELS)
    assert scrambled_valid["valid_macro_auc"] != result["valid_macro_auc"]


def test_single_class_labels_constant_in_training_and_left_out_of_the_test_mean(splits):
    train, valid, test = splits
    train_targets = train[1].copy()
    train_targets[:, 2] = 0.0  # no positive of "c" in the training subset
    test_targets = test[1].copy()
    test_targets[:, 1] = 1.0  # no negative of "b" in the test split
    result = multilabel_probe(train[0], train_targets, *valid, test[0], test_targets, LABELS)
    assert result["constant_labels"] == ["c"]
    assert result["test_per_label_auc"]["c"] == 0.5  # a constant score ranks nothing
    assert result["test_per_label_auc"]["b"] is None and result["test_undefined_labels"] == ["b"]
    assert result["test_macro_auc"] == pytest.approx(np.mean([result["test_per_label_auc"][k] for k in "ac"]))


def test_a_training_subset_smaller_than_the_label_count_probes_every_label(splits):
    """Two training images, three labels (a --limit run): "a" is fitted, "b" and "c" are constant;
    every label's test AUC is still reported, "a"'s equal to scikit-learn's on an independent fit."""
    _, valid, test = splits
    train_features, train_targets = splits[0][0][:2], np.array([[1, 0, 1], [0, 0, 1]], dtype=np.float32)
    result = multilabel_probe(train_features, train_targets, *valid, *test, LABELS)
    assert result["constant_labels"] == ["b", "c"]
    assert result["test_per_label_auc"]["b"] == result["test_per_label_auc"]["c"] == 0.5
    scaler = StandardScaler().fit(train_features)
    model = _fit(result["C"], scaler.transform(train_features), train_targets[:, 0])
    expected = roc_auc_score(test[1][:, 0], model.predict_proba(scaler.transform(test[0]))[:, 1])
    assert result["test_per_label_auc"]["a"] == pytest.approx(expected, abs=1e-9)


def test_a_single_training_image_makes_every_label_constant(splits):
    """1 % of a small split can be one image: nothing can be fitted, every label scores that image's
    class, and every test AUC is that of a constant score (0.5)."""
    _, valid, test = splits
    result = multilabel_probe(splits[0][0][:1], np.array([[1, 0, 1]], dtype=np.float32), *valid, *test, LABELS)
    assert result["constant_labels"] == list(LABELS)
    assert result["test_per_label_auc"] == {label: 0.5 for label in LABELS} and result["test_macro_auc"] == 0.5


class _MeanColour(torch.nn.Module):
    """A 'tower' whose embedding is each channel's mean, and which records the mode it ran in."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.modes = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.scale * images.mean(dim=(2, 3))


def test_features_are_the_frozen_towers_on_the_eval_transform_and_probe_chest_xray_uses_them(tmp_path: Path):
    rng = np.random.default_rng(2)
    paths, targets = [], []
    for i in range(24):
        bright = i % 2
        pixels = np.clip(rng.normal(180 if bright else 60, 30, (40, 30)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
        targets.append([bright, 1 - bright])
    cfg = {"size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bicubic"}
    tower = _MeanColour().train()
    features = image_features(tower, cfg, paths, batch_size=5)
    transform = image_transform(cfg, is_train=False)
    expected = torch.stack([2.0 * transform(Image.open(p).convert("RGB")).mean(dim=(1, 2)) for p in paths])
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert features.shape == (24, 3) and not any(tower.modes)  # eval mode throughout
    assert tower.scale.grad is None

    targets = np.array(targets, dtype=np.float32)

    def split(rows):
        return CxrSplit(tuple(paths[i] for i in rows), targets[list(rows)], ("bright", "dark"),
                        tuple(str(i) for i in rows))

    data = ClassificationData(split(range(0, 12)), split(range(12, 18)), split(range(18, 24)))
    result = probe_chest_xray(tower, cfg, data, batch_size=7)
    direct = multilabel_probe(features[:12], targets[:12], features[12:18], targets[12:18], features[18:],
                              targets[18:], ("bright", "dark"))
    assert {k: result[k] for k in direct} == direct
    assert result["test_macro_auc"] == 1.0 and result["test_images"] == 6
