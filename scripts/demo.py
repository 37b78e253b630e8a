#!/usr/bin/env python
"""Pretrain unimlip-tiny for a few minutes on the embedded dataset and write a report of val
retrieval before and after; the console command ``unimlip-demo`` does the same (see
openclip_unimlip/studies/demo.py and docs/demo.md).

    python scripts/demo.py                      # CPU, about five minutes of training
    python scripts/demo.py --device cuda --epochs 10
"""
from openclip_unimlip.commands.demo import cli

if __name__ == "__main__":
    cli()
