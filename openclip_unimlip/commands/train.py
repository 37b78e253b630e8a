"""``unimlip-train <open_clip_train args>`` (or ``python -m openclip_unimlip.commands.train``): the
explicit equivalent of ``python -m open_clip_train.main`` with the plugin active (also when its .pth
is disabled)."""
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None):
    from openclip_unimlip.seam.patches import install_all

    install_all()
    from open_clip_train.main import main as openclip_main

    return openclip_main(list(sys.argv[1:] if argv is None else argv))


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
