"""MLIP (Li et al., CVPR 2024), divergence encoder and knowledge-guided contrast; see
docs/methods/mlip-li.md.

- `config`: the ``mlip_li_cfg`` section of the model JSON, validated.
- `model`: the model: global contrast with a divergence encoder, token-patch alignment, prototypes.
- `loss`: the loss and its factory.
- `flags`: the run options (``MlipLiOptions``: the ``--mlip-li-*`` flags, the loss weights).
- `knowledge`: the knowledge file (JSON Lines of medical entities) and the builder of the shipped ones.
"""
