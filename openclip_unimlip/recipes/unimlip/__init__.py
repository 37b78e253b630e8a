"""Uni-Mlip (Bawazir & Wu): the model (``model``), its five-term loss (``loss``), its trainer flags
(``flags``) and the method's pieces: caption masking, the MLM fusion, the SimCLR views, DropBlock,
BatchNorm freezing, and PMC-CLIP checkpoint conversion (the paper's starting point)."""
