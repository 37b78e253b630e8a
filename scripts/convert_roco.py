#!/usr/bin/env python
"""Convert ROCO to webdataset shards and/or OpenCLIP CSV
(``unimlip-convert-roco``; see ``openclip_unimlip/commands/convert_roco.py``)."""
from openclip_unimlip.commands.convert_roco import cli

if __name__ == "__main__":
    cli()
