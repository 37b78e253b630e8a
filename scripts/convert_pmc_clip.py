"""Convert a PMC-CLIP checkpoint into an OpenCLIP checkpoint for a Uni-Mlip model
(``unimlip-convert-pmc-clip``; see ``openclip_unimlip/commands/convert_pmc_clip.py``)."""
from openclip_unimlip.commands.convert_pmc_clip import cli

if __name__ == "__main__":
    cli()
