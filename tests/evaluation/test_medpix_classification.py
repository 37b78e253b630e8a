"""MedPix 2.0 classification's metric and training subsets (``evaluation/medpix_classification.py``):
the macro one-vs-rest AUC against scikit-learn, the stratified subsets counted another way."""
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from openclip_unimlip.evaluation.medpix_classification import macro_ovr_auc, stratified_subset


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
