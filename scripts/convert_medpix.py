#!/usr/bin/env python
"""Convert MedPix 2.0 to webdataset shards and/or OpenCLIP CSV, official case splits kept
(``unimlip-convert-medpix``; see ``openclip_unimlip/commands/convert_medpix.py``)."""
from openclip_unimlip.commands.convert_medpix import cli

if __name__ == "__main__":
    cli()
