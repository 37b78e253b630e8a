"""Bars that a broken Uni-Mlip recipe misses (issue 20, point 3), on ``unimlip-tiny``.

A loss that goes down proves little: a fusion that never sees the image still lowers MLM's
loss on the caption's own words, and SimCLR on two identical views is the easiest contrastive
task there is. So the MLM test trains on data where only the image tells the masked word, and
the SimCLR test measures how hard the model's own views make the task; each checks a control
showing that its bar needs what it tests.
"""
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss

COLOURS = ("red", "green", "blue")  # one word piece each in MiniLM's vocabulary (checked below)


def _coloured_batch(tokenizer, batch, generator):
    """Images that are one flat colour plus noise, captioned with only that colour's name: a
    masked caption has lost its only word, so only the image can tell which word it was."""
    colour = torch.randint(len(COLOURS), (batch,), generator=generator)
    pixels = torch.eye(3)[colour].view(batch, 3, 1, 1) * 0.8 + 0.2 * torch.rand(batch, 3, 96, 96, generator=generator)
    images = (pixels - 0.45) / 0.27
    # [CLS] colour [SEP] [PAD]: the context's other 28 pads only cost text-tower time
    return images, tokenizer([COLOURS[c] for c in colour])[:, :4]


def _mlm_accuracy(out):
    predicted = out["mlm_targets"] != -100
    return (out["mlm_logits"].argmax(-1)[predicted] == out["mlm_targets"][predicted]).float().mean().item()


def test_mlm_learns_the_masked_word_from_the_image(tiny_model, tokenizer):
    """The fusion must read the caption's own image: trained on captions whose only word is
    the image's colour, MLM predicts it from the image (accuracy near 1), and the same trained
    model with the image embedding zeroed falls to about chance (1/3, plus the 10 % of masked
    tokens BERT keeps unchanged). A fusion fed zeros, another sample's image or nothing but the
    caption cannot pass; the zeroed control shows the bar is not reachable from the text."""
    assert all(len(tokenizer.tokenizer.tokenize(c)) == 1 for c in COLOURS)
    model = tiny_model
    model.train()
    model.configure_terms(["mlm"])
    # a one-word caption is masked with probability p (stochastic quota, masking.py): at the paper's
    # 0.15 a batch of 24 would hold ~4 predictions; 0.9 gives enough to train and to measure on
    model.masker.probability = 0.9
    # only the fusion learns (cheap); the untrained image embedding already separates the colours
    model.visual.requires_grad_(False)
    model.text.requires_grad_(False)
    loss_fn = UniMlipLoss(weights={"itc": 0, "image_perturbed_itc": 0, "text_perturbed_itc": 0, "simclr": 0})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        out = model(*_coloured_batch(tokenizer, 24, generator))
        optimizer.zero_grad()
        loss_fn(**out).backward()
        optimizer.step()

    images, texts = _coloured_batch(tokenizer, 48, generator)
    with torch.no_grad():
        seeing = _mlm_accuracy(model(images, texts))
        blind = model.fusion.register_forward_pre_hook(
            lambda module, args: (args[0], torch.zeros_like(args[1]), args[2]))
        blinded = _mlm_accuracy(model(images, texts))
        blind.remove()
    assert seeing > 0.9, f"MLM accuracy {seeing:.2f} with the image"
    assert blinded < 0.6, f"MLM accuracy {blinded:.2f} with the image embedding zeroed: the task leaks through the text"


def _pixel_embedding(images):
    """A fixed, training-free image embedding (8x8 average colours, centred, unit norm): distinct
    smooth images are far apart in it, so SimCLR's loss on it measures how different two views are."""
    pooled = F.avg_pool2d(images, images.shape[-1] // 8).flatten(1)
    return F.normalize(pooled - pooled.mean(1, keepdim=True), dim=-1)


def test_simclr_views_make_a_non_trivial_task(tiny_model):
    """SimCLR learns only if its two views differ: the model's own views and the real SimCLR term
    (Eq. 2, temperature 0.1) on a fixed pixel embedding. Identical views give about 0 (the
    control: the embedding tells the images apart); each view against the clean image is harder;
    two independently augmented views are harder still. A view replaced by the clean image, or a
    second view drawn with the first one's parameters, fails the last bar. Not a training: the
    untrained tower's embeddings are nearly collinear, and training it long enough to show the
    difference is too slow for this suite."""
    torch.manual_seed(0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
    low_resolution = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    clean = (F.interpolate(low_resolution, size=96, mode="bilinear") - mean) / std
    views = tiny_model.strong_views
    views.set_normalization(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    simclr = UniMlipLoss(weights={"itc": 0, "image_perturbed_itc": 0, "text_perturbed_itc": 0, "mlm": 0, "simclr": 1})

    def loss(first, second):
        a, b = _pixel_embedding(first), _pixel_embedding(second)
        return simclr(a, a, torch.tensor(1.0), simclr_features_a=a, simclr_features_b=b).item()

    identical, one_view, two_views = [], [], []
    for _ in range(8):  # averaged over draws: one draw of 64 pairs is noisy
        view_a, view_b = views(clean)
        identical.append(loss(view_a, view_a))
        one_view += [loss(clean, view_a), loss(clean, view_b)]
        two_views.append(loss(view_a, view_b))
    identical, one_view, two_views = (sum(v) / len(v) for v in (identical, one_view, two_views))
    assert identical < 0.1, f"identical views: SimCLR loss {identical:.2f}; the embedding does not separate the images"
    assert one_view > identical + 1.0, f"clean vs one view {one_view:.2f}, identical views {identical:.2f}"
    assert two_views > one_view + 0.2, f"two views {two_views:.2f}, clean vs one view {one_view:.2f}"
