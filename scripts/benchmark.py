#!/usr/bin/env python
"""Evaluate OpenCLIP models on every medical downstream task found under --data-root, in the paper's
layout (Fig. 2, Table 1, Table 2) with its reported numbers beside; the console command
``unimlip-benchmark`` does the same. See openclip_unimlip/studies/benchmark/ and docs/evaluation.md.

    python scripts/benchmark.py --model unimlip-rn50 --pretrained logs/run/checkpoints/epoch_100.pt \\
        --model hf-hub:org/biomedclip --data-root /data --out results/benchmark --device cuda --precision amp
    python scripts/benchmark.py ... --plan      # the cells and an estimate, nothing run
"""
from openclip_unimlip.commands.benchmark import cli

if __name__ == "__main__":
    cli()
