"""The shard writer: checks and report, seeded split, resumability, and OpenCLIP reading it back."""
import hashlib
import io
import json
import tarfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openclip_unimlip.data import shards
from openclip_unimlip.data.shards import BadRow, Row, write_dataset

NUM_GOOD = 30


def encode(seed: int, fmt: str = "JPEG", size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def make_rows(tmp_path: Path):
    """NUM_GOOD good rows (one a GIF, one given as a file path) and one bad row of every kind."""
    good = [Row(f"in:{i}", f"img.{i}", encode(i), f"caption\tnumber  {i}\n", {"i": i}) for i in range(NUM_GOOD)]
    good[3] = Row("in:3", "img.3", encode(3, "GIF"), "a gif", {"i": 3})
    on_disk = tmp_path / "on_disk.png"
    on_disk.write_bytes(encode(4, "PNG"))
    good[4] = Row("in:4", "img.4", on_disk, "a png file", {"i": 4})
    truncated = encode(100)[:200]
    bad = [
        BadRow("in:b0", shards.MALFORMED_ROW, "not JSON"),
        Row("in:b1", "empty", encode(101), "   "),
        Row("in:b2", "none", encode(102), None),
        Row("in:b3", "missing", tmp_path / "does_not_exist.jpg", "missing"),
        Row("in:b4", "garbage", b"not an image", "garbage"),
        Row("in:b5", "truncated", truncated, "truncated"),
        Row("in:b6", "dup_pair", encode(5), "caption number 5"),  # same image and caption as in:5
        Row("in:b7", "dup_image", encode(6), "another caption"),  # same image as in:6
    ]
    expected = {shards.MALFORMED_ROW: 1, shards.EMPTY_CAPTION: 2, shards.MISSING_IMAGE: 1,
                shards.UNREADABLE_IMAGE: 2, shards.DUPLICATE_PAIR: 1, shards.DUPLICATE_IMAGE: 1}
    return good + bad, expected


def tar_members(path: Path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def shard_digests(out: Path):
    return {p.relative_to(out).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("*/*.tar"))}


def all_keys(out: Path, split: str = "*"):
    return [name.split(".")[0] for p in sorted(out.glob(f"{split}/*.tar")) for name, _ in tar_members(p)
            if name.endswith(".txt")]


def test_counts_report_and_layout(tmp_path):
    rows, expected = make_rows(tmp_path)
    out = tmp_path / "out"
    report = write_dataset(rows, out, shard_size=7, seed=1, val_fraction=0.2, formats="both")

    assert report.rows_read == len(rows)
    assert dict(report.bad_rows) == expected
    assert report.num_kept == NUM_GOOD
    assert {name: s.num_samples for name, s in report.splits.items()} == {"train": 24, "val": 6}

    listed = pd.read_csv(out / "bad_rows.csv").fillna("")
    assert listed["reason"].value_counts().to_dict() == expected
    assert listed["source"].tolist() == [f"in:b{i}" for i in range(8)]  # input order
    assert listed.set_index("source").loc["in:b6", "detail"] == "same image as in:5"
    summary = report.summary()
    assert all(f"{reason}: {n}" in summary for reason, n in expected.items())

    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 7, "00001.tar": 7, "00002.tar": 7, "00003.tar": 3}
    assert report.splits["train"].shard_pattern == str(out / "train" / "{00000..00003}.tar")
    assert report.splits["val"].shard_pattern == str(out / "val" / "00000.tar")

    members = dict(m for p in sorted(out.glob("*/*.tar")) for m in tar_members(p))
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == NUM_GOOD
    assert all("." not in k for k in keys)  # webdataset splits keys at the first dot
    assert members["img_3.png"][:8] == b"\x89PNG\r\n\x1a\n"  # the GIF was re-encoded
    assert members["img_4.png"] == (tmp_path / "on_disk.png").read_bytes()
    assert members["img_5.txt"] == b"caption number 5"  # whitespace collapsed
    assert json.loads(members["img_5.json"]) == {"i": 5}

    table = pd.read_csv(out / "csv" / "train.csv", sep="\t")
    assert list(table.columns) == ["filepath", "title"] and len(table) == 24
    assert all(Path(p).is_file() for p in table["filepath"])
    conversion = json.loads((out / "conversion.json").read_text())
    assert conversion["num_kept"] == NUM_GOOD and conversion["bad_rows"] == expected


def test_split_is_deterministic_from_the_seed(tmp_path):
    rows, _ = make_rows(tmp_path)
    write_dataset(rows, tmp_path / "a", shard_size=7, seed=3)
    write_dataset(rows, tmp_path / "b", shard_size=7, seed=3)
    write_dataset(rows, tmp_path / "c", shard_size=7, seed=4)
    assert shard_digests(tmp_path / "a") == shard_digests(tmp_path / "b")
    val = {seed: set(all_keys(tmp_path / name, "val")) for seed, name in ((3, "a"), (4, "c"))}
    assert val[3] != val[4]


def test_rerun_after_interruption_completes_identically(tmp_path, monkeypatch):
    rows, _ = make_rows(tmp_path)
    clean = tmp_path / "clean"
    write_dataset(rows, clean, shard_size=4, seed=0)
    expected = shard_digests(clean)

    # A run that dies while writing its fourth shard leaves a temp file and no sizes.json.
    out = tmp_path / "out"
    real_write_shard, calls = shards._write_shard, []

    def dying_write_shard(path, entries):
        calls.append(path)
        if len(calls) == 4:
            with open(path.with_name(path.name + ".tmp"), "wb") as f:
                f.write(b"half a shard")
            raise KeyboardInterrupt
        real_write_shard(path, entries)

    monkeypatch.setattr(shards, "_write_shard", dying_write_shard)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(rows, out, shard_size=4, seed=0)
    monkeypatch.setattr(shards, "_write_shard", real_write_shard)
    assert not (out / "train" / "sizes.json").exists()
    assert len(list((out / "train").glob("*.tar"))) == 3

    report = write_dataset(rows, out, shard_size=4, seed=0)
    assert report.shards_skipped == 3
    assert shard_digests(out) == expected

    # A finished shard deleted and a stale temp file left behind: only that shard is redone.
    (out / "train" / "00001.tar").unlink()
    (out / "train" / "00002.tar.tmp").write_bytes(b"stale")
    report = write_dataset(rows, out, shard_size=4, seed=0)
    assert (report.shards_written, report.shards_skipped) == (1, len(expected) - 1)
    assert shard_digests(out) == expected
    assert not list(out.rglob("*.tmp"))
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == NUM_GOOD


def test_rerun_with_other_settings_replaces_stale_shards(tmp_path):
    rows, _ = make_rows(tmp_path)
    out = tmp_path / "out"
    write_dataset(rows, out, shard_size=3, seed=0, formats="both")
    report = write_dataset(rows, out, shard_size=10, seed=5, formats="both")
    assert report.shards_skipped == 0
    assert shard_digests(out) == shard_digests(write_dataset(rows, tmp_path / "fresh", shard_size=10, seed=5).out_dir)
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == sorted(sizes)
    assert len(list((out / "csv" / "images").iterdir())) == NUM_GOOD


def test_checks_images_in_worker_processes(tmp_path):
    rows, expected = make_rows(tmp_path)
    report = write_dataset(rows, tmp_path / "out", shard_size=7, workers=2)
    assert dict(report.bad_rows) == expected
    assert shard_digests(tmp_path / "out") == shard_digests(write_dataset(rows, tmp_path / "one", shard_size=7).out_dir)


def openclip_args(**overrides):
    args = dict(train_data=None, val_data=None, train_num_samples=None, val_num_samples=None,
                dataset_resampled=False, train_data_upsampling_factors=None, seed=0, batch_size=4,
                workers=0, world_size=1)
    args.update(overrides)
    return Namespace(**args)


def test_open_clip_train_reads_the_shards(tmp_path):
    import torch
    from open_clip_train.data import CsvDataset, get_wds_dataset
    from torchvision import transforms

    torch.set_num_threads(1)
    rows, _ = make_rows(tmp_path)
    report = write_dataset(rows, tmp_path / "out", shard_size=5, val_fraction=0.2, formats="both")
    preprocess = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()])
    captions = {r.key.replace(".", "_"): shards.normalize_caption(r.caption) for r in rows if isinstance(r, Row)}

    train = report.splits["train"]
    args = openclip_args(train_data=train.shard_pattern, val_data=report.splits["val"].shard_pattern)
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=lambda text: [text])
    assert data.dataloader.num_samples == train.num_samples  # from sizes.json
    seen = []
    for images, texts in data.dataloader:
        assert images.shape[1:] == (3, 16, 16)
        seen += texts
    assert sorted(seen) == sorted(captions[k] for k in all_keys(tmp_path / "out", "train"))

    val = get_wds_dataset(args, preprocess, is_train=False, tokenizer=lambda text: [text])
    val_texts = [t for _, texts in val.dataloader for t in texts]
    assert val_texts == [captions[k] for k in all_keys(tmp_path / "out", "val")]  # in shard order

    table = CsvDataset(str(train.csv), preprocess, "filepath", "title", sep="\t", tokenizer=lambda texts: texts)
    image, text = table[0]
    assert image.shape == (3, 16, 16) and text in captions.values()
