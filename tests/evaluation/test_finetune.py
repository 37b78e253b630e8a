"""The fine-tuning kit (``evaluation/finetune.py``) beyond the loop's steps (test_fit_pins.py): a
ModifiedResNet's attention pool resized to another image size (checked by properties bicubic
resampling must keep, and by the tower running at the new size), a ViT at its own size, the
transforms' interpolation as OpenCLIP's configs name it, and loss scaling exactly where
``open_clip_train`` scales (3.3, main.py: a GradScaler only for ``--precision amp``)."""
import inspect

import numpy as np
import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import InterpolationMode, v2

from openclip_unimlip.evaluation import finetune


@pytest.fixture(scope="module")
def tiny_resnet():
    torch.manual_seed(0)
    tower = open_clip.create_model("unimlip-tiny", pretrained_text=False).visual
    assert isinstance(tower, ModifiedResNet) and tower.image_size == 96  # a 3 x 3 final grid
    return tower


def test_the_attention_pool_is_resampled_to_the_new_grid(tiny_resnet):
    tower = tiny_resnet
    original = tower.attnpool.positional_embedding.detach().clone()
    width = original.shape[1]
    finetune.resize_image_tower(tower, 96)  # the same grid: bicubic at scale 1 is the identity
    torch.testing.assert_close(tower.attnpool.positional_embedding.detach(), original)
    # a grid constant per channel stays constant (bicubic weights sum to one)
    constant = torch.cat([original[:1], torch.arange(width, dtype=original.dtype).expand(9, width)])
    tower.attnpool.positional_embedding = nn.Parameter(constant.clone())
    finetune.resize_image_tower(tower, 160)
    resized = tower.attnpool.positional_embedding.detach()
    assert resized.shape == (1 + 5 * 5, width) and tower.image_size == 160
    torch.testing.assert_close(resized[0], original[0])  # the class position is kept as it was
    torch.testing.assert_close(resized[1:], torch.arange(width, dtype=resized.dtype).expand(25, width))
    tower.eval()
    with torch.no_grad():  # the tower runs at the new size, to its embedding width
        assert tower(torch.zeros(2, 3, 160, 160)).shape == (2, tower.attnpool.c_proj.out_features)
    with pytest.raises(ValueError, match="divisible by 32, got 100"):
        finetune.resize_image_tower(tower, 100)


def test_the_attention_pool_is_resampled_as_openclip_resamples_a_vits_positions(tiny_resnet):
    """The reference: OpenCLIP's own ``resize_pos_embed`` (model.py, its defaults: bicubic with
    antialiasing) on the same embedding, for a ViT whose grid is the new one, growing and shrinking."""
    from types import SimpleNamespace

    from open_clip.model import resize_pos_embed

    torch.manual_seed(1)
    tower = tiny_resnet
    embedding = torch.randn_like(tower.attnpool.positional_embedding)
    for size, grid in ((96, 3), (224, 7), (64, 2)):
        tower.attnpool.positional_embedding = nn.Parameter(embedding.clone())
        finetune.resize_image_tower(tower, size)
        state = {"visual.positional_embedding": embedding.clone()}
        resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(grid, grid))))
        torch.testing.assert_close(tower.attnpool.positional_embedding.detach(), state["visual.positional_embedding"])


def test_a_vit_loads_at_its_own_size_and_refuses_another():
    model, preprocess = finetune.load_clip_model("mlip-liu-tiny", image_size=96, pretrained_text=False)
    assert tuple(preprocess["size"]) == (96, 96) and model.visual.image_size == (96, 96)
    with pytest.raises(ValueError, match="only supported for ModifiedResNet towers, not VisionTransformer"):
        finetune.load_clip_model("mlip-liu-tiny", image_size=128, pretrained_text=False)


@pytest.mark.parametrize("named, expected", [
    ("bicubic", InterpolationMode.BICUBIC), ("bilinear", InterpolationMode.BILINEAR),
    ("random", InterpolationMode.BICUBIC), (None, InterpolationMode.BICUBIC)])
def test_the_transforms_interpolate_as_the_config_names(named, expected):
    cfg = {"size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    if named is not None:
        cfg["interpolation"] = "".join(named)  # built at run time, as read from a config: equal, not the same object
    for is_train, kinds in ((True, (v2.RandomResizedCrop,)), (False, (v2.Resize,))):
        steps = [t for t in finetune.image_transform(cfg, is_train).transforms if isinstance(t, kinds)]
        assert [t.interpolation for t in steps] == [expected]
        if is_train:  # the documented augmentation (ours): OpenCLIP's crop at scale 0.9-1
            assert steps[0].scale == (0.9, 1.0)


@pytest.mark.parametrize("precision, scaled", [("fp32", False), ("amp", True), ("amp_bf16", False)])
def test_the_loss_is_scaled_only_for_amp(monkeypatch, precision, scaled):
    made = []
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *args, **kwargs: made.append(kwargs["enabled"]) or
                        real(*args, **kwargs))
    model = nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.randn(4, 2), torch.randn(4, 1)), batch_size=2)
    config = finetune.FitConfig(max_epochs=1, precision="".join(precision))  # run-time string: equal, not the same
    finetune.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                 lambda m, x, y: nn.functional.mse_loss(m(x), y), config, torch.device("cpu"), progress=False)
    assert made == [scaled]


def test_parameters_a_step_leaves_without_gradient_are_not_updated():
    """As open_clip_train's ``optimizer.zero_grad()`` (gradients set to None): after the first step,
    AdamW neither decays nor moves by momentum a parameter that no later loss reaches."""
    model = nn.ModuleDict({"used": nn.Linear(2, 1), "sometimes": nn.Linear(2, 1)})
    after_first_step = []

    def loss(m, x, y):
        value = nn.functional.mse_loss(m["used"](x), y)
        if not after_first_step:  # the first batch reaches both; the state after its step is kept
            after_first_step.append(None)
            return value + m["sometimes"](x).pow(2).mean()
        if len(after_first_step) == 1:
            after_first_step.append(m["sometimes"].weight.detach().clone())
        return value

    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=2)
    finetune.fit(model, torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5), loader, loss,
                 finetune.FitConfig(max_epochs=2), torch.device("cpu"), progress=False)
    assert torch.equal(model["sometimes"].weight.detach(), after_first_step[1])


def test_a_classifier_never_loads_the_text_towers_base_weights(monkeypatch):
    made = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: made.append(kwargs) or real(*args, **kwargs))
    classifier, _ = finetune.build_image_classifier("unimlip-tiny", None, num_labels=3)
    assert [kwargs["pretrained_text"] for kwargs in made] == [False]
    assert classifier(torch.zeros(2, 3, 96, 96)).shape == (2, 3)


def test_loading_a_model_keeps_openclips_defaults(monkeypatch):
    """``load_clip_model`` without options builds what ``open_clip.create_model`` builds without
    them: its text tower's base weights loaded (OpenCLIP's own ``pretrained_text`` default, read from
    its signature), no pretrained tag, the config's image size."""
    defaults = inspect.signature(open_clip.create_model).parameters
    made = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: made.append(kwargs) or real(*args, **kwargs))
    _, preprocess = finetune.load_clip_model("unimlip-tiny")
    assert made == [{name: defaults[name].default for name in ("pretrained", "pretrained_text")}]
    assert preprocess["size"] == open_clip.get_model_config("unimlip-tiny")["vision_cfg"]["image_size"]


def test_the_eval_transform_gives_openclips_eval_tensor():
    """On a smooth RGB image, the evaluation transform's tensor is OpenCLIP's own
    (``open_clip.image_transform``: PIL resize, centre crop, ToTensor, Normalize) to within what
    resizing a uint8 tensor instead of a PIL image changes (one grey level of rounding here)."""
    from PIL import Image

    rows, cols = np.mgrid[0:260, 0:300]
    pixels = np.stack([rows * 255 / 259, cols * 255 / 299, (rows + cols) * 255 / 558], axis=-1)
    image = Image.fromarray(pixels.round().astype(np.uint8))
    cfg = {"size": 64, "mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28), "interpolation": "bicubic"}
    ours = finetune.image_transform(cfg, is_train=False)(image)
    reference = open_clip.image_transform(64, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                          interpolation="bicubic")(image)
    assert ours.shape == reference.shape == (3, 64, 64)
    assert (ours - reference).abs().max() * min(cfg["std"]) < 2 / 255
