"""``evaluation/features.py``'s encoders and precise BN's bookkeeping: the features are the model's
own normalised embeddings (computed here with torch's ``F.normalize``), in order, whatever the
batch size, and carry no autograd graph; re-estimation leaves no hook behind and builds no graph."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from openclip_unimlip.data.stored import StoredImage
from openclip_unimlip.evaluation.features import encode_images, encode_texts, reestimate_batchnorm_statistics


class _Toy(nn.Module):
    """encode_image: a linear map of the pixels; encode_text: an embedding of the token ids."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
        self.text = nn.EmbeddingBag(50, 5)

    def encode_image(self, images, normalize=False):
        features = self.image(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens, normalize=False):
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    sources = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(tmp_path / f"{i}.png")
        sources.append(StoredImage.from_file(str(tmp_path / f"{i}.png")))
    return sources


def _preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


def _tokenize(texts):
    return torch.tensor([[len(word) % 50 for word in text.split()][:3] + [0] * (3 - len(text.split()[:3]))
                         for text in texts])


def test_encoders_with_their_defaults_give_the_models_normalised_embeddings_in_order(images):
    model = _Toy()
    model.encode_image(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    model.eval()
    with torch.no_grad():
        expected = F.normalize(model.image(torch.stack([_preprocess(source.open()) for source in images])), dim=-1)
    features = encode_images(model, _preprocess, images)  # every default: batch size, device, workers
    torch.testing.assert_close(features, expected)
    assert not features.requires_grad and features.dtype == torch.float32
    texts = ["a b", "ccc dd e", "ffff", "g hh iii jjjj"]
    with torch.no_grad():
        expected_texts = F.normalize(model.text(_tokenize(texts)), dim=-1)
    text_features = encode_texts(model, _tokenize, texts, batch_size=3)
    torch.testing.assert_close(text_features, expected_texts)
    assert not text_features.requires_grad


def test_reestimation_removes_its_hooks_and_builds_no_graph(images):
    model = _Toy()
    model.encode_image(torch.zeros(1, 3, 8, 8))
    grad_enabled = []
    model.image.register_forward_hook(lambda module, args, output: grad_enabled.append(torch.is_grad_enabled()))
    reestimate_batchnorm_statistics(model.image, _preprocess, images, batch_size=2)
    assert grad_enabled == [False] * 3  # batches of 2, 2 and 1
    assert not model.image[1]._forward_pre_hooks  # nothing left counting what later forwards receive


def test_pooled_moments_of_uneven_batches_are_numpys_over_all_values():
    from openclip_unimlip.evaluation.features import _PooledMoments

    layer = nn.BatchNorm1d(2)
    moments = _PooledMoments()
    batches = [torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, -2.0], [6.0, 5.0]]), torch.tensor([[10.0, 0.5]])]
    for batch in batches:  # counts 1, 2, 1: the between-batch weight 1 * 2 / 3 is not a whole number
        moments(layer, (batch,))
    every = torch.cat(batches).double().numpy()
    np.testing.assert_allclose(moments.mean.numpy(), every.mean(0))
    np.testing.assert_allclose((moments.squared_deviations / (moments.count - 1)).numpy(), every.var(0, ddof=1))
    assert (moments.count, moments.batches) == (4, 3)


def test_a_batchnorm_the_images_never_reach_keeps_its_statistics_and_the_others_are_updated(images):
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.BatchNorm2d(3)  # first in module order: registered, never called
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    tower = Tower()
    with torch.no_grad():
        for layer in (tower.unused, tower.bn):
            layer.running_mean.fill_(5.0)
    reestimate_batchnorm_statistics(tower, _preprocess, images, batch_size=2)
    assert torch.equal(tower.unused.running_mean, torch.full((3,), 5.0)) and tower.unused.num_batches_tracked == 0
    with torch.no_grad():
        conv = tower.conv(torch.stack([_preprocess(source.open()) for source in images])).double()
    torch.testing.assert_close(tower.bn.running_mean, conv.mean(dim=(0, 2, 3)).float())
