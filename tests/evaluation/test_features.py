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
