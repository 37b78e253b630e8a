"""Small learnable image-caption shards for trainer tests: a bright or dark square in one of
four places on a grey background, captioned accordingly (written with webdataset's TarWriter)."""
import io
import itertools
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

PLACES = {"upper left": (0, 0), "upper right": (0, 1), "lower left": (1, 0), "lower right": (1, 1)}
KINDS = {"bright": 230, "dark": 20}


def _image(place, kind, size, rng):
    pixels = np.full((size, size), 120, dtype=np.float32) + rng.normal(0, 8, (size, size))
    row, col = PLACES[place]
    half, side = size // 2, size // 4
    top = row * half + rng.integers(0, half - side)
    left = col * half + rng.integers(0, half - side)
    pixels[top:top + side, left:left + side] = KINDS[kind]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")


def write_shards(root: Path, num_samples: int = 128, per_shard: int = 32, size: int = 96, seed: int = 0) -> str:
    """Writes ``root/00000.tar …`` plus sizes.json; returns the brace pattern for --train-data."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(PLACES, KINDS))
    sizes = {}
    for shard in range(0, num_samples, per_shard):
        name = f"{shard // per_shard:05d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for index in range(shard, min(shard + per_shard, num_samples)):
                place, kind = combos[index % len(combos)]
                buffer = io.BytesIO()
                _image(place, kind, size, rng).save(buffer, format="PNG")
                sink.write({"__key__": f"{index:06d}", "png": buffer.getvalue(),
                            "txt": f"a {kind} square in the {place} of the image",
                            "json": json.dumps({"place": place, "kind": kind}).encode()})
        sizes[name] = min(per_shard, num_samples - shard)
    (root / "sizes.json").write_text(json.dumps(sizes))
    return str(root / f"{{00000..{len(sizes) - 1:05d}}}.tar")
