#!/usr/bin/env python
"""Reproduce the ablations of Uni-Mlip's Tables 3 and 4 at small scale, in the paper's two-stage
protocol: one ITC+MLM baseline trained until its val retrieval plateaus (cached), then every row
continued from it for the same budget through open_clip_train, several seeds; val retrieval
mean ± std and paired bootstrap intervals against the baseline row.
The console command ``unimlip-ablate`` does the same. See openclip_unimlip/studies/ablation.py and
docs/ablation.md.

    python scripts/ablate.py                            # CPU grid, about an hour on 2 idle cores
    python scripts/ablate.py --full --device cuda       # the larger GPU grid
    python scripts/ablate.py --from-scratch             # the earlier one-stage grid
"""
from openclip_unimlip.commands.ablation import cli

if __name__ == "__main__":
    cli()
