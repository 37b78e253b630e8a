"""openclip-unimlip: Uni-Mlip medical vision-language pre-training as an OpenCLIP plugin.

Installing the package registers the ``unimlip-*`` model configs in OpenCLIP and adapts
``open_clip_train`` (see ``openclip_unimlip.seam.patches``); nothing needs importing. The public
classes below are imported lazily so ``import openclip_unimlip`` stays cheap.

- `seam/`: the only code that touches OpenCLIP (autoload, patches, ``hf-hub:``/``local-dir:`` loading).
- `recipes/`: the recipe registry, the three recipes (``unimlip``, ``mlip_liu``, ``mlip_li``) and what
  they share.
- `data/`: every dataset: converters and the shard writer, the embedded demo dataset, the downstream
  releases and their images.
- `evaluation/`: protocols, downstream models and metrics.
- `studies/`: the experiments (benchmark, ablation, demo, real-data downstream, pre-training runs and
  the Slurm launcher) and their statistics.
- `commands/`: the ``unimlip-*`` console commands, one thin module each.
- `export`: a checkpoint exported the way OpenCLIP shares models.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "UniMlip": "recipes.unimlip.model",
    "UniMlipCfg": "recipes.unimlip.config",
    "UniMlipLoss": "recipes.unimlip.loss",
    "StrongViews": "recipes.unimlip.views",
    "TERMS": "recipes.unimlip.config",
    "set_batchnorm_stats_frozen": "recipes.unimlip.batchnorm",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
