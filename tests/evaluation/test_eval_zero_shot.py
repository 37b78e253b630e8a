"""Zero-shot classification: metrics vs independent computations, classifier vs clip_benchmark, end to end."""
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openclip_unimlip.commands import eval_zero_shot
from openclip_unimlip.data.stored import load_labelled_images
from openclip_unimlip.evaluation.zero_shot import (
    CHEST_XRAY_CLASSNAMES,
    CHEST_XRAY_TEMPLATES,
    MEDICAL_IMAGE_TEMPLATES,
    build_classifier,
    evaluate_zero_shot,
    zero_shot_metrics,
)

torch.set_num_threads(1)

TINY_MODEL = "unimlip-eval-tiny-zero-shot"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
FOLDER_CLASSES = ["cardiomegaly", "edema", "pleural_effusion"]  # sorted, as ImageFolder indexes them
IMAGES_PER_CLASS = 4


# ---------------------------------------------------------------- independent reference computations

def pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outscores a negative, ties counting half (Mann-Whitney U)."""
    wins = [float(p > n) + 0.5 * float(p == n) for p in scores[positive] for n in scores[~positive]]
    return sum(wins) / len(wins)


def reference_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    predictions = [int(np.argmax(row)) for row in logits]
    present = sorted(set(labels.tolist()))
    recalls = [np.mean([predictions[i] == c for i in range(len(labels)) if labels[i] == c]) for c in present]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    if logits.shape[1] == 2:
        auc = pairwise_auc(probabilities[:, 1], labels == 1)
    else:
        auc = np.mean([pairwise_auc(probabilities[:, c], labels == c) for c in present])
    return {
        "top1_accuracy": float(np.mean(np.array(predictions) == labels)),
        "mean_per_class_recall": float(np.mean(recalls)),
        "macro_auc": float(auc),
    }


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_model")
    config_path = root / f"{TINY_MODEL}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    checkpoint = root / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    return {"model": model.eval(), "preprocess": preprocess, "checkpoint": str(checkpoint), "config": str(config_path)}


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory):
    """The same images as class subfolders and as a CSV of path + label."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    rows = ["filepath\tlabel"]
    for c, name in enumerate(FOLDER_CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            # class-dependent brightness, so the tiny model's predictions are not all one class
            pixels = np.clip(rng.normal(60 + 70 * c, 30, size=(36, 36, 3)), 0, 255).astype(np.uint8)
            path = root / "images" / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append(f"{path.relative_to(root)}\t{name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"folder": str(root / "images"), "csv": str(root / "labels.csv")}


# ---------------------------------------------------------------- metrics

# with a class absent from the labels, scikit-learn warns that predictions name it: expected here
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("num_classes, present", [(5, 5), (2, 2), (4, 3)])
def test_metrics_equal_independent_computation(num_classes, present):
    rng = np.random.default_rng(num_classes)
    labels = np.concatenate([np.arange(present), rng.integers(0, present, size=37)])
    logits = rng.normal(size=(len(labels), num_classes))
    logits[np.arange(len(labels)), labels] += 0.7  # better than chance, not perfect
    logits[:3] = np.round(logits[:3])  # a few exact ties
    expected = reference_metrics(logits, labels)
    assert zero_shot_metrics(torch.from_numpy(logits), labels) == pytest.approx(expected)
    assert 0 < expected["top1_accuracy"] < 1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_auc_is_nan_without_negatives():
    assert np.isnan(zero_shot_metrics(np.zeros((4, 3)), [1, 1, 1, 1])["macro_auc"])
    # two classes, one of them absent from the labels: sklearn's binary AUC is undefined there too
    assert np.isnan(zero_shot_metrics(np.arange(8.0).reshape(4, 2), [0, 0, 0, 0])["macro_auc"])
    # one class: no AUC at all (and no binary column to read)
    assert np.isnan(zero_shot_metrics(np.zeros((3, 1)), [0, 0, 0])["macro_auc"])


def test_classifier_matches_clip_benchmark(tiny_model):
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    ours = build_classifier(tiny_model["model"], tokenizer, CHEST_XRAY_CLASSNAMES, CHEST_XRAY_TEMPLATES)
    theirs = zero_shot_classifier(
        tiny_model["model"], tokenizer, list(CHEST_XRAY_CLASSNAMES), list(CHEST_XRAY_TEMPLATES), "cpu", amp=False)
    assert ours.shape == (TINY_CONFIG["embed_dim"], len(CHEST_XRAY_CLASSNAMES))
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- end to end

def test_load_labelled_images_folder_and_csv(labelled_data):
    folder = load_labelled_images(labelled_data["folder"])
    csv = load_labelled_images(labelled_data["csv"])
    assert folder.classnames == csv.classnames == FOLDER_CLASSES
    assert folder.labels == csv.labels == [c for c in range(3) for _ in range(IMAGES_PER_CLASS)]
    assert [s.read_bytes() for s in folder.images] == [s.read_bytes() for s in csv.images]


def test_evaluate_zero_shot_equals_direct_computation(tiny_model, labelled_data, tmp_path):
    results = evaluate_zero_shot(
        TINY_MODEL, tiny_model["checkpoint"], data=labelled_data["folder"], templates=CHEST_XRAY_TEMPLATES,
        batch_size=5)
    assert results["classnames"] == ["cardiomegaly", "edema", "pleural effusion"]
    assert results["num_images"] == len(FOLDER_CLASSES) * IMAGES_PER_CLASS

    # the same computation written out by hand with the in-memory model
    model, preprocess = tiny_model["model"], tiny_model["preprocess"]
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    dataset = load_labelled_images(labelled_data["folder"])
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(s.path).convert("RGB")) for s in dataset.images])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        weights = []
        for name in results["classnames"]:
            prompts = tokenizer([t.format(c=name) for t in CHEST_XRAY_TEMPLATES])
            prompts = F.normalize(model.encode_text(prompts), dim=-1)
            weights.append(F.normalize(prompts.mean(dim=0), dim=0))
        logits = 100 * image_features @ torch.stack(weights, dim=1)
    expected = reference_metrics(logits.double().numpy(), np.array(dataset.labels))
    assert results["metrics"] == pytest.approx(expected, abs=1e-6)

    output = tmp_path / "zero_shot.json"
    eval_zero_shot.main([
        "--model", TINY_MODEL, "--pretrained", tiny_model["checkpoint"], "--data", labelled_data["csv"],
        "--templates", "chest_xray", "--model-config", tiny_model["config"], "--output", str(output),
    ])
    assert json.loads(output.read_text())["metrics"] == pytest.approx(results["metrics"], abs=1e-6)


def test_template_file_and_classnames_override(tiny_model, labelled_data, tmp_path):
    template_file = tmp_path / "templates.txt"
    template_file.write_text("\n".join(MEDICAL_IMAGE_TEMPLATES[:2]) + "\n")
    results = eval_zero_shot.main([
        "--model", TINY_MODEL, "--data", labelled_data["folder"], "--templates", str(template_file),
        "--classnames", "an enlarged heart", "pulmonary edema", "pleural effusion",
    ])
    assert results["templates"] == list(MEDICAL_IMAGE_TEMPLATES[:2])
    assert results["classnames"] == ["an enlarged heart", "pulmonary edema", "pleural effusion"]
    for classnames in (["only one"], ["an enlarged heart", "pulmonary edema", "pleural effusion", "one too many"]):
        with pytest.raises(ValueError, match=f"{len(classnames)} class names given for 3 classes"):
            evaluate_zero_shot(TINY_MODEL, data=labelled_data["folder"], classnames=classnames)
