"""Written datasets read for evaluation: image-caption pairs (webdataset shards or CSV), labelled
images (class folders or CSV), and the seeded draw of pairs.

Images are not decoded here. Each one is a `StoredImage` (a file, or a byte range inside an
uncompressed tar), so a whole test split can be indexed cheaply and only the sampled images
are ever read.
"""
import io
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import braceexpand
import numpy as np
import pandas as pd
from PIL import Image
from webdataset.tariterators import base_plus_ext

# The image extensions clip_benchmark's webdataset loader accepts.
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class StoredImage:
    """An encoded image: a whole file, or `size` bytes at `offset` inside an uncompressed tar.

    Not `data.shards.RowImage`, a converter's input (bytes in memory, a path or a zip member) that
    is read once to be checked and written: a StoredImage points into a dataset already written
    (webdataset shards, a CSV's files, an image folder), is hashable and cheap, and is decoded only
    when `open` is called, so a whole test split can be indexed without reading its images.
    """
    path: str
    extension: str  # lower case, no dot: how the bytes are encoded
    offset: int = 0
    size: Optional[int] = None

    @classmethod
    def from_file(cls, path: str) -> "StoredImage":
        return cls(str(path), Path(path).suffix.lstrip(".").lower())

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read() if self.size is None else f.read(self.size)

    def open(self) -> Image.Image:
        # RGB, as webdataset's "pil" decoder (clip_benchmark) and OpenCLIP's "pilrgb" produce.
        with Image.open(io.BytesIO(self.read_bytes())) as image:
            return image.convert("RGB")


@dataclass(frozen=True)
class ImageTextPair:
    key: str
    image: StoredImage
    caption: str


def is_csv(data: str) -> bool:
    return str(data).lower().endswith(CSV_SUFFIXES)


def expand_shards(data: str) -> List[str]:
    """Shard paths from a brace pattern (`ROOT/test/{00000..00003}.tar`) or a folder of `.tar` files."""
    if os.path.isdir(data):
        paths = sorted(str(p) for p in Path(data).glob("*.tar"))
    else:
        paths = list(braceexpand.braceexpand(str(data)))
    if not paths:
        raise FileNotFoundError(f"no shards found for {data!r}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of {data!r} not found, e.g. {missing[0]}")
    return paths


def _resolve_csv_path(path: str, csv_dir: Path) -> str:
    # OpenCLIP's CsvDataset opens paths as written (relative to the working directory);
    # converters often write them relative to the CSV instead, so fall back to that.
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return str(csv_dir / path)


def _read_shard(path: str) -> List[ImageTextPair]:
    images, captions, keys = {}, {}, {}  # keys: a dict as an insertion-ordered set
    # "r:" refuses compressed tars: byte offsets are only meaningful in an uncompressed file.
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, extension = base_plus_ext(member.name)  # webdataset's own key/extension split
            if key is None:
                continue
            extension = extension.lower()
            keys[key] = None
            if extension in IMAGE_EXTENSIONS:
                images[key] = StoredImage(path, extension, member.offset_data, member.size)
            elif extension == "txt":
                captions[key] = tar.extractfile(member).read().decode("utf-8").strip()
    complete = [k for k in keys if k in images and captions.get(k)]
    if len(complete) < len(keys):
        logging.warning(f"{path}: skipped {len(keys) - len(complete)} sample(s) without an image or a caption")
    return [ImageTextPair(key, images[key], captions[key]) for key in complete]


def load_pairs(
        data: str,
        csv_img_key: str = "filepath",
        csv_caption_key: str = "title",
        csv_separator: str = "\t",
) -> List[ImageTextPair]:
    """All image-caption pairs of `data`, in a deterministic order.

    `data` is a CSV (`.csv`/`.tsv`, OpenCLIP's column names and tab separator by default),
    a folder of `.tar` shards, or a brace pattern of local, uncompressed webdataset shards
    holding an image (`png`, `jpg`, `jpeg` or `webp`) and a `txt` caption per sample.
    Samples or rows without an image or with an empty caption are skipped (with a warning).
    Order: shards in pattern (or sorted) order, samples in tar order; CSV rows in file order.
    """
    if is_csv(data):
        # keep_default_na=False: a caption reading "NA" is text, an empty cell is an empty caption
        frame = pd.read_csv(data, sep=csv_separator, keep_default_na=False, dtype=str)
        csv_dir = Path(data).parent
        pairs = [
            ImageTextPair(str(row), StoredImage.from_file(_resolve_csv_path(path, csv_dir)), caption.strip())
            for row, (path, caption) in enumerate(zip(frame[csv_img_key], frame[csv_caption_key]))
        ]
        complete = [p for p in pairs if p.caption]
        if len(complete) < len(pairs):
            logging.warning(f"{data}: skipped {len(pairs) - len(complete)} row(s) without a caption")
        return complete
    pairs = []
    for shard in expand_shards(data):
        pairs.extend(_read_shard(shard))
    return pairs


def sample_indices(num_total: int, num_samples: Optional[int] = 2000, seed: int = 0) -> np.ndarray:
    """Sorted indices of `num_samples` distinct items drawn uniformly from `range(num_total)`.

    The paper's protocol (Uni-Mlip sec. 4.2, after PMC-CLIP): 2000 randomly selected test pairs.
    The draw is `numpy.random.default_rng(seed).choice(num_total, num_samples, replace=False)`,
    so it depends only on (`num_total`, `num_samples`, `seed`), the dataset order and NumPy
    (which does not promise identical draws across releases; `evaluate_retrieval` therefore
    records the evaluated keys). The whole set is returned when it has at most `num_samples`
    items or `num_samples` is None. Indices are sorted so shards are read front to back; the
    metrics do not depend on the order.
    """
    if num_samples is None or num_samples >= num_total:
        return np.arange(num_total)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_total, size=num_samples, replace=False))


def sample_pairs(
        pairs: Sequence[ImageTextPair],
        num_samples: Optional[int] = 2000,
        seed: int = 0,
) -> List[ImageTextPair]:
    """The pairs at `sample_indices(len(pairs), num_samples, seed)`."""
    return [pairs[i] for i in sample_indices(len(pairs), num_samples, seed)]


@dataclass(frozen=True)
class LabelledImages:
    images: List[StoredImage]
    labels: List[int]
    classnames: List[str]  # index -> the label as found in the data


def load_labelled_images(
        data: str,
        csv_img_key: str = "filepath",
        csv_label_key: str = "label",
        csv_separator: str = "\t",
) -> LabelledImages:
    """Images with integer labels from a folder of class subfolders or a CSV of path + label.

    Class indices follow the sorted label names (torchvision `ImageFolder` order for folders).
    """
    if is_csv(data):
        frame = pd.read_csv(data, sep=csv_separator, keep_default_na=False, dtype=str)
        csv_dir = Path(data).parent
        names = list(frame[csv_label_key])
        classnames = sorted(set(names))
        index = {name: i for i, name in enumerate(classnames)}
        images = [StoredImage.from_file(_resolve_csv_path(p, csv_dir)) for p in frame[csv_img_key]]
        return LabelledImages(images, [index[n] for n in names], classnames)
    from torchvision.datasets import ImageFolder  # here: only folders need torchvision (and torch)

    folder = ImageFolder(data)  # lists files only; images are read later through StoredImage
    images = [StoredImage.from_file(path) for path, _ in folder.samples]
    return LabelledImages(images, [label for _, label in folder.samples], list(folder.classes))
