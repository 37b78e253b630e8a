#!/usr/bin/env python
"""Export sampled retrieval pairs in clip_benchmark's webdataset layout and print its command
(``unimlip-export-clip-benchmark``; see ``openclip_unimlip/commands/export_clip_benchmark.py``)."""
from openclip_unimlip.commands.export_clip_benchmark import cli

if __name__ == "__main__":
    cli()
