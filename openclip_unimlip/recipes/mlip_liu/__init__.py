"""MLIP (Liu et al., ISBI 2024), masked local representation learning; see docs/methods/mlip-liu.md.

- `config`: the ``mlip_liu_cfg`` section of the model JSON, validated.
- `model`: the model: masked contrast, patch-sentence matching, masked patch reconstruction.
- `loss`: the loss and its factory.
- `flags`: the run options (``MlipLiuOptions``: the ``--mlip-liu-*`` flags, the loss weights).
"""
