"""The Uni-Mlip model's train/eval outputs, perturbations, BatchNorm freezing and gradients."""
import torch
import torch.nn.functional as F
from names import run_time_name

from openclip_unimlip.recipes.unimlip.config import TERMS
from openclip_unimlip.recipes.unimlip.loss import UniMlipLoss


def _images(batch=4, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, size, size), generator=g)


def test_train_outputs_are_batch_first(tiny_model, captions):
    tiny_model.train()
    tiny_model.set_simclr_active(True)
    out = tiny_model(_images(), captions)
    expected = {"image_features", "text_features", "logit_scale", "perturbed_image_features",
                "perturbed_text_features", "simclr_features_a", "simclr_features_b", "mlm_logits", "mlm_targets"}
    assert set(out) == expected
    for key in expected - {"logit_scale"}:
        assert out[key].shape[0] == 4, key
    assert out["mlm_logits"].shape[-1] == tiny_model.text.config.vocab_size
    for key in ("image_features", "perturbed_image_features", "text_features", "simclr_features_a"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(4))


def test_perturbation_differs_in_train_and_is_absent_in_eval(tiny_model, captions):
    tiny_model.train()
    out = tiny_model(_images(), captions)
    assert not torch.allclose(out["perturbed_image_features"], out["image_features"])
    assert not torch.allclose(out["perturbed_text_features"], out["text_features"])
    tiny_model.eval()
    with torch.no_grad():
        images = _images()
        evaluated = tiny_model(images, captions)
        assert set(evaluated) == {"image_features", "text_features", "logit_scale"}
        # exactly CustomTextCLIP: no masking, no perturbation
        torch.testing.assert_close(evaluated["image_features"], tiny_model.encode_image(images, normalize=True))
        torch.testing.assert_close(evaluated["text_features"], tiny_model.encode_text(captions, normalize=True))


def test_simclr_views_only_when_active(tiny_model, captions):
    tiny_model.train()
    tiny_model.set_simclr_active(False)
    assert "simclr_features_a" not in tiny_model(_images(), captions)
    assert not tiny_model.bn_stats_frozen
    tiny_model.set_simclr_active(True)
    assert "simclr_features_a" in tiny_model(_images(), captions)
    assert tiny_model.bn_stats_frozen


def test_frozen_batchnorm_keeps_statistics_and_trains_affine(tiny_model, captions):
    tiny_model.set_simclr_active(True)
    tiny_model.train()  # OpenCLIP calls train() every epoch: frozen layers must stay in eval
    bn = tiny_model.visual.bn1
    assert not bn.training
    before = {k: v.clone() for k, v in tiny_model.visual.state_dict().items() if "running" in k}
    shifted = _images() * 3 + 5
    loss = sum(UniMlipLoss()(**tiny_model(shifted, captions), output_dict=True).values())
    loss.backward()
    after = tiny_model.visual.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0

    tiny_model.set_simclr_active(False)  # unfreeze: statistics follow the batch again
    assert bn.training
    tiny_model(shifted, captions)
    assert not torch.allclose(tiny_model.visual.bn1.running_mean, before["bn1.running_mean"])


def test_every_trainable_parameter_gets_a_gradient(tiny_model, captions):
    tiny_model.train()
    tiny_model.set_simclr_active(True)
    loss = sum(UniMlipLoss()(**tiny_model(_images(), captions), output_dict=True).values())
    loss.backward()
    # DDP needs a gradient for every trainable parameter (zero is fine: OpenCLIP's ResNet
    # initialises each block's last BatchNorm weight to 0, which zeroes the branch gradient at init)
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    for name in ("visual.conv1.weight", "visual.layer4.0.bn3.weight", "visual.layer4.0.downsample.0.weight",
                 "visual.attnpool.c_proj.weight",
                 "text.transformer.encoder.layer.0.attention.self.query.weight", "text.proj.weight",
                 "fusion.transformer.resblocks.0.attn.in_proj_weight", "fusion.vocab_proj.weight",
                 "fusion.image_token", "logit_scale"):
        assert dict(tiny_model.named_parameters())[name].grad.abs().sum() > 0, name


def test_switched_off_terms_are_not_computed(tiny_model, captions):
    tiny_model.train()
    tiny_model.configure_terms(["itc", "text_perturbed_itc"])
    out = tiny_model(_images(), captions)
    assert set(out) == {"image_features", "text_features", "perturbed_text_features", "logit_scale"}
    assert not any(p.requires_grad for p in tiny_model.fusion.parameters())
    tiny_model.configure_terms(TERMS)
    assert all(p.requires_grad for p in tiny_model.fusion.parameters())


def test_grad_checkpointing_gives_the_same_gradients(tiny_model, captions):
    tiny_model.train()
    tiny_model.set_simclr_active(True)
    images = _images()

    def gradients():
        tiny_model.zero_grad()
        torch.manual_seed(1)
        sum(UniMlipLoss()(**tiny_model(images, captions), output_dict=True).values()).backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    plain = gradients()
    tiny_model.set_grad_checkpointing()  # as open_clip_train's --grad-checkpointing calls it: no argument
    assert tiny_model.fusion.transformer.grad_checkpointing and tiny_model.checkpoint_trunk
    checkpointed = gradients()
    for name in ("visual.layer1.0.conv1.weight", "fusion.transformer.resblocks.0.mlp.c_fc.weight"):
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4)


def test_by_default_the_backward_pass_runs_no_batchnorm_again(tiny_model, captions):
    """Gradient checkpointing is off unless asked for (OpenCLIP's --grad-checkpointing): with the
    statistics updating, every BatchNorm of the trunk counts as many batches as the forward pass ran
    the trunk (counted by a hook before the backward); a checkpointed trunk re-runs in the backward."""
    tiny_model.train()  # SimCLR off: BatchNorm statistics update
    trunk_runs = []
    tiny_model.visual.conv1.register_forward_hook(lambda module, inputs, output: trunk_runs.append(1))
    losses = UniMlipLoss()(**tiny_model(_images(), captions), output_dict=True)
    forward_runs = len(trunk_runs)
    sum(losses.values()).backward()
    tracked = {int(m.num_batches_tracked) for m in tiny_model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert forward_runs >= 1 and tracked == {forward_runs} and len(trunk_runs) == forward_runs


def test_options_grid_tokens_simclr_head_and_clean_caption_itc(captions):
    import open_clip

    # the option values as a JSON config gives them: equal to the code's literals, not the same objects
    model = open_clip.create_model("unimlip-tiny", unimlip_cfg={
        "fusion_layers": 1, "fusion_heads": 6, "fusion_image_tokens": run_time_name("grid"),
        "simclr_head": run_time_name("mlp"), "simclr_head_hidden": 64, "simclr_head_dim": 32,
        "itc_on_clean_caption": True})
    assert model.fusion.uses_grid  # the layer-4 map's cells, not the pooled embedding, enter the fusion
    model.train()
    model.set_simclr_active(True)
    text_passes = []
    model.text.transformer.register_forward_hook(lambda m, i, o: text_passes.append(1))
    out = model(_images(), captions)
    assert out["simclr_features_a"].shape == (4, 32)
    assert len(text_passes) == 2  # masked caption for MLM, clean caption for ITC
    sum(UniMlipLoss()(**out, output_dict=True).values()).backward()
    assert model.fusion.image_proj.weight.grad is not None  # the layer-4 grid feeds the fusion
    assert model.simclr_head[0].weight.grad is not None


def test_dropblock_acts_on_the_real_layer4_map_before_attention_pooling(tiny_model, captions):
    """Hooks capture the real layer-4 map and the attention pooling's input: that input is the
    clean map and DropBlock of it (p and block size of the config, a mask per channel; the mask
    redrawn here from the seed rate), and the perturbed feature is the pooling of the latter."""
    tiny_model.train()
    cfg = tiny_model.cfg
    maps, pool_inputs = [], []
    tiny_model.visual.layer4.register_forward_hook(lambda m, i, o: maps.append(o.detach()))
    tiny_model.visual.attnpool.register_forward_pre_hook(lambda m, i: pool_inputs.append(i[0].detach()))
    images = _images()
    torch.manual_seed(3)  # no SimCLR views: DropBlock is the forward pass's first random draw
    out = tiny_model(images, captions)
    assert len(maps) == 1  # one trunk pass serves the clean and the perturbed features
    clean = maps[0]
    batch, channels, height, width = clean.shape
    block = min(cfg.dropblock_size, height)
    gamma = cfg.dropblock_prob * height * width / block ** 2 / (height - block + 1) / (width - block + 1)
    torch.manual_seed(3)
    seeds = torch.rand(batch, channels, height - block + 1, width - block + 1) < gamma
    keep = torch.ones_like(clean)
    for b, c, i, j in seeds.nonzero().tolist():
        keep[b, c, i:i + block, j:j + block] = 0
    expected = clean * keep * (keep.numel() / keep.sum())
    torch.testing.assert_close(pool_inputs[0], torch.cat([clean, expected]))
    with torch.no_grad():
        torch.testing.assert_close(out["perturbed_image_features"],
                                   F.normalize(tiny_model.visual.attnpool(expected), dim=-1))
        torch.testing.assert_close(out["image_features"], F.normalize(tiny_model.visual.attnpool(clean), dim=-1))


def test_text_dropout_acts_on_the_pooled_output_before_the_projection(tiny_model, captions):
    """The configured rate (0.75) on the pooled text-encoder output, then the projection:
    hooks capture the pooler's output and every input of the projection."""
    tiny_model.train()
    assert tiny_model.cfg.text_dropout == 0.75
    pooled, projected = [], []
    tiny_model.text.pooler.register_forward_hook(lambda m, i, o: pooled.append(o.detach()))
    tiny_model.text.proj.register_forward_pre_hook(lambda m, i: projected.append(i[0].detach()))
    out = tiny_model(_images(), captions)
    assert len(pooled) == 1 and len(projected) == 2
    clean, dropped = projected
    torch.testing.assert_close(clean, pooled[0])
    zeros = dropped == 0
    assert abs(zeros.float().mean().item() - 0.75) < 0.05  # 4 x 384 units
    torch.testing.assert_close(dropped[~zeros], pooled[0][~zeros] / (1 - 0.75))  # inverted dropout's scaling
    with torch.no_grad():
        torch.testing.assert_close(out["perturbed_text_features"], F.normalize(tiny_model.text.proj(dropped), dim=-1))
        torch.testing.assert_close(out["text_features"], F.normalize(tiny_model.text.proj(clean), dim=-1))


def test_frozen_batchnorm_normalises_with_the_running_statistics(tiny_model, captions):
    """Frozen: every BatchNorm output is the running-statistics formula of its input, for the
    clean view and both strong views."""
    tiny_model.train()
    tiny_model.set_simclr_active(True)
    bn = tiny_model.visual.layer2[0].bn1
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    calls = []
    bn.register_forward_hook(lambda m, i, o: calls.append((i[0].detach(), o.detach().clone())))  # ReLU follows in place
    tiny_model(_images() * 3 + 5, captions)
    assert sum(x.shape[0] for x, _ in calls) == 12  # clean + two views
    for x, y in calls:
        shape = (1, -1, 1, 1)
        expected = ((x - bn.running_mean.view(shape)) / (bn.running_var.view(shape) + bn.eps).sqrt()
                    * bn.weight.view(shape) + bn.bias.view(shape))
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_updating_batchnorm_runs_each_view_in_its_own_pass(captions):
    """Statistics updating while the views are fed (the naive baseline, --unimlip-no-bn-freeze):
    clean view and each strong view pass BatchNorm separately; the running statistics after one
    step are three momentum updates, one per pass, computed here from the captured inputs."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("unimlip-tiny", unimlip_cfg={"fusion_layers": 2, "fusion_heads": 6,
                                                                "dropblock_size": 1, "freeze_bn_with_simclr": False})
    model.train()
    model.set_simclr_active(True)
    assert not model.bn_stats_frozen
    bn = model.visual.bn1
    inputs = []
    bn.register_forward_pre_hook(lambda m, i: inputs.append(i[0].detach()))
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = model(_images(), captions)
    assert "simclr_features_a" in out
    assert [x.shape[0] for x in inputs] == [4, 4, 4]
    for x in inputs:  # PyTorch's update: running = (1 - m) running + m batch (unbiased variance)
        m = bn.momentum
        mean = (1 - m) * mean + m * x.mean((0, 2, 3))
        var = (1 - m) * var + m * x.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
