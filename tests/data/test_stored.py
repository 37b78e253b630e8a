"""The stored-pairs reader (``data/stored.py``) on shards and CSVs written here with ``tarfile`` and
pandas: which member of a sample is its caption, what is skipped and the warning that counts it
(the count made from the written samples), and the seeded draw's smallest size."""
import io
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from openclip_unimlip.data.stored import load_pairs, sample_indices


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="png")
    return buffer.getvalue()


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_members_of_a_shard_are_passed_over(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    with tarfile.open(tmp_path / "00000.tar", "a") as tar:  # a member without an extension, then a sample
        for name, data in (("README", b"notes"), ("images/a.png", _png()), ("images/a.txt", b"one")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert [(p.key, p.caption) for p in load_pairs(str(tmp_path / "00000.tar"))] == [("images/a", "one")]


def test_a_samples_caption_is_its_txt_member_whatever_follows_it(tmp_path):
    # members a webdataset sample may carry after its caption: metadata, a class, an XML report
    _write_tar(tmp_path / "00000.tar", [("a.png", _png()), ("a.txt", b" pleural effusion "),
                                        ("a.xml", b"<report>not the caption</report>"), ("a.zzz", b"nor this"),
                                        ("a.json", b"{}")])
    (pair,) = load_pairs(str(tmp_path / "00000.tar"))
    assert (pair.key, pair.caption) == ("a", "pleural effusion")


def test_incomplete_samples_are_skipped_and_counted_in_the_warning(tmp_path, caplog):
    members = [("a.png", _png()), ("a.txt", b"one"), ("b.png", _png()), ("c.txt", b"no image"),
               ("d.png", _png()), ("d.txt", b"  "), ("e.jpg", _png()), ("e.txt", b"two")]
    _write_tar(tmp_path / "00000.tar", members)
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(str(tmp_path / "00000.tar"))
    assert [p.key for p in pairs] == ["a", "e"]
    skipped = len({name.split(".")[0] for name, _ in members}) - len(pairs)  # 5 samples written, 2 whole
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / '00000.tar'}: skipped {skipped} sample(s) without an image or a caption"]
    caplog.clear()
    png = _png()
    _write_tar(tmp_path / "whole.tar", [(f"{i:03d}.{ext}", png if ext == "png" else b"x")
                                        for i in range(300) for ext in ("png", "txt")])
    with caplog.at_level(logging.WARNING):
        assert len(load_pairs(str(tmp_path / "whole.tar"))) == 300
    assert caplog.records == []  # nothing skipped, nothing said, also past 256 samples


def test_csv_rows_without_a_caption_are_skipped_and_counted(tmp_path, caplog):
    (tmp_path / "x.png").write_bytes(_png())
    (tmp_path / "pairs.csv").write_text("filepath\ttitle\nx.png\tfirst\nx.png\t\nx.png\tNA\nx.png\t \n")
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(str(tmp_path / "pairs.csv"))
    assert [p.caption for p in pairs] == ["first", "NA"]
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'pairs.csv'}: skipped 2 row(s) without a caption"]
    caplog.clear()
    (tmp_path / "more.csv").write_text("filepath\ttitle\n" + "x.png\tone\n" * 4 + "x.png\t\n" * 3)
    with caplog.at_level(logging.WARNING):
        assert len(load_pairs(str(tmp_path / "more.csv"))) == 4
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'more.csv'}: skipped 3 row(s) without a caption"]
    caplog.clear()
    # nothing skipped, nothing said: also past 256 rows, where counts are no longer shared small ints
    (tmp_path / "whole.csv").write_text("filepath\ttitle\n" + "x.png\tone\n" * 300)
    with caplog.at_level(logging.WARNING):
        assert len(load_pairs(str(tmp_path / "whole.csv"))) == 300
    assert caplog.records == []


def test_the_draw_takes_any_positive_number_of_pairs():
    assert len(sample_indices(10, 1, seed=3)) == 1
    drawn = sample_indices(10, 4, seed=3)
    assert len(set(drawn)) == 4 and np.all(np.diff(drawn) > 0) and drawn.max() < 10
    with pytest.raises(ValueError, match="num_samples must be positive, got 0"):
        sample_indices(10, 0)
    with pytest.raises(ValueError, match="num_samples must be positive, got -3"):
        sample_indices(10, -3)


def test_the_pairs_drawn_by_default_are_the_documented_draw():
    """2000 pairs (the paper's protocol), seed 0 (ours), in both the index and the pair draw."""
    import inspect

    from openclip_unimlip.data.stored import ImageTextPair, sample_pairs

    for function in (sample_indices, sample_pairs):
        parameters = inspect.signature(function).parameters
        assert (parameters["num_samples"].default, parameters["seed"].default) == (2000, 0), function.__name__
    pairs = [ImageTextPair(str(i), None, f"caption {i}") for i in range(30)]
    drawn = sample_pairs(pairs, 5)
    assert [p.key for p in drawn] == [str(i) for i in np.sort(np.random.default_rng(0).choice(30, 5, replace=False))]


def test_missing_shards_are_counted_and_the_first_is_named(tmp_path):
    _write_tar(tmp_path / "00001.tar", [("a.png", _png()), ("a.txt", b"one")])
    pattern = str(tmp_path / "{00000..00003}.tar")
    with pytest.raises(FileNotFoundError, match=r"3 shard\(s\) of .* not found, e\.g\. .*/00000\.tar$"):
        load_pairs(pattern)


def test_a_csv_path_is_read_as_written_first_then_beside_the_csv(tmp_path, monkeypatch):
    """OpenCLIP's CsvDataset opens a path as written (relative to the working directory); a path that
    is not there is looked for beside the CSV (what converters write)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "here.png")
    Image.new("RGB", (4, 4), (0, 200, 0)).save(tmp_path / "sub" / "here.png")
    Image.new("RGB", (4, 4), (0, 0, 200)).save(tmp_path / "sub" / "beside.png")
    (tmp_path / "sub" / "pairs.csv").write_text("filepath\ttitle\nhere.png\tcwd\nbeside.png\tcsv\n")
    pairs = load_pairs(str(tmp_path / "sub" / "pairs.csv"))
    assert [p.image.open().getpixel((0, 0)) for p in pairs] == [(200, 0, 0), (0, 0, 200)]


def test_labelled_images_from_class_folders_and_from_a_csv(tmp_path):
    """Class indices follow the sorted names: torchvision's ImageFolder for folders (the reference),
    the same rule for a CSV's label column."""
    from torchvision.datasets import ImageFolder

    from openclip_unimlip.data.stored import load_labelled_images

    for name, colour in (("effusion", (200, 0, 0)), ("atelectasis", (0, 200, 0))):
        (tmp_path / "folders" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(tmp_path / "folders" / name / "1.png")
    labelled = load_labelled_images(str(tmp_path / "folders"))
    reference = ImageFolder(str(tmp_path / "folders"))
    assert labelled.classnames == reference.classes == ["atelectasis", "effusion"]
    assert labelled.labels == [label for _, label in reference.samples]
    (tmp_path / "labels.csv").write_text("filepath\tlabel\nfolders/effusion/1.png\teffusion\n"
                                         "folders/atelectasis/1.png\tatelectasis\nfolders/effusion/1.png\tNA\n")
    labelled = load_labelled_images(str(tmp_path / "labels.csv"))
    # "NA" is a label as written (pandas would read it as missing by default)
    assert (labelled.classnames, labelled.labels) == (["NA", "atelectasis", "effusion"], [2, 1, 0])
    assert labelled.images[0].open().getpixel((0, 0)) == (200, 0, 0)


def test_the_records_are_frozen_and_the_images_hashable(tmp_path):
    import dataclasses

    from openclip_unimlip.data.stored import ImageTextPair, LabelledImages, StoredImage

    image = StoredImage(str(tmp_path / "a.tar"), "png", 512, 100)
    assert {image, StoredImage(str(tmp_path / "a.tar"), "png", 512, 100)} == {image}  # an index key
    for record, field in ((image, "offset"), (ImageTextPair("a", image, "x"), "caption"),
                          (LabelledImages([image], [0], ["a"]), "labels")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, None)
