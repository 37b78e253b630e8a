#!/usr/bin/env python
"""Image-text retrieval R@1/5/10 of an OpenCLIP model on sampled pairs (Uni-Mlip sec. 4.2)
(``unimlip-eval-retrieval``; see ``openclip_unimlip/commands/eval_retrieval.py``)."""
from openclip_unimlip.commands.eval_retrieval import cli

if __name__ == "__main__":
    cli()
