"""MLIP (Liu et al., ISBI 2024), masked local representation learning: ``model``, ``loss`` and the
``mlip_liu_cfg`` section (``config``); see docs/methods/mlip-liu.md."""
