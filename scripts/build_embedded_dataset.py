#!/usr/bin/env python
"""Build the embedded Uni-Mlip demo dataset as webdataset shards and/or OpenCLIP CSV
(``unimlip-build-embedded-dataset``; see ``openclip_unimlip/commands/build_embedded_dataset.py``)."""
from openclip_unimlip.commands.build_embedded_dataset import cli

if __name__ == "__main__":
    cli()
