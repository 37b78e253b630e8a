#!/usr/bin/env python
"""open_clip_train with the plugin's patches installed first (the console command ``unimlip-train``;
the same as ``python -m openclip_unimlip.commands.train``). See openclip_unimlip/commands/train.py.

    python scripts/train.py --model unimlip-rn50 --train-data 'pmcoa/{00000..00164}.tar' --dataset-type webdataset ...
"""
from openclip_unimlip.commands.train import cli

if __name__ == "__main__":
    cli()
