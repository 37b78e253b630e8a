"""Uni-Mlip (Bawazir & Wu): the model (``model``), its five-term loss and loss factory (``loss``), the
``unimlip_cfg`` section with the term names and the paper's weights (``config``), the run options
(``flags``: ``--unimlip-*``), the SimCLR phase (``phases``: its start rule and the epoch hook) and
the method's pieces: caption masking, the MLM fusion, the SimCLR views, DropBlock, BatchNorm
freezing, and PMC-CLIP checkpoint conversion (the paper's starting point)."""
