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
  ``create_model_and_transforms`` applies the training run's recipe options to the run's model
  (their config overrides, loss weights included, then their ``configure_model``); the train
  transform stays OpenCLIP's; ``create_loss`` returns the recipe's loss, built from the same
  run config.
- ``open_clip_train.params.parse_args``: splits off each recipe's flags (``--unimlip-*``: OpenCLIP's
  parser is strict) into its run options, lists them under ``--help``, and has the model's recipe
  resolve and check them (a resumed run's ``params.txt`` at hand) before anything starts; their
  record goes on ``args``.
- ``open_clip_train.train.train_one_epoch``: runs each epoch inside the recipe's epoch hook (Uni-Mlip:
  the SimCLR phase and BatchNorm freezing by epoch, so a resumed run is in the right phase).

Recipes are reached only through the registry (``openclip_unimlip.recipes``: ``Recipe`` and its
hooks): no recipe module is imported here and no recipe is named.
- ``torch.nn.parallel.DistributedDataParallel``, only inside a training run of one of our recipes:
  ``open_clip_train.main`` passes ``device_ids=[device]``, which torch rejects for CPU
  modules, so multi-process CPU (gloo) runs would fail; the replacement drops CPU device ids. It
  also loads a checkpoint saved by a single-process run (keys without DDP's ``module.``) into the
  wrapped model, which ``--resume`` hands it as it is: a run begun on one process continues on
  several (a Slurm requeue or chained job on another shape).

For any model that is not ours every wrapper calls OpenCLIP's original with the same
arguments, and the names swapped inside ``create_model`` hand its config to OpenCLIP's own class
and loader unchanged (tested for ``hf-hub:`` / ``local-dir:`` names against the plugin switched
off, ``tests/seam/test_hub.py``). On an OpenCLIP version outside the supported range nothing is patched.
"""
import argparse
import contextlib
import functools
import sys
import warnings
from pathlib import Path
from typing import Optional

from openclip_unimlip.recipes import RECIPES, model_config, recipe_for, recipe_for_model
from openclip_unimlip.recipes.run_params import find_run_dir

SUPPORTED_OPENCLIP = ((3, 3), (4, 0))  # [min, max)

# The args of the training run parsed in this process (a recipe model's; None otherwise): its recipe
# flags are on them. open_clip_train.main calls create_model_and_transforms with values taken from its
# args, never the args themselves, so this is the only way its model reaches them.
_training_run: Optional[argparse.Namespace] = None


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
        warnings.warn(f"{exc} The openclip-unimlip models are not registered.", RuntimeWarning)
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
        from openclip_unimlip.recipes.base_model import RecipeCLIP
        from openclip_unimlip.seam.hub import WeightsDoNotFit, weights_mismatch_message

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


def _run_config(recipe, model_name, args: argparse.Namespace) -> dict:
    """The model config of a run of ``args``: the registered one with the run's recipe options over
    the recipe's section (``RunOptions.model_section``)."""
    config = model_config(model_name)
    options = recipe.load_flags()
    if options is not None:
        config[recipe.config_key] = options.from_args(args).model_section(config[recipe.config_key])
    return config


def _wrap_create_model_and_transforms(original):
    @functools.wraps(original)
    def create_model_and_transforms(model_name, *args, **kwargs):
        run = _training_run
        recipe = recipe_for(model_name) if run is not None and model_name == run.model else None
        options = recipe.load_flags() if recipe is not None else None
        if options is None:
            return original(model_name, *args, **kwargs)
        kwargs[recipe.config_key] = _run_config(recipe, model_name, run)[recipe.config_key]
        model, preprocess_train, preprocess_val = original(model_name, *args, **kwargs)
        options.from_args(run).configure_model(model, run)
        return model, preprocess_train, preprocess_val

    return create_model_and_transforms


def _wrap_create_loss(original):
    @functools.wraps(original)
    def create_loss(args):
        model_name = getattr(args, "model", None)
        recipe = recipe_for(model_name)
        if recipe is None:
            return original(args)
        return recipe.create_loss(args, _run_config(recipe, model_name, args))

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
        global _training_run
        argv = list(argv)
        groups = [(recipe, recipe.load_flags()) for recipe in RECIPES if recipe.flags]
        parsed = []  # (recipe, its options class, its options, whether any of its flags was given)
        try:
            rest = argv
            for recipe, flags in groups:
                options, rest, given = flags.split_argv(rest)
                parsed.append((recipe, flags, options, given))
            args = original(rest)
        except SystemExit:
            if "-h" in argv or "--help" in argv:
                for _, flags in groups:
                    flags.build_parser().print_help()
            raise
        _training_run = None
        recipe = recipe_for(args.model)
        if recipe is not None:
            _patch_ddp()
        for other, flags, _, given in parsed:
            if other is not recipe and given:
                raise SystemExit(f"error: {flags.flag_prefix()}* flags apply only to {flags.recipe} models, "
                                 f"not --model {args.model}")
        if recipe is None:
            return args
        for own, flags, options, _ in parsed:
            if own is recipe:
                section = model_config(args.model)[recipe.config_key]
                try:
                    options = options.resolve(args, section, previous_params(args))
                except ValueError as error:
                    raise SystemExit(f"error: {error}") from None
                for key, value in options.record().items():
                    setattr(args, key, value)  # recorded in params.txt and wandb's config
        _training_run = args
        return args

    return parse_args


def previous_params(args: argparse.Namespace) -> Optional[Path]:
    """For a resumed run, the ``params.txt`` its previous launch wrote into the run folder (OpenCLIP
    rewrites it at every launch, after building the model: ``--resume latest``: ``--logs``/``--name``;
    ``--resume PATH``: the run folder of ``PATH``); None when there is none. Resuming already needs
    that folder on a file system every rank sees (each rank loads the checkpoint), so every rank
    reads the same."""
    if not args.resume:
        return None
    if args.resume == "latest":
        run = Path(args.logs) / args.name if args.name else None  # no name: a fresh dated one
    else:
        run = find_run_dir(Path(args.resume))
    if run is None or not (run / "params.txt").is_file():
        return None
    return run / "params.txt"


def _patch_ddp() -> None:
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

        def load_state_dict(self, state_dict, *args, **kwargs):
            # open_clip_train (3.3, main.py 380-385) saves this wrapper's state_dict ("module." keys)
            # and strips that prefix when resuming on one process, but loads a single-process run's
            # checkpoint (no prefix) into the wrapper as it is, so the resume failed on "Missing
            # key(s): module.…" as soon as the run continued on more processes than one.
            if state_dict and not any(key.startswith("module.") for key in state_dict):
                return self.module.load_state_dict(state_dict, *args, **kwargs)
            return super().load_state_dict(state_dict, *args, **kwargs)

    parallel.DistributedDataParallel = DistributedDataParallel


def patch_params(params) -> None:
    if _mark(params) and _supported_or_warn():
        params.parse_args = _wrap_parse_args(params.parse_args)


def _wrap_train_one_epoch(original):
    @functools.wraps(original)
    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        from openclip_unimlip.recipes.base_model import unwrap_model

        inner = unwrap_model(model)
        recipe = recipe_for_model(inner)
        if recipe is None:
            return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                            tb_writer=tb_writer)
        with recipe.training_epoch(inner, epoch, optimizer, args):
            return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                            tb_writer=tb_writer)

    return train_one_epoch


def patch_train(train) -> None:
    if _mark(train) and _supported_or_warn():
        train.train_one_epoch = _wrap_train_one_epoch(train.train_one_epoch)


def install_all() -> None:
    """Patch every target now (for ``python -m openclip_unimlip.commands.train`` or when the .pth is disabled)."""
    check_openclip_version()
    import open_clip
    import open_clip_train.params
    import open_clip_train.train

    patch_open_clip(open_clip)
    patch_params(open_clip_train.params)
    patch_train(open_clip_train.train)
    main = sys.modules.get("open_clip_train.main")
    if main is not None and not hasattr(main.create_loss, "__wrapped__"):
        raise RuntimeError("open_clip_train.main was imported before the openclip-unimlip patches: it holds the "
                           "stock factories. Import openclip_unimlip (or run "
                           "python -m openclip_unimlip.commands.train) first.")
