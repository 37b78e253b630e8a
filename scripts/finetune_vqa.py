#!/usr/bin/env python
"""Fine-tune a pre-trained model for medical VQA on VQA-RAD or SLAKE (Uni-Mlip Table 2)
(``unimlip-finetune-vqa``; see ``openclip_unimlip/commands/finetune_vqa.py``)."""
from openclip_unimlip.commands.finetune_vqa import cli

if __name__ == "__main__":
    cli()
