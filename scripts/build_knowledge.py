"""Build the MLIP (Li) recipe's knowledge file from the PyPI package ``radiology-semantic-dict``
(``unimlip-build-knowledge``; see ``openclip_unimlip/commands/build_knowledge.py``)."""
from openclip_unimlip.commands.build_knowledge import cli

if __name__ == "__main__":
    cli()
