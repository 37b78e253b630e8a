"""The BatchNorm rule of Uni-Mlip (Sec. 3.3) on its own: which layers it touches (counted here from
the classes' names, not from the module's tuple), their mode before and after OpenCLIP's
``model.train()``, and what a frozen layer computes, against ``torch.nn.functional.batch_norm``
in inference mode with the layer's running statistics."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openclip_unimlip.recipes.unimlip.batchnorm import (
    batchnorm_stats_frozen,
    keep_frozen_batchnorm_in_eval,
    set_batchnorm_stats_frozen,
)


def _mixed() -> nn.Module:
    """Every BatchNorm kind torch has, nested, beside layers that are not BatchNorm."""
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5),
                         nn.Sequential(nn.BatchNorm1d(4), nn.LayerNorm(4), nn.BatchNorm3d(4)),
                         nn.SyncBatchNorm(4), nn.GroupNorm(2, 4))


def _batchnorms(model):
    return [m for m in model.modules() if type(m).__name__ in {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                                                 "SyncBatchNorm"}]


def _others(model):
    return [m for m in model.modules() if m not in _batchnorms(model)]


def test_every_batchnorm_kind_is_counted_and_frozen_and_nothing_else():
    model = _mixed().train()
    assert set_batchnorm_stats_frozen(model, True) == len(_batchnorms(model)) == 4
    assert all(not m.training for m in _batchnorms(model))
    assert all(m.training for m in _others(model))  # dropout and the other norms keep training
    assert batchnorm_stats_frozen(model)


@pytest.mark.parametrize("training", [True, False])
def test_released_layers_follow_the_model_mode(training):
    model = _mixed().train(training)
    set_batchnorm_stats_frozen(model, True)
    assert set_batchnorm_stats_frozen(model, False) == 4
    assert [m.training for m in _batchnorms(model)] == [training] * 4
    assert not batchnorm_stats_frozen(model)


def test_openclip_train_call_is_undone_only_for_frozen_layers():
    model = _mixed().train()
    set_batchnorm_stats_frozen(model[3], True)  # the nested BatchNorm1d and BatchNorm3d only
    model.train()  # OpenCLIP at every epoch start: every layer back in training mode
    keep_frozen_batchnorm_in_eval(model)
    assert [m.training for m in _batchnorms(model)] == [True, False, False, True]
    assert all(m.training for m in _others(model))
    assert not batchnorm_stats_frozen(model)  # some, not all
    assert batchnorm_stats_frozen(model[3])


def test_a_model_without_batchnorm_is_never_frozen():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert set_batchnorm_stats_frozen(model, True) == 0
    assert not batchnorm_stats_frozen(model)


def test_a_frozen_layer_normalises_with_its_running_statistics_and_trains_its_affine():
    layer = nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        layer.weight.copy_(torch.tensor([1.5, 0.7, -0.3]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    model = nn.Sequential(layer).train()
    set_batchnorm_stats_frozen(model, True)
    model.train()
    keep_frozen_batchnorm_in_eval(model)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    out = model(x)
    expected = F.batch_norm(x, mean, var, layer.weight.detach(), layer.bias.detach(), training=False, eps=layer.eps)
    torch.testing.assert_close(out, expected)
    assert torch.equal(layer.running_mean, mean) and torch.equal(layer.running_var, var)
    out.square().sum().backward()
    assert layer.weight.grad.abs().min() > 0 and layer.bias.grad.abs().min() > 0
