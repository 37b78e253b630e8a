"""The two MLIP recipes: Liu et al. (``liu.py``, masked local representation learning) and
Li et al. (``li.py``, divergence encoder and knowledge-guided contrast); see docs/methods/."""
