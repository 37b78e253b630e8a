"""Precise BN (``reestimate_batchnorm_statistics``): every BatchNorm's running mean and variance
become those of all samples it receives (weighted by sample, between-batch variance kept),
checked against torch computing them on the whole set at once: the first layer from its known
input, every layer from torch's own BatchNorm fed the whole set as one batch, and with unequal
batches every layer from the concatenation of what it received."""
import copy

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from openclip_unimlip.data.stored import StoredImage
from openclip_unimlip.evaluation.features import reestimate_batchnorm_statistics

NUM_IMAGES, BATCH_SIZE = 14, 6  # batches of 6, 6 and 2: a short last batch


def _batchnorms(tower):
    return [(name, m) for name, m in tower.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sources = []
    for i in range(NUM_IMAGES):
        # images of different brightness: the batches' means differ, so the between-batch variance matters
        pixels = rng.integers(0, 256, (120, 100, 3)) * (0.3 + 0.7 * i / NUM_IMAGES)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        sources.append(StoredImage.from_file(str(folder / f"{i}.png")))
    preprocess = open_clip.image_transform(96, is_train=False)
    torch.manual_seed(0)
    tower = open_clip.create_model("unimlip-tiny").visual
    with torch.no_grad():  # stale statistics that must be replaced
        for _, layer in _batchnorms(tower):
            layer.running_mean.fill_(5.0)
            layer.running_var.fill_(7.0)
    whole = torch.stack([preprocess(source.open()) for source in sources])
    return {"sources": sources, "preprocess": preprocess, "tower": tower, "whole": whole}


def _reestimated(setup, batch_size):
    tower = copy.deepcopy(setup["tower"])
    reestimate_batchnorm_statistics(tower, setup["preprocess"], setup["sources"], batch_size=batch_size)
    return tower


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-4, atol=1e-5, msg=what)


def test_first_layer_gets_the_statistics_of_its_whole_input(setup):
    tower = _reestimated(setup, BATCH_SIZE)
    with torch.no_grad():
        first_input = setup["tower"].conv1(setup["whole"]).double()  # ModifiedResNet: conv1 -> bn1
    variance, mean = torch.var_mean(first_input, dim=(0, 2, 3), correction=1)
    _close(tower.bn1.running_mean, mean, "bn1 mean")
    _close(tower.bn1.running_var, variance, "bn1 variance")
    # the batches matter here: the mean of the three batches' variances is not the whole set's
    per_batch = torch.stack([torch.var(b, dim=(0, 2, 3)) for b in first_input.split(BATCH_SIZE)]).mean(0)
    assert (per_batch - variance).abs().max() > 100 * (1e-5 + 1e-4 * variance.abs().max())


def test_one_batch_matches_torchs_own_batchnorm_in_every_layer(setup):
    tower = _reestimated(setup, NUM_IMAGES)
    reference = copy.deepcopy(setup["tower"])
    for _, layer in _batchnorms(reference):
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
    with torch.no_grad():
        reference.train()(setup["whole"])
    layers = dict(_batchnorms(reference))
    assert len(layers) == 19
    for name, layer in _batchnorms(tower):
        _close(layer.running_mean, layers[name].running_mean, f"{name} mean")
        _close(layer.running_var, layers[name].running_var, f"{name} variance")


def test_unequal_batches_give_the_statistics_of_all_that_each_layer_received(setup):
    tower = copy.deepcopy(setup["tower"])
    weights = {k: v.clone() for k, v in tower.state_dict().items() if "running" not in k and "num_batches" not in k}
    tower.train()
    tower.bn2.eval()  # a mixed state the caller had: given back as it was
    modes = {name: m.training for name, m in tower.named_modules()}
    reestimate_batchnorm_statistics(tower, setup["preprocess"], setup["sources"], batch_size=BATCH_SIZE)
    assert {name: m.training for name, m in tower.named_modules()} == modes
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in weights.items())

    # the reference: what each layer receives from the same three batches, concatenated, and torch's
    # mean and unbiased variance of it
    probe = copy.deepcopy(setup["tower"]).eval()
    received = {}
    for name, layer in _batchnorms(probe):
        layer.train()
        layer.register_forward_pre_hook(lambda m, args, name=name: received.setdefault(name, []).append(args[0]))
    with torch.no_grad():
        for batch in setup["whole"].split(BATCH_SIZE):
            probe(batch)
    assert {len(v) for v in received.values()} == {3}
    naive_differs = 0
    for name, layer in _batchnorms(tower):
        inputs = torch.cat(received[name]).double()
        variance, mean = torch.var_mean(inputs, dim=(0, 2, 3), correction=1)
        _close(layer.running_mean, mean, f"{name} mean")
        _close(layer.running_var, variance, f"{name} variance")
        assert int(layer.num_batches_tracked) == 3
        per_batch = torch.stack([torch.var(b.double(), dim=(0, 2, 3)) for b in received[name]]).mean(0)
        naive_differs += not torch.allclose(per_batch, variance, rtol=1e-3, atol=1e-4)
    assert naive_differs > 0  # the batches make a difference this test can see


def test_no_images_is_refused(setup):
    with pytest.raises(ValueError, match="at least one image"):
        reestimate_batchnorm_statistics(copy.deepcopy(setup["tower"]), setup["preprocess"], [], batch_size=BATCH_SIZE)
