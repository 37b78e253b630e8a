"""Pins of the evaluation's numbers against references computed another way: chance recall by an
exact enumeration of rankings, ranks by scipy's rankdata, the median rank by OpenCLIP's
evaluate(), the sampled pairs by NumPy's documented draw, VQA accuracy by scikit-learn, and the
zero-shot logits by clip_benchmark's own classification loop (tests/mutations/evaluation_data_launcher.toml)."""
import inspect
import itertools
import re

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from openclip_unimlip.data.stored import LabelledImages, StoredImage, sample_indices, sample_pairs
from openclip_unimlip.evaluation import zero_shot
from openclip_unimlip.evaluation.retrieval import positive_ranks, retrieval_metrics
from openclip_unimlip.evaluation.vqa import vqa_accuracy
from openclip_unimlip.evaluation.zero_shot import run_zero_shot, zero_shot_metrics

MODEL = "unimlip-tiny"


def _write_images(folder, levels):
    """One 40x40 RGB PNG per grey level (with noise), returned as paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, level in enumerate(levels):
        pixels = np.clip(np.random.default_rng(i).normal(level, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


# ----- ranks, mean and median rank ---------------------------------------------------------------
def test_ranks_equal_scipy_rankdata_in_both_directions():
    """The rank of a positive is its 'max' rank among the candidates sorted best first (ties count
    against the model); text-to-image ranks a caption's image among the images, i.e. down a column."""
    rng = np.random.default_rng(4)
    image_features = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)  # integer dot products: ties
    text_features = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)
    similarity = image_features.astype(np.float64) @ text_features.T.astype(np.float64)
    image_to_text = [rankdata(-similarity[i], method="max")[i] for i in range(30)]
    text_to_image = [rankdata(-similarity[:, j], method="max")[j] for j in range(30)]
    assert image_to_text != text_to_image, "the example must tell the directions apart"
    ranks = positive_ranks(image_features, text_features, chunk_size=7)
    np.testing.assert_array_equal(ranks["image_to_text"].numpy(), image_to_text)
    np.testing.assert_array_equal(ranks["text_to_image"].numpy(), text_to_image)
    metrics = retrieval_metrics(image_features, text_features)
    for direction, expected in (("image_to_text", image_to_text), ("text_to_image", text_to_image)):
        assert metrics[f"{direction}_mean_rank"] == pytest.approx(np.mean(expected))
        for k in (1, 5, 10):
            assert metrics[f"{direction}_R@{k}"] == pytest.approx(np.mean(np.array(expected) <= k))


def test_median_rank_is_floored_as_openclip_evaluate():
    """OpenCLIP's get_clip_metrics: median rank = floor(median of 0-based ranks) + 1; with an even
    number of pairs the median falls between two ranks and is floored."""
    from open_clip_train.train import get_clip_metrics

    generator = torch.Generator().manual_seed(0)
    image_features = torch.nn.functional.normalize(torch.randn(8, 6, generator=generator), dim=-1)
    text_features = torch.nn.functional.normalize(image_features + 0.9 * torch.randn(8, 6, generator=generator), dim=-1)
    ranks = positive_ranks(image_features, text_features)
    assert any(float(np.median(r.numpy())) % 1 == 0.5 for r in ranks.values()), "the example needs a half median"
    expected = get_clip_metrics(image_features, text_features, logit_scale=1.0)
    metrics = retrieval_metrics(image_features, text_features)
    for direction in ranks:
        assert metrics[f"{direction}_median_rank"] == float(expected[f"{direction}_median_rank"])
        assert metrics[f"{direction}_mean_rank"] == pytest.approx(float(expected[f"{direction}_mean_rank"]))


# ----- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_total, num_samples, seed", [(10_000, 2000, 0), (2500, 2000, 7), (30, 20, 3)])
def test_sampled_indices_are_numpys_documented_draw(num_total, num_samples, seed):
    """datasets.sample_indices documents its draw as default_rng(seed).choice(N, n, replace=False),
    sorted; evaluate_retrieval records the keys, and users reproduce the pairs from that sentence."""
    expected = np.sort(np.random.default_rng(seed).choice(num_total, num_samples, replace=False))
    np.testing.assert_array_equal(sample_indices(num_total, num_samples, seed), expected)
    items = [f"pair{i}" for i in range(num_total)]
    assert sample_pairs(items, num_samples, seed) == [items[i] for i in expected]


# ----- VQA accuracy ------------------------------------------------------------------------------
def test_vqa_accuracy_by_question_type_equals_scikit_learn():
    """Open, closed and overall exact-match accuracy; overall over all questions (not the mean of
    the two types, which differs when they are not equally many)."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 40)
    predictions = np.where(rng.random(40) < 0.6, targets, rng.integers(0, 4, 40))
    is_closed = np.arange(40) < 30  # 30 closed, 10 open
    predictions[30:] = (targets[30:] + 1) % 4  # every open answer wrong: the types differ a lot
    accuracy = vqa_accuracy(predictions, targets, is_closed)
    assert accuracy.overall == pytest.approx(accuracy_score(targets, predictions))
    assert accuracy.closed == pytest.approx(accuracy_score(targets[is_closed], predictions[is_closed]))
    assert accuracy.open == pytest.approx(accuracy_score(targets[~is_closed], predictions[~is_closed])) == 0
    assert (accuracy.closed_questions, accuracy.open_questions) == (30, 10)


# ----- zero-shot logits --------------------------------------------------------------------------
def test_zero_shot_scores_clip_benchmarks_logits(tmp_path):
    """run_zero_shot's metrics equal scikit-learn's on the logits of clip_benchmark's own
    run_classification (logits = 100 * image_features @ classifier): the softmax AUC depends on
    that scale, so the same classifier at another scale would give other numbers."""
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    classnames, templates = ["ct scan", "chest x-ray", "ultrasound"], ["a medical image of {c}.", "{c}."]
    levels = [40 + 80 * c + 9 * i for c in range(3) for i in range(6)]
    labels = [c for c in range(3) for _ in range(6)]
    paths = _write_images(tmp_path / "images", levels)
    dataset = LabelledImages([StoredImage.from_file(p) for p in paths], labels, classnames)
    ours = run_zero_shot(model, preprocess, tokenizer, dataset, templates=templates, classnames=classnames,
                         batch_size=8)["metrics"]

    classifier = zero_shot_classifier(model, tokenizer, classnames, templates, "cpu", amp=False)
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    loader = torch.utils.data.DataLoader(list(zip(images, torch.tensor(labels))), batch_size=8)
    logits, targets = run_classification(model, classifier, loader, "cpu", amp=False)
    logits, targets = logits.double(), targets.numpy()
    probabilities = torch.softmax(logits, dim=1).numpy()
    expected = {"top1_accuracy": accuracy_score(targets, logits.argmax(1).numpy()),
                "mean_per_class_recall": balanced_accuracy_score(targets, logits.argmax(1).numpy()),
                "macro_auc": roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")}
    assert ours == pytest.approx(expected, abs=1e-6)
    # the scale itself, read from clip_benchmark's source line (ranks barely move between 99 and 101 here)
    scale = re.search(r"logits = ([0-9.]+) \* image_features @ classifier", inspect.getsource(run_classification))
    assert float(scale.group(1)) == zero_shot.LOGIT_SCALE
    # the check can fail: at scale 1 the same classifier scores another AUC
    assert zero_shot_metrics(logits / 100, targets)["macro_auc"] != pytest.approx(expected["macro_auc"], abs=1e-6)


# ----- chance levels -----------------------------------------------------------------------------
def _chance_by_enumeration(num_candidates: int, k: int) -> float:
    """R@K of a uniformly random ranking: over every ordering of the candidates, the fraction that
    puts the positive (candidate 0) among the first K."""
    orders = list(itertools.permutations(range(num_candidates)))
    return sum(order.index(0) < k for order in orders) / len(orders)


def test_chance_recall_is_that_of_a_random_ranking(tmp_path):
    """The demo's and the ablation's chance line (experiment.evaluate_checkpoint) is R@K of a random
    ranking of the N evaluated pairs: K/N, and 1 once K >= N (7 pairs: R@10 is certain)."""
    from openclip_unimlip.studies.experiment import evaluate_checkpoint

    num_pairs = 7
    paths = _write_images(tmp_path / "images", [30 * i for i in range(num_pairs)])
    table = tmp_path / "pairs.csv"
    table.write_text("filepath\ttitle\n" + "".join(f"{p}\tcaption number {i}\n" for i, p in enumerate(paths)))
    result = evaluate_checkpoint(MODEL, None, str(table), num_samples=None, batch_size=8)
    assert len(result.pairs) == num_pairs
    assert result.chance == pytest.approx({k: _chance_by_enumeration(num_pairs, k) for k in (1, 5, 10)})
    assert result.summary()["chance"]["R@5"] == pytest.approx(5 / 7)
