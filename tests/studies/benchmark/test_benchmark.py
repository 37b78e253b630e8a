"""The benchmark suite (``studies/benchmark/``, run through ``commands/benchmark.py``): on the real
MedPix 2.0 and VQA-RAD releases (../shared/data) with ``unimlip-tiny`` and a stock OpenCLIP model as
two rows at the ``ci`` preset, each cell equals the standalone evaluation it wraps, an interrupted run
resumes without redoing a finished cell, a re-run redoes nothing, missing and bad datasets and a
failing model stop only their own cells, ``--plan`` runs nothing; and the dataset finder and the
argument checks, on made-up layouts."""
import gzip
import importlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from openclip_unimlip.commands import benchmark
from openclip_unimlip.data.medpix import read_medpix
from openclip_unimlip.data.releases import DATASETS, find_datasets
from openclip_unimlip.data.shards import normalize_caption
from openclip_unimlip.evaluation.classification import load_classification_data
from openclip_unimlip.evaluation.finetune import build_image_classifier, load_clip_model
from openclip_unimlip.evaluation.linear_probe import image_features, probe_chest_xray
from openclip_unimlip.evaluation.medpix_classification import (
    fine_tune_softmax,
    linear_probe,
    load_medpix_classification,
    stratified_subset,
)
from openclip_unimlip.evaluation.retrieval import evaluate_retrieval
from openclip_unimlip.studies.benchmark import engine, tables
from openclip_unimlip.studies.benchmark.tasks import ChestXrayTask, RetrievalTask, tasks_for

from benchmark_tables import check_every_number
from medpix_release import empty_medpix_release
from nih_release import write_nih_release
from paths import REPO

DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "vqa-rad").is_dir() or not (DATA / "medpix-2.0").is_dir(),
                                reason=f"the real VQA-RAD and MedPix 2.0 releases are not at {DATA} "
                                       "(../shared/data beside the checkout, as in CI)")


def real_data(test):
    """On the real releases, after the module's one benchmark run (1.5-3 min on 2 shared cores)."""
    return needs_data(pytest.mark.slow(test))

# A stock OpenCLIP config (CLIP class, ModifiedResNet image tower, OpenCLIP's own text transformer;
# nothing of ours), small enough for CI: the stock RN50 has the same towers at 224 px and width 64.
STOCK_CONFIG = {"embed_dim": 64,
                "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
                "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
SEEDS = (0, 1)


def _load_script(name: str):
    """The CLI module behind ``scripts/<name>.py`` (a shim over it, as the console command)."""
    return importlib.import_module(f"openclip_unimlip.commands.{name}")


def _make_data_root(root: Path) -> Path:
    """The two real releases (linked), a ROCO folder without its release (bad) and a SLAKE folder in
    the right layout whose train.json is not JSON (read fails); CheXpert, MIMIC, NIH absent."""
    root.mkdir()
    (root / "medpix-2.0").symlink_to(DATA / "medpix-2.0")
    (root / "vqa-rad").symlink_to(DATA / "vqa-rad")
    (root / "roco").mkdir()
    slake = root / "Slake1.0"
    (slake / "imgs").mkdir(parents=True)
    (slake / "train.json").write_text("this is not JSON")
    (slake / "validate.json").write_text("[]")
    (slake / "test.json").write_text("[]")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """One benchmark, interrupted after two cells and resumed; returns what the tests check. One
    thread for the whole module (conftest's ``one_thread``): the standalone runs then reduce in the
    same order as the cells, so their numbers agree to the last bit."""
    if not (DATA / "vqa-rad").is_dir() or not (DATA / "medpix-2.0").is_dir():
        pytest.skip(f"the real VQA-RAD and MedPix 2.0 releases are not at {DATA} (../shared/data beside the "
                    "checkout, as in CI)")
    tmp = tmp_path_factory.mktemp("benchmark")
    data_root = _make_data_root(tmp / "data")
    (tmp / "stock-rn-tiny.json").write_text(json.dumps(STOCK_CONFIG))
    checkpoints = {}
    for seed in SEEDS:  # plain state dicts, one per pretraining seed, as the MedPix ablation keeps them
        torch.manual_seed(123 + seed)
        checkpoints[seed] = tmp / f"tiny-seed{seed}.pt"
        torch.save(open_clip.create_model("unimlip-tiny", pretrained_text=False).state_dict(), checkpoints[seed])
    broken = tmp / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    out = tmp / "out"
    args = ["--model", "unimlip-tiny", "--pretrained", str(tmp / "tiny-seed{seed}.pt"), "--label", "tiny",
            "--model", "stock-rn-tiny", "--model-config", str(tmp / "stock-rn-tiny.json"),
            "--model", "unimlip-tiny", "--pretrained", str(broken), "--label", "broken",
            "--reference", "stock-rn-tiny", "--pretraining-note", "none: test checkpoints of random weights",
            "--data-root", str(data_root), "--out", str(out), "--preset", "ci", "--seeds", *map(str, SEEDS),
            "--fractions", "1.0", "--device", "cpu", "--no-progress"]
    real_run_cell = engine.Benchmark.run_cell
    first, second = [], []

    def interrupted(self, cell):
        if len(first) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of the third cell
        first.append(cell)
        return real_run_cell(self, cell)

    def counted(self, cell):
        second.append(cell)
        return real_run_cell(self, cell)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Benchmark, "run_cell", interrupted)
        with pytest.raises(KeyboardInterrupt):
            benchmark.main(args)
        after_interruption = json.loads((out / "benchmark.json").read_text())
        patch.setattr(engine.Benchmark, "run_cell", counted)
        report = benchmark.main(args)
    return {"args": args, "out": out, "report": report, "first": first, "second": second, "checkpoints": checkpoints,
            "data_root": data_root, "after_interruption": after_interruption}


def _record(out: Path, row: str, task: str, fraction: str, seed: int) -> dict:
    return json.loads((out / "cells" / row / f"{task}__{fraction}__seed{seed}.json").read_text())


# ----------------------------------------------------------------------------- each cell = its standalone evaluation
@real_data
def test_retrieval_cells_equal_eval_retrieval_on_the_same_pairs(run, tmp_path):
    # the MedPix test split as an OpenCLIP CSV, in the release's order: eval_retrieval.py's input
    csv = tmp_path / "medpix_test.csv"
    images = read_medpix(DATA / "medpix-2.0", "test")
    pd.DataFrame({"filepath": [str(i.image) for i in images], "title": [normalize_caption(i.caption) for i in images]}
                 ).to_csv(csv, sep="\t", index=False)
    for row, model, pretrained, seed in (("tiny", "unimlip-tiny", str(run["checkpoints"][1]), 1),
                                         ("stock-rn-tiny", "stock-rn-tiny", None, 0)):
        torch.manual_seed(seed)  # the cell seeds the model's random parts likewise
        standalone = evaluate_retrieval(model, pretrained, data=str(csv), num_samples=100, seed=seed)
        record = _record(run["out"], row, "retrieval-medpix", "all", seed)
        assert record["details"]["num_pairs"] == standalone["num_pairs"] == 100
        for name, value in standalone["metrics"].items():
            assert record["details"][name] == value, (row, seed, name)
    # the two seeds drew different pairs
    keys = [_record(run["out"], "tiny", "retrieval-medpix", "all", seed)["details"]["keys"] for seed in SEEDS]
    assert keys[0] != keys[1]


@real_data
def test_medpix_classification_cells_equal_fine_tune_softmax_and_linear_probe(run):
    """The MedPix cells, fine-tuned and linear-probed, are ``evaluation.medpix_classification``'s
    functions on the same data, seeded the same way, from the same seed's weights ({seed})."""
    preset = engine.CI
    data = load_medpix_classification(DATA / "medpix-2.0", preset.medpix.label, preset.limit)
    weights = str(run["checkpoints"][1])
    torch.manual_seed(1)
    classifier, preprocess_cfg = build_image_classifier("unimlip-tiny", weights, len(data.classes), None)
    subset = stratified_subset(data.train.targets, 1.0, 1)
    standalone = fine_tune_softmax(classifier, preprocess_cfg, data.train.select(subset), data.dev, data.test,
                                   preset.medpix.finetune, 1, "cpu", False)
    record = _record(run["out"], "tiny", "classification-medpix", "100pct", 1)
    assert record["pretrained"] == weights  # seed 1 ran pretraining seed 1's weights
    assert record["metrics"]["macro_auc"] == standalone["test_macro_auc"]
    assert record["details"]["history"] == json.loads(json.dumps(standalone["history"]))

    torch.manual_seed(1)
    tower, preprocess_cfg = build_image_classifier("unimlip-tiny", weights, len(data.classes), None)
    features = {split: image_features(tower.tower, preprocess_cfg, getattr(data, split).images, 64, "cpu")
                for split in ("train", "dev", "test")}
    probe = linear_probe(features["train"][subset], data.train.targets[subset], features["dev"], data.dev.targets,
                         features["test"], data.test.targets, len(data.classes), preset.medpix.probe_c_grid)
    record = _record(run["out"], "tiny", "linear-probe-medpix", "100pct", 1)
    assert record["metrics"]["macro_auc"] == probe["test_macro_auc"]
    assert record["details"] == json.loads(json.dumps(probe))


@real_data
def test_vqa_cell_equals_finetune_vqa_script(run, tmp_path):
    summary = _load_script("finetune_vqa").main([
        "--dataset", "vqa-rad", "--data-root", str(DATA / "vqa-rad"), "--model", "unimlip-tiny",
        "--pretrained", str(run["checkpoints"][0]), "--seed", "0", "--image-size", "96", "--batch-size", "16",
        "--max-epochs", "1", "--limit", "32", "--workers", "0", "--no-progress", "--output-dir", str(tmp_path)])
    record = _record(run["out"], "tiny", "vqa-vqa-rad", "all", 0)
    assert record["details"]["test"] == summary["test"]
    assert record["metrics"] == {m: summary["test"][m] for m in ("open", "closed", "overall")}


# ----------------------------------------------------------------------------- a long run survives
@real_data
def test_an_interrupted_run_resumes_without_redoing_a_finished_cell(run):
    first, second = run["first"], run["second"]
    assert len(first) == 2 and run["after_interruption"]["cells"]["done"] == 2
    assert not set(first) & set(second)
    cells = run["report"]["cells"]
    # tiny: retrieval, classification, linear probe, VQA, question-only VQA; stock: retrieval, classification,
    # linear probe (both VQA tasks n/a); broken: stopped
    assert len(first) + len(second) == cells["done"] == len(SEEDS) * 8
    assert cells["resumed"] == 2 and cells["run_now"] == len(second) and cells["failed"] == 0
    assert cells["not_applicable"] == len(SEEDS) * 2 and cells["stopped"] == len(SEEDS) * 5


@real_data
def test_a_rerun_skips_every_finished_cell(run):
    files = sorted((run["out"] / "cells").rglob("*.json"))
    stamps = [path.stat().st_mtime_ns for path in files]

    def must_not_run(self, cell):
        raise AssertionError(f"{cell} ran again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Benchmark, "run_cell", must_not_run)
        report = benchmark.main(run["args"])
    assert [path.stat().st_mtime_ns for path in files] == stamps
    assert report["results"] == run["report"]["results"] and report["cells"]["run_now"] == 0


# ----------------------------------------------------------------------------- failures stay local
@real_data
def test_missing_and_bad_datasets_are_listed_and_skipped(run):
    report = run["report"]
    status = {d["name"]: d for d in report["datasets"]}
    assert {name: d["status"] for name, d in status.items()} == {
        "roco": "bad", "medpix": "found", "chexpert": "skipped", "mimic": "skipped", "nih": "skipped",
        "vqa-rad": "found", "slake": "found"}
    assert "test/radiology/captions.txt missing" in status["roco"]["message"]
    assert report["tasks"]["vqa-slake"]["status"] == "failed"
    assert report["tasks"]["vqa-slake"]["message"].startswith("SLAKE could not be read: JSONDecodeError")
    assert sorted(t for t, s in report["tasks"].items() if s["status"] == "ready") == [
        "classification-medpix", "linear-probe-medpix", "retrieval-medpix", "vqa-question-only-vqa-rad",
        "vqa-vqa-rad"]
    markdown = (run["out"] / "benchmark.md").read_text()
    assert "| CheXpert | skipped | no folder named" in markdown
    assert "- task vqa-slake: SLAKE could not be read: JSONDecodeError" in markdown


@real_data
def test_a_model_that_does_not_load_stops_only_its_own_cells(run):
    report = run["report"]
    rows = {row["label"]: row for row in report["rows"]}
    assert rows["tiny"]["status"] == rows["stock-rn-tiny"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["message"].startswith("the model could not be loaded: ")
    assert "\n" not in rows["broken"]["message"]
    assert not (run["out"] / "cells" / "broken").exists()
    assert {r["row"] for r in report["results"]} == {"tiny", "stock-rn-tiny"}
    table2 = next(t for t in report["tables"] if t["id"] == "table2")
    cells = {row["label"]: row["cells"] for row in table2["rows"]}
    assert cells["broken"]["vqa-rad/overall"] == {"status": "failed"}
    assert cells["stock-rn-tiny"]["vqa-rad/overall"] == {"status": "n/a"}  # OpenCLIP's own text tower
    assert cells["tiny"]["vqa-rad/overall"]["n"] == len(SEEDS)
    assert cells["tiny: question only"]["vqa-rad/overall"]["n"] == len(SEEDS)
    assert cells["broken: question only"]["vqa-rad/overall"] == {"status": "failed"}


@real_data
def test_plan_lists_the_cells_and_runs_nothing(run, tmp_path, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("--plan ran a model")

    args = list(run["args"])
    fresh = tmp_path / "fresh"
    args[args.index("--out") + 1] = str(fresh)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Benchmark, "run_cell", must_not_run)
        patch.setattr(open_clip, "create_model", must_not_run)
        plan = benchmark.main(args + ["--plan"])
        printed = capsys.readouterr().out
        assert not fresh.exists()
        # the broken row is only found at load
        assert [c["state"] for c in plan["cells"]].count("to run") == len(SEEDS) * 13
        assert "Estimated time to run:" in printed and "prior for cpu" in printed
        finished = benchmark.main(run["args"] + ["--plan"])  # the finished run's folder: measured rates
    assert {c["state"] for c in finished["cells"] if c["row"] != "broken"} == {"done", "n/a"}
    # the broken row's cells, never run, are estimated from the same model's finished cells
    assert "broken classification: measured on finished cells of unimlip-tiny" in capsys.readouterr().out
    only_retrieval = benchmark.main(args + ["--plan", "--tasks", "retrieval"])
    tasks_planned = {c["task"] for c in plan["cells"]}
    assert {c["task"] for c in only_retrieval["cells"]} == {t for t in tasks_planned if t.startswith("retrieval-")}
    assert {t.split("-")[0] for t in tasks_planned} > {"retrieval"}  # the filter left something out


@needs_data
def test_a_failing_cell_stops_the_rest_of_its_task_and_nothing_else(tmp_path):
    def flaky(self, cell):  # retrieval raises; classification returns at once (the loop is under test)
        if cell.task == "retrieval-medpix":
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        return {**cell.__dict__, "origin": self.origin(cell), "seconds": 0.0, "units": 1.0, "model": "unimlip-tiny",
                "metrics": {"macro_auc": 0.5 + 0.1 * cell.seed}, "details": {}}

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Benchmark, "run_cell", flaky)
        report = benchmark.main(["--model", "unimlip-tiny", "--data-root", str(DATA), "--datasets", "medpix",
                                 "--tasks", "retrieval", "classification", "--out", str(out), "--preset", "ci",
                                 "--no-progress"])
    (failure,) = report["failures"]  # seed 0's retrieval; seed 1's is not tried
    assert (failure["task"], failure["seed"]) == ("retrieval-medpix", 0)
    assert failure["message"] == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    cells = report["cells"]
    assert (cells["done"], cells["failed"], cells["stopped"]) == (4, 1, 1)  # classification: 2 seeds x 2 fractions
    assert sorted(p.name for p in (out / "cells" / "unimlip-tiny").iterdir()) == sorted(
        f"classification-medpix__{f}pct__seed{s}.json" for f in (10, 100) for s in SEEDS)
    assert ("- unimlip-tiny / retrieval-medpix seed 0: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
            in (out / "benchmark.md").read_text())


# ----------------------------------------------------------------------------- the tables
@real_data
def test_tables_hold_seed_intervals_chance_and_reported_rows(run):
    report, out = run["report"], run["out"]
    values = [100 * _record(out, "tiny", "classification-medpix", "100pct", seed)["metrics"]["macro_auc"]
              for seed in SEEDS]
    (result,) = [r for r in report["results"] if (r["row"], r["task"]) == ("tiny", "classification-medpix")]
    interval = result["metrics"]["macro_auc"]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval["values"] == values and interval["mean"] == pytest.approx(np.mean(values))
    assert (interval["low"], interval["high"]) == (pytest.approx(low), pytest.approx(high))

    tables = {t["id"]: t for t in report["tables"]}
    assert set(tables) == {"figure2-medpix", "table1-medpix", "table2"}
    chance = next(r for r in tables["figure2-medpix"]["rows"] if r["kind"] == "chance")["cells"]
    assert chance["image_to_text_R@10"] == {"value": 10.0}  # 10 of 100 drawn pairs
    table2 = {row["label"]: row for row in tables["table2"]["rows"]}
    assert table2["Uni-Mlip (reported)"]["source"] == "Uni-Mlip (Bawazir & Wu), Table 2, row 'Uni-Mlip (ours)'"
    assert table2["Uni-Mlip (reported)"]["cells"]["vqa-rad/closed"] == {"value": 81.62}
    # the most-common-answer row on the 32 test questions read, counted here: the standard split's first 32
    # training questions are the release's non-test rows, each followed by its question frame if it has one
    rows = json.loads((DATA / "vqa-rad" / "VQA_RAD Dataset Public.json").read_text())
    train = [r for r in rows for question in ([] if r["phrase_type"].startswith("test") else [r["question"]])
             + ([r["question_frame"]] if r["question_frame"] != "NULL" else [])][:32]
    test = [r for r in rows if r["phrase_type"].startswith("test")][:32]
    closed_answers = [str(r["answer"]).lower().strip() for r in train if r["answer_type"].strip() == "CLOSED"]
    majority = max(sorted(set(closed_answers)), key=closed_answers.count)
    closed_test = [str(r["answer"]).lower().strip() for r in test if r["answer_type"].strip() == "CLOSED"]
    assert table2["most common answer, told the answer type"]["cells"]["vqa-rad/closed"]["value"] == pytest.approx(
        100 * closed_test.count(majority) / len(closed_test))

    # what the image adds: per seed, the image model's accuracy minus the question-only model's, then the
    # t-interval of those differences (scipy on the cells' own numbers)
    differences = [100 * (_record(out, "tiny", "vqa-vqa-rad", "all", seed)["metrics"]["overall"]
                          - _record(out, "tiny", "vqa-question-only-vqa-rad", "all", seed)["metrics"]["overall"])
                   for seed in SEEDS]
    gain = table2["tiny: image minus question only"]["cells"]["vqa-rad/overall"]
    assert gain["values"] == pytest.approx(differences)
    # scipy's interval is NaN for identical values (a ci-preset run can give the same accuracy with and without
    # the image); ours then has zero width, as seed_interval documents
    low, high = (stats.t.interval(0.95, len(differences) - 1, loc=np.mean(differences), scale=stats.sem(differences))
                 if np.std(differences) > 0 else (np.mean(differences),) * 2)
    assert (gain["mean"], gain["low"], gain["high"]) == (pytest.approx(np.mean(differences)), pytest.approx(low),
                                                         pytest.approx(high))

    markdown = (out / "benchmark.md").read_text()
    assert "| Uni-Mlip (reported) | reported | 60.43 | 81.62 | 73.17 | 79.38 | 85.82 | 81.90 |" in markdown
    assert f"| tiny | ours | {interval['mean']:.1f} [{interval['low']:.1f}, {interval['high']:.1f}] |" in markdown
    assert json.loads((out / "benchmark.json").read_text())["tables"] == json.loads(json.dumps(report["tables"]))
    for plot in ("figure2-medpix.png", "table2-vqa-rad.png"):
        assert (out / "plots" / plot).stat().st_size > 10_000
        assert f"(plots/{plot})" in markdown


# ------------------------------------------------------------------------- fast: finding datasets, refusing bad input
def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_every_release_layout_is_found_under_its_folder_names(tmp_path):
    _touch(tmp_path / "roco-dataset" / "data" / "test" / "radiology" / "captions.txt")
    empty_medpix_release(tmp_path / "MedPix-2.0" / "MedPix-2-0")  # the repository root
    for name in ("train.csv", "valid.csv"):
        _touch(tmp_path / "CheXpert-v1.0-small" / name)
    release = tmp_path / "mimic-cxr-jpg" / "2.0.0"  # PhysioNet's version folder
    for table in ("chexpert", "split", "metadata"):
        release.mkdir(parents=True, exist_ok=True)
        with gzip.open(release / f"mimic-cxr-2.0.0-{table}.csv.gz", "wt") as handle:
            handle.write("subject_id\n")
    (release / "files").mkdir()
    _touch(tmp_path / "CXR8" / "Data_Entry_2017.csv")
    _touch(tmp_path / "VQA_RAD" / "VQA_RAD Dataset Public.json", "[]")
    (tmp_path / "VQA_RAD" / "VQA_RAD Image Folder").mkdir()
    _touch(tmp_path / "slake" / "train.json")  # validate.json, test.json and imgs/ missing: bad
    statuses = {s.name: s for s in find_datasets(tmp_path)}
    assert {n: s.status for n, s in statuses.items()} == {**{n: "found" for n in DATASETS}, "slake": "bad"}
    assert statuses["medpix"].path == tmp_path / "MedPix-2.0" / "MedPix-2-0"
    assert statuses["mimic"].path == release
    assert "validate.json, test.json, imgs missing" in statuses["slake"].message
    assert {s.status for s in find_datasets(tmp_path / "roco-dataset")} == {"skipped"}


def test_roco_test_pairs_are_read_from_the_release(tmp_path):
    folder = tmp_path / "data" / "test" / "radiology"
    _touch(folder / "captions.txt", "ROCO_00001\t CT of the  head.\nROCO_00002\tChest X-ray\nROCO_00003\tno image\n"
                                    "ROCO_00004\t \n")
    _touch(folder / "dlinks.txt", "ROCO_00005\twget ftp://x/PMC1.tar.gz\tfig.jpg\n")  # a link without a caption
    (folder / "images").mkdir()
    for shade, name in enumerate(("ROCO_00001", "ROCO_00002", "ROCO_00004", "ROCO_00005")):
        Image.new("RGB", (8, 8), (60 * shade,) * 3).save(folder / "images" / f"{name}.jpg")  # distinct images
    data = RetrievalTask("roco").load(tmp_path, engine.CI, engine.Runtime(progress=False))
    assert [(p.key, p.caption) for p in data.pairs] == [("ROCO_00001", "CT of the head."),
                                                        ("ROCO_00002", "Chest X-ray")]
    assert RetrievalTask("roco").describe(data) == {  # an empty caption, no caption at all; no image file
        "split": "test", "rows_read": 5, "pairs": 2, "left_out": {"empty_caption": 2, "missing_image": 1}}
    chance = RetrievalTask("roco").chance(data, engine.CI)
    assert chance["image_to_text_R@1"] == 0.5 and chance["text_to_image_R@10"] == 1.0  # 2 pairs: K / N, at most 1


@pytest.mark.parametrize("bad_args, message", [
    (["--pretrained", "x.pt", "--model", "unimlip-tiny"], "--pretrained x.pt must follow the --model"),
    (["--model", "no-such-model"], "unknown OpenCLIP model 'no-such-model'"),
    (["--model", "unimlip-tiny", "--pretrained", "missing.pt"],
     "checkpoint missing.pt of --model unimlip-tiny not found"),
    (["--model", "unimlip-tiny", "--model", "unimlip-tiny"], "give each a distinct --label"),
    (["--model", "unimlip-tiny", "--label", "a", "--label", "b"], "--label is given twice"),
    (["--model", "unimlip-tiny", "--fractions", "0", "1"], "--fractions must be distinct and lie in (0, 1]"),
    (["--model", "unimlip-tiny", "--seeds", "1", "1"], "--seeds repeat"),
    ([], "give at least one --model"),
    (["--model", "unimlip-tiny", "--pretrained", "missing-seed{seed}.pt", "--seeds", "0", "1"],
     "checkpoint missing-seed0.pt of --model unimlip-tiny not found"),  # every seed's file must exist
    (["--model", "unimlip-tiny", "--reference", "baseline"], "--reference 'baseline' is not the label of a row"),
    (["--model", "unimlip-tiny", "--set", "vqa.epoch=1"], "VqaRecipe has no field 'epoch'"),
    (["--model", "unimlip-tiny", "--set", "vqa.freeze_text=maybe"], "expected true or false"),
    (["--model", "unimlip-tiny", "--set", "vqa.epochs"], "expected FIELD=VALUE"),
])
def test_bad_arguments_stop_with_one_message_before_anything_runs(bad_args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        benchmark.main([*bad_args, "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_console_command_names_this_main():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["unimlip-benchmark"].split(":")
    assert getattr(importlib.import_module(module), function) is benchmark.cli
    assert os.access(REPO / "scripts" / "benchmark.py", os.R_OK)


# ----------------------------------------------------------------------------- chest X-ray: made-up NIH release
def _nih_release(root: Path) -> None:
    """40 images of 20 patients (the last 5 patients' images in test_list.txt); Effusion images are bright."""
    write_nih_release(root, patients=20, test_images=10, size=40)


@pytest.mark.slow  # ~40 s: two one-epoch fine-tunings and a linear probe of unimlip-tiny
def test_chest_xray_cell_equals_finetune_classification_script_and_fills_table1(tmp_path, one_thread):
    _nih_release(tmp_path / "data" / "ChestX-ray14")
    out = tmp_path / "out"
    report = benchmark.main(["--model", "unimlip-tiny", "--data-root", str(tmp_path / "data"), "--out", str(out),
                             "--preset", "ci", "--seeds", "0", "--fractions", "1.0", "--no-progress"])
    summary = _load_script("finetune_classification").main([
        "--dataset", "nih", "--data-root", str(tmp_path / "data" / "ChestX-ray14"), "--model", "unimlip-tiny",
        "--fraction", "1.0", "--seed", "0", "--image-size", "96", "--batch-size", "16", "--max-epochs", "1",
        "--limit", "32", "--workers", "0", "--no-progress", "--output-dir", str(tmp_path / "standalone"),
        "--protocol", "all14"])
    record = _record(out, "unimlip-tiny", "classification-nih", "100pct", 0)
    # NIH in the benchmark: NIH's own list files (all14's NIH rule), not CheXclusion's pooled split
    assert summary["protocol"]["name"] == record["details"]["protocol"]["name"] == "all14"
    assert record["details"]["protocol"]["split_rule"] == "official"
    assert record["details"]["images"]["test"] == 10  # test_list.txt's images
    assert record["details"]["test_per_label_auc"] == summary["test_per_label_auc"]
    assert record["metrics"]["macro_auc"] == summary["test_macro_auc"]

    # the linear-probe cell is probe_chest_xray on the same data with the same seed's tower
    probe = _record(out, "unimlip-tiny", "linear-probe-nih", "100pct", 0)
    torch.manual_seed(0)
    data = load_classification_data("nih", tmp_path / "data" / "ChestX-ray14", 1.0, 0, limit=32, protocol="all14")
    model, preprocess_cfg = load_clip_model("unimlip-tiny", None, None, pretrained_text=False)
    direct = probe_chest_xray(model.visual, preprocess_cfg, data, batch_size=16)
    assert {key: probe["details"][key] for key in direct} == json.loads(json.dumps(direct))
    assert probe["metrics"]["macro_auc"] == direct["test_macro_auc"]
    assert probe["details"]["C"] in engine.PRESETS["ci"].chest_xray.probe_c_grid

    (table1,) = [t for t in report["tables"] if t["id"] == "table1"]
    rows = {row["label"]: row["cells"] for row in table1["rows"]}
    assert rows["unimlip-tiny"]["nih@100 %"]["values"] == [100 * summary["test_macro_auc"]]
    assert rows["unimlip-tiny (linear probe)"]["nih@100 %"]["values"] == [100 * direct["test_macro_auc"]]
    assert rows["unimlip-tiny (linear probe)"]["chexpert@100 %"] == {"status": "skipped"}
    assert rows["unimlip-tiny"]["mimic@100 %"] == {"status": "skipped"}
    assert rows["unimlip-tiny"]["nih@1 %"] == {"status": "not run"}  # a paper column this run did not ask for
    assert rows["M-FLAG (reported)"]["nih@1 %"] == {"value": 62.2}
    markdown = (out / "benchmark.md").read_text()
    assert ("| Uni-Mlip (reported) | reported | 73.2 | 79.1 | 82.0 | 69.1 | 75.3 | 79.8 | 65.6 | 76.4 | 82.9 |"
            in markdown)


def test_a_probe_only_run_prints_table1_with_its_split_and_chance(tmp_path, one_thread):
    """``--tasks linear-probe`` alone still prints Table 1: the probe rows, the chance row and the
    split note, with no fine-tuned rows (no fine-tuning ran)."""
    _nih_release(tmp_path / "data" / "ChestX-ray14")
    out = tmp_path / "out"
    report = benchmark.main(["--model", "unimlip-tiny", "--data-root", str(tmp_path / "data"), "--out", str(out),
                             "--preset", "ci", "--seeds", "0", "--fractions", "1.0", "--tasks", "linear-probe",
                             "--no-progress"])
    probe = _record(out, "unimlip-tiny", "linear-probe-nih", "100pct", 0)
    (table1,) = [t for t in report["tables"] if t["id"] == "table1"]
    rows = {row["label"]: row["cells"] for row in table1["rows"]}
    assert "unimlip-tiny" not in rows
    assert rows["unimlip-tiny (linear probe)"]["nih@100 %"]["values"] == [100 * probe["metrics"]["macro_auc"]]
    assert rows["chance"]["nih@100 %"] == {"value": 50.0}
    assert "NIH: protocol all14, NIH's test_list.txt" in table1["notes"][0]
    assert "## Table 1 layout" in (out / "benchmark.md").read_text()


def test_chest_xray_modes_have_their_own_cells_settings_hash_and_time(tmp_path):
    """Fine-tuning and linear probing are two tasks: their own cell files, a settings hash that holds
    the mode and only what shapes that mode's numbers, their own time estimate; both read NIH by its
    official list files."""
    _nih_release(tmp_path / "data" / "ChestX-ray14")
    fine, probe = tasks_for("nih")
    assert (fine.name, probe.name) == ("classification-nih", "linear-probe-nih")
    assert tasks_for("chexpert")[1].name == "linear-probe-chexpert"
    with pytest.raises(ValueError, match="unknown chest X-ray mode 'probe'"):
        ChestXrayTask("nih", "probe")

    ci = engine.PRESETS["ci"]
    config = engine.BenchmarkConfig([engine.ModelRow("tiny", "unimlip-tiny")], tmp_path / "data",
                                       tmp_path / "out", ci, datasets=["nih"])
    bench = engine.Benchmark(config)
    assert {name: state.describe["split_rule"] for name, state in bench.tasks.items()} == {
        "classification-nih": "official", "linear-probe-nih": "official"}
    cells = {cell.task: cell for cell in bench.cells() if cell.fraction == 1.0 and cell.seed == 0}
    assert bench.cell_path(cells["linear-probe-nih"]).name == "linear-probe-nih__100pct__seed0.json"
    assert bench.origin(cells["classification-nih"]) != bench.origin(cells["linear-probe-nih"])
    assert fine.recipe(ci)["mode"] == "fine-tune" and probe.recipe(ci)["mode"] == "linear-probe"
    assert fine.recipe(ci)["protocol"] == probe.recipe(ci)["protocol"] == "all14"

    def changed(**fields) -> engine.Preset:
        return replace(ci, chest_xray=replace(ci.chest_xray, **fields))

    assert probe.recipe(changed(probe_c_grid=(1.0,))) != probe.recipe(ci)
    assert fine.recipe(changed(probe_c_grid=(1.0,))) == fine.recipe(ci)
    assert probe.recipe(changed(max_epochs=5)) == probe.recipe(ci) != probe.recipe(changed(image_size=64))
    assert fine.recipe(changed(max_epochs=5)) != fine.recipe(ci)
    assert probe.recipe(changed(dataset_protocols={})) != probe.recipe(ci)  # back to chexclusion's split

    data = bench.tasks["classification-nih"].data
    images = len(data.full.train) + len(data.full.valid) + len(data.full.test)
    assert probe.units(data, ci, 1.0) == pytest.approx(images / 3)  # one evaluation pass per image
    assert fine.units(data, ci, 1.0) > probe.units(data, ci, 1.0)


def test_the_console_entry_point_exits_0_after_a_plan(tmp_path):
    """pyproject's ``unimlip-benchmark`` entry point, called as a console script is (``sys.exit`` of
    its return value): a finished run exits 0, not 1 with a printed report."""
    from importlib import import_module

    import tomllib

    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["unimlip-benchmark"]
    module, function = target.split(":")
    entry = getattr(import_module(module), function)
    import sys as _sys
    argv = _sys.argv
    (tmp_path / "empty").mkdir()
    _sys.argv = ["unimlip-benchmark", "--model", "unimlip-tiny", "--data-root", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "out"), "--plan"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            _sys.exit(entry())
    finally:
        _sys.argv = argv
    assert exit_info.value.code in (None, 0)


def test_a_missing_data_root_stops_with_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "unimlip-tiny", "--data-root", str(tmp_path / "nonexistent"),
                        "--out", str(tmp_path / "out")])
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- rows: per-seed or random weights, a reference
def test_row_weights_random_and_per_seed(tmp_path):
    """``--pretrained random``: no weights, the text tower random too; ``{seed}``: each seed its own
    file, and the row's settings hash holds that file (a changed file makes its cells stale)."""
    random_row = engine.ModelRow("random", "unimlip-tiny", "random")
    assert (random_row.weights, random_row.pretrained_text) == (None, False)
    assert (engine.ModelRow("t", "unimlip-tiny").weights, engine.ModelRow("t", "unimlip-tiny").pretrained_text) == (
        None, True)
    for seed in (0, 1):
        (tmp_path / f"all_five-seed{seed}.pt").write_bytes(b"x" * (seed + 1))
    row = engine.ModelRow("unimlip", "unimlip-tiny", f"{tmp_path}/all_five-seed{{seed}}.pt")
    assert row.for_seed(1).weights == str(tmp_path / "all_five-seed1.pt")
    identities = [row.for_seed(seed).identity() for seed in (0, 1)]
    assert [i["pretrained"] for i in identities] == [str(tmp_path / f"all_five-seed{s}.pt") for s in (0, 1)]
    assert identities[0]["bytes"] != identities[1]["bytes"]


def test_preset_assignments_change_one_field_each():
    cpu = engine.PRESETS["cpu"]
    changed = engine.preset_with(cpu, ["vqa.epochs=1", "vqa.image_size=none", "vqa.freeze_text=false",
                                       "vqa.vqa_rad_split=no-frames", "medpix.finetune.max_epochs=2",
                                       "medpix.probe_c_grid=0.1,1", "limit=16"])
    assert (changed.vqa.epochs, changed.vqa.image_size, changed.vqa.freeze_text) == (1, None, False)
    assert changed.vqa.vqa_rad_split == "no-frames" and changed.medpix.finetune.max_epochs == 2
    assert changed.medpix.probe_c_grid == (0.1, 1.0) and changed.limit == 16
    assert replace(changed, vqa=cpu.vqa, medpix=cpu.medpix, limit=cpu.limit) == cpu
    with pytest.raises(ValueError, match="cannot be set"):
        engine.preset_with(cpu, ["chest_xray.batch_sizes=3"])


def _summary_report(scores: dict, reference: str = "random") -> dict:
    records = [{"row": row, "task": "classification-medpix", "fraction": 0.1, "seed": seed,
                "metrics": {"macro_auc": value}} for (row, seed), value in scores.items()]
    labels = sorted({row for row, _ in scores})
    return {"settings": {"reference": reference, "fractions": [0.1]}, "failures": [],
            "tasks": {"classification-medpix": {"status": "ready"}},
            "rows": [{"label": label, "model": "unimlip-tiny", "pretrained": None, "status": "ok"} for label in labels],
            "results": tables.summarize(records)}


def test_summary_means_intervals_and_paired_differences_to_the_reference_over_seeds():
    scores = {("random", 0): 0.60, ("random", 1): 0.66, ("random", 2): 0.63,
              ("a", 0): 0.70, ("a", 1): 0.71, ("a", 2): 0.75}
    report = _summary_report(scores)
    a, random = [100 * scores["a", s] for s in range(3)], [100 * scores["random", s] for s in range(3)]
    (result,) = [r for r in report["results"] if r["row"] == "a"]
    assert result["metrics"]["macro_auc"]["mean"] == pytest.approx(np.mean(a))
    assert result["metrics"]["macro_auc"]["high"] == pytest.approx(stats.t.interval(0.95, 2, np.mean(a),
                                                                                    stats.sem(a))[1])
    columns = [("10 %", "classification-medpix", 0.1, "macro_auc")]
    (paired,) = tables._reference_rows(report, columns)  # none for the reference row itself
    assert paired["label"] == "a minus random" and paired["kind"] == "paired"
    difference = np.subtract(a, random)
    low, high = stats.t.interval(0.95, 2, difference.mean(), stats.sem(difference))
    cell = paired["cells"]["10 %"]
    assert (cell["low"], cell["high"]) == (pytest.approx(low), pytest.approx(high)) and cell["seeds"] == [0, 1, 2]
    assert tables.format_cell(cell, 1, paired=True) == f"**+{difference.mean():.1f} [+{low:.1f}, +{high:.1f}]**"


def test_the_paired_image_gain_is_the_t_interval_of_per_seed_differences_over_common_seeds():
    """Table 2's "image minus question only": per seed, over the seeds both tasks finished, then scipy's
    t-interval of the differences; a seed only one side finished is left out."""
    def result(task, by_seed):
        return {"row": "m", "task": task, "fraction": None, "seeds": sorted(by_seed),
                "metrics": {"overall": {"values": [by_seed[s] for s in sorted(by_seed)]}}}

    report = {"results": [result("vqa-vqa-rad", {0: 55.0, 1: 51.0, 2: 50.0, 3: 60.0}),
                          result("vqa-question-only-vqa-rad", {0: 44.0, 1: 43.0, 2: 47.0})],
              "rows": [{"label": label, "status": "ok"} for label in ("m", "other")], "failures": [],
              "settings": {"fractions": []},
              "tasks": {"vqa-vqa-rad": {"status": "ready"}, "vqa-question-only-vqa-rad": {"status": "ready"}}}
    gain = tables._paired_difference(report, ("m", "vqa-vqa-rad", None), ("m", "vqa-question-only-vqa-rad", None),
                                     "overall")
    differences = [11.0, 8.0, 3.0]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(differences), scale=stats.sem(differences))
    assert gain["values"] == differences and gain["n"] == 3
    assert (gain["mean"], gain["low"], gain["high"]) == (pytest.approx(np.mean(differences)), pytest.approx(low),
                                                         pytest.approx(high))
    assert tables._paired_difference(report, ("other", "vqa-vqa-rad", None),
                                     ("other", "vqa-question-only-vqa-rad", None), "overall") == {"status": "pending"}


def test_cells_are_seed_major_one_per_row_task_fraction_and_seed(tmp_path):
    _nih_release(tmp_path / "data" / "ChestX-ray14")
    rows = [engine.ModelRow("random", "unimlip-tiny", "random"), engine.ModelRow("b", "unimlip-tiny")]
    config = engine.BenchmarkConfig(rows, tmp_path / "data", tmp_path / "out", replace(engine.CI, seeds=(0, 1)),
                                    datasets=["nih"])
    cells = engine.Benchmark(config).cells()
    assert len(cells) == 2 * 2 * 2 * 2  # seeds x rows x modes x fractions
    assert len({(c.row, c.key) for c in cells}) == len(cells)
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)


@needs_data
def test_a_second_run_skips_finished_cells_and_reruns_only_stale_or_missing_ones(tmp_path):
    calls = []

    def fake_run(self, cell):  # the store is under test, not the training
        calls.append(cell.key)
        vqa = cell.task.startswith("vqa-")
        return {**cell.__dict__, "metrics": ({m: 0.5 for m in ("open", "closed", "overall")} if vqa
                                             else {"macro_auc": 0.5 + 0.01 * cell.seed})}

    args = ["--model", "unimlip-tiny", "--pretrained", "random", "--data-root", str(DATA), "--out", str(tmp_path),
            "--datasets", "vqa-rad", "medpix", "--tasks", "classification", "linear-probe", "vqa",
            "--preset", "ci", "--limit", "16", "--seeds", "0", "1", "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.Benchmark, "run_cell", fake_run)
        benchmark.main(args)
        assert len(calls) == 2 * (2 + 2 * 2)  # seeds x (VQA, question only, 2 modes x 2 fractions)
        calls.clear()
        benchmark.main(args)
        assert calls == []
        (tmp_path / "cells" / "unimlip-tiny_random_" / "classification-medpix__10pct__seed1.json").unlink()
        benchmark.main(args)
        assert calls == ["classification-medpix__10pct__seed1"]
        calls.clear()
        report = benchmark.main(args + ["--set", "vqa.epochs=2"])  # changes the VQA cells' settings only
    assert sorted(calls) == ["vqa-question-only-vqa-rad__all__seed0", "vqa-question-only-vqa-rad__all__seed1",
                             "vqa-vqa-rad__all__seed0", "vqa-vqa-rad__all__seed1"]
    assert report["cells"]["done"] == report["cells"]["planned"] == 12


@real_data
def test_per_seed_weights_and_the_reference_fill_every_table(run):
    """The fixture's rows against ``--reference stock-rn-tiny``: every table holds each other row's
    paired differences (numbers where both rows have them, the status where one has none), the
    pretraining note and the MedPix / VQA-RAD overlap; nothing is left pending."""
    report, out = run["report"], run["out"]
    for record in (json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")):
        for value in record["metrics"].values():
            assert value is None or 0.0 <= value <= 1.0
    tables_by_id = {t["id"]: {row["label"]: row for row in t["rows"]} for t in report["tables"]}
    medpix = tables_by_id["table1-medpix"]
    assert {"tiny", "tiny (linear probe)", "tiny minus stock-rn-tiny",
            "tiny (linear probe) minus stock-rn-tiny (linear probe)"} <= set(medpix)
    probes = {row: [_record(out, row, "linear-probe-medpix", "100pct", seed)["metrics"]["macro_auc"] for seed in SEEDS]
              for row in ("tiny", "stock-rn-tiny")}
    differences = [100 * (ours - theirs) for ours, theirs in zip(probes["tiny"], probes["stock-rn-tiny"])]
    assert medpix["tiny (linear probe) minus stock-rn-tiny (linear probe)"]["cells"]["100 %"]["values"] == (
        pytest.approx(differences))
    assert medpix["broken minus stock-rn-tiny"]["cells"]["100 %"] == {"status": "failed"}
    assert "tiny minus stock-rn-tiny" in tables_by_id["figure2-medpix"]
    assert tables_by_id["table2"]["tiny minus stock-rn-tiny"]["cells"]["vqa-rad/overall"] == {"status": "n/a"}
    markdown = (out / "benchmark.md").read_text()
    assert "| tiny minus stock-rn-tiny | ours, paired |" in markdown and "pending" not in markdown
    assert "Pretraining: none: test checkpoints of random weights" in markdown
    assert "19 MedPix 2.0 images are also VQA-RAD images (17 train, 1 dev, 1 test)" in markdown
    assert json.loads((out / "benchmark.json").read_text())["results"] == json.loads(json.dumps(report["results"]))


# ----------------------------------------------------------------------------- every table recomputed from the cells
def _cells_by_key(out: Path) -> dict:
    """(row, task, fraction) -> {seed: metrics}, read from the cell files alone."""
    cells = {}
    for path in (out / "cells").glob("*/*.json"):
        record = json.loads(path.read_text())
        if "metrics" not in record:
            continue
        task, fraction, seed = path.stem.split("__")
        fraction = None if fraction == "all" else float(fraction.removesuffix("pct")) / 100
        cells.setdefault((record["row"], task, fraction), {})[int(seed.removeprefix("seed"))] = record["metrics"]
    return cells


def test_every_table_cell_is_recomputed_from_the_cell_files(run):
    """Issue 34: every number of every table the benchmark prints (ours, question only, paired rows,
    chance) rebuilt from the per-cell JSON with numpy and scipy, cell by cell."""
    report, out = run["report"], run["out"]
    assert check_every_number(report, _cells_by_key(out)) > 30
    # the columns' labels say what the keys say: Fig. 2's directions
    figure2 = next(t for t in report["tables"] if t["id"].startswith("figure2-"))
    for column in figure2["columns"]:
        direction, k = column["key"].rsplit("_R@", 1)
        assert column["label"] == f"{'I2T' if direction == 'image_to_text' else 'T2I'} R@{k}", column
