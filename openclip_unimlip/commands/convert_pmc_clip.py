"""Convert a PMC-CLIP checkpoint into an OpenCLIP checkpoint for a Uni-Mlip model.

    python scripts/convert_pmc_clip.py pmc_clip.pt unimlip-rn50-init.pt --model unimlip-rn50
    torchrun ... -m open_clip_train.main -- --model unimlip-rn50 --pretrained unimlip-rn50-init.pt ...

Prints every dropped, newly initialised, missing or unexpected key and fails if any key
does not fit the model.
"""
import argparse
from typing import Optional, Sequence

import open_clip
import torch

from openclip_unimlip.recipes.unimlip.pmc_clip import (
    is_pmc_clip_state_dict,
    load_pmc_clip_checkpoint,
    pmc_clip_to_unimlip,
)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="PMC-CLIP checkpoint ({'epoch', 'state_dict', 'optimizer'})")
    parser.add_argument("target", help="output: a state dict loadable with --pretrained")
    parser.add_argument("--model", default="unimlip-rn50", help="the Uni-Mlip model the checkpoint is for")
    parser.add_argument("--embed-dim", type=int, default=None, help="override the config's embed_dim")
    args = parser.parse_args(argv)

    state_dict = load_pmc_clip_checkpoint(args.source)
    if not is_pmc_clip_state_dict(state_dict):
        parser.error(f"{args.source} does not look like a PMC-CLIP checkpoint (no text_encoder./fusion_module. keys)")
    overrides = {"embed_dim": args.embed_dim} if args.embed_dim else {}
    model = open_clip.create_model(args.model, pretrained_text=False, **overrides)
    try:
        converted, report = pmc_clip_to_unimlip(state_dict, model)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")
    print(f"dropped (no counterpart in Uni-Mlip, expected): {report.dropped}")
    print(f"kept at initialisation (new in Uni-Mlip): {report.initialised}")
    torch.save(converted, args.target)
    print(f"wrote {args.target} ({len(converted)} tensors)")


def cli() -> None:
    """The ``unimlip-convert-pmc-clip`` console command and ``scripts/convert_pmc_clip.py``."""
    main()
