"""Pins of the converters: the shuffle and split against the documented hash order recomputed with
hashlib, the bad-row report against the input order, sample keys and sizes.json against the
members counted in the written tars, and ROCO captions against the release's id<TAB>caption
format (tests/mutations/evaluation_data_launcher.toml)."""
import hashlib
import io
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openclip_unimlip.data import shards
from openclip_unimlip.data.roco import convert_roco, roco_rows
from openclip_unimlip.data.shards import BadRow, Row, write_dataset

from paths import REPO


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _keys_in(shard: Path):
    with tarfile.open(shard) as tar:
        return [m.name[:-len(".txt")] for m in tar.getmembers() if m.name.endswith(".txt")]


def keys_in_order(split_dir: Path):
    """Sample keys in shard order, then tar order: what a reader of the split sees."""
    return [key for shard in sorted(split_dir.glob("*.tar")) for key in _keys_in(shard)]


def samples_per_shard(split_dir: Path):
    """The samples counted in each tar (one caption member each)."""
    return {shard.name: len(_keys_in(shard)) for shard in sorted(split_dir.glob("*.tar"))}


def test_samples_follow_the_seeded_key_hash_and_val_gets_the_rounded_fraction(tmp_path):
    """Module docstring: the kept samples are ordered by a hash of (seed, key); val takes the first
    val_fraction of them, here 27 x 0.1 = 2.7 -> 3. A removed row moves no other sample."""
    rows = [Row(f"in:{i}", f"s{i:02d}", jpeg(i), f"caption {i}") for i in range(27)]
    write_dataset(rows, tmp_path / "all", seed=5, val_fraction=0.1, shard_size=10)
    order = sorted((r.key for r in rows), key=lambda k: hashlib.sha256(f"5:{k}".encode()).digest())
    num_val = math.floor(27 * 0.1 + 0.5)
    assert num_val == 3
    assert keys_in_order(tmp_path / "all" / "val") == order[:num_val]
    assert keys_in_order(tmp_path / "all" / "train") == order[num_val:]

    removed = order[-1]  # a train sample: val keeps its 3 (26 x 0.1 rounds to 3 too)
    write_dataset([r for r in rows if r.key != removed], tmp_path / "fewer", seed=5, val_fraction=0.1, shard_size=10)
    assert keys_in_order(tmp_path / "fewer" / "val") == order[:num_val]
    assert keys_in_order(tmp_path / "fewer" / "train") == order[num_val:-1]


def test_bad_row_report_is_in_input_order_across_reasons(tmp_path):
    missing = tmp_path / "no_such_image.jpg"
    rows = [
        Row("in:0", "a", jpeg(0), "first"),
        Row("in:1", "b", b"not an image", "unreadable"),
        Row("in:2", "c", jpeg(2), "  "),
        Row("in:3", "d", jpeg(3), "fine"),
        Row("in:4", "e", jpeg(0), "the first image again"),
        BadRow("in:5", shards.MALFORMED_ROW, "no JSON"),
        Row("in:6", "f", missing, "missing"),
    ]
    report = write_dataset(rows, tmp_path / "out", val_fraction=0.0)
    listed = pd.read_csv(tmp_path / "out" / "bad_rows.csv")
    assert listed["source"].tolist() == [f"in:{i}" for i in (1, 2, 4, 5, 6)]
    assert listed["reason"].tolist() == [shards.UNREADABLE_IMAGE, shards.EMPTY_CAPTION, shards.DUPLICATE_IMAGE,
                                         shards.MALFORMED_ROW, shards.MISSING_IMAGE]
    assert report.rows_read == 7 and report.num_kept == 2


def test_rows_sharing_a_key_become_distinct_samples(tmp_path):
    """Four rows whose keys clash once made webdataset-safe ('fig.1' three times, 'fig_1'):
    four samples, four distinct keys, none lost in a reader that groups members by key."""
    rows = [Row(f"in:{i}", key, jpeg(i), f"caption {i}") for i, key in enumerate(["fig.1", "fig.1", "fig_1", "fig.1"])]
    report = write_dataset(rows, tmp_path / "out", val_fraction=0.0)
    keys = keys_in_order(tmp_path / "out" / "train")
    assert report.num_kept == len(keys) == len(set(keys)) == 4
    with tarfile.open(next((tmp_path / "out" / "train").glob("*.tar"))) as tar:
        captions = sorted(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt"))
    assert captions == [f"caption {i}" for i in range(4)]


def test_an_interrupted_rerun_leaves_no_stale_sizes_json(tmp_path, monkeypatch):
    """sizes.json is what open_clip_train reads for the number of samples: after a re-run with other
    settings is cut short it must not describe the old shards, and once complete it equals the
    samples counted in the tars."""
    rows = [Row(f"in:{i}", f"k{i}", jpeg(i), f"caption {i}") for i in range(10)]
    out = tmp_path / "out"
    write_dataset(rows, out, shard_size=4, val_fraction=0.0)
    assert json.loads((out / "train" / shards.SIZES_NAME).read_text()) == samples_per_shard(out / "train")

    def interrupted(path, entries):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(rows, out, shard_size=3, val_fraction=0.0)
    monkeypatch.undo()
    assert not (out / "train" / shards.SIZES_NAME).exists()

    write_dataset(rows, out, shard_size=3, val_fraction=0.0)
    sizes = json.loads((out / "train" / shards.SIZES_NAME).read_text())
    assert sizes == samples_per_shard(out / "train") == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 3, "00003.tar": 1}


def test_roco_caption_is_everything_after_the_ids_tab(tmp_path):
    """razorx89/roco-dataset's captions.txt: 'ROCO_00020<TAB> caption'; a tab inside the caption
    is part of it (the shard writer then collapses the whitespace)."""
    folder = tmp_path / "roco" / "data" / "train" / "radiology"
    (folder / "images").mkdir(parents=True)
    line = "ROCO_00001\t Axial CT of the chest\twith contrast, arrow: nodule."
    (folder / "captions.txt").write_text(line + "\n")
    (folder / "images" / "ROCO_00001.jpg").write_bytes(jpeg(1))
    convert_roco(tmp_path / "roco", tmp_path / "out", splits=("train",))
    with tarfile.open(tmp_path / "out" / "train" / "00000.tar") as tar:
        caption = tar.extractfile("ROCO_00001.txt").read().decode()
    assert caption == " ".join(line.partition("\t")[2].split()) == "Axial CT of the chest with contrast, arrow: nodule."


ROCO_RELEASE = REPO.parent / "shared" / "data" / "roco-dataset"


@pytest.mark.skipif(not ROCO_RELEASE.is_dir(), reason="the ROCO release beside the checkout (../shared/data)")
def test_roco_links_of_the_real_release_name_their_pmc_article_and_file():
    """Every row of the real test split (dlinks.txt as razorx89/roco-dataset ships it) carries the PMC
    id of its download URL and the file name of its last field, both read here with a regular
    expression; the official split is the default."""
    dlinks = ROCO_RELEASE / "data" / "test" / "radiology" / "dlinks.txt"
    expected = {}
    for line in dlinks.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(ROCO_\d+)\twget -r \S+/(PMC\d+)\.tar\.gz -P \S+\t(\S+)", line)
        expected[match[1]] = (match[2], match[3])
    rows = [row for row in roco_rows(ROCO_RELEASE, splits=("test",)) if isinstance(row, Row)]
    assert {row.key: (row.metadata["pmc_id"], row.metadata["image_name"]) for row in rows} == expected
    assert {row.split for row in rows} == {"test"}
    assert len({len(pmc) for pmc, _ in expected.values()}) > 1  # ids of several lengths


def _roco_folder(tmp_path, captions, links):
    folder = tmp_path / "roco" / "data" / "train" / "radiology"
    (folder / "images").mkdir(parents=True)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    (folder / "dlinks.txt").write_text("\n".join(links) + "\n")
    return tmp_path / "roco"


def test_roco_reads_past_malformed_lines_and_refuses_a_link_without_a_file_name(tmp_path):
    url = "wget -r ftp://x/PMC1234567890.tar.gz -P /path/to/Dir"
    root = _roco_folder(tmp_path, ["ROCO_00001\t first", "a line without a tab", "\tno id", "ROCO_00002\t last"],
                        [f"ROCO_00001\t{url}\t  ", f" \t{url}\tno-id.jpg", f"ROCO_00002\t{url}\tfig.jpg"])
    rows = list(roco_rows(root, splits=("train",)))
    assert [(type(row).__name__, row.source.rsplit("/", 1)[1]) for row in rows] == [
        ("BadRow", "dlinks.txt:1"), ("BadRow", "dlinks.txt:2"), ("Row", "captions.txt:1"),
        ("BadRow", "captions.txt:2"), ("BadRow", "captions.txt:3"), ("Row", "captions.txt:4")]
    assert rows[2].metadata["pmc_id"] is None  # its link was refused
    assert rows[-1].metadata["pmc_id"] == "PMC1234567890"
    assert rows[-1].image == root / "data" / "train" / "radiology" / "images" / "ROCO_00002.jpg"


def test_convert_roco_takes_its_options_by_name_only(tmp_path):
    root = _roco_folder(tmp_path, ["ROCO_00001\t a caption"], [])
    with pytest.raises(TypeError):
        convert_roco(root, tmp_path / "out", ("train",))
    (root / "data" / "train" / "radiology" / "images" / "ROCO_00001.jpg").write_bytes(jpeg(1))
    report = convert_roco(root=root, out_dir=tmp_path / "out", splits=("train",))
    assert report.num_kept == 1


def test_roco_looks_for_the_pre_2022_name_only_with_a_pmc_id(tmp_path):
    """fetch.py's old name is <PMC id>_<file name>; a download command without a PMC archive gives
    no old name, so only ROCO_<n>.jpg is looked for (a file named after a missing id is not taken)."""
    root = _roco_folder(tmp_path, ["ROCO_00001\t a caption"], ["ROCO_00001\twget -r ftp://x/no-archive -P /d\tfig.jpg"])
    images = root / "data" / "train" / "radiology" / "images"
    (images / "None_fig.jpg").write_bytes(jpeg(1))
    (row,) = roco_rows(root, splits=("train",))
    assert row.metadata["pmc_id"] is None and row.image == images / "ROCO_00001.jpg"
