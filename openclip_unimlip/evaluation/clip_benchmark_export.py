"""Export retrieval pairs in clip_benchmark's local webdataset layout, to cross-check with its CLI.

Layout read by `clip_benchmark.datasets.builder.build_wds_dataset` (clip_benchmark 1.6.2)::

    ROOT/dataset_type.txt          "retrieval"
    ROOT/<split>/nshards.txt       number of shards N
    ROOT/<split>/0.tar ... N-1.tar one sample per image: image (webp/png/jpg/jpeg) + txt,
                                   one caption per line

Evaluate a checkpoint on it with clip_benchmark's own CLI and `open_clip` model type (the
plugin must be installed, so that `import open_clip` registers the Uni-Mlip configs)::

    clip_benchmark eval --model_type open_clip --model unimlip-rn50 \\
        --pretrained /path/to/checkpoints/epoch_100.pt \\
        --dataset wds/roco_test --dataset_root /path/to/ROOT --split test \\
        --task zeroshot_retrieval --recall_k 1 5 10 --no_amp \\
        --output clip_benchmark_roco.json

clip_benchmark's `text_retrieval_recall@K` is image-to-text R@K and `image_retrieval_recall@K`
is text-to-image R@K: see `from_clip_benchmark_metrics`. Its recall counts a query as a hit
when at least one positive is in the top K, which with one caption per image is our R@K.
The name after `wds/` is free (it only names the output). `--no_amp` keeps float32, so the
scores equal ours up to float rounding (mixed precision could flip near-ties).
"""
import io
import os
from pathlib import Path
from typing import Dict, List, Sequence

import webdataset as wds
from tqdm import tqdm

from openclip_unimlip.data.stored import IMAGE_EXTENSIONS, ImageTextPair


def _image_entry(pair: ImageTextPair) -> Dict[str, bytes]:
    if pair.image.extension in IMAGE_EXTENSIONS:
        return {pair.image.extension: pair.image.read_bytes()}  # original bytes: both sides decode the same pixels
    buffer = io.BytesIO()
    pair.image.open().save(buffer, format="png")  # lossless, for formats clip_benchmark cannot read
    return {"png": buffer.getvalue()}


def export_clip_benchmark_retrieval(
        pairs: Sequence[ImageTextPair],
        output_dir: str,
        split: str = "test",
        max_count: int = 10_000,
        max_size: float = 1e9,
) -> Path:
    """Write `pairs` as a clip_benchmark retrieval dataset under `output_dir`; returns the split folder.

    Pass the sampled pairs (`datasets.sample_pairs`) to have clip_benchmark evaluate exactly the
    pairs `evaluate_retrieval` does. Sample `i` is keyed `s{i:07d}` as clip_benchmark's own
    exporter does, with a `json` entry holding the pair's original key. Line breaks inside a
    caption become spaces (clip_benchmark splits `txt` into captions at line breaks); OpenCLIP's
    tokenizers treat both as whitespace, so the tokens are unchanged.
    """
    # Not clip_benchmark.webdataset_builder.convert_retrieval_dataset: it takes one image format
    # for the whole set (ours mixes png and jpg), rewrites "\n" in captions as a literal "\\n"
    # (changing the text we evaluate) and always starts 8 worker processes.
    if not pairs:
        raise ValueError("no pairs to export")
    root = Path(output_dir)
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    sink = wds.ShardWriter(os.path.join(split_dir, "%d.tar"), maxcount=max_count, maxsize=max_size, verbose=0)
    for index, pair in enumerate(tqdm(pairs, desc="exporting", unit="pair")):
        sink.write({
            "__key__": f"s{index:07d}",
            **_image_entry(pair),
            "txt": " ".join(pair.caption.splitlines()),
            "json": {"key": pair.key},
        })
    num_shards = sink.shard
    sink.close()
    (split_dir / "nshards.txt").write_text(f"{num_shards}\n")
    return split_dir


def clip_benchmark_eval_args(
        model_name: str,
        pretrained: str,
        dataset_root: str,
        split: str = "test",
        output: str = "clip_benchmark_retrieval.json",
        dataset_name: str = "wds/unimlip_retrieval",
) -> List[str]:
    """Arguments of `clip_benchmark` (after the program name) evaluating an export, as documented above."""
    return [
        "eval", "--model_type", "open_clip", "--model", model_name, "--pretrained", str(pretrained),
        "--dataset", dataset_name, "--dataset_root", str(dataset_root), "--split", split,
        "--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10", "--no_amp", "--output", str(output),
    ]


def from_clip_benchmark_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """clip_benchmark's retrieval metric names -> ours (`image_to_text_R@K`, `text_to_image_R@K`).

    clip_benchmark names a direction by what is retrieved: "text retrieval" means image queries.
    """
    prefixes = {"text_retrieval_recall@": "image_to_text", "image_retrieval_recall@": "text_to_image"}
    renamed = {}
    for name, value in metrics.items():
        for prefix, direction in prefixes.items():
            if name.startswith(prefix):
                renamed[f"{direction}_R@{name[len(prefix):]}"] = value
    return renamed
