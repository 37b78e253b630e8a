"""Freezing BatchNorm running statistics while keeping the affine parameters trainable.

Uni-Mlip (Sec. 3.3) argues that the strongly augmented SimCLR views shift BatchNorm's
batch mean and variance and so erase the absolute-intensity information medical images
depend on; its fix is to "freeze the mean and variance in the batch normalization layers
while keeping the weight and bias as learnable parameters". We read this as: the layers
normalise with their running statistics (eval-mode BatchNorm) and never update them, while
weight and bias keep receiving gradients. This differs from OpenCLIP's
``--lock-image-freeze-bn-stats`` (``FrozenBatchNorm2d``: affine frozen too) and from only
stopping the running-average update (the batch statistics of the augmented views would
still normalise the features).

The state lives on the modules (``module.frozen_stats``), so ``model.train()`` — called by
OpenCLIP at every epoch start, through DDP — can re-apply it via ``keep_frozen_batchnorm_in_eval``.
"""
from torch import nn

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_batchnorm_stats_frozen(module: nn.Module, frozen: bool) -> int:
    """Freeze (or release) the running statistics of every BatchNorm under ``module``.

    Returns the number of BatchNorm layers touched. Released layers follow ``module.training``.
    """
    count = 0
    for layer in module.modules():
        if isinstance(layer, _BATCHNORM):
            layer.frozen_stats = frozen
            layer.train(module.training and not frozen)
            count += 1
    return count


def keep_frozen_batchnorm_in_eval(module: nn.Module) -> None:
    """Put BatchNorm layers whose statistics are frozen back in eval mode after ``train()``."""
    for layer in module.modules():
        if getattr(layer, "frozen_stats", False):
            layer.eval()


def batchnorm_stats_frozen(module: nn.Module) -> bool:
    layers = [m for m in module.modules() if isinstance(m, _BATCHNORM)]
    return bool(layers) and all(getattr(m, "frozen_stats", False) for m in layers)
