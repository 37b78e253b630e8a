"""Every touch of OpenCLIP's internals, in one place, checked against the installed version.

OpenCLIP 3.3 has no plugin mechanism (see shared notes), so the plugin patches, at import,
exactly these names and nothing else:

- ``open_clip``: registers our model configs (public ``add_model_config``; the text-tower
  locations are then resolved inside the registry); ``create_model`` builds ``UniMlip`` for
  configs carrying ``unimlip_cfg`` (the factory has no class hook: it looks
  ``CustomTextCLIP`` up in its module at call time, so that name is swapped for the call);
  ``create_model_and_transforms`` applies the trainer's ``--unimlip-*`` options to our
  models and gives them the three-view train transform; ``create_loss`` returns
  ``UniMlipLoss`` for our models.
- ``open_clip_train.params.parse_args``: splits off the ``--unimlip-*`` flags (OpenCLIP's
  parser is strict) and lists them under ``--help``.
- ``open_clip_train.train.train_one_epoch``: switches the SimCLR branch and BatchNorm
  freezing by epoch (so a resumed run is in the right phase).

For any model that is not ours every wrapper calls OpenCLIP's original with the same
arguments. On an OpenCLIP version outside the supported range nothing is patched.
"""
import argparse
import contextlib
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

SUPPORTED_OPENCLIP = ((3, 3), (4, 0))  # [min, max)
CONFIG_KEY = "unimlip_cfg"

# The --unimlip-* options of the training run in this process, set by the parse_args patch.
_trainer_options: Optional[argparse.Namespace] = None


class UnsupportedOpenCLIP(RuntimeError):
    pass


def model_configs_dir() -> Path:
    package = Path(__file__).resolve().parent
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
    from open_clip import get_model_config

    return isinstance(model_name, str) and CONFIG_KEY in (get_model_config(model_name.replace("/", "-")) or {})


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
    from open_clip import factory

    from .text_models import resolve_text_model

    open_clip.add_model_config(model_configs_dir())
    for name, cfg in factory._MODEL_CONFIGS.items():
        if CONFIG_KEY in cfg:
            text_cfg = cfg["text_cfg"]
            for key in ("hf_model_name", "hf_tokenizer_name"):
                if key in text_cfg:
                    text_cfg[key] = resolve_text_model(text_cfg[key])


@contextlib.contextmanager
def _factory_builds(model_class):
    from open_clip import factory

    stock = factory.CustomTextCLIP
    factory.CustomTextCLIP = model_class
    try:
        yield
    finally:
        factory.CustomTextCLIP = stock


def _wrap_create_model(original):
    @functools.wraps(original)
    def create_model(model_name, *args, **kwargs):
        if not is_unimlip_model(model_name):
            return original(model_name, *args, **kwargs)
        from .model import UniMlip

        with _factory_builds(UniMlip):
            return original(model_name, *args, **kwargs)

    return create_model


def _wrap_create_model_and_transforms(original):
    @functools.wraps(original)
    def create_model_and_transforms(model_name, *args, **kwargs):
        options = _trainer_options
        if options is None or not is_unimlip_model(model_name):
            return original(model_name, *args, **kwargs)
        from open_clip import get_model_config

        from . import train_args
        from .views import ThreeViewTransform

        kwargs[CONFIG_KEY] = {**get_model_config(model_name.replace("/", "-"))[CONFIG_KEY],
                              **train_args.cfg_overrides(options)}
        model, preprocess_train, preprocess_val = original(model_name, *args, **kwargs)
        weights = train_args.loss_weights(options)
        model.configure_terms([t for t, w in weights.items() if w > 0])
        if weights["simclr"] > 0:
            if model.simclr_head is not None and options.unimlip_simclr_start_epoch > 0:
                raise SystemExit(
                    "error: a SimCLR MLP head with --unimlip-simclr-start-epoch > 0 has no gradient in the first "
                    "epochs, which DDP (built without find_unused_parameters) rejects; start SimCLR at epoch 0")
            preprocess_train = ThreeViewTransform(preprocess_train, crop_scale=options.unimlip_view_crop_scale)
        return model, preprocess_train, preprocess_val

    return create_model_and_transforms


def _wrap_create_loss(original):
    @functools.wraps(original)
    def create_loss(args):
        if not is_unimlip_model(getattr(args, "model", None)):
            return original(args)
        from . import train_args
        from .losses import UniMlipLoss

        options = _trainer_options or train_args.build_parser().parse_args([])
        return UniMlipLoss(
            weights=train_args.loss_weights(options),
            simclr_temperature=options.unimlip_simclr_temperature,
            local_loss=args.local_loss,
            gather_with_grad=args.gather_with_grad,
            rank=args.rank,
            world_size=args.world_size,
        )

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


# ----- open_clip_train ------------------------------------------------------------------------
def _wrap_parse_args(original):
    @functools.wraps(original)
    def parse_args(argv):
        global _trainer_options
        from . import train_args

        argv = list(argv)
        try:
            options, rest, given = train_args.split_argv(argv)
            args = original(rest)
        except SystemExit:
            if "-h" in argv or "--help" in argv:
                train_args.build_parser().print_help()
            raise
        if not is_unimlip_model(args.model):
            if given:
                raise SystemExit(f"error: --unimlip-* flags apply only to Uni-Mlip models, not --model {args.model}")
            _trainer_options = None
            return args
        error = train_args.validate(options, args)
        if error:
            raise SystemExit(f"error: {error}")
        _trainer_options = options
        for key, value in vars(options).items():
            setattr(args, key, value)  # recorded in params.txt and wandb's config
        return args

    return parse_args


def patch_params(params) -> None:
    if _mark(params) and _supported_or_warn():
        params.parse_args = _wrap_parse_args(params.parse_args)


def _wrap_train_one_epoch(original):
    @functools.wraps(original)
    def train_one_epoch(model, data, loss, epoch, *args, **kwargs):
        from .model import UniMlip, unwrap_model

        inner = unwrap_model(model)
        if isinstance(inner, UniMlip) and _trainer_options is not None:
            active = "simclr" in inner.active_terms and epoch >= _trainer_options.unimlip_simclr_start_epoch
            logging.info(f"Uni-Mlip epoch {epoch}: SimCLR {'on' if active else 'off'}, "
                         f"BatchNorm statistics {'frozen' if active and inner.cfg.freeze_bn_with_simclr else 'updating'}")
            inner.set_simclr_active(active)
        return original(model, data, loss, epoch, *args, **kwargs)

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
