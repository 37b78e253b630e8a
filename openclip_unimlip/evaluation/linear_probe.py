"""Linear probing of a frozen image tower: logistic regression on its standardised embeddings,
the regularisation chosen on the validation split.

Shared by MedPix 2.0 classification (single-label: one multinomial model,
``medpix_classification.linear_probe``) and chest X-ray classification (multi-label: one binary
model per finding, :func:`multilabel_probe`). All of it is ours: Uni-Mlip fine-tunes only (sec. 4.2).

* **features**: the tower's output embedding of each image under the eval transform (resize,
  centre crop; ``finetune.image_transform``), in eval mode, without gradients (:func:`image_features`).
* **standardisation**: the training subset's mean and standard deviation per feature (scikit-learn's
  ``StandardScaler``), applied to every split.
* **C**: each value of a small grid (:data:`DEFAULT_PROBE_C_GRID`) is fitted on the training subset
  and scored by macro AUC on the validation split; the best wins, the smallest ``C`` on a tie, and
  an undefined (NaN) score loses to any number (:func:`select_c`). The test split is scored once,
  with the chosen model: its labels take no part in the choice.
"""
import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from openclip_unimlip.data.images import load_image
from openclip_unimlip.evaluation.classification import ClassificationData, auc_report
from openclip_unimlip.evaluation.finetune import autocast, image_transform

DEFAULT_PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)  # ours: powers of ten around scikit-learn's default C = 1
MAX_ITER = 2000  # ours: lbfgs converges within it on standardised features
# Ours: the binary models are fitted by Newton's method (scikit-learn's "newton-cholesky"): the same
# optimum as the default lbfgs (the penalised objective is strictly convex), in 4-7 iterations
# whatever C is. Embeddings are strongly correlated (condition number ~3e4 for a random unimlip-tiny
# tower on 1,190 NIH training images), where lbfgs took 689 iterations and 8x the time at C = 10,
# 2.8x over the grid (measured on those images, 14 findings, 2 CPU cores).
BINARY_SOLVER = "newton-cholesky"

PathLike = Union[str, Path]
Predict = Callable[[np.ndarray], np.ndarray]  # features [N, D] -> scores [N, labels]


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[PathLike], preprocess_cfg: dict):
        self.paths = paths
        self.transform = image_transform(preprocess_cfg, is_train=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]))


@torch.no_grad()
def image_features(tower: nn.Module, preprocess_cfg: dict, images: Sequence[PathLike], batch_size: int = 64,
                   device: Union[str, torch.device] = "cpu", workers: int = 0, precision: str = "fp32") -> np.ndarray:
    """The frozen tower's output embedding of every image file (eval transform, eval mode), ``[N, D]`` float32."""
    device = torch.device(device)
    tower.to(device).eval()
    loader = DataLoader(_ImageFiles(images, preprocess_cfg), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    features = []
    for batch in loader:
        with autocast(device, precision):
            features.append(tower(batch.to(device, non_blocking=True)).float().cpu())
    return torch.cat(features).numpy()


def select_c(fit: Callable[[float], Predict], valid_features: np.ndarray, valid_score: Callable[[np.ndarray], float],
             c_grid: Sequence[float] = DEFAULT_PROBE_C_GRID) -> tuple[float, float, Predict]:
    """(C, its validation score, its fitted predictor): ``fit(C)`` for each ``C`` of ``c_grid`` in
    increasing order, scored by ``valid_score`` on the predictions for ``valid_features``; the
    highest score wins, the smallest ``C`` on a tie, and NaN loses to any number."""
    best: Optional[tuple[float, float, Predict]] = None
    for c in sorted(c_grid):
        predict = fit(c)
        score = valid_score(predict(valid_features))
        if best is None or score > best[1] or (math.isnan(best[1]) and not math.isnan(score)):
            best = (c, score, predict)
    return best


def multilabel_probe(
        train_features: np.ndarray,
        train_targets: np.ndarray,
        valid_features: np.ndarray,
        valid_targets: np.ndarray,
        test_features: np.ndarray,
        test_targets: np.ndarray,
        label_names: Sequence[str],
        c_grid: Sequence[float] = DEFAULT_PROBE_C_GRID,
) -> dict:
    """One binary logistic regression per label on standardised features, one ``C`` for all labels
    chosen by the validation macro AUC (:func:`select_c`); returns the chosen ``C``, the validation
    and test macro AUC and the test AUC per label.

    A label with a single class in the training subset (possible at 1 % or with ``--limit``) cannot
    be fitted: it scores every image with that class (0 or 1), a constant whose ROC AUC is 0.5 (ours:
    what the training labels support). A label with a single class in the validation or test split
    has no AUC there and is left out of that macro mean (``classification.auc_report``).
    """
    scaler = StandardScaler().fit(train_features)
    train_x = scaler.transform(train_features)
    constant = {j: float(train_targets[0, j]) for j in range(train_targets.shape[1])
                if len(np.unique(train_targets[:, j])) < 2}

    def fit(c: float) -> Predict:
        models = {j: LogisticRegression(C=c, solver=BINARY_SOLVER, max_iter=MAX_ITER)
                  .fit(train_x, train_targets[:, j]) for j in range(train_targets.shape[1]) if j not in constant}

        def predict(features: np.ndarray) -> np.ndarray:
            x = scaler.transform(features)
            scores = np.empty((len(features), train_targets.shape[1]))
            for j in range(train_targets.shape[1]):
                scores[:, j] = models[j].predict_proba(x)[:, 1] if j in models else constant[j]
            return scores
        return predict

    c, valid_auc, predict = select_c(
        fit, valid_features, lambda scores: auc_report(valid_targets, scores, label_names).macro_auc, c_grid)
    test = auc_report(test_targets, predict(test_features), label_names)
    return {"C": c, "valid_macro_auc": valid_auc, "test_macro_auc": test.macro_auc,
            "test_per_label_auc": test.per_label, "test_undefined_labels": test.undefined_labels,
            "constant_labels": [label_names[j] for j in sorted(constant)], "train_images": len(train_targets)}


def probe_chest_xray(
        tower: nn.Module,
        preprocess_cfg: dict,
        data: ClassificationData,
        c_grid: Sequence[float] = DEFAULT_PROBE_C_GRID,
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        workers: int = 0,
        precision: str = "fp32",
) -> dict:
    """Linear-probe ``tower`` on chest X-ray data (its training subset, valid, test):
    :func:`multilabel_probe` on the features of the three splits, with the protocol they were read
    under. The features are computed on every call, never cached: a seed's training subset is its own."""
    features = {name: image_features(tower, preprocess_cfg, getattr(data, name).image_paths, batch_size, device,
                                     workers, precision) for name in ("train", "valid", "test")}
    result = multilabel_probe(features["train"], data.train.targets, features["valid"], data.valid.targets,
                              features["test"], data.test.targets, data.label_names, c_grid)
    protocol = data.settings.describe(data.label_names) if data.settings is not None else None
    return {"protocol": protocol, **result, "test_images": len(data.test)}
