"""The embedded dataset: deterministic, the right size, and findings whose caption matches the pixels."""
import hashlib
import io
import json
import tarfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openclip_unimlip.data.embedded import INTENSITY_WORDS, TISSUE_RANGE, ensure_embedded_dataset

PARAMS = dict(num_samples=120, image_size=48, seed=7, val_fraction=0.1, shard_size=25)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_embedded_dataset(tmp_path_factory.mktemp("embedded"), **PARAMS)


def samples(root: Path):
    out = []
    for shard in sorted(root.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".png"):
                key = name[:-4]
                out.append((key, members[name], members[f"{key}.txt"].decode(), json.loads(members[f"{key}.json"])))
    return out


def file_digests(root: Path):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".tar", ".png", ".json") and p.name != "manifest.json"}


def test_layout_and_counts(built):
    assert built.built
    assert (built.train_num_samples, built.val_num_samples) == (108, 12)
    assert built.train_data == str(built.root / "train" / "{00000..00004}.tar")
    assert built.val_data == str(built.root / "val" / "00000.tar")
    assert sum(json.loads((built.root / "train" / "sizes.json").read_text()).values()) == 108
    assert built.train_csv.is_file() and built.val_csv.is_file()
    manifest = json.loads((built.root / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 7 and manifest["num_kept"] == 120 and manifest["bad_rows"] == {}
    assert len(samples(built.root)) == 120


def test_deterministic_from_the_seed(built, tmp_path):
    again = ensure_embedded_dataset(tmp_path / "again", **PARAMS)
    assert file_digests(again.root) == file_digests(built.root)
    other = ensure_embedded_dataset(tmp_path / "other", **{**PARAMS, "seed": 8, "formats": "webdataset"})
    assert [s[2] for s in samples(other.root)] != [s[2] for s in samples(built.root)]


def test_ensure_reuses_a_complete_build_and_rebuilds_on_new_parameters(built, tmp_path):
    root = tmp_path / "ds"
    first = ensure_embedded_dataset(root, **{**PARAMS, "formats": "webdataset"})
    assert first.built and first.train_csv is None
    assert not ensure_embedded_dataset(root, **{**PARAMS, "formats": "webdataset"}).built
    bigger = ensure_embedded_dataset(root, **{**PARAMS, "formats": "webdataset", "image_size": 56})
    assert bigger.built
    _, png, _, _ = samples(root)[0]
    assert Image.open(io.BytesIO(png)).size == (56, 56)


def test_captions_state_modality_region_and_every_finding(built):
    counts = set()
    for _, _, caption, meta in samples(built.root):
        assert meta["region"] in caption
        counts.add(len(meta["findings"]))
        if not meta["findings"]:
            assert "focal" in caption and " lesion in the " not in caption
        for finding in meta["findings"]:
            word = INTENSITY_WORDS[meta["modality"]][finding["intensity"]]
            phrase = f"{finding['size']} {finding['shape']} {word} lesion in the {finding['location']} region"
            assert phrase in caption
    assert counts == {0, 1, 2}
    captions = [s[2] for s in samples(built.root)]
    assert len(set(captions)) > 0.8 * len(captions)


def test_lesion_pixels_are_above_or_below_the_background(built):
    checked = {"hyper": 0, "hypo": 0}
    for _, png, _, meta in samples(built.root):
        pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32)
        assert pixels.shape == (48, 48)
        yy, xx = np.mgrid[:48, :48]
        distance = [np.hypot(xx - f["center_xy"][0], yy - f["center_xy"][1]) for f in meta["findings"]]
        for finding, d in zip(meta["findings"], distance):
            r = finding["radius"]
            core = pixels[d < 0.5 * r]
            clear_of_lesions = np.all([other > 1.7 * f["radius"] + 1.5
                                       for other, f in zip(distance, meta["findings"])], 0)
            ring = pixels[(d < 2.6 * r + 3) & clear_of_lesions]
            low, high = (255 * v for v in TISSUE_RANGE)
            if finding["intensity"] == "hyper":  # above the whole tissue range, on the absolute scale
                assert core.mean() > high + 5 and core.mean() > ring.mean() + 20
            else:
                assert core.mean() < low - 5 and core.mean() < ring.mean() - 20
            assert abs(core.mean() - finding["level"]) < 8
            checked[finding["intensity"]] += 1
    assert min(checked.values()) >= 20


def test_open_clip_train_reads_the_embedded_shards(built):
    import torch
    from open_clip_train.data import get_wds_dataset
    from torchvision import transforms

    torch.set_num_threads(1)
    args = Namespace(train_data=built.train_data, val_data=built.val_data, train_num_samples=None,
                     val_num_samples=None, dataset_resampled=False, train_data_upsampling_factors=None,
                     seed=0, batch_size=16, workers=0, world_size=1)
    data = get_wds_dataset(args, transforms.ToTensor(), is_train=True, tokenizer=lambda text: [text])
    assert data.dataloader.num_samples == 112  # 108 rounded up to whole batches, as OpenCLIP does
    images, texts = next(iter(data.dataloader))
    assert images.shape == (16, 3, 48, 48) and len(texts) == 16
    assert torch.equal(images[:, 0], images[:, 1])  # grey images, decoded as RGB by "pilrgb"



_WITHOUT_TEST_EXTRA = """
import json, sys, tarfile
from pathlib import Path
for name in ("pytest", "_pytest", "clip_benchmark", "requests"):  # the [test] extra
    sys.modules[name] = None  # import raises ImportError, as when not installed
import openclip_unimlip.commands.ablation, openclip_unimlip.commands.demo
from openclip_unimlip.data.embedded import ensure_embedded_dataset
built = ensure_embedded_dataset(sys.argv[1], num_samples=60, image_size=32, shard_size=30, formats="webdataset")
tars = [tarfile.open(shard) for shard in sorted(Path(sys.argv[1]).glob("*/*.tar"))]
sources = {json.loads(tar.extractfile(m).read())["source"] for tar in tars for m in tar if m.name.endswith(".json")}
print(built.train_num_samples + built.val_num_samples, *sorted(sources))
"""


def test_builds_without_the_test_extra(tmp_path):
    """README command 1 installs no test extra: the demo's and the ablation's modules, and a build
    drawing on every base image, must work with the test-only packages unimportable (nibabel's
    own ``nibabel.testing`` imports pytest)."""
    import subprocess
    import sys

    from openclip_unimlip.data.embedded import _SOURCES

    result = subprocess.run([sys.executable, "-c", _WITHOUT_TEST_EXTRA, str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["60", *sorted(source.name for source in _SOURCES)]
