"""The benchmark's tables (``studies/benchmark/tables.py``) on a made-up report, in seconds: random
per-seed metrics for three rows, one of them the reference, one seed missing on one side of a pair,
an undefined AUC, a row whose VQA does not apply and a row that did not load. Every number is
rebuilt with numpy and scipy (tests/benchmark_tables.py, also run on a real benchmark in
test_benchmark.py), every cell without a number says why, the columns follow the paper's layouts and
the Markdown prints what the JSON holds."""
import json
import math
import random

import pytest
from names import run_time_name
from scipy import stats

from openclip_unimlip.evaluation import reported
from openclip_unimlip.studies.benchmark import tables

from benchmark_tables import check_every_number

SEEDS = (0, 1, 2)
FRACTIONS = (0.01, 1.0)  # 10 %, a column of Table 1, is not run
PAIRS_PER_DRAW = 40
RETRIEVAL_KEYS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
TASK_METRICS = {"retrieval-roco": RETRIEVAL_KEYS, "classification-nih": ["macro_auc"],
                "linear-probe-nih": ["macro_auc"], "classification-medpix": ["macro_auc"],
                "linear-probe-medpix": ["macro_auc"], "vqa-vqa-rad": ["open", "closed", "overall"],
                "vqa-question-only-vqa-rad": ["open", "closed", "overall"]}
VQA_CHANCE = {"open": 0.05, "closed": 0.55, "overall": 0.32}
MISSING_SEED = ("other", "classification-nih", 1.0, 2)  # a cell of one side of a pair never finished
FAILED = {"row": "other", "task": "classification-medpix", "fraction": 1.0, "seed": 0, "message": "diverged"}
UNDEFINED = ("ours", "linear-probe-nih", 0.01, 1)  # a macro AUC without any two-class label
NO_OPEN_QUESTIONS = ("stock", "vqa-vqa-rad")  # open accuracy undefined at every seed


def _fractions(task: str) -> tuple:
    return FRACTIONS if task.startswith(("classification-", "linear-probe-")) else (None,)


def _records() -> list:
    draw = random.Random(0)
    records = []
    for row in ("ours", "stock", "other"):
        for task, metrics in TASK_METRICS.items():
            if row == "other" and task.startswith("vqa-"):
                continue  # its VQA does not apply
            for fraction in _fractions(task):
                for seed in SEEDS:
                    if (row, task, fraction, seed) == MISSING_SEED or (row, task, fraction) == (
                            FAILED["row"], FAILED["task"], FAILED["fraction"]):  # it failed at its first seed
                        continue
                    values = {metric: draw.random() for metric in metrics}
                    if (row, task, fraction, seed) == UNDEFINED:
                        values["macro_auc"] = float("nan")
                    if (row, task) == NO_OPEN_QUESTIONS:
                        values["open"] = None
                    records.append({"row": row, "task": task, "fraction": fraction, "seed": seed, "metrics": values})
    return records


def _chance(task: str) -> dict:
    if task.startswith("retrieval-"):
        return {key: int(key.rsplit("@", 1)[1]) / PAIRS_PER_DRAW for key in RETRIEVAL_KEYS}
    return dict(VQA_CHANCE) if task.startswith("vqa-") else {"macro_auc": 0.5}


def _describe(task: str) -> dict:
    if task.startswith("retrieval-"):
        return {"rows_read": 52, "pairs": 50, "left_out": {"no image": 2}}
    if task.endswith("-nih"):
        return {"protocol": "all14", "split_rule": "official"}
    if task.endswith("-medpix"):
        return {"label": "modality", "classes": ["CT", "MR"], "train": 40, "valid": 10, "test": 10}
    return {"train": 30, "test": 12, "test_open": 5, "test_closed": 7, "test_unseen_answers": 1}


@pytest.fixture(scope="module")
def report() -> dict:
    records = _records()
    report = {
        "settings": {"preset": "made-up", "seeds": list(SEEDS), "fractions": list(FRACTIONS), "data_root": "/data",
                     "device": "cpu", "precision": "fp32", "recipes": {"vqa": {"vqa_rad_split": "standard"}},
                     "reference": run_time_name("stock"), "pretraining_note": "none"},  # as argparse gives it
        "overlap": None,
        "datasets": [{"name": "roco", "title": "ROCO", "status": "found", "path": "/data/roco", "message": None},
                     {"name": "slake", "title": "SLAKE", "status": "bad", "path": "/data/Slake1.0",
                      "message": "train.json is not JSON"},
                     {"name": "mimic", "title": "MIMIC-CXR", "status": "skipped", "path": None, "message": None}],
        "tasks": {**{task: {"status": "ready", "message": None, "describe": _describe(task), "chance": _chance(task),
                            **({"pairs_per_draw": PAIRS_PER_DRAW} if task.startswith("retrieval-") else {})}
                     for task in TASK_METRICS},
                  "classification-chexpert": {"status": "failed", "message": "no labels", "describe": None,
                                              "chance": None}},
        "rows": [{"label": "ours", "model": "unimlip-tiny", "pretrained": "ours.pt", "status": "ok", "message": None},
                 {"label": "stock", "model": "RN50", "pretrained": None, "status": "ok", "message": None},
                 {"label": "other", "model": "RN50-quickgelu", "pretrained": None, "status": "ok", "message": None,
                  "vqa_unsupported": "not applicable: no Hugging Face text transformer"},
                 {"label": "broken", "model": "unimlip-tiny", "pretrained": "broken.pt", "status": "failed",
                  "message": "does not load"}],
        "cells": {"done": len(records), "planned": len(records) + 3, "run_now": 7, "resumed": len(records) - 7,
                  "failed": 1, "stopped": 2, "seconds": 642.0},
        "results": tables.summarize(records), "failures": [FAILED],
    }
    # read back as from benchmark.json, twice (before and after the tables): every name and status is
    # then a string built at run time, equal to the code's literals but not the same objects
    report = json.loads(json.dumps(report))
    report["tables"] = tables.build_tables(report)
    return json.loads(json.dumps(report))


@pytest.fixture(scope="module")
def cells_by_key() -> dict:
    """(row, task, fraction) -> {seed: metrics}, from the records alone (NaN read as undefined)."""
    cells = {}
    for record in _records():
        metrics = {name: None if value is None or math.isnan(value) else value
                   for name, value in record["metrics"].items()}
        cells.setdefault((record["row"], record["task"], record["fraction"]), {})[record["seed"]] = metrics
    return cells


def _table(report: dict, table_id: str) -> dict:
    return next(table for table in report["tables"] if table["id"] == table_id)


def _row(table: dict, label: str) -> dict:
    return next(row for row in table["rows"] if row["label"] == label)


def _cell(report: dict, table_id: str, label: str, key: str) -> dict:
    return _row(_table(report, table_id), label)["cells"][key]


def _printed_rows(markdown: str, table: dict) -> dict:
    """Row label -> the fields of its line (label, kind, cells, source), read from ``table``'s own
    section of the Markdown."""
    section = markdown.split(f"## {table['title']}\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| "):
            fields = line.removeprefix("| ").removesuffix(" |").split(" | ")
            rows[fields[0]] = fields
    return rows


def _printed(markdown: str, table: dict) -> dict:
    """Row label -> the cells it prints."""
    return {label: fields[2:2 + len(table["columns"])] for label, fields in _printed_rows(markdown, table).items()}


def test_every_number_is_recomputed_from_the_per_seed_metrics(report, cells_by_key):
    # counted by hand, by table: rows of ours (broken has none), pairs to stock, chance
    figure2 = 3 * 6 + 2 * 6 + 6  # 3 rows x 6 recalls, ours and other minus stock, K / pairs
    table1 = 2 * (3 * 2 + 2 * 2) + 3  # fine-tuned and probed, 1 % and 100 % of NIH; chance at 1, 10, 100 %
    medpix = 2 * (3 * 2 + 2 * 2) + 2 - 2  # other's fine-tune at 100 % failed: no number, nor a pair
    # ours and stock: image, question only, their gain; ours minus stock (other: n/a); stock's open
    # accuracy, undefined, and the two pairs it is in are counted as undefined cells
    table2 = 3 * (2 * 3) + 3
    assert check_every_number(report, cells_by_key) == figure2 + table1 + medpix + table2
    for key, value in VQA_CHANCE.items():
        assert _cell(report, "table2", "most common answer, told the answer type", f"vqa-rad/{key}") == {
            "value": pytest.approx(100 * value)}


def test_a_pair_uses_the_seeds_both_sides_finished_and_an_undefined_auc_is_listed_but_not_averaged(report):
    cell = _cell(report, "table1", "other minus stock", "nih@100 %")
    assert cell["seeds"] == [0, 1] and cell["n"] == 2
    undefined = _cell(report, "table1", "ours (linear probe)", "nih@1 %")
    assert undefined["values"][1] is None and undefined["n"] == 2
    defined = [v for v in undefined["values"] if v is not None]
    assert undefined["mean"] == pytest.approx(sum(defined) / 2)
    low, high = stats.t.interval(0.95, 1, loc=undefined["mean"], scale=stats.sem(defined))
    assert (undefined["low"], undefined["high"]) == (pytest.approx(low), pytest.approx(high))


def test_every_cell_without_a_number_says_why(report):
    assert [t["id"] for t in report["tables"]] == ["figure2-roco", "table1", "table1-medpix", "table2"]
    assert _cell(report, "figure2-roco", "broken", "image_to_text_R@1") == {"status": "failed"}
    assert _cell(report, "table2", "other", "vqa-rad/open") == {"status": "n/a"}
    assert _cell(report, "table2", "other minus stock", "vqa-rad/open") == {"status": "n/a"}
    assert _cell(report, "table2", "ours", "slake/overall") == {"status": "skipped"}  # no SLAKE task
    assert _cell(report, "table1", "ours", "nih@10 %") == {"status": "not run"}  # a fraction not asked for
    assert _cell(report, "table1", "ours", "mimic@1 %") == {"status": "skipped"}
    assert _cell(report, "table1", "broken minus stock", "nih@1 %") == {"status": "failed"}
    assert _cell(report, "table1", "ours", "chexpert@1 %") == {"status": "failed"}  # the task failed
    assert _cell(report, "table1-medpix", "other", "100 %") == {"status": "failed"}  # its first cell failed
    assert _cell(report, "table1-medpix", "other minus stock", "100 %") == {"status": "failed"}
    assert _cell(report, "table2", "stock", "vqa-rad/open") == {"values": [None] * len(SEEDS), "n": 0}
    assert _cell(report, "table2", "ours minus stock", "vqa-rad/open") == {"values": [], "seeds": [], "n": 0}
    assert not any(row["label"].startswith("stock minus") for table in report["tables"] for row in table["rows"])


def test_columns_follow_the_papers_layouts(report):
    labels = lambda table_id: [column["label"] for column in _table(report, table_id)["columns"]]  # noqa: E731
    assert labels("figure2-roco") == ["I2T R@1", "I2T R@5", "I2T R@10", "T2I R@1", "T2I R@5", "T2I R@10"]
    assert labels("table1") == [f"{name} {percent} %" for name in ("MIMIC", "CXP", "NIH") for percent in (1, 10, 100)]
    assert labels("table1-medpix") == ["1 %", "100 %"]
    assert labels("table2") == [f"{name} {kind}" for name in ("VQA-RAD", "Slake") for kind in ("Open", "Closed",
                                                                                                 "Overall")]
    reported_rows = [row["label"] for row in _table(report, "table1")["rows"] if row["kind"] == "reported"]
    assert reported_rows == [f"{row.method} (reported)" for row in reported.TABLE1]


def test_the_markdown_prints_each_number_of_the_json(report):
    table2 = _table(report, "table2")
    printed = _printed(tables.format_markdown(report, {}), table2)
    keys = [column["key"] for column in table2["columns"]]
    for label in ("ours", "ours: question only", "ours: image minus question only", "ours minus stock"):
        row = _row(table2, label)
        for key, text in zip(keys, printed[label], strict=True):
            cell = row["cells"][key]
            if "mean" not in cell:
                assert text == ("undefined" if cell.get("n") == 0 else "—")  # stock's open accuracy; SLAKE: no task
                continue
            sign = "+" if row["kind"] == "paired" else ""
            expected = f"{cell['mean']:{sign}.1f} [{cell['low']:{sign}.1f}, {cell['high']:{sign}.1f}]"
            assert text.strip("*") == expected, (label, key)
            assert text.startswith("**") == (row["kind"] == "paired" and (cell["low"] > 0 or cell["high"] < 0))


def test_the_markdown_lists_datasets_problems_cells_and_reported_rows_at_each_tables_decimals(report):
    markdown = tables.format_markdown(report, {"figure2-roco": ["plots/figure2-roco.png"]})
    assert "Rows `X minus stock`: X's paired per-seed differences to the reference row `stock`" in markdown
    assert "\n![figure2-roco](plots/figure2-roco.png)\n\n## Table 1 layout" in markdown
    assert "| ROCO | found | /data/roco |" in markdown and "| SLAKE | bad | train.json is not JSON |" in markdown
    assert "| MIMIC-CXR | skipped |  |" in markdown
    assert "| ours | `unimlip-tiny` | ours.pt | ok |" in markdown and "| stock | `RN50` | (none) | ok |" in markdown
    assert "| broken | `unimlip-tiny` | broken.pt | failed: does not load |" in markdown
    problems = markdown.split("## Problems (each stopped only its own cells)\n\n")[1].split("\n\n")[0].splitlines()
    assert problems == ["- dataset SLAKE: train.json is not JSON", "- task classification-chexpert: no labels",
                        "- model broken: does not load", "- other / classification-medpix 100 % seed 0: diverged"]
    done = len(_records())
    assert (f"{done} of {done + 3} cells done (7 run now, {done - 7} finished earlier), 1 failed, 2 stopped; "
            "10.7 min of recorded cell time.") in markdown
    for table_id, method in (("table1", reported.TABLE1[0].method), ("table2", reported.TABLE2[0].method)):
        table = _table(report, table_id)
        lines = _printed(markdown, table)
        row = _row(table, f"{method} (reported)")
        decimals = {"table1": 1, "table2": 2}[table_id]  # as each table prints the paper's numbers
        assert lines[row["label"]] == [f"{cell['value']:.{decimals}f}" if "value" in cell else cell["status"]
                                       for cell in (row["cells"][column["key"]] for column in table["columns"])]
        ours = _cell(report, table_id, "ours", table["columns"][-3 if table_id == "table1" else 0]["key"])
        assert f"{ours['mean']:.1f} [{ours['low']:.1f}, {ours['high']:.1f}]" in lines["ours"]  # ours: 1 decimal
    assert "| stock | ours | undefined |" in markdown  # Table 2's open accuracy, undefined at every seed
    figure2 = _printed_rows(markdown, _table(report, "figure2-roco"))
    assert figure2["ours"][-1] == "this run: unimlip-tiny, ours.pt" and figure2["stock"][-1] == "this run: RN50"
    for table_id in ("figure2-roco", "table1-medpix"):  # chance at one decimal, as the recalls and AUCs
        table = _table(report, table_id)
        values = [_row(table, "chance")["cells"][c["key"]]["value"] for c in table["columns"]]
        assert _printed(markdown, table)["chance"] == [f"{value:.1f}" for value in values]


def test_a_cell_is_printed_unsigned_unless_it_is_a_difference():
    cell = {"mean": 1.25, "low": 0.5, "high": 2.0, "n": 2, "excludes_zero": True}
    assert tables.format_cell(cell, 2) == "1.2 [0.5, 2.0]"
    assert tables.format_cell(cell, 2, paired=True) == "**+1.2 [+0.5, +2.0]**"  # the interval excludes 0


def test_the_notes_say_what_was_read_and_drawn(report):
    roco = _table(report, "figure2-roco")["notes"]
    assert roco[0].startswith("Test split: 52 rows read, 50 image-caption pairs kept, 2 left out (no image 2) by ")
    assert roco[0].endswith(f"{PAIRS_PER_DRAW} pairs drawn per seed (the draw's seed is the cell's seed).")
    for gain in reported.FIGURE2_STATED_GAINS:
        direction = {"image_to_text": "I2T", "text_to_image": "T2I"}[gain.direction]
        assert f"{direction} R@{gain.k} +{gain.points:.2f} over {gain.over}" in roco[1]
    assert "NIH: protocol all14, NIH's test_list.txt" in _table(report, "table1")["notes"][0]
    vqa_notes = _table(report, "table2")["notes"]
    assert "VQA-RAD: 30 training and 12 test questions read (5 open, 7 closed; 1 test answers never seen" in (
        vqa_notes[1]) and "The standard split (MEVF's trainset.json" in vqa_notes[1]
    assert vqa_notes[2] == "other: not applicable: no Hugging Face text transformer."


def test_the_plots_draw_the_tables_means_clipped_intervals_chance_and_reported_rows(report, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(tables, "bar_chart", lambda path, categories, series, ylabel, title, reference: drawn.append(
        (path, categories, series, reference)))
    roco = _table(report, "figure2-roco")
    no_numbers = {**roco, "id": "figure2-medpix",  # our rows are there, every cell pending
                  "rows": [{**row, "cells": {key: {"status": "pending"} for key in row["cells"]}}
                           if row["kind"] != "chance" else row for row in roco["rows"]]}
    folder = tmp_path / "out" / "plots"  # made with its parents
    assert tables.write_plots({**report, "tables": [no_numbers, *report["tables"]]}, folder) == {
        "figure2-roco": ["plots/figure2-roco.png"], "table2": ["plots/table2-vqa-rad.png"]}  # no SLAKE numbers
    assert [path for path, *_ in drawn] == [folder / "figure2-roco.png", folder / "table2-vqa-rad.png"]
    without_pairs = [{**table, "rows": [row for row in table["rows"] if row["kind"] != "paired"]}
                     for table in report["tables"]]  # a run without --reference: ours alone
    assert set(tables.write_plots({**report, "tables": without_pairs}, folder)) == {"figure2-roco", "table2"}
    drawn[2:] = []
    for (_, categories, series, reference), table_id, keys in (
            (drawn[0], "figure2-roco", RETRIEVAL_KEYS), (drawn[1], "table2", ["vqa-rad/open", "vqa-rad/closed",
                                                                              "vqa-rad/overall"])):
        table = _table(report, table_id)
        with_numbers = [row for row in table["rows"]
                        if row["kind"] == "ours" and any("mean" in row["cells"][key] for key in keys)]
        shown = with_numbers + [row for row in table["rows"] if row["kind"] == "reported" and table_id == "table2"]
        assert [bars.label for bars in series] == [row["label"] for row in shown]
        chance = next(row for row in table["rows"] if row["kind"] == "chance")
        assert reference == [chance["cells"][key]["value"] for key in keys]
        for bars, row in zip(series, shown):
            cells = [row["cells"][key] for key in keys]
            assert bars.hatched == (row["kind"] == "reported")
            if row["kind"] == "reported":
                assert list(bars.heights) == [cell["value"] for cell in cells] and bars.errors is None
                continue
            assert list(bars.heights) == [cell.get("mean", 0.0) for cell in cells]  # undefined: no bar
            below, above = bars.errors  # the interval drawn inside 0..100 %
            assert list(below) == pytest.approx([cell["mean"] - max(cell["low"], 0) if "mean" in cell else 0.0
                                                 for cell in cells])
            assert list(above) == pytest.approx([min(cell["high"], 100) - cell["mean"] if "mean" in cell else 0.0
                                                 for cell in cells])
    assert categories == ["Open", "Closed", "Overall"]
    table2 = _table(report, "table2")  # VQA-RAD's numbers under Slake
    slake_only = {**table2, "rows": [{**row, "cells": {key: row["cells"][key.replace("slake/", "vqa-rad/")]
                                                       if key.startswith("slake/") else {"status": "skipped"}
                                                       for key in row["cells"]}} for row in table2["rows"]]}
    assert tables.write_plots({**report, "tables": [slake_only]}, tmp_path / "slake") == {
        "table2": ["plots/table2-slake.png"]}


def test_variants_of_the_report_each_change_only_what_they_say(report):
    """Built again from a changed report: another row's failure, or this row's failure on another
    task, leaves a missing cell pending; seeds that two rows never share leave their pair pending;
    a probe-only chest X-ray run takes its chance row from the probe; a fine-tune alone still makes
    the MedPix table; a retrieval set that is not ROCO has no reported gains; the no-frames VQA-RAD
    split says its reported rows are not comparable; an unstated pretraining says so."""
    def variant(**changes) -> dict:
        return json.loads(json.dumps({**report, **changes}))

    others = variant(failures=[{**FAILED, "row": row} for row in ("alpha", "zeta")]  # before and after "other"
                     + [{**FAILED, "task": task} for task in ("classification-chexpert", "linear-probe-medpix")])
    assert _row(tables.medpix_classification_table(others, FRACTIONS), "other")["cells"]["100 %"] == {
        "status": "pending"}

    def unshared(record):  # ours finished seeds 0 and 1 of NIH at 1 %, stock only seed 2
        if record["task"] != "classification-nih" or record["fraction"] != 0.01:
            return True
        return (record["row"], record["seed"] == 2) not in {("ours", True), ("stock", False)}

    disjoint = variant(results=tables.summarize([r for r in _records() if unshared(r)]))
    assert _row(tables.table1(disjoint, FRACTIONS), "ours minus stock")["cells"]["nih@1 %"] == {"status": "pending"}

    probe_only = variant(tasks={k: v for k, v in report["tasks"].items() if not k.startswith("classification-")})
    chance = _row(tables.table1(probe_only, FRACTIONS), "chance")
    assert chance["cells"]["nih@1 %"] == {"value": 50.0} and chance["cells"]["mimic@1 %"] == {"status": "skipped"}

    fine_tune_only = variant(tasks={k: v for k, v in report["tasks"].items() if k != "linear-probe-medpix"})
    assert "table1-medpix" in [table["id"] for table in tables.build_tables(fine_tune_only)]

    medpix = variant(tasks={**report["tasks"], "retrieval-medpix": report["tasks"]["retrieval-roco"]})
    table = tables.retrieval_table(medpix, "retrieval-medpix")
    assert table["notes"][1] == "Not one of the paper's datasets: no reported rows." and "MedPix 2.0" in table["title"]

    by_ours = variant(settings={**report["settings"], "reference": "ours"})  # "stock" and "other" sort after it
    assert [row["label"] for row in tables.retrieval_table(by_ours, "retrieval-roco")["rows"]
            if row["kind"] == "paired"] == ["stock minus ours", "other minus ours", "broken minus ours"]

    earlier = variant(tasks={**report["tasks"], "classification-nih": {
        **report["tasks"]["classification-nih"], "describe": {"protocol": "all14"}}})  # no split_rule yet
    assert "NIH: protocol all14, the release pooled and split 80/10/10 by patient (seeded)" in (
        tables.table1(earlier, FRACTIONS)["notes"][0])

    no_frames = variant(settings={**report["settings"], "recipes": {"vqa": {"vqa_rad_split": "no-frames"}}})
    assert "The training set without question frames" in tables.table2(no_frames)["notes"][1]

    unstated = variant(settings={**report["settings"], "pretraining_note": None})
    assert "Pretraining: not stated (--pretraining-note)" in tables.format_markdown(unstated, {})
    assert "Pretraining: none\n" in tables.format_markdown(report, {})


def test_reported_rows_hold_the_papers_values(report):
    """Each reported cell of Table 1 is the paper's value as evaluation/reported.py holds it (checked
    against the paper's text in tests/evaluation/test_reported.py); n/a would mark a column it lacks."""
    table = _table(report, "table1")
    cells = [(row, column) for row in reported.TABLE1 for column in table["columns"]]
    values = []
    for row, column in cells:
        dataset, fraction = column["key"].split("@")
        value = reported.table1_value(row, dataset, float(fraction.removesuffix(" %")) / 100)
        values.append(value)
        assert _cell(report, "table1", f"{row.method} (reported)", column["key"]) == (
            {"value": value} if value is not None else {"status": "n/a"})
    assert len(values) == 9 * len(reported.TABLE1) and any(v is not None for v in values)
