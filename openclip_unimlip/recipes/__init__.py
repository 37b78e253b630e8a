"""The pre-training recipes the plugin brings to OpenCLIP, keyed by a marker in the model JSON.

A recipe is a model class (built by OpenCLIP's factory for configs carrying its key), a loss
factory ``(args, model_cfg) -> nn.Module`` (returned by OpenCLIP's ``create_loss``; ``model_cfg`` is
the run's, its recipe options applied), its run options (``run_options.RunOptions``: a frozen
dataclass whose fields are its ``open_clip_train`` flags, their validation and the config overrides
they make) and, where it needs one, an epoch hook ``(model, epoch, optimizer, args) -> context
manager`` entered around every training epoch. The seam (``openclip_unimlip.seam``) reaches a
recipe only through these fields: it imports no recipe module and names no recipe.

Each recipe is a peer sub-package (model, loss, the recipe's config section, its run options in
``flags``, its own pieces); the modules beside them are what recipes share, and this module is the registry. Adding
a recipe means one folder, one model JSON in ``model_configs/`` and one line in ``RECIPES``.

- `unimlip/`: Uni-Mlip (Bawazir & Wu), five losses.
- `mlip_liu/`: MLIP (Liu et al., ISBI 2024), masked local representation learning.
- `mlip_li/`: MLIP (Li et al., CVPR 2024), divergence encoder and knowledge-guided contrast.
- `base_model`: the model class every recipe's model builds on (a CLIP in eval mode, training branches).
- `config`: reading a recipe's section of the model JSON (keys, term names, loss weights, bounds).
- `distributed`: all cross-rank communication of the losses (``gather_batch``, ``GatheringLoss``).
- `run_options`: a recipe's run options (``RunOptions``, a frozen dataclass): its ``open_clip_train``
  flags generated from the fields, parsed and checked once, read back from ``params.txt``.
- `run_params`: an ``open_clip_train`` run folder: its ``params.txt``, a checkpoint's run.
- `text_models`: where the configs' text towers come from (hub id, local copy) and their checks.
- `ops`: tensor operations the recipes share (patch masking, ViT passes, sentence pooling, transport
  plans, contrastive logits).
- `towers`: what the recipes' models need from OpenCLIP's towers beyond their ``forward``.
"""
import contextlib
import importlib
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple


@dataclass(frozen=True)
class Recipe:
    config_key: str  # top-level key in the model JSON that marks the recipe
    model_class: str  # "module:Class"
    loss_factory: str  # "module:function" taking (args, model_cfg)
    title: str  # the method and its paper, for model cards
    flags: Optional[str] = None  # "module:Class", a run_options.RunOptions: the recipe's open_clip_train flags
    epoch_hook: Optional[str] = None  # "module:function" (model, epoch, optimizer, args) -> context manager
    # (config-section key, file name): a file the section names that an export carries beside its config
    portable_files: Tuple[Tuple[str, str], ...] = ()

    def load_model_class(self):
        return _load(self.model_class)

    def create_loss(self, args, model_cfg: dict):
        return _load(self.loss_factory)(args, model_cfg)

    def load_flags(self):
        """The recipe's ``RunOptions`` class, or None when it has no trainer flags."""
        return _load(self.flags) if self.flags else None

    @contextlib.contextmanager
    def training_epoch(self, model, epoch: int, optimizer, args) -> Iterator[None]:
        """The recipe's epoch hook around one epoch of ``open_clip_train``'s loop (nothing without one);
        ``model`` is the recipe's model, unwrapped from DDP / torch.compile."""
        if self.epoch_hook is None:
            yield
            return
        with _load(self.epoch_hook)(model, epoch, optimizer, args):
            yield


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


_UNIMLIP = "openclip_unimlip.recipes.unimlip"
_MLIP_LIU = "openclip_unimlip.recipes.mlip_liu"
_MLIP_LI = "openclip_unimlip.recipes.mlip_li"
RECIPES = (
    Recipe("unimlip_cfg", f"{_UNIMLIP}.model:UniMlip", f"{_UNIMLIP}.loss:create_unimlip_loss",
           "Uni-Mlip (Bawazir & Wu, Unified Self-supervision for Medical Vision Language Pre-training)",
           flags=f"{_UNIMLIP}.flags:UniMlipOptions", epoch_hook=f"{_UNIMLIP}.phases:simclr_phase"),
    Recipe("mlip_liu_cfg", f"{_MLIP_LIU}.model:MlipLiu", f"{_MLIP_LIU}.loss:create_mlip_liu_loss",
           "MLIP (Liu et al., ISBI 2024), as reconstructed by openclip-unimlip",
           flags=f"{_MLIP_LIU}.flags:MlipLiuOptions"),
    Recipe("mlip_li_cfg", f"{_MLIP_LI}.model:MlipLi", f"{_MLIP_LI}.loss:create_mlip_li_loss",
           "MLIP (Li et al., CVPR 2024), as reconstructed by openclip-unimlip", flags=f"{_MLIP_LI}.flags:MlipLiOptions",
           epoch_hook=f"{_MLIP_LI}.model:prototype_freeze",
           portable_files=(("knowledge_file", "mlip_li_knowledge.jsonl"),)),
)


def recipe_for_config(model_cfg: Optional[dict]) -> Optional[Recipe]:
    return next((r for r in RECIPES if model_cfg and r.config_key in model_cfg), None)


def recipe_for_model(model) -> Optional[Recipe]:
    """The recipe whose model class ``model`` (unwrapped) is an instance of, or None."""
    return next((r for r in RECIPES if isinstance(model, r.load_model_class())), None)


def recipe_for_kwargs(model_kwargs: dict) -> Optional[Recipe]:
    """The recipe whose key is among a model constructor's keyword arguments."""
    return next((r for r in RECIPES if r.config_key in model_kwargs), None)


def model_config(model_name) -> Optional[dict]:
    """The model config OpenCLIP's factory would build for ``model_name``, or None.

    Names with a schema (``hf-hub:org/name``, ``local-dir:/path``) are read where OpenCLIP reads
    them, unchanged; only built-in names get the factory's ``/`` -> ``-`` clean-up. A config that
    cannot be read gives None, so the caller hands the name to OpenCLIP, which reports the problem.
    """
    if not isinstance(model_name, str):
        return None
    from open_clip import get_model_config
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(model_name)
    if schema is None:
        return get_model_config(identifier.replace("/", "-"))
    try:
        return get_model_config(model_name)
    except Exception:  # missing folder/file, hub unreachable, bad JSON: OpenCLIP says which
        return None


def recipe_for(model_name) -> Optional[Recipe]:
    """The recipe of a model name (built-in, ``hf-hub:`` or ``local-dir:``), or None for every other model."""
    return recipe_for_config(model_config(model_name))
