#!/usr/bin/env python
"""Export an open_clip_train checkpoint of one of our recipes the way OpenCLIP shares models
(the ``unimlip-export`` command; see ``openclip_unimlip/commands/export.py`` and
``openclip_unimlip/export.py``)."""
from openclip_unimlip.commands.export import cli

if __name__ == "__main__":
    cli()
