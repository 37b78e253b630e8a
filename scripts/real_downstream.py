#!/usr/bin/env python
"""Uni-Mlip Table 2 on the real VQA-RAD release and a Table 1 stand-in on MedPix 2.0's own labels,
per initialisation, several seeds, 95 % intervals; the console command ``unimlip-real-downstream`` does
the same. See openclip_unimlip/studies/real_downstream.py and docs/real-data.md ("Downstream on real data").

    python scripts/real_downstream.py --model unimlip-tiny --init random \\
        --init baseline=runs/medpix/itc_mlm.pt --init unimlip=runs/medpix/all_five.pt \\
        --reference baseline --out runs/real-downstream
"""
from openclip_unimlip.commands.real_downstream import cli

if __name__ == "__main__":
    cli()
