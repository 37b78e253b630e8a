"""Uni-Mlip (Bawazir & Wu): the model, its five-term loss, its trainer flags and the method's pieces
(docs/methods/unimlip.md).

- `config`: the five loss terms' names, the paper's weights and the ``unimlip_cfg`` section of the model JSON.
- `model`: the Uni-Mlip model, OpenCLIP's ``CustomTextCLIP`` plus the branches its losses need.
- `loss`: the five-term loss (paper Eq. 4) and its factory.
- `flags`: the run options (``UniMlipOptions``: the ``--unimlip-*`` trainer flags).
- `phases`: the SimCLR phase: its start rule and the epoch hook (frozen BatchNorm statistics by epoch).
- `masking`: BERT-style whole-word masking of caption tokens for the MLM term.
- `fusion`: the fusion transformer over caption states and image tokens that predicts masked tokens.
- `views`: SimCLR's two strongly augmented views, drawn on the device from the clean batch.
- `dropblock`: DropBlock, the image perturbation.
- `batchnorm`: freezing BatchNorm running statistics while the affine weights train.
- `pmc_clip`: converting PMC-CLIP checkpoints (the paper's starting point) for Uni-Mlip models.
"""
