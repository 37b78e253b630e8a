"""The ``--unimlip-*`` flags reach the loss and the model OpenCLIP's trainer builds, and the SimCLR
phase starts at its epoch: built and run through the names ``open_clip_train.main`` holds (the
patched factories and ``train_one_epoch``), with the arguments its parser returns."""
import logging
import re

import pytest
import torch

from openclip_unimlip.recipes.unimlip.views import VIEW_AUGMENTATIONS

from paths import REPO
from train_data import InMemoryData

FLAGS = {  # flag -> value, each different from its default
    "--unimlip-itc-weight": 0.11, "--unimlip-image-perturbed-itc-weight": 0.22,
    "--unimlip-text-perturbed-itc-weight": 0.33, "--unimlip-simclr-weight": 0.44, "--unimlip-mlm-weight": 0.66,
    "--unimlip-simclr-temperature": 0.07, "--unimlip-mlm-probability": 0.3, "--unimlip-dropblock-prob": 0.2,
    "--unimlip-dropblock-size": 2, "--unimlip-text-dropout": 0.4, "--unimlip-fusion-image-tokens": "grid",
    "--unimlip-view-augmentation": "mocov2",
}
SWITCHES = ["--unimlip-dropblock-shared-mask", "--unimlip-no-bn-freeze", "--unimlip-itc-on-clean-caption",
            "--unimlip-view-crop-scale", "0.3", "0.7"]


@pytest.fixture
def trainer(monkeypatch):
    """``(parse_args, open_clip_train.main)`` with the plugin's per-run options restored afterwards."""
    import open_clip_train.main as main
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)
    return parse_args, main


def _build(trainer, argv):
    """As ``open_clip_train.main.main``: parse, then the model and the loss from ``args``."""
    parse_args, main = trainer
    args = parse_args(["--model", "unimlip-tiny", "--dataset-type", "synthetic", "--precision", "fp32", *argv])
    args.device, args.rank, args.world_size, args.local_rank = "cpu", 0, 1, 0  # init_distributed_device
    args.distill = args.distill_model is not None and args.distill_pretrained is not None  # as main()
    args.wandb = "wandb" in args.report_to or "all" in args.report_to
    model, _, _ = main.create_model_and_transforms(
        args.model, args.pretrained, precision=args.precision, device=args.device, jit=args.torchscript,
        force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
        force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
        image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image, output_dict=True, cache_dir=args.cache_dir)
    return args, model, main.create_loss(args)


def test_every_flag_reaches_the_built_loss_and_model(trainer):
    argv = [str(a) for item in FLAGS.items() for a in item] + SWITCHES + ["--epochs", "2"]
    args, model, loss = _build(trainer, argv)
    assert loss.weights == {"itc": 0.11, "image_perturbed_itc": 0.22, "text_perturbed_itc": 0.33,
                            "simclr": 0.44, "mlm": 0.66}
    assert loss.simclr_temperature == 0.07
    assert set(model.active_terms) == set(loss.weights)
    # the modules that act, not only the recorded config
    assert (model.image_perturbation.drop_prob, model.image_perturbation.block_size) == (0.2, 2)
    assert model.image_perturbation.per_channel is False
    assert model.text_perturbation.p == 0.4
    assert model.masker.probability == 0.3
    assert model.fusion.uses_grid
    assert model.strong_views.augmentation == VIEW_AUGMENTATIONS["mocov2"]
    assert model.strong_views.crop is not None and model.cfg.view_crop_scale == (0.3, 0.7)
    assert model.cfg.freeze_bn_with_simclr is False and model.cfg.itc_on_clean_caption is True
    model.train()
    model.set_simclr_active(True)
    assert not model.bn_stats_frozen  # --unimlip-no-bn-freeze


def test_zero_weights_head_and_feed_views_reach_the_built_loss_and_model(trainer):
    args, model, loss = _build(trainer, ["--unimlip-mlm-weight", "0", "--unimlip-simclr-weight", "0",
                                         "--unimlip-feed-views", "--unimlip-simclr-head", "mlp", "--epochs", "2"])
    assert set(loss.weights) == {"itc", "image_perturbed_itc", "text_perturbed_itc"}
    assert set(model.active_terms) == set(loss.weights)
    assert not any(p.requires_grad for p in model.fusion.parameters())
    assert model.simclr_head is not None and model.cfg.feed_views_without_simclr
    # defaults where no flag was given: the paper's
    assert (model.image_perturbation.drop_prob, model.text_perturbation.p, model.masker.probability) == (
        0.5, 0.75, 0.15)
    assert model.strong_views.augmentation == VIEW_AUGMENTATIONS["simclr"] and model.image_perturbation.per_channel


def test_another_model_of_the_same_recipe_is_built_from_its_own_config(trainer, tmp_path):
    """A second model built in the run's process through the same ``create_model_and_transforms`` (a
    model to compare with, say; distillation itself is refused for Uni-Mlip) takes its own config;
    only the run's model takes the run's flags, whatever the other's name (here one that sorts before
    the run's and one after)."""
    import open_clip

    others = ("unimlip-other", "unimlip-tiny-other")
    for name in others:
        (tmp_path / f"{name}.json").write_text((REPO / "model_configs" / "unimlip-tiny.json").read_text())
    open_clip.add_model_config(tmp_path)
    args, student, _ = _build(trainer, ["--unimlip-dropblock-prob", "0.2", "--unimlip-text-dropout", "0.4",
                                        "--unimlip-mlm-probability", "0.3"])
    _, main = trainer
    assert (student.image_perturbation.drop_prob, student.text_perturbation.p, student.masker.probability) == (
        0.2, 0.4, 0.3)
    for name in others:
        other, _, _ = main.create_model_and_transforms(name, None, precision="fp32", device="cpu", output_dict=True)
        # the paper's values, the other config's
        assert (other.image_perturbation.drop_prob, other.text_perturbation.p, other.masker.probability) == (
            0.5, 0.75, 0.15), name
    # the run's model by its name as another string object (a caller's copy, not args.model itself)
    same_name = "".join(list(args.model))
    assert same_name == args.model and same_name is not args.model
    again, _, _ = main.create_model_and_transforms(same_name, None, precision="fp32", device="cpu", output_dict=True)
    assert (again.image_perturbation.drop_prob, again.text_perturbation.p, again.masker.probability) == (0.2, 0.4, 0.3)


def test_simclr_phase_starts_exactly_at_its_epoch(trainer, captions, caplog):
    """Through the trainer's own ``train_one_epoch`` for epochs start-1, start and start+1: before, no
    views and updating statistics; from the start epoch on, the SimCLR term with frozen statistics."""
    args, model, loss = _build(trainer, ["--unimlip-simclr-start-epoch", "2", "--epochs", "4"])
    _, main = trainer
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append((set(out), m.visual.bn1.training)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = (torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)), captions[:2])
    caplog.set_level(logging.INFO)
    for epoch in (1, 2, 3):
        before = model.visual.bn1.running_mean.clone()
        main.train_one_epoch(model, {"train": InMemoryData([batch])}, loss, epoch, optimizer, None, lambda step: None,
                             None, args)
        keys, bn_training = seen[-1]
        changed = not torch.equal(model.visual.bn1.running_mean, before)
        if epoch == 1:
            assert "simclr_features_a" not in keys and bn_training and changed
        else:
            assert {"simclr_features_a", "simclr_features_b"} <= keys and not bn_training and not changed
    phases = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Uni-Mlip epoch")]
    assert phases == ["Uni-Mlip epoch 1: SimCLR off, BatchNorm statistics updating",
                      "Uni-Mlip epoch 2: SimCLR on, BatchNorm statistics frozen",
                      "Uni-Mlip epoch 3: SimCLR on, BatchNorm statistics frozen"]  # the run's log says the phase


def test_a_resumed_runs_params_are_those_its_last_launch_wrote(tmp_path, monkeypatch):
    """open_clip_train writes ``<logs>/<name>/params.txt`` and its checkpoints to
    ``<logs>/<name>/checkpoints/``; ``--resume latest`` finds the run by ``--logs``/``--name``,
    ``--resume PATH`` by the checkpoint's folder. No params file, or no run: nothing to read."""
    from argparse import Namespace

    from openclip_unimlip.seam.patches import previous_params

    run = tmp_path / "logs" / "run"
    checkpoint = run / "checkpoints" / "epoch_2.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()
    latest = Namespace(resume="".join(["lat", "est"]), logs=str(tmp_path / "logs"), name="run")  # as argparse builds it
    by_path = Namespace(resume=str(checkpoint), logs=str(tmp_path / "logs"), name=None)
    assert previous_params(Namespace(resume=None, logs=str(tmp_path / "logs"), name="run")) is None
    assert previous_params(latest) is None and previous_params(by_path) is None  # nothing written yet
    (run / "params.txt").write_text("epochs: 4\n")
    assert previous_params(latest) == run / "params.txt" and previous_params(by_path) == run / "params.txt"
    assert previous_params(Namespace(resume="latest", logs=str(tmp_path / "logs"), name=None)) is None
    # a checkpoint path relative to the working folder, whatever letter it starts with
    monkeypatch.chdir(tmp_path / "logs")
    for relative in ("run/checkpoints/epoch_2.pt", "./run/checkpoints/epoch_2.pt"):
        found = previous_params(Namespace(resume=relative, logs=".", name=None))
        assert found is not None and found.resolve() == (run / "params.txt").resolve()


def test_help_lists_every_recipes_flags_after_openclips(trainer, capsys):
    parse_args, _ = trainer
    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    assert shown.index("--train-data") < shown.index("--unimlip-itc-weight")  # OpenCLIP's own first
    for flag in [*FLAGS, *(item for item in SWITCHES if item.startswith("--")), "--unimlip-simclr-start-epoch",
                 "--mlip-liu-masked-contrastive-weight", "--mlip-li-global-weight"]:
        assert f"  {flag}" in shown, flag


@pytest.mark.parametrize("flag, value, refusal", [
    # with 4 epochs (0-3), SimCLR can start at epoch 3 at the latest
    ("--unimlip-simclr-start-epoch", 3, None),
    ("--unimlip-simclr-start-epoch", 4, "--unimlip-simclr-start-epoch 4 is not before --epochs 4"),
    ("--unimlip-simclr-start-epoch", 5, "--unimlip-simclr-start-epoch 5 is not before --epochs 4"),
    ("--unimlip-simclr-start-epoch", -1, "--unimlip-simclr-start-epoch must be >= 0, got -1"),
    ("--unimlip-simclr-temperature", 1e-6, None),
    ("--unimlip-simclr-temperature", 0.0, "--unimlip-simclr-temperature must be > 0, got 0.0"),
    ("--unimlip-simclr-temperature", -0.5, "--unimlip-simclr-temperature must be > 0, got -0.5")])
def test_simclrs_start_and_temperature_are_accepted_exactly_within_their_ranges(trainer, flag, value, refusal):
    argv = [flag, str(value), "--epochs", "4"]
    if refusal:
        with pytest.raises(SystemExit, match=re.escape(refusal)):
            _build(trainer, argv)
    else:
        args, _, loss = _build(trainer, argv)
        assert getattr(args, flag[2:].replace("-", "_")) == value
        if flag == "--unimlip-simclr-temperature":
            assert loss.simclr_temperature == value


def test_an_mlp_head_needs_simclr_from_epoch_0(trainer):
    """DDP (no find_unused_parameters) rejects a head without gradient in the epochs before SimCLR; the
    head's name as argparse builds it, a string of its own (not the interned literal)."""
    mlp = "".join(["ml", "p"])
    with pytest.raises(SystemExit, match="a SimCLR MLP head with --unimlip-simclr-start-epoch > 0"):
        _build(trainer, ["--unimlip-simclr-head", mlp, "--unimlip-simclr-start-epoch", "1", "--epochs", "4"])
    model = _build(trainer, ["--unimlip-simclr-head", mlp, "--unimlip-simclr-start-epoch", "0", "--epochs", "4",
                             "--unimlip-no-bn-freeze"])[1]  # from scratch, epoch 0 needs updating statistics
    assert model.simclr_head is not None
    # without SimCLR the head never trains, whatever the start
    _build(trainer, ["--unimlip-simclr-head", mlp, "--unimlip-simclr-weight", "0", "--unimlip-simclr-start-epoch", "1",
                     "--epochs", "4"])


def test_why_simclr_starts_when_it_does_is_logged_by_the_global_master_only(trainer, caplog):
    import dataclasses
    from argparse import Namespace

    from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions

    args, model, _ = _build(trainer, ["--epochs", "4"])  # from scratch: the derived start, with its reason
    options = UniMlipOptions.from_args(args)
    without_reason = dataclasses.replace(options, simclr_start_reason="")
    logged = []
    for run_options, rank in ((options, 0), (options, 1), (options, None), (without_reason, 0)):
        caplog.clear()
        with caplog.at_level("INFO"):
            fields = {key: value for key, value in vars(args).items() if key != "rank"}
            run_options.configure_model(model, Namespace(**fields, **({} if rank is None else {"rank": rank})))
        logged.append(sum("Uni-Mlip: SimCLR phase" in r.getMessage() for r in caplog.records))
        assert all("Uni-Mlip: SimCLR phase from epoch 2: " in r.getMessage() for r in caplog.records
                   if "Uni-Mlip: SimCLR phase" in r.getMessage())
    # rank 0 logs; another rank does not; no rank yet (one process) logs; a start without a reason is not logged
    assert logged == [1, 0, 1, 0]


@pytest.mark.parametrize("flags, refused", [(["--local-loss"], True), (["--local-loss", "--gather-with-grad"], False),
                                            (["--gather-with-grad"], False), ([], False)])
def test_local_loss_is_refused_without_gather_with_grad(trainer, flags, refused):
    argv = ["--epochs", "4", *flags]
    if refused:
        with pytest.raises(SystemExit, match="--local-loss"):
            _build(trainer, argv)
    else:
        args = _build(trainer, argv)[0]
        assert (args.local_loss, args.gather_with_grad) == ("--local-loss" in flags, "--gather-with-grad" in flags)


def test_a_parse_error_prints_no_recipe_help(trainer, capsys):
    parse_args, _ = trainer
    with pytest.raises(SystemExit) as stop:
        parse_args(["--model", "unimlip-tiny", "--no-such-openclip-flag"])
    assert stop.value.code == 2
    assert "--unimlip-itc-weight" not in capsys.readouterr().out


def test_distillation_is_refused(trainer):
    """``--distill-model`` with ``--distill-pretrained`` (open_clip_train's ``args.distill`` is set only
    after parsing, from those two)."""
    with pytest.raises(SystemExit, match="distillation is not supported with Uni-Mlip models"):
        _build(trainer, ["--distill-model", "RN50", "--distill-pretrained", "openai", "--epochs", "4"])


def test_ddp_is_replaced_only_for_a_run_of_our_models(trainer, monkeypatch):
    """Nothing changes for OpenCLIP's own models: their runs keep torch's DistributedDataParallel."""
    import torch.nn.parallel as parallel

    stock = parallel.distributed.DistributedDataParallel
    monkeypatch.setattr(parallel, "DistributedDataParallel", stock)
    parse_args, _ = trainer
    parse_args(["--model", "RN50", "--dataset-type", "synthetic"])
    assert parallel.DistributedDataParallel is stock
    parse_args(["--model", "unimlip-tiny", "--dataset-type", "synthetic", "--epochs", "4"])
    assert parallel.DistributedDataParallel is not stock and issubclass(parallel.DistributedDataParallel, stock)


@pytest.mark.parametrize("model, flags, recipe", [("RN50", ["--unimlip-mlm-weight", "0.5"], "unimlip"),
                                                  ("unimlip-tiny", ["--mlip-li-global-weight", "0.5"], "mlip-li")])
def test_a_recipes_flags_are_refused_for_another_model(trainer, model, flags, recipe):
    parse_args, _ = trainer
    with pytest.raises(SystemExit, match=f"error: --{recipe}-\\* flags apply only to .* models, not --model {model}"):
        parse_args(["--model", model, "--dataset-type", "synthetic", "--epochs", "4", *flags])
