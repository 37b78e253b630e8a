"""MLIP (Li et al., CVPR 2024), divergence encoder and knowledge-guided contrast: ``model``,
``loss``, the ``mlip_li_cfg`` section (``config``), the run options (``flags``: ``--mlip-li-*``) and
the shipped knowledge files (``knowledge``); see docs/methods/mlip-li.md."""
