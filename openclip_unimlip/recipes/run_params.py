"""An ``open_clip_train`` run folder as the plugin reads it: its ``params.txt`` (every parsed flag,
the ``--<recipe>-*`` ones included) and the folder a checkpoint belongs to."""
import ast
from pathlib import Path
from typing import Any, Dict, Optional


def read_params(path: Path) -> Dict[str, Any]:
    """``open_clip_train``'s ``params.txt`` (``name: str(value)`` per line) as Python values."""
    params = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, sep, text = line.partition(": ")
        if not sep:
            continue
        try:
            params[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name] = text  # paths, model names, ...
    return params


def find_run_dir(checkpoint: Path) -> Optional[Path]:
    """The run folder of ``<logs>/<name>/checkpoints/epoch_N.pt`` (the one holding ``params.txt``)."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / "params.txt").is_file():
            return folder
    return None
