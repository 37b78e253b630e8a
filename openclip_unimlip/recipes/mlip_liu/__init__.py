"""MLIP (Liu et al., ISBI 2024), masked local representation learning: ``model``, ``loss``, the
``mlip_liu_cfg`` section (``config``) and the run options (``flags``: ``--mlip-liu-*``); see
docs/methods/mlip-liu.md."""
