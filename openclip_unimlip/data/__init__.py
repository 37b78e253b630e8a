"""Data preparation: webdataset shards and OpenCLIP CSV from PMC-OA, ROCO or the embedded dataset.

``write_dataset`` (in ``shards``) is the resumable writer every converter shares; ``pmcoa``,
``roco`` and ``embedded`` turn their sources into rows for it. Names below are imported
lazily, so importing this package costs nothing until one is used.
"""
import importlib

_LAZY = {
    "Row": "shards",
    "BadRow": "shards",
    "ZipMember": "shards",
    "ConversionReport": "shards",
    "write_dataset": "shards",
    "pmcoa_rows": "pmcoa",
    "convert_pmcoa": "pmcoa",
    "roco_rows": "roco",
    "convert_roco": "roco",
    "EmbeddedDataset": "embedded",
    "ensure_embedded_dataset": "embedded",
    "render_sample": "embedded",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
