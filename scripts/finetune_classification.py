#!/usr/bin/env python
"""Fine-tune a pre-trained image tower on CheXpert, MIMIC-CXR or NIH ChestX-ray14 (Uni-Mlip Table 1)
(``unimlip-finetune-classification``; see ``openclip_unimlip/commands/finetune_classification.py``)."""
from openclip_unimlip.commands.finetune_classification import cli

if __name__ == "__main__":
    cli()
