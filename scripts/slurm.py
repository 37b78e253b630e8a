#!/usr/bin/env python
"""Uni-Mlip pre-training from inside a Slurm batch job, shaped by the allocation (the console command
``unimlip-slurm``; ``scripts/slurm/*.sbatch`` run the same as ``python -m openclip_unimlip.commands.slurm``,
which needs no checkout beside the job). See openclip_unimlip/studies/pretraining/slurm.py and docs/slurm.md.

    python scripts/slurm.py one-node [open_clip_train args]     # inside a job of one node
    python scripts/slurm.py multinode [open_clip_train args]    # inside a job of several nodes
"""
from openclip_unimlip.commands.slurm import cli

if __name__ == "__main__":
    cli()
