"""PMC-OA and ROCO readers on small fixtures in their release layouts, bad rows of every kind."""
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openclip_unimlip.data.pmcoa import convert_pmcoa, pmcoa_caption_files, pmcoa_rows
from openclip_unimlip.data.roco import convert_roco
from openclip_unimlip.data.shards import Row

from paths import REPO  # noqa: E402

ZIP_SUBFOLDER = "caption_T060_filtered_top4_sep_v0_subfigures"


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def shard_contents(out: Path):
    contents = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                contents[f"{shard.parent.name}/{member.name}"] = tar.extractfile(member).read()
    return contents


@pytest.fixture
def pmcoa(tmp_path):
    """pmc_oa.jsonl with 12 good rows and one bad row of each kind; images as a folder and a zip."""
    images = {f"PMC{100 + i}_Fig{i}_1.jpg": jpeg(i) for i in range(12)}
    images["PMC900_Fig1_1.jpg"] = b"\xff\xd8 not really a jpeg"
    images["PMC901_Fig1_1.jpg"] = jpeg(3)  # a byte-identical copy of PMC103_Fig3_1.jpg
    lines = [json.dumps({"image": name, "caption": f"Figure {i}: CT of the chest.", "alignment_type": "x"})
             for i, name in enumerate(list(images)[:12])]
    lines += [
        '{"image": "PMC902_Fig1_1.jpg", "caption": "no such image"}',
        '{"image": "PMC900_Fig1_1.jpg", "caption": "unreadable"}',
        '{"image": "PMC104_Fig4_1.jpg", "caption": "   "}',
        lines[5],  # the same pair again
        '{"image": "PMC901_Fig1_1.jpg", "caption": "same pixels, other caption"}',
        '{"image": "PMC905_Fig1_1.jpg"',
        '{"caption": "no image name"}',
    ]
    jsonl = tmp_path / "pmc_oa.jsonl"
    jsonl.write_text("\n".join(lines) + "\n\n")
    folder = tmp_path / "images"
    (folder / ZIP_SUBFOLDER).mkdir(parents=True)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in images.items():
            (folder / ZIP_SUBFOLDER / name).write_bytes(data)
            zf.writestr(f"{ZIP_SUBFOLDER}/{name}", data)
    return jsonl, folder, archive


PMCOA_BAD = {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1, "duplicate_pair": 1,
             "duplicate_image": 1, "malformed_row": 2}


def test_pmcoa_folder_and_zip_give_the_same_shards(pmcoa, tmp_path):
    jsonl, folder, archive = pmcoa
    from_folder = convert_pmcoa(jsonl, folder, tmp_path / "a", shard_size=4, seed=0, val_fraction=0.25)
    from_zip = convert_pmcoa(jsonl, archive, tmp_path / "b", shard_size=4, seed=0, val_fraction=0.25, workers=2)

    for report in (from_folder, from_zip):
        assert dict(report.bad_rows) == PMCOA_BAD
        assert report.rows_read == 19 and report.num_kept == 12
        assert {n: s.num_samples for n, s in report.splits.items()} == {"train": 9, "val": 3}
    assert shard_contents(tmp_path / "a") == shard_contents(tmp_path / "b")

    contents = shard_contents(tmp_path / "a")
    split = next(s for s in ("train", "val") if f"{s}/PMC105_Fig5_1.jpg" in contents)
    assert contents[f"{split}/PMC105_Fig5_1.jpg"] == jpeg(5)
    assert contents[f"{split}/PMC105_Fig5_1.txt"] == b"Figure 5: CT of the chest."
    assert json.loads(contents[f"{split}/PMC105_Fig5_1.json"]) == {
        "dataset": "pmc-oa", "image": "PMC105_Fig5_1.jpg", "alignment_type": "x"}

    report = pd.read_csv(tmp_path / "b" / "bad_rows.csv")
    assert report["source"].tolist() == [f"pmc_oa.jsonl:{n}" for n in range(13, 20)]
    assert "PMC902_Fig1_1.jpg" in report.set_index("reason").loc["missing_image", "detail"]


@pytest.fixture
def pmcoa_first_release(tmp_path):
    """The first release's layout (hub revision 16fd3b1, README: "A row in train.jsonl"):
    train/valid/test.jsonl rows {"image", "caption", "pmcid", "url_name"} beside images.zip."""
    root = tmp_path / "pmc_oa_first_release"
    root.mkdir()
    splits = {"train.jsonl": range(0, 6), "valid.jsonl": range(6, 8), "test.jsonl": range(8, 11)}
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        for file_name, indices in splits.items():
            rows = []
            for i in indices:
                pmcid, image = f"PMC{2000 + i}", f"PMC{2000 + i}_Fig{i}_1.jpg"
                zf.writestr(f"{ZIP_SUBFOLDER}/{image}", jpeg(100 + i))
                rows.append(json.dumps({"image": image, "caption": f"Panel {i}: axial MR of the knee.",
                                        "pmcid": pmcid, "url_name": f"1471-2121-4-{i}-3.jpg"}))
            (root / file_name).write_text("\n".join(rows) + "\n")
    return root, {"train": [f"PMC{2000 + i}_Fig{i}_1" for i in splits["train.jsonl"]],
                  "val": [f"PMC{2000 + i}_Fig{i}_1" for i in splits["valid.jsonl"]],
                  "test": [f"PMC{2000 + i}_Fig{i}_1" for i in splits["test.jsonl"]]}


def _keys_by_split(out: Path):
    keys = {}
    for name in shard_contents(out):
        if name.endswith(".txt"):
            split, key = name.split("/")
            keys.setdefault(split, []).append(key[:-len(".txt")])
    return {split: sorted(k) for split, k in keys.items()}


def test_pmcoa_first_release_keeps_its_official_split(pmcoa_first_release, tmp_path):
    root, expected = pmcoa_first_release
    # val_fraction only splits rows without an official split: here there are none
    report = convert_pmcoa(root, root / "images.zip", tmp_path / "folder", shard_size=4, val_fraction=0.5)
    assert sum(report.bad_rows.values()) == 0 and report.rows_read == 11
    assert {n: s.num_samples for n, s in report.splits.items()} == {"train": 6, "val": 2, "test": 3}
    assert _keys_by_split(tmp_path / "folder") == expected
    contents = shard_contents(tmp_path / "folder")
    assert contents["test/PMC2009_Fig9_1.jpg"] == jpeg(109)
    assert contents["test/PMC2009_Fig9_1.txt"] == b"Panel 9: axial MR of the knee."
    assert json.loads(contents["test/PMC2009_Fig9_1.json"]) == {
        "dataset": "pmc-oa", "image": "PMC2009_Fig9_1.jpg", "pmcid": "PMC2009", "url_name": "1471-2121-4-9-3.jpg"}

    files = [root / name for name in ("train.jsonl", "valid.jsonl", "test.jsonl")]
    convert_pmcoa(files, root / "images.zip", tmp_path / "files", shard_size=4, val_fraction=0.5)
    assert shard_contents(tmp_path / "files") == contents


def test_pmcoa_layouts_refused_with_clear_messages(pmcoa_first_release, pmcoa, tmp_path):
    root, _ = pmcoa_first_release
    jsonl, folder, _ = pmcoa
    (root / "pmc_oa.jsonl").write_text(jsonl.read_text())
    with pytest.raises(ValueError, match="holds both PMC-OA layouts.*pass the caption files"):
        convert_pmcoa(root, root / "images.zip", tmp_path / "both")
    with pytest.raises(FileNotFoundError, match="no PMC-OA caption file at .*pmc_oa.jsonl"):
        convert_pmcoa(folder, folder, tmp_path / "none")  # a folder with neither layout
    with pytest.raises(FileNotFoundError, match="neither an image folder nor a zip archive"):
        convert_pmcoa(jsonl, tmp_path / "images.tar", tmp_path / "bad_images")
    assert not any((tmp_path / name).exists() for name in ("both", "none", "bad_images"))  # nothing started


def test_roco_release_layout(tmp_path):
    data = tmp_path / "roco-dataset" / "data"
    expected_ids = {}
    n = 0
    for split in ("train", "validation", "test"):
        for subset in ("radiology", "non-radiology"):
            folder = data / split / subset
            (folder / "images").mkdir(parents=True)
            captions, links = [], []
            for j in range(4):
                n += 1
                roco_id, image_name, pmc = f"ROCO_{n:05d}", f"fig-{n}.jpg", f"PMC{5000 + n}"
                captions.append(f"{roco_id}\t Axial CT number {n} of the {subset} set.")
                links.append(f"{roco_id}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/1e/ed/{pmc}.tar.gz "
                             f"-P /path/to/Dir\t{image_name}")
                # fetch.py's current file name for half of them, its pre-2022 one for the rest
                file_name = f"{roco_id}.jpg" if j % 2 else f"{pmc}_{image_name}"
                (folder / "images" / file_name).write_bytes(jpeg(n))
                if subset == "radiology":
                    expected_ids.setdefault(split, []).append(roco_id)
            if subset == "radiology" and split == "train":
                captions += ["ROCO_90001\t image never fetched", "ROCO_90002\t ", "a line without a tab"]
                links += ["ROCO_90003\twget -r ftp://x/PMC1.tar.gz -P /path/to/Dir\tonly-in-dlinks.jpg", "broken"]
                (folder / "images" / "ROCO_90003.jpg").write_bytes(jpeg(999))
            (folder / "captions.txt").write_text("\n".join(captions) + "\n")
            (folder / "dlinks.txt").write_text("\n".join(links) + "\n")

    report = convert_roco(tmp_path / "roco-dataset", tmp_path / "out", shard_size=3)
    assert dict(report.bad_rows) == {"missing_image": 1, "empty_caption": 2, "malformed_row": 2}
    assert {name: s.num_samples for name, s in report.splits.items()} == {"train": 4, "val": 4, "test": 4}
    contents = shard_contents(tmp_path / "out")
    for split, official in (("train", "train"), ("val", "validation"), ("test", "test")):
        keys = sorted(k.split("/")[1].split(".")[0] for k in contents
                      if k.startswith(f"{split}/") and k.endswith(".txt"))
        assert keys == expected_ids[official]
    assert contents["train/ROCO_00001.txt"] == b"Axial CT number 1 of the radiology set."
    assert json.loads(contents["train/ROCO_00001.json"])["pmc_id"] == "PMC5001"

    both = convert_roco(data, tmp_path / "random", subsets=("radiology", "non-radiology"), official_split=False,
                        val_fraction=0.25, shard_size=100)
    assert {name: s.num_samples for name, s in both.splits.items()} == {"train": 18, "val": 6}


def test_convert_pmcoa_script(pmcoa, tmp_path):
    jsonl, _, archive = pmcoa
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_pmcoa.py"), "--jsonl", str(jsonl), "--images", str(archive),
         "--out", str(out), "--shard-size", "5", "--format", "both", "--val-fraction", "0.25"],
        capture_output=True, text=True, check=True)
    assert "19 rows read, 12 kept, 7 rejected" in run.stdout
    assert "duplicate_pair: 1" in run.stdout
    assert json.loads((out / "train" / "sizes.json").read_text()) == {"00000.tar": 5, "00001.tar": 4}
    assert len(pd.read_csv(out / "csv" / "val.csv", sep="\t")) == 3


def test_convert_pmcoa_script_first_release_folder(pmcoa_first_release, tmp_path):
    root, expected = pmcoa_first_release
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_pmcoa.py"), "--jsonl", str(root), "--images",
         str(root / "images.zip"), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "11 rows read, 11 kept, 0 rejected" in run.stdout
    assert _keys_by_split(out) == expected
    refused = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_pmcoa.py"), "--jsonl", str(tmp_path / "absent.jsonl"),
         "--images", str(root / "images.zip"), "--out", str(tmp_path / "never")], capture_output=True, text=True)
    assert refused.returncode == 2 and "no PMC-OA caption file at" in refused.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("script", ["build_embedded_dataset.py", "convert_pmcoa.py", "convert_roco.py"])
def test_scripts_show_help(script):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                         capture_output=True, text=True, check=True)
    assert "--out" in run.stdout and "--format" in run.stdout


def test_pmcoa_rows_read_past_blank_and_bad_lines(tmp_path):
    """A blank or blank-looking line is skipped and a row without an image name reported, wherever
    they are: every line after them is still read (sources counted from the file's own lines)."""
    lines = ['{"image": "PMC1_Fig1_1.jpg", "caption": "first"}', "", "   \t",
             '{"caption": "no image name"}', '{"image": "", "caption": "empty name"}', '["not", "a", "dict"]',
             '{"image": "PMC2_Fig1_1.jpg", "caption": "last"}']
    jsonl = tmp_path / "pmc_oa.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").mkdir()
    rows = list(pmcoa_rows(jsonl, tmp_path / "images"))
    numbered = [f"pmc_oa.jsonl:{n}" for n, line in enumerate(jsonl.read_text().splitlines(), 1) if line.strip()]
    assert [row.source for row in rows] == numbered
    assert [type(row).__name__ for row in rows] == ["Row", "BadRow", "BadRow", "BadRow", "Row"]
    assert [row.caption for row in rows if isinstance(row, Row)] == ["first", "last"]


def test_pmcoa_caption_files_refuse_no_file_and_a_folder_among_files(pmcoa_first_release):
    root, _ = pmcoa_first_release
    with pytest.raises(ValueError, match="no PMC-OA caption file given"):
        pmcoa_caption_files([])
    with pytest.raises(FileNotFoundError, match=f"no PMC-OA caption file at {re.escape(str(root))}$"):
        pmcoa_caption_files([root, root / "train.jsonl"])  # a folder is read as a release only alone
    assert pmcoa_caption_files([root]) == pmcoa_caption_files(root)
