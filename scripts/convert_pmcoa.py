#!/usr/bin/env python
"""Convert PMC-OA (captions + images.zip or an image folder) to webdataset shards and/or OpenCLIP CSV
(``unimlip-convert-pmcoa``; see ``openclip_unimlip/commands/convert_pmcoa.py``)."""
from openclip_unimlip.commands.convert_pmcoa import cli

if __name__ == "__main__":
    cli()
