"""The shard writer's settings, refusals, counts and stored bytes, pinned one by one: each test
checks one thing a user of ``write_dataset`` or a converter's options reads, against a count or a
rule recomputed here (sha256 split order, integer rescaling, tar members read with ``tarfile``)."""
import argparse
import csv
import hashlib
import inspect
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openclip_unimlip.data import shards
from openclip_unimlip.data.shards import BadRow, Row, check_rows, to_rgb, write_dataset


def png(value: int, size: int = 4) -> bytes:
    """A distinct greyscale PNG per ``value`` (its pixels count up from it)."""
    pixels = ((np.arange(size * size) + value) % 256).reshape(size, size).astype(np.uint8)
    pixels[0, 0] = value // 256  # values 256 apart differ too
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def jpeg(seed: int, mode: str = "RGB", size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG")
    return out.getvalue()


def rows(count: int, split=None) -> list:
    return [Row(f"in:{i}", f"k{i}", png(i), f"caption {i}", split=split) for i in range(count)]


def members(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def keys_in(out: Path, split: str) -> list:
    return sorted(name.removesuffix(".txt") for shard in sorted((out / split).glob("*.tar"))
                  for name in members(shard) if name.endswith(".txt"))


def never_read():
    raise AssertionError("the rows were read before the settings were checked")
    yield  # makes this a generator: it raises only when iterated


@pytest.mark.parametrize("setting, value", [("shard_size", 0), ("image_size", 0), ("val_fraction", 1.0),
                                            ("val_fraction", 1.5), ("val_fraction", -0.5), ("formats", "tiff"),
                                            ("formats", ["csv", "tiff"]), ("formats", [])])
def test_an_invalid_setting_is_refused_before_any_row_is_read_or_folder_made(tmp_path, setting, value):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"^{setting} must be"):
        write_dataset(never_read(), out, **{setting: value})
    assert not out.exists()


def test_the_smallest_valid_settings_convert_into_a_folder_whose_parents_are_made(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    report = write_dataset(rows(3), out, shard_size=1, image_size=1, val_fraction=0.0)
    assert sorted(report.splits) == ["train"]
    assert json.loads((out / "train" / "sizes.json").read_text()) == {"00000.tar": 1, "00001.tar": 1, "00002.tar": 1}
    (image,) = [data for name, data in members(out / "train" / "00000.tar").items() if name.endswith(".png")]
    assert Image.open(io.BytesIO(image)).size == (1, 1)


def test_options_are_keywords():
    with pytest.raises(TypeError):
        write_dataset([], "out", 5)  # a shard size given by position


def test_by_default_shards_hold_1000_samples(tmp_path):
    report = write_dataset(rows(1001), tmp_path / "out", val_fraction=0.0)
    assert json.loads((tmp_path / "out" / "train" / "sizes.json").read_text()) == {"00000.tar": 1000, "00001.tar": 1}
    pattern = f"{tmp_path / 'out' / 'train'}/{{00000..00001}}.tar"
    assert f"  train: 1001 samples -> {pattern}" in report.summary().splitlines()


def test_by_default_the_split_is_seed_0s_hash_order(tmp_path):
    """The module's rule, recomputed: samples ordered by sha256 of "seed:key", the first tenth to val."""
    write_dataset(rows(50), tmp_path / "out")
    ordered = sorted((f"k{i}" for i in range(50)), key=lambda key: hashlib.sha256(f"0:{key}".encode()).digest())
    assert keys_in(tmp_path / "out", "val") == sorted(ordered[:5])
    assert keys_in(tmp_path / "out", "train") == sorted(ordered[5:])


def test_a_converters_options_default_to_write_datasets_own_defaults_but_show_progress():
    parser = argparse.ArgumentParser()
    shards.add_output_arguments(parser)
    options = shards.output_options(parser.parse_args(["--out", "converted"]))
    library = {name: parameter.default for name, parameter in inspect.signature(write_dataset).parameters.items()
               if parameter.default is not inspect.Parameter.empty}
    expected = {"shard_size": 1000, "seed": 0, "val_fraction": 0.1, "formats": "webdataset", "workers": 1,
                "image_size": None}
    assert options == {**expected, "progress": True}
    assert library == {**expected, "progress": False}
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --out is required


def test_progress_bars_only_when_asked(tmp_path, capsys):
    write_dataset(rows(4), tmp_path / "quiet", formats="both")
    check_rows(rows(4))
    assert capsys.readouterr().err == ""
    write_dataset(rows(4), tmp_path / "shown", formats="both", progress=True)
    shown = capsys.readouterr().err
    for bar in ("checking images", "writing train shards", "writing train csv images"):
        assert bar in shown, bar


class _CountingPool:
    """multiprocessing.Pool, recording how many processes each pool was asked for."""
    sizes: list = []

    def __init__(self, processes):
        from multiprocessing import Pool

        _CountingPool.sizes.append(processes)
        self._pool = Pool(processes)

    def __enter__(self):
        return self._pool.__enter__()

    def __exit__(self, *exc):
        return self._pool.__exit__(*exc)


@pytest.mark.parametrize("workers, pools", [(None, []), (0, []), (1, []), (2, [2]), (3, [3])])
def test_images_are_checked_in_this_process_unless_more_workers_are_asked_for(monkeypatch, workers, pools):
    monkeypatch.setattr(shards, "Pool", _CountingPool)
    monkeypatch.setattr(_CountingPool, "sizes", [])
    given = rows(6) + [Row("in:cmyk", "cmyk", jpeg(0, "CMYK"), "a CMYK JPEG")]
    checked = check_rows(given) if workers is None else check_rows(given, workers=workers)
    assert _CountingPool.sizes == pools
    assert [(c.row.key, c.image.sha1) for c in checked.kept] == [
        (row.key, hashlib.sha1(row.image).hexdigest()) for row in given]


def test_a_cmyk_jpeg_checked_in_worker_processes_is_stored_as_given(tmp_path):
    """A JPEG keeps its bytes whichever process read its format (CMYK too: convert("RGB") reads it)."""
    image = jpeg(1, "CMYK")
    write_dataset([Row("in:0", "cmyk", image, "a CMYK JPEG", split="train")], tmp_path / "out", workers=2)
    assert members(tmp_path / "out" / "train" / "00000.tar")["cmyk.jpg"] == image


def test_keys_are_made_safe_unique_from_2_and_at_most_80_characters(tmp_path):
    given = [Row(f"in:{i}", key, png(i), f"caption {i}", split="train")
             for i, key in enumerate(["scan", "scan", "scan", "a.b c", "x" * 200])]
    write_dataset(given, tmp_path / "out")
    stored = members(tmp_path / "out" / "train" / "00000.tar")
    captions = {name.removesuffix(".txt"): text.decode() for name, text in stored.items() if name.endswith(".txt")}
    assert captions == {"scan": "caption 0", "scan_2": "caption 1", "scan_3": "caption 2", "a_b_c": "caption 3",
                        "x" * 80: "caption 4"}  # ours: 80 characters keep member names under tar's 100


def test_left_out_counts_each_reason_in_the_reasons_order():
    given = [BadRow("in:a", shards.MALFORMED_ROW), Row("in:b", "b", png(1), " "), Row("in:c", "c", b"no", "c"),
             Row("in:d", "d", png(2), "d"), Row("in:e", "e", png(2), "e"), Row("in:f", "f", b"nor", "f")]
    checked = check_rows(given)
    assert list(checked.left_out.items()) == [(shards.MALFORMED_ROW, 1), (shards.EMPTY_CAPTION, 1),
                                              (shards.UNREADABLE_IMAGE, 2), (shards.DUPLICATE_IMAGE, 1)]
    assert sum(checked.left_out.values()) == len(checked.bad_rows) == len(given) - len(checked.kept)


def test_an_image_path_that_cannot_be_read_is_an_unreadable_image(tmp_path):
    (tmp_path / "folder.png").mkdir()
    checked = check_rows([Row("in:0", "k", tmp_path / "folder.png", "a folder named like an image")])
    assert [(bad.reason, bad.detail.split(":")[0]) for bad in checked.bad_rows] == [
        (shards.UNREADABLE_IMAGE, "IsADirectoryError")]


def test_shard_counts_add_up_over_splits(tmp_path):
    given = rows(2, split="train") + rows(4, split="val")[2:] + rows(6, split="test")[4:]
    first = write_dataset(given, tmp_path / "out", shard_size=5)
    on_disk = len(list((tmp_path / "out").glob("*/*.tar")))
    assert (first.shards_written, first.shards_skipped, on_disk) == (3, 0, 3)
    again = write_dataset(given, tmp_path / "out", shard_size=5)
    assert (again.shards_written, again.shards_skipped) == (0, 3)
    lines = again.summary().splitlines()
    for name in ("train", "val", "test"):
        assert f"  {name}: 2 samples -> {tmp_path / 'out' / name / '00000.tar'}" in lines


def test_an_image_changed_during_the_conversion_stops_it(tmp_path, monkeypatch):
    original = png(7, size=8)
    path = tmp_path / "scan.png"
    # replacements whose SHA-1 sorts before and after the original's
    digest = hashlib.sha1(original).hexdigest()
    replacements = [png(v, size=8) for v in range(20)]
    lower = next(r for r in replacements if hashlib.sha1(r).hexdigest() < digest)
    higher = next(r for r in replacements if hashlib.sha1(r).hexdigest() > digest)
    check_images = shards._check_images
    for replacement in (lower, higher):
        path.write_bytes(original)

        def checked_then_changed(*args, **kwargs):
            result = check_images(*args, **kwargs)
            path.write_bytes(replacement)
            return result

        monkeypatch.setattr(shards, "_check_images", checked_then_changed)
        with pytest.raises(RuntimeError, match="the image changed while the conversion was running"):
            write_dataset([Row("in:0", "scan", path, "a scan")], tmp_path / "out", val_fraction=0.0)


def test_metadata_is_stored_as_sorted_utf8_json(tmp_path):
    metadata = {"zone": "thorax", "author": "Müller"}
    write_dataset([Row("in:0", "k", png(0), "c", metadata, split="train")], tmp_path / "out")
    stored = members(tmp_path / "out" / "train" / "00000.tar")["k.json"]
    assert "Müller".encode() in stored  # readable in any viewer, not \u escapes
    assert [key for key, _ in json.loads(stored, object_pairs_hook=list)] == ["author", "zone"]


def test_the_bad_row_report_has_exactly_its_three_columns(tmp_path):
    write_dataset([Row("in:0", "k", b"not an image", "c"), Row("in:1", "j", png(1), "d")], tmp_path / "out")
    with open(tmp_path / "out" / shards.REPORT_NAME, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["reason", "source", "detail"]
    assert [line[:2] for line in table[1:]] == [[shards.UNREADABLE_IMAGE, "in:0"]]


def test_a_csv_rerun_at_another_image_size_rewrites_the_images(tmp_path):
    given = [Row("in:0", "k", jpeg(2, size=24), "c", split="train")]
    write_dataset(given, tmp_path / "out", formats="csv", image_size=16)
    write_dataset(given, tmp_path / "out", formats="csv", image_size=8)
    with open(tmp_path / "out" / "csv" / "train.csv", newline="") as f:
        (path,) = [line["filepath"] for line in csv.DictReader(f, delimiter="\t")]
    assert Image.open(path).size == (8, 8)
    assert len(list((tmp_path / "out" / "csv" / "images").iterdir())) == 1


def test_sixteen_and_32_bit_greyscale_map_their_full_range_onto_8_bits():
    """Rounded 255 * v / 65535, in integer arithmetic (no tie occurs: 65535 / 255 = 257 is odd);
    32-bit values outside 0..65535 clip to black and white."""
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = np.asarray(to_rgb(Image.fromarray(levels)))
    expected = (2 * 255 * levels.astype(np.int64) + 65535) // (2 * 65535)
    assert got.shape == (256, 256, 3) and np.array_equal(got[..., 0], expected) and np.array_equal(
        got[..., 2], expected)
    wide = Image.fromarray(np.array([[-500, 0, 65535, 70000]], dtype=np.int32))
    assert np.asarray(to_rgb(wide))[0, :, 1].tolist() == [0, 0, 255, 255]
