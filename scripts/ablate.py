#!/usr/bin/env python
"""Reproduce the ablations of Uni-Mlip's Tables 3 and 4 at small scale: every row trained for
the same budget through open_clip_train for several seeds, val retrieval R@1 mean ± std.
See openclip_unimlip/ablation.py and docs/ablation.md.

    python scripts/ablate.py                            # CPU grid, under an hour on 2 idle cores
    python scripts/ablate.py --full --device cuda       # the larger GPU grid
"""
from openclip_unimlip.ablation import main

if __name__ == "__main__":
    main()
