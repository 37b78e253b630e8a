"""The benchmark's retrieval pairs are the rows the converters keep (``data.shards.check_rows``): on
the real ROCO test split (../shared/data/roco-dataset) counted here another way (the caption lines
parsed, the image folder listed, every file decoded and hashed in the test), with the paper's
2000-pair draws of seeds 0, 1 and 2 holding only images that decode; and on a made-up release with
one bad row of every kind, the converter and the benchmark leave out the same rows for the same
reasons."""
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openclip_unimlip.data.roco import convert_roco
from openclip_unimlip.data.stored import sample_pairs
from openclip_unimlip.studies.benchmark import engine, tables
from openclip_unimlip.studies.benchmark.tasks import ModelRow, RetrievalTask, Runtime

from paths import REPO

ROCO = REPO.parent / "shared" / "data" / "roco-dataset"
TEST_DIR = ROCO / "data" / "test" / "radiology"
TRUNCATED = "PMC4885136_gr1.jpg"  # ../shared/data/README.md: a truncated download, kept byte for byte
PAPER_SEEDS = (0, 1, 2)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()  # a full decode: every scan of the JPEG
    except Exception:  # noqa: BLE001 - Pillow signals a broken file with many exception types
        return False
    return True


@pytest.fixture(scope="module")
def independent():
    """The test split counted without the package: rows in captions.txt order, each with its image
    file (looked up under both names ROCO's fetch.py has used), its reason to be left out or None."""
    links = {}
    for line in (TEST_DIR / "dlinks.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            roco_id, command, file_name = line.split("\t")
            archive = next(word for word in command.split() if word.endswith(".tar.gz"))
            links[roco_id.strip()] = f"{os.path.basename(archive)[:-len('.tar.gz')]}_{file_name.strip()}"
    files = set(os.listdir(TEST_DIR / "images"))
    rows, digests = [], {}
    for line_no, line in enumerate((TEST_DIR / "captions.txt").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        roco_id, caption = line.split("\t", 1)
        roco_id, caption = roco_id.strip(), " ".join(caption.split())
        name = next((n for n in (f"{roco_id}.jpg", links.get(roco_id)) if n in files), None)
        reason = None
        if not caption:
            reason = "empty_caption"
        elif name is None:
            reason = "missing_image"
        elif not _decodes(TEST_DIR / "images" / name):
            reason = "unreadable_image"
        else:
            digest = hashlib.sha256((TEST_DIR / "images" / name).read_bytes()).hexdigest()
            if digest in digests:
                reason = "duplicate_pair" if digests[digest] == caption else "duplicate_image"
            else:
                digests[digest] = caption
        rows.append({"line": line_no, "id": roco_id, "caption": caption, "image": name, "reason": reason})
    return rows


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark at the paper's preset on ROCO alone, as the command line builds it (nothing run)."""
    if not TEST_DIR.is_dir():
        pytest.skip(f"the real ROCO test split is not at {TEST_DIR} (../shared/data beside the checkout, as in CI)")
    config = engine.BenchmarkConfig([ModelRow("unimlip-tiny", "unimlip-tiny")], ROCO.parent,
                                    tmp_path_factory.mktemp("roco-bench"), engine.PAPER,
                                    Runtime(workers=2, progress=False), datasets=["roco"])
    return engine.Benchmark(config)


def test_roco_pairs_and_left_out_rows_equal_an_independent_count(bench, independent):
    state = bench.tasks["retrieval-roco"]
    assert state.status == "ready", state.message
    assert len(independent) == 8179  # ../shared/data/README.md: the release's 8,179 entries
    expected_left_out = Counter(row["reason"] for row in independent if row["reason"])
    assert expected_left_out == {"missing_image": 2215, "unreadable_image": 1, "duplicate_image": 1}  # the README's
    kept = [row for row in independent if row["reason"] is None]
    assert len(kept) == 5962
    assert state.describe == {"split": "test", "rows_read": 8179, "pairs": 5962, "left_out": dict(expected_left_out)}
    assert [(p.key, p.caption, Path(p.image.path).name) for p in state.data.pairs] == [
        (row["id"], row["caption"], row["image"]) for row in kept]
    assert [(bad.source, bad.reason) for bad in state.data.rows.bad_rows] == [
        (f"test/radiology/captions.txt:{row['line']}", row["reason"]) for row in independent if row["reason"]]
    (truncated,) = [row for row in independent if row["image"] == TRUNCATED]
    assert truncated["reason"] == "unreadable_image"


def test_the_paper_draws_hold_only_images_that_decode(bench, independent):
    pairs = bench.tasks["retrieval-roco"].data.pairs
    for seed in PAPER_SEEDS:
        drawn = sample_pairs(pairs, 2000, seed)
        assert len(drawn) == len({p.key for p in drawn}) == 2000
        assert all(_decodes(Path(p.image.path)) for p in drawn), seed
    # Before the shared check every row with an image file was a pair: seeds 1 and 2 then drew the
    # truncated image (and their cells failed), so the decoding above is not vacuous.
    with_file = [row["image"] for row in independent if row["image"] and row["caption"]]
    drawn_before = {seed: {with_file[i] for i in np.sort(np.random.default_rng(seed).choice(
        len(with_file), 2000, replace=False))} for seed in PAPER_SEEDS}
    assert [TRUNCATED in drawn_before[seed] for seed in PAPER_SEEDS] == [False, True, True]


def test_the_report_says_what_was_read_left_out_and_drawn(bench):
    counts = dict(planned=3, done=0, run_now=0, resumed=0, failed=0, stopped=0, not_applicable=0, seconds=0.0)
    report = engine.build_report(bench, [], [], counts)
    assert report["tasks"]["retrieval-roco"]["pairs_per_draw"] == 2000
    markdown = tables.format_markdown(report, {})
    assert ("- Test split: 8,179 rows read, 5,962 image-caption pairs kept, 2,217 left out (missing_image 2,215, "
            "unreadable_image 1, duplicate_image 1) by the converters' check") in markdown
    assert "2,000 pairs drawn per seed" in markdown


# ----------------------------------------------------------------------------- converter = benchmark
def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _made_up_release(root: Path) -> Path:
    """ROCO's layout with one row of every kind the check knows, images under both of fetch.py's names."""
    folder = root / "data" / "test" / "radiology"
    (folder / "images").mkdir(parents=True)
    captions = ["ROCO_00001\t CT of the  head.", "ROCO_00002\tA truncated download.", "ROCO_00003\tNo image file.",
                "ROCO_00004\tThe first image, another caption.", "ROCO_00005\tCT of the head.", "ROCO_00006\t  ",
                "ROCO_00007", "ROCO_00008\tChest X-ray."]
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    links = [f"ROCO_{n:05d}\twget -r ftp://x/PMC{n}.tar.gz -P /dir\tfig{n}.jpg" for n in (1, 2, 3, 4, 5, 6, 8)]
    (folder / "dlinks.txt").write_text("\n".join(links) + "\n")
    images = {"ROCO_00001.jpg": _jpeg(1), "PMC2_fig2.jpg": _jpeg(2)[:300], "ROCO_00004.jpg": _jpeg(1),
              "PMC5_fig5.jpg": _jpeg(1), "ROCO_00006.jpg": _jpeg(6), "PMC8_fig8.jpg": _jpeg(8)}
    for name, data in images.items():
        (folder / "images" / name).write_bytes(data)
    return root


def test_the_converter_and_the_benchmark_leave_out_the_same_rows(tmp_path):
    root = _made_up_release(tmp_path / "roco")
    report = convert_roco(root, tmp_path / "out", splits=("test",), workers=1)
    data = RetrievalTask("roco").load(root, engine.PAPER, Runtime(workers=2, progress=False))

    listed = pd.read_csv(tmp_path / "out" / "bad_rows.csv").fillna("")
    assert [(b.reason, b.source, b.detail) for b in data.rows.bad_rows] == list(
        listed[["reason", "source", "detail"]].itertuples(index=False, name=None))
    assert listed["reason"].tolist() == ["unreadable_image", "missing_image", "duplicate_image", "duplicate_pair",
                                         "empty_caption", "malformed_row"]
    conversion = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert conversion["rows_read"] == 8
    assert RetrievalTask("roco").describe(data) == {
        "split": "test", "rows_read": 8, "pairs": 2,
        "left_out": {reason: 1 for reason in ("malformed_row", "empty_caption", "missing_image", "unreadable_image",
                                              "duplicate_image", "duplicate_pair")}}
    assert data.rows.left_out == conversion["bad_rows"]
    with tarfile.open(tmp_path / "out" / "test" / "00000.tar") as shard:
        written = {m.name.split(".")[0]: shard.extractfile(m).read().decode()
                   for m in shard.getmembers() if m.name.endswith(".txt")}
    assert {p.key: p.caption for p in data.pairs} == written == {"ROCO_00001": "CT of the head.",
                                                                  "ROCO_00008": "Chest X-ray."}
    assert report.num_kept == len(data.pairs)
