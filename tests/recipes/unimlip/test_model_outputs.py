"""What the Uni-Mlip model hands its loss, key by key (issue 26): the logit scale exponentiated, the
clean embeddings as OpenCLIP's own towers compute them, the two SimCLR embeddings as the tower's
embeddings of the two drawn views, and no key the loss does not take. References: OpenCLIP's
``CustomTextCLIP`` and its towers, OpenCLIP's ``ClipLoss``, the views the model drew (recorded)."""
import inspect

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP

from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss


def _images(batch=4, size=96, seed=0):
    return torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_logit_scale_reaches_the_loss_exponentiated(tiny_model, captions):
    """OpenCLIP (and PMC-CLIP, pmc_clip.py l.113) keep ln(1/0.07) in the parameter and multiply the
    logits by its exponential: the loss must receive exp(parameter), with d/dθ exp(θ) = exp(θ)."""
    model = tiny_model.train()
    images = _images()
    out = model(images, captions)
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07), rtol=1e-5, atol=0)
    out["logit_scale"].backward()
    torch.testing.assert_close(model.logit_scale.grad, model.logit_scale.detach().exp())
    with torch.no_grad():
        evaluated = CustomTextCLIP.forward(model.eval(), images, captions)  # OpenCLIP's own output
    torch.testing.assert_close(out["logit_scale"].detach(), evaluated["logit_scale"])


def test_clean_embeddings_are_the_towers_normalised_and_itc_is_openclips_clip_loss(tiny_model, captions):
    model = tiny_model.train()
    model.configure_terms(["itc"])  # no MLM masking: the caption reaches the tower as it is
    model.text.eval()  # no dropout in the text tower, so two passes agree
    images = _images()
    out = model(images, captions)
    with torch.no_grad():
        image_reference = F.normalize(model.visual(images), dim=-1)  # train-mode BatchNorm: batch statistics
        text_reference = F.normalize(model.text(captions), dim=-1)
    torch.testing.assert_close(out["image_features"], image_reference)
    torch.testing.assert_close(out["text_features"], text_reference)
    itc = UniMlipLoss(weights={"itc": 1.0, "image_perturbed_itc": 0, "text_perturbed_itc": 0, "simclr": 0,
                               "mlm": 0})(**out, output_dict=True)["itc_loss"]
    expected = open_clip.ClipLoss()(image_reference, text_reference, model.logit_scale.exp())
    torch.testing.assert_close(itc, expected)


def test_simclr_embeddings_are_the_two_drawn_views(tiny_model, captions):
    model = tiny_model.train()
    model.configure_terms(["itc", "simclr"])
    model.set_simclr_active(True)  # BatchNorm statistics frozen: each view's embedding is per sample
    views = []
    hook = model.strong_views.register_forward_hook(lambda module, args, output: views.append(output))
    try:
        out = model(_images(), captions)
    finally:
        hook.remove()
    (drawn,) = views
    view_a, view_b = drawn
    assert not torch.allclose(view_a, view_b)
    with torch.no_grad():
        for key, view in (("simclr_features_a", view_a), ("simclr_features_b", view_b)):
            torch.testing.assert_close(out[key], F.normalize(model.visual(view), dim=-1), msg=key)


def test_every_output_is_an_input_of_the_loss(tiny_model, captions):
    model = tiny_model.train()
    model.set_simclr_active(True)
    out = model(_images(), captions)
    taken = set(inspect.signature(UniMlipLoss.forward).parameters) - {"self", "output_dict"}
    assert set(out) <= taken
    # the model docstring's keys, each present with every term on
    assert set(out) == {"image_features", "text_features", "logit_scale", "perturbed_image_features",
                        "perturbed_text_features", "simclr_features_a", "simclr_features_b", "mlm_logits",
                        "mlm_targets"}
    terms = UniMlipLoss()(**out, output_dict=True)
    assert all(torch.isfinite(v) for v in terms.values()) and len(terms) == 5


def test_every_embedding_is_unit_length(tiny_model, captions):
    model = tiny_model.train()
    model.set_simclr_active(True)
    out = model(_images(), captions)
    for key in ("image_features", "text_features", "perturbed_image_features", "perturbed_text_features",
                "simclr_features_a", "simclr_features_b"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(4), msg=key)
