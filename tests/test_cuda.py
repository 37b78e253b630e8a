"""The CUDA path: run on a lent GPU by ``scripts/gpu_check.sh``; skipped where torch sees no CUDA.

The model is the RN50 image tower with a randomly initialised BERT-base of BiomedBERT's shape
(``bench.build_model("rn50")``), so nothing has to be downloaded on the GPU machine.
"""
import pytest
import torch

from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BATCH = 8


@pytest.fixture(scope="module")
def rn50():
    from tools.bench import build_model, make_batch

    torch.manual_seed(0)
    model, tokenizer, _ = build_model("rn50", "cuda")
    images, texts = make_batch(model, tokenizer, BATCH, "cuda")
    return model, images, texts


def _all_terms(model) -> None:
    model.train()
    model.configure_terms(TERMS)
    model.set_simclr_active(True)


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _step_losses(model, images, texts, dtype):
    with torch.autocast("cuda", dtype=dtype):
        return UniMlipLoss()(**model(images, texts), output_dict=True)


def test_bf16_autocast_step_is_finite(rn50):
    model, images, texts = rn50
    _all_terms(model)
    model.zero_grad(set_to_none=True)
    losses = _step_losses(model, images, texts, torch.bfloat16)
    assert sorted(losses) == sorted(f"{t}_loss" for t in TERMS)
    assert all(torch.isfinite(v).item() for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in _trainable(model) if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all().item() for _, p in _trainable(model))


def test_fp16_step_with_openclip_grad_scaler(rn50):
    model, images, texts = rn50
    _all_terms(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device="cuda")  # what open_clip_train.main builds for --precision amp
    before = model.visual.attnpool.c_proj.weight.detach().clone()
    for _ in range(3):  # the scaler may skip a step while it finds its scale
        optimizer.zero_grad(set_to_none=True)
        losses = _step_losses(model, images, texts, torch.float16)
        assert all(torch.isfinite(v).item() for v in losses.values()), losses
        scaler.scale(sum(losses.values())).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    assert all(torch.isfinite(p.grad).all().item() for _, p in _trainable(model) if p.grad is not None)
    assert not torch.equal(before, model.visual.attnpool.c_proj.weight), "no optimizer step was taken"


def test_strong_views_on_cuda_match_their_cpu_definition():
    from openclip_unimlip.recipes.unimlip.views import StrongViews, gaussian_blur

    # fixed parameters: the blur is the same computation on both devices
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=generator)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    cpu = gaussian_blur(images, sigma, 5)
    gpu = gaussian_blur(images.cuda(), sigma.cuda(), 5).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-5)

    # random parameters: the same distribution of views (per-channel moments over many draws)
    clean = torch.rand(3, 3, 32, 32, generator=generator).repeat(1500, 1, 1, 1)
    views = StrongViews(32)
    moments = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(1)
        view_a, view_b = views.to(device)(clean.to(device))
        pair = torch.cat([view_a, view_b]).float().cpu()
        moments.append(torch.stack([pair.mean((0, 2, 3)), pair.std((0, 2, 3))]))
    torch.testing.assert_close(moments[1], moments[0], atol=0.03, rtol=0.03)


def test_training_step_has_no_host_device_synchronisation(rn50):
    model, images, texts = rn50
    _all_terms(model)
    model.set_grad_checkpointing(True)
    model.visual.to(memory_format=torch.channels_last)
    images = images.to(memory_format=torch.channels_last)
    loss_fn = UniMlipLoss()
    try:
        for debug_mode in (0, "error"):  # the first step warms lazy initialisation up
            torch.cuda.set_sync_debug_mode(debug_mode)
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                total = sum(loss_fn(**model(images, texts), output_dict=True).values())
            total.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        model.set_grad_checkpointing(False)
        model.visual.to(memory_format=torch.contiguous_format)
    assert torch.isfinite(total).item()
