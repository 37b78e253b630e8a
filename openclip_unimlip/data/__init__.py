"""Every dataset: the pre-training data converted to webdataset shards and OpenCLIP CSV, and the
downstream releases read in their own layouts.

- `shards`: the resumable writer every converter shares (``write_dataset``), its row checks.
- `atomic`: writing a file so that a reader never sees half of it (shards, manifests, the studies' records).
- `pmcoa`: PMC-OA (both releases' layouts) turned into rows for it.
- `roco`: ROCO's release layout turned into rows for it.
- `medpix`: MedPix 2.0 turned into rows for it, and its release read for downstream tasks.
- `embedded`: the embedded demo dataset, built offline from a seed.
- `near_duplicates`: perceptual near-duplicates between a pre-training set and a test set.
- `chest_xray`: CheXpert, MIMIC-CXR(-JPG) and NIH ChestX-ray14 readers (splits, labels).
- `cxr_protocols`: the named chest X-ray protocols the readers follow (labels, uncertainty mapping,
  views, split; CheXclusion's vendored test patients).
- `vqa_releases`: VQA-RAD and SLAKE readers, the answer set and the VQA dataset.
- `releases`: finding each downstream release under one data root.
- `stored`: written datasets (webdataset shards, CSV, image folders) as image-caption pairs or labelled
  images, indexed without decoding (``StoredImage``), and the seeded draw of pairs.
- `images`: decoding the releases' image files (DICOM, 16-bit greyscale, alpha) to 8-bit RGB.

Names below are imported lazily, so importing this package costs nothing until one is used.
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
    "StoredImage": "stored",
    "ImageTextPair": "stored",
    "LabelledImages": "stored",
    "load_pairs": "stored",
    "load_labelled_images": "stored",
    "sample_indices": "stored",
    "sample_pairs": "stored",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
