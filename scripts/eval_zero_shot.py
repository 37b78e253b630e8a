#!/usr/bin/env python
"""Zero-shot classification of an OpenCLIP model with prompt templates
(``unimlip-eval-zero-shot``; see ``openclip_unimlip/commands/eval_zero_shot.py``)."""
from openclip_unimlip.commands.eval_zero_shot import cli

if __name__ == "__main__":
    cli()
