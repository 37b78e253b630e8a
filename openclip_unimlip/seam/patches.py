"""Every touch of OpenCLIP's internals, in one place, checked against the installed version.

OpenCLIP 3.3 has no plugin mechanism (see shared notes), so the plugin patches, at import,
exactly these names and nothing else:

- ``open_clip``: registers our model configs (public ``add_model_config``; they keep naming
  text towers by hub id, so ``get_model_config`` gives what ``save_for_hf`` may write);
  ``create_model`` builds the recipe's model class for configs carrying a recipe key, whatever
  the name's schema (built-in, ``hf-hub:``, ``local-dir:``; ``openclip_unimlip.recipes``; ``unimlip_cfg`` →
  ``UniMlip``), with the text towers resolved to local copies (the factory has no class hook: it
  looks ``CustomTextCLIP`` and ``load_checkpoint`` up in its module at call time, so those names
  are swapped for the call, ``hub.build_custom_text_model`` passing every other config to
  OpenCLIP's class unchanged); ``get_tokenizer`` resolves our configs' tokenizer hub ids the
  same way (``HFTokenizer`` swapped for the call, only for our configs);
  ``create_model_and_transforms`` applies the trainer's ``--unimlip-*`` options to our
  models (the train transform stays OpenCLIP's: the SimCLR views are made on the device,
  ``views.py``); ``create_loss`` returns
  the recipe's loss (``UniMlipLoss`` for Uni-Mlip models).
- ``open_clip_train.params.parse_args``: splits off the ``--unimlip-*`` flags (OpenCLIP's
  parser is strict), lists them under ``--help``, and resolves the SimCLR start epoch (a resumed
  run's is read back from the ``params.txt`` OpenCLIP wrote at its first launch).
- ``open_clip_train.train.train_one_epoch``: switches the SimCLR branch and BatchNorm
  freezing by epoch (so a resumed run is in the right phase).
- ``torch.nn.parallel.DistributedDataParallel``, only inside a training run of one of our recipes:
  ``open_clip_train.main`` passes ``device_ids=[device]``, which torch rejects for CPU
  modules, so multi-process CPU (gloo) runs would fail; the replacement drops CPU device ids.

For any model that is not ours every wrapper calls OpenCLIP's original with the same
arguments, and the names swapped inside ``create_model`` hand its config to OpenCLIP's own class
and loader unchanged (tested for ``hf-hub:`` / ``local-dir:`` names against the plugin switched
off, ``tests/seam/test_hub.py``). On an OpenCLIP version outside the supported range nothing is patched.
"""
import argparse
import contextlib
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from openclip_unimlip.recipes import model_config, recipe_for

if TYPE_CHECKING:
    from openclip_unimlip.recipes.unimlip.flags import RecordedStart

SUPPORTED_OPENCLIP = ((3, 3), (4, 0))  # [min, max)
UNIMLIP_KEY = "unimlip_cfg"

# The --unimlip-* options of the training run in this process, set by the parse_args patch.
_trainer_options: Optional[argparse.Namespace] = None
# How that run's SimCLR start epoch was chosen: logged once, by the first train_one_epoch.
_simclr_start_reason: Optional[str] = None


class UnsupportedOpenCLIP(RuntimeError):
    pass


def model_configs_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # openclip_unimlip/
    shipped = package / "model_configs"  # inside the wheel
    return shipped if shipped.is_dir() else package.parent / "model_configs"  # source checkout


def openclip_version() -> tuple:
    from open_clip.version import __version__

    return tuple(int(p) for p in __version__.split(".")[:2]), __version__


def check_openclip_version() -> None:
    parsed, text = openclip_version()
    low, high = SUPPORTED_OPENCLIP
    if not low <= parsed < high:
        raise UnsupportedOpenCLIP(
            f"openclip-unimlip supports open_clip_torch >={low[0]}.{low[1]},<{high[0]}; found {text}. "
            f"Install a supported version: pip install 'open_clip_torch>={low[0]}.{low[1]},<{high[0]}'")


def is_unimlip_model(model_name) -> bool:
    recipe = recipe_for(model_name)
    return recipe is not None and recipe.config_key == UNIMLIP_KEY


def _mark(module) -> bool:
    """True the first time a module is seen, so each patch is applied once."""
    if getattr(module, "_unimlip_patched", False):
        return False
    module._unimlip_patched = True
    return True


def _supported_or_warn() -> bool:
    try:
        check_openclip_version()
    except UnsupportedOpenCLIP as exc:
        warnings.warn(f"{exc} Uni-Mlip models are not registered.", RuntimeWarning)
        return False
    return True


# ----- open_clip ----------------------------------------------------------------------------
def register_model_configs() -> None:
    import open_clip

    open_clip.add_model_config(model_configs_dir())


@contextlib.contextmanager
def _swapped(module, **replacements):
    stock = {name: getattr(module, name) for name in replacements}
    for name, replacement in replacements.items():
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for name, original in stock.items():
            setattr(module, name, original)


def _explaining_load_checkpoint(original):
    # torch's strict-load error for one of our models becomes one message saying what does not fit
    @functools.wraps(original)
    def load_checkpoint(model, checkpoint_path, *args, **kwargs):
        from openclip_unimlip.seam.hub import WeightsDoNotFit, weights_mismatch_message
        from openclip_unimlip.recipes.base_model import RecipeCLIP

        try:
            return original(model, checkpoint_path, *args, **kwargs)
        except RuntimeError:
            if not isinstance(model, RecipeCLIP):
                raise
            raise WeightsDoNotFit(weights_mismatch_message(model, checkpoint_path)) from None

    return load_checkpoint


def _wrap_create_model(original):
    @functools.wraps(original)
    def create_model(model_name, *args, **kwargs):
        from open_clip import factory

        from openclip_unimlip.seam.hub import custom_text_model_builder, source_fetcher

        # The recipe is read from the config the factory builds, so every schema works and no
        # config is read twice; any config without a recipe key reaches OpenCLIP's own class.
        builder = custom_text_model_builder(source_fetcher(model_name, kwargs.get("cache_dir")))
        with _swapped(factory, CustomTextCLIP=builder,
                      load_checkpoint=_explaining_load_checkpoint(factory.load_checkpoint)):
            return original(model_name, *args, **kwargs)

    return create_model


def _wrap_get_tokenizer(original):
    @functools.wraps(original)
    def get_tokenizer(model_name="", *args, **kwargs):
        if recipe_for(model_name) is None:
            return original(model_name, *args, **kwargs)
        from open_clip import factory

        from openclip_unimlip.seam.hub import resolving_hf_tokenizer

        with _swapped(factory, HFTokenizer=resolving_hf_tokenizer):
            return original(model_name, *args, **kwargs)

    return get_tokenizer


def _wrap_create_model_and_transforms(original):
    @functools.wraps(original)
    def create_model_and_transforms(model_name, *args, **kwargs):
        options = _trainer_options
        if options is None or not is_unimlip_model(model_name):
            return original(model_name, *args, **kwargs)
        from openclip_unimlip.recipes.unimlip import flags as unimlip_flags

        kwargs[UNIMLIP_KEY] = {**model_config(model_name)[UNIMLIP_KEY], **unimlip_flags.cfg_overrides(options)}
        model, preprocess_train, preprocess_val = original(model_name, *args, **kwargs)
        weights = unimlip_flags.loss_weights(options)
        model.configure_terms([t for t, w in weights.items() if w > 0])
        return model, preprocess_train, preprocess_val

    return create_model_and_transforms


def _wrap_create_loss(original):
    @functools.wraps(original)
    def create_loss(args):
        model_name = getattr(args, "model", None)
        recipe = recipe_for(model_name)
        if recipe is None:
            return original(args)
        return recipe.create_loss(args, model_config(model_name))

    return create_loss


def patch_open_clip(open_clip) -> None:
    if not _mark(open_clip) or not _supported_or_warn():
        return
    from open_clip import factory

    register_model_configs()
    factory.create_model = open_clip.create_model = _wrap_create_model(factory.create_model)
    factory.create_model_and_transforms = open_clip.create_model_and_transforms = \
        _wrap_create_model_and_transforms(factory.create_model_and_transforms)
    factory.create_loss = open_clip.create_loss = _wrap_create_loss(factory.create_loss)
    get_tokenizer = _wrap_get_tokenizer(factory.get_tokenizer)
    factory.get_tokenizer = open_clip.get_tokenizer = get_tokenizer
    # push_pretrained_to_hf_hub calls the get_tokenizer its module imported
    sys.modules["open_clip.push_to_hf_hub"].get_tokenizer = get_tokenizer


# ----- open_clip_train ------------------------------------------------------------------------
def _wrap_parse_args(original):
    @functools.wraps(original)
    def parse_args(argv):
        global _trainer_options, _simclr_start_reason
        from openclip_unimlip.recipes.unimlip import flags as unimlip_flags

        argv = list(argv)
        try:
            options, rest, given = unimlip_flags.split_argv(argv)
            args = original(rest)
        except SystemExit:
            if "-h" in argv or "--help" in argv:
                unimlip_flags.build_parser().print_help()
            raise
        if recipe_for(args.model) is not None:
            _allow_cpu_ddp()
        if not is_unimlip_model(args.model):
            if given:
                raise SystemExit(f"error: --unimlip-* flags apply only to Uni-Mlip models, not --model {args.model}")
            _trainer_options = None
            return args
        section = model_config(args.model)[UNIMLIP_KEY]
        try:
            start = unimlip_flags.resolve_simclr_start(options, args, section, recorded_simclr_start(args))
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        options.unimlip_simclr_start_epoch = start.epoch
        error = unimlip_flags.validate(options, args, section)
        if error:
            raise SystemExit(f"error: {error}")
        _trainer_options = options
        _simclr_start_reason = start.reason
        for key, value in vars(options).items():
            setattr(args, key, value)  # recorded in params.txt and wandb's config
        return args

    return parse_args


def recorded_simclr_start(args: argparse.Namespace) -> "Optional[RecordedStart]":
    """For a resumed run, the SimCLR start epoch of its first launch, from the ``params.txt`` OpenCLIP
    writes into the run folder at every launch (``--resume latest``: ``--logs``/``--name``; ``--resume
    PATH``: the run folder of ``PATH``); None when there is none. Resuming already needs that folder
    on a file system every rank sees (each rank loads the checkpoint), so every rank reads the same."""
    from openclip_unimlip.recipes.unimlip.flags import RecordedStart
    from openclip_unimlip.seam.hub import find_run_dir, read_params

    if not args.resume:
        return None
    if args.resume == "latest":
        run = Path(args.logs) / args.name if args.name else None  # no name: a fresh dated one
    else:
        run = find_run_dir(Path(args.resume))
    if run is None or not (run / "params.txt").is_file():
        return None
    params = read_params(run / "params.txt")
    start = params.get("unimlip_simclr_start_epoch")
    if not isinstance(start, int):
        return None
    return RecordedStart(start, bool(params.get("pretrained")), str(run / "params.txt"))


def _allow_cpu_ddp() -> None:
    import torch
    import torch.nn.parallel as parallel

    stock = parallel.DistributedDataParallel
    if getattr(stock, "drops_cpu_device_ids", False):
        return

    class DistributedDataParallel(stock):
        drops_cpu_device_ids = True

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    parallel.DistributedDataParallel = DistributedDataParallel


def patch_params(params) -> None:
    if _mark(params) and _supported_or_warn():
        params.parse_args = _wrap_parse_args(params.parse_args)


def _wrap_train_one_epoch(original):
    @functools.wraps(original)
    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        from open_clip_train.distributed import is_master

        from openclip_unimlip.recipes.unimlip.model import UniMlip, unwrap_model
        from openclip_unimlip.recipes.base_model import RecipeCLIP

        global _simclr_start_reason
        inner = unwrap_model(model)
        if isinstance(inner, UniMlip) and _trainer_options is not None:
            if _simclr_start_reason is not None and is_master(args):
                logging.info(f"Uni-Mlip: SimCLR phase from epoch {_trainer_options.unimlip_simclr_start_epoch}: "
                             f"{_simclr_start_reason}")
            _simclr_start_reason = None
            uses_views = "simclr" in inner.active_terms or inner.cfg.feed_views_without_simclr
            active = uses_views and epoch >= _trainer_options.unimlip_simclr_start_epoch
            inner.set_simclr_active(active)
            if is_master(args):
                logging.info(f"Uni-Mlip epoch {epoch}: SimCLR {'on' if active else 'off'}, BatchNorm statistics "
                             f"{'frozen' if inner.bn_stats_frozen else 'updating'}")
        elif isinstance(inner, RecipeCLIP) and callable(getattr(inner, "set_epoch", None)):
            inner.set_epoch(epoch)  # MLIP (Li): MGCA's first-epoch prototype freeze
            if callable(getattr(inner, "drop_frozen_gradients", None)):
                # before each step, after backward and DDP's all-reduce: the optimizer skips frozen parameters
                handle = optimizer.register_step_pre_hook(lambda *_: inner.drop_frozen_gradients())
                try:
                    return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                                    tb_writer=tb_writer)
                finally:
                    handle.remove()
        return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer)

    return train_one_epoch


def patch_train(train) -> None:
    if _mark(train) and _supported_or_warn():
        train.train_one_epoch = _wrap_train_one_epoch(train.train_one_epoch)


def install_all() -> None:
    """Patch every target now (for ``python -m openclip_unimlip.train`` or when the .pth is disabled)."""
    check_openclip_version()
    import open_clip
    import open_clip_train.params
    import open_clip_train.train

    patch_open_clip(open_clip)
    patch_params(open_clip_train.params)
    patch_train(open_clip_train.train)
    main = sys.modules.get("open_clip_train.main")
    if main is not None and not hasattr(main.create_loss, "__wrapped__"):
        raise RuntimeError("open_clip_train.main was imported before the Uni-Mlip patches: it holds the stock "
                           "factories. Import openclip_unimlip (or run python -m openclip_unimlip.train) first.")
