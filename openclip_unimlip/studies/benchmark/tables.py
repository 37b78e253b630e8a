"""The benchmark's tables in the paper's layout (Fig. 2, Table 1, Table 2), as JSON, Markdown and plots.

Our rows: per model, the mean over seeds and a 95 % Student t-interval over seeds
(``studies/statistics.t_interval``; ours), in percent. Beside them: chance levels (from the data
each task read) and, where the dataset is one of the paper's, the paper's reported rows
(``evaluation/reported.py``), each labelled ``reported`` with its table and row.

A table is plain JSON: ``{"id", "title", "columns": [{"key", "label"}], "rows": [{"label",
"kind": "ours"|"chance"|"reported", "source", "cells": {key: cell}}], "notes", "decimals"}`` where a
cell is ``{"mean", "low", "high", "n", "values"}`` (ours; ``{"values", "n": 0}`` where every value is
undefined, printed ``undefined``), ``{"value"}`` (chance, reported) or ``{"status"}`` (``skipped``: no
dataset; ``failed``; ``n/a``; ``not run``: a fraction the run did not ask for; ``pending``).
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from openclip_unimlip.evaluation import reported
from openclip_unimlip.evaluation.retrieval import DIRECTIONS, RECALL_KS
from openclip_unimlip.studies.report import BarSeries, bar_chart, difference_text, interval_text, markdown_table
from openclip_unimlip.studies.statistics import paired_t_interval, t_interval

RETRIEVAL_COLUMNS = [(f"{d}_R@{k}", f"{'I2T' if d == 'image_to_text' else 'T2I'} R@{k}")
                     for d in DIRECTIONS for k in RECALL_KS]
VQA_COLUMNS = [("open", "Open"), ("closed", "Closed"), ("overall", "Overall")]
VQA_DATASET_NAMES = {"vqa-rad": "VQA-RAD", "slake": "Slake"}
INTERVAL_NOTE = "ours: mean over seeds [95 % Student t-interval over seeds], in %"


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g} %"


# ----------------------------------------------------------------------------- our numbers
def summarize(records: Sequence[dict]) -> List[dict]:
    """Per (row, task, fraction): each metric's per-seed values and their t-interval, in percent.
    An undefined value (None, NaN: e.g. a macro AUC without any two-class label) is listed but left
    out of the interval."""
    groups: Dict[tuple, Dict[int, dict]] = {}
    for record in records:
        groups.setdefault((record["row"], record["task"], record["fraction"]), {})[record["seed"]] = record["metrics"]
    results = []
    for (row, task, fraction), by_seed in groups.items():
        seeds = sorted(by_seed)
        metrics = {}
        for metric in by_seed[seeds[0]]:
            values = [_percent(by_seed[seed][metric]) for seed in seeds]
            defined = [v for v in values if v is not None]
            metrics[metric] = {"values": values, **(t_interval(defined) if defined else {"n": 0})}
        results.append({"row": row, "task": task, "fraction": fraction, "seeds": seeds, "metrics": metrics})
    return results


def _percent(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else 100 * value


def _find(results: Sequence[dict], row: str, task: str, fraction: Optional[float]) -> Optional[dict]:
    return next((r for r in results if (r["row"], r["task"], r["fraction"]) == (row, task, fraction)), None)


def _our_cell(report: dict, row: dict, task: str, fraction: Optional[float], metric: str) -> dict:
    """The cell of ``row`` for ``task`` at ``fraction``: the interval, or why there is none."""
    task_state = report["tasks"].get(task)
    if task_state is None:
        return {"status": "skipped"}
    if task_state["status"] != "ready":
        return {"status": "failed"}
    if row["status"] != "ok":
        return {"status": "failed"}
    if task.startswith("vqa-") and row.get("vqa_unsupported"):
        return {"status": "n/a"}
    if fraction is not None and fraction not in report["settings"]["fractions"]:
        return {"status": "not run"}  # a column of the paper's layout this run did not ask for
    result = _find(report["results"], row["label"], task, fraction)
    if result is None:
        failed = any(f["row"] == row["label"] and f["task"] == task for f in report["failures"])
        return {"status": "failed" if failed else "pending"}
    return result["metrics"][metric]


def _ours(report: dict, columns: Sequence[tuple]) -> List[dict]:
    """Our rows; ``columns`` are (key, task, fraction, metric)."""
    return [{"label": row["label"], "kind": "ours", "source": f"this run: {row['model']}"
             + (f", {row['pretrained']}" if row["pretrained"] else ""),
             "cells": {key: _our_cell(report, row, task, fraction, metric) for key, task, fraction, metric in columns}}
            for row in report["rows"]]


def _chance(report: dict, columns: Sequence[tuple], source: str) -> dict:
    cells = {}
    for key, task, _, metric in columns:
        chance = report["tasks"].get(task, {}).get("chance") or {}
        value = chance.get(metric)
        cells[key] = {"value": 100 * value} if value is not None else {"status": "skipped"}
    return {"label": "chance", "kind": "chance", "source": source, "cells": cells}


# ----------------------------------------------------------------------------- the tables
def _pairs_note(described: dict, pairs_per_draw: Optional[int]) -> str:
    """How many test rows were read, kept as pairs and left out by reason, and how many are drawn."""
    if not described:
        return "Test split: not read (see Problems)."
    left_out = described["left_out"]
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in left_out.items())
    return (f"Test split: {described['rows_read']:,} rows read, {described['pairs']:,} image-caption pairs kept, "
            f"{sum(left_out.values()):,} left out{f' ({reasons})' if reasons else ''} by the converters' check "
            "(`data.shards.check_rows`; ours: of rows with byte-identical images the first is kept, as one image "
            f"twice in the gallery would make one of the two a wrong hit); {pairs_per_draw:,} pairs drawn per seed "
            "(the draw's seed is the cell's seed).")


def retrieval_table(report: dict, task: str) -> dict:
    dataset = task.removeprefix("retrieval-")
    described = report["tasks"][task].get("describe") or {}
    pairs = report["tasks"][task].get("pairs_per_draw")
    columns = [(key, task, None, key) for key, _ in RETRIEVAL_COLUMNS]
    title = {"roco": "ROCO", "medpix": "MedPix 2.0"}.get(dataset, dataset)
    notes = [_pairs_note(described, pairs)]
    if dataset == "roco":
        gains = "; ".join(f"{'I2T' if g.direction == 'image_to_text' else 'T2I'} R@{g.k} +{g.points:.2f} over "
                          f"{g.over}" for g in reported.FIGURE2_STATED_GAINS)
        notes.append(f"Reported ({reported.FIGURE2_SOURCE}): Fig. 2 is a bar chart whose values the text does not "
                     f"print, so no reported row is shown; the text states Uni-Mlip's gains: {gains}. "
                     f"Compared there: {', '.join(reported.FIGURE2_METHODS)}.")
    else:
        notes.append("Not one of the paper's datasets: no reported rows.")
    return {
        "id": f"figure2-{dataset}", "layout": "Fig. 2", "decimals": 1,
        "title": f"Fig. 2 layout: image-text retrieval on {title}, Recall@K (%)",
        "columns": [{"key": key, "label": label} for key, label in RETRIEVAL_COLUMNS],
        "rows": _ours(report, columns) + _reference_rows(report, columns)
        + [_chance(report, columns, "a random ranking: K / pairs")],
        "notes": notes,
    }


def _split_note(dataset: str, described: dict) -> str:
    if described.get("split_rule") == "official":
        official = {"nih": "NIH's test_list.txt, valid a seeded patient holdout of train_val_list.txt",
                    "chexpert": "CheXpert's valid.csv as test, valid a seeded patient holdout of train.csv",
                    "mimic": "MIMIC-CXR's official split"}[dataset]
        return f"protocol {described['protocol']}, {official}"
    if note := described.get("split_note"):  # how test was chosen (cxr_protocols.patient_split)
        return f"protocol {described.get('protocol')}, the release pooled and split by patient, {note}"
    # a report written before splits carried their note: the rule of that time
    return f"protocol {described.get('protocol')}, the release pooled and split 80/10/10 by patient (seeded)"


def _described(report: dict, *tasks: str) -> dict:
    """The first of ``tasks`` the run read a split for (fine-tuning and the probe read the same split)."""
    for task in tasks:
        if described := (report["tasks"].get(task) or {}).get("describe"):
            return described
    return {}


def table1(report: dict, fractions: Sequence[float]) -> dict:
    fractions = sorted(set(fractions) | set(reported.TABLE1_FRACTIONS))
    names = {"mimic": "MIMIC", "chexpert": "CXP", "nih": "NIH"}
    columns = [(f"{d}@{fraction_label(f)}", f"classification-{d}", f, "macro_auc")
               for d in reported.TABLE1_DATASETS for f in fractions]
    # The linear probe (ours) fills the same columns in rows of its own: every reported row is fine-tuned.
    probe_columns = [(key, task.replace("classification-", "linear-probe-", 1), f, metric)
                     for key, task, f, metric in columns]
    fine_tuned = any(task in report["tasks"] for _, task, _, _ in columns)
    probed = any(task in report["tasks"] for _, task, _, _ in probe_columns)
    rows = _ours(report, columns) + _reference_rows(report, columns) if fine_tuned else []
    if probed:
        rows += [{**row, "label": f"{row['label']} (linear probe)",
                  "source": f"{row['source']}; frozen image tower, a logistic regression per label"}
                 for row in _ours(report, probe_columns)]
        rows += _reference_rows(report, probe_columns, " (linear probe)")
    rows.append(_chance(report, columns if fine_tuned else probe_columns, "a constant score (AUC 0.5)"))
    for row in reported.TABLE1:
        rows.append({"label": f"{row.method} (reported)", "kind": "reported", "source": row.source,
                     "cells": {key: ({"value": v} if (v := reported.table1_value(row, task.removeprefix(
                         "classification-"), f)) is not None else {"status": "n/a"})
                               for key, task, f, _ in columns}})
    splits = [f"{names[d]}: {_split_note(d, described)}" for d in reported.TABLE1_DATASETS
              if (described := _described(report, f"classification-{d}", f"linear-probe-{d}"))]
    return {
        "id": "table1", "layout": "Table 1", "decimals": 1,
        "title": "Table 1 layout: chest X-ray classification, fine-tuned (ours also linear-probed) on 1 / 10 / 100 % "
                 "of the training labels, macro AUC (%)",
        "columns": [{"key": key, "label": f"{names[t.removeprefix('classification-')]} {fraction_label(f)}"}
                    for key, t, f, _ in columns],
        "rows": rows,
        "notes": [
            f"Our rows (data/cxr_protocols.py): {'; '.join(splits) or 'no dataset read'}. CXP and MIMIC follow "
            "CheXclusion, the protocol of Table 1's comparison rows (M-FLAG's table); NIH is split by NIH's own "
            "list files, as Uni-Mlip's split source (its ref. [15]) reads fixed list files. Reported rows: as "
            "printed; their splits are not public.",
            "Macro AUC over the labels with both classes in the test split; a label without a positive (or "
            "without a negative) there has no AUC and is left out of the mean (classification.auc_report).",
            "Rows marked linear probe (ours): the frozen image tower's embedding of each image, standardised on "
            "the training subset, one logistic regression per label, C chosen on the validation split by macro "
            "AUC (evaluation/linear_probe.py); the training subset is the fine-tuning's for the same seed.",
        ],
    }


def medpix_classification_table(report: dict, fractions: Sequence[float]) -> dict:
    tasks = [task for task in ("classification-medpix", "linear-probe-medpix") if task in report["tasks"]]
    described = _described(report, *tasks)
    rows = []
    for task in tasks:
        columns = [(fraction_label(f), task, f, "macro_auc") for f in sorted(fractions)]
        if task == "classification-medpix":
            rows += _ours(report, columns) + _reference_rows(report, columns)
        else:
            rows += [{**row, "label": f"{row['label']} (linear probe)",
                      "source": f"{row['source']}; frozen image tower, a logistic regression on its features"}
                     for row in _ours(report, columns)]
            rows += _reference_rows(report, columns, " (linear probe)")
    rows.append(_chance(report, columns, "a constant score (AUC 0.5)"))
    return {
        "id": "table1-medpix", "layout": "Table 1", "decimals": 1,
        "title": f"Table 1 layout on MedPix 2.0 (stand-in): `{described.get('label', '?')}`, "
                 + " and ".join({"classification-medpix": "fine-tuned",
                                 "linear-probe-medpix": "linear-probed"}[task] for task in tasks)
                 + ", macro one-vs-rest AUC (%) on the official test split",
        "columns": [{"key": key, "label": key} for key, _, _, _ in columns],
        "rows": rows,
        "notes": [f"Classes: {', '.join(described.get('classes', []))}; images: train {described.get('train')}, "
                  f"dev {described.get('valid')}, test {described.get('test')} "
                  "(evaluation/medpix_classification.py). Not one of the paper's datasets: no reported rows.",
                  "The same seed draws the same stratified training subset for every row and both modes; rows "
                  "marked linear probe (ours): the frozen image tower's features, standardised, one multinomial "
                  "logistic regression, C chosen on dev by macro AUC."],
    }


def _paired_difference(report: dict, cell: tuple, reference: tuple, metric: str) -> dict:
    """``cell`` minus ``reference``, each a (row label, task, fraction), taken per seed over the seeds
    both finished (same seed: same training subset and order, and pretraining seed k for ``{seed}``
    weights), with its t-interval (``statistics.paired_t_interval``); or why there is none: the status
    of a side that has no numbers (failed, n/a, skipped, not run), pending while no seed finished on
    both sides, undefined (``n`` 0) where one side's value is undefined at every common seed."""
    rows = {row["label"]: row for row in report["rows"]}
    for label, task, fraction in (cell, reference):
        own = _our_cell(report, rows[label], task, fraction, metric) if label in rows else {"status": "pending"}
        if "status" in own:
            return own
    result, base = (_find(report["results"], *side) for side in (cell, reference))
    by_seed = [dict(zip(r["seeds"], r["metrics"][metric]["values"])) for r in (result, base)]
    if not set(by_seed[0]) & set(by_seed[1]):
        return {"status": "pending"}  # no seed finished on both sides yet
    seeds = [seed for seed in result["seeds"]
             if by_seed[0].get(seed) is not None and by_seed[1].get(seed) is not None]
    if not seeds:  # finished, but undefined on one side at every seed (e.g. no open question)
        return {"values": [], "seeds": [], "n": 0}
    values = [by_seed[0][seed] - by_seed[1][seed] for seed in seeds]
    return {"values": values, "seeds": seeds,
            **paired_t_interval([by_seed[0][s] for s in seeds], [by_seed[1][s] for s in seeds])}


def _reference_rows(report: dict, columns: Sequence[tuple], suffix: str = "") -> List[dict]:
    """With ``--reference``: per other row, its paired per-seed difference to the reference row in
    every column (key, task, fraction, metric); ``suffix`` names the rows' mode (e.g. linear probe)."""
    reference = report["settings"].get("reference")
    if reference is None:
        return []
    return [{"label": f"{row['label']}{suffix} minus {reference}{suffix}", "kind": "paired",
             "source": "per seed, then the mean [95 % t-interval] of the differences; bold: excludes 0",
             "cells": {key: _paired_difference(report, (row["label"], task, fraction), (reference, task, fraction),
                                               metric) for key, task, fraction, metric in columns}}
            for row in report["rows"] if row["label"] != reference]


def table2(report: dict) -> dict:
    names = VQA_DATASET_NAMES
    columns = [(f"{d}/{m}", f"vqa-{d}", None, m) for d in reported.TABLE2_DATASETS for m, _ in VQA_COLUMNS]
    question_only = [(key, f"vqa-question-only-{task.removeprefix('vqa-')}", fraction, metric)
                     for key, task, fraction, metric in columns]
    rows = []
    for row, blank in zip(_ours(report, columns), _ours(report, question_only), strict=True):
        blank.update(label=f"{row['label']}: question only", source=f"{row['source']}; image tokens left out")
        gain = {"label": f"{row['label']}: image minus question only", "kind": "paired",
                "source": "per seed, then the mean [95 % t-interval] of the differences",
                "cells": {key: _paired_difference(report, (row["label"], task, None), (row["label"], blank_task, None),
                                                  metric)
                          for (key, task, _, metric), (_, blank_task, _, _) in zip(columns, question_only)}}
        rows += [row, blank, gain]
    rows += _reference_rows(report, columns)
    majority = _chance(report, columns, "the training split's most common answer of each question's type (open, "
                                        "closed): it is told the answer type, which the model is not")
    rows.append({**majority, "label": "most common answer, told the answer type"})
    for row in reported.TABLE2:
        rows.append({"label": f"{row.method} (reported)", "kind": "reported", "source": row.source,
                     "cells": {key: {"value": reported.table2_value(row, task.removeprefix("vqa-"), metric)}
                               for key, task, _, metric in columns}})
    notes = ["Question only: the same fine-tune of the same weights with the image tokens left out of the fusion "
             "input (evaluation/vqa.py, blank_image): what the model gets from the question alone."]
    rad = report["tasks"].get("vqa-vqa-rad", {}).get("describe")
    if rad:
        split = report["settings"]["recipes"]["vqa"]["vqa_rad_split"]
        notes.append(f"VQA-RAD: {rad['train']} training and {rad['test']} test questions read ({rad['test_open']} "
                     f"open, {rad['test_closed']} closed; {rad['test_unseen_answers']} test answers never seen in "
                     "training count as wrong). " + (
                         "The standard split (MEVF's trainset.json, the paper's 3,515 = 3,064 + 451 questions, sec. "
                         "4.1), so the reported rows used the same questions: the release's freeform and para "
                         "questions and every row's question frame, 284 of them frames of test questions (the "
                         "split's known leak; data/vqa_releases.py)." if split == "standard" else
                         "The training set without question frames (vqa_rad_split 'no-frames'): no test question's "
                         "frame in training, so the reported rows, trained on the standard split with them, are "
                         "not comparable."))
    notes += [f"{row['label']}: {row['vqa_unsupported']}." for row in report["rows"] if row.get("vqa_unsupported")]
    return {
        "id": "table2", "layout": "Table 2", "decimals": 2,
        "title": "Table 2 layout: medical VQA accuracy (%)",
        "columns": [{"key": key, "label": f"{names[t.removeprefix('vqa-')]} {dict(VQA_COLUMNS)[m]}"}
                    for key, t, _, m in columns],
        "rows": rows, "notes": notes,
    }


def build_tables(report: dict) -> List[dict]:
    """Every table whose datasets the run found (or tried), in the paper's order."""
    tasks, fractions = report["tasks"], report["settings"]["fractions"]
    tables = [retrieval_table(report, task) for task in ("retrieval-roco", "retrieval-medpix") if task in tasks]
    if any(f"{kind}-{d}" in tasks for d in reported.TABLE1_DATASETS for kind in ("classification", "linear-probe")):
        tables.append(table1(report, fractions))
    if "classification-medpix" in tasks or "linear-probe-medpix" in tasks:
        tables.append(medpix_classification_table(report, fractions))
    if any(f"vqa-{d}" in tasks for d in reported.TABLE2_DATASETS):
        tables.append(table2(report))
    return tables


# ----------------------------------------------------------------------------- Markdown
def format_cell(cell: dict, decimals: int, paired: bool = False) -> str:
    """A cell's text; ``paired``: a difference, signed and **bold** where its interval excludes 0."""
    if "status" in cell:
        return {"skipped": "—"}.get(cell["status"], cell["status"])
    if "value" in cell:
        return f"{cell['value']:.{decimals}f}"
    if not cell.get("n"):
        return "undefined"
    if paired:
        return difference_text(cell["mean"], cell.get("low"), cell.get("high"), cell.get("excludes_zero"))
    return interval_text(cell["mean"], cell.get("low"), cell.get("high"))


def table_markdown(table: dict) -> List[str]:
    keys = [c["key"] for c in table["columns"]]
    rows = []
    for row in table["rows"]:
        kind = {"ours": "ours", "paired": "ours, paired", "chance": "chance", "reported": "reported"}[row["kind"]]
        decimals = 1 if row["kind"] in ("ours", "paired") else table["decimals"]
        rows.append([row["label"], kind, *(format_cell(row["cells"][key], decimals, row["kind"] == "paired")
                                           for key in keys), row["source"]])
    return ([f"## {table['title']}", ""]
            + markdown_table(["method", "", *(c["label"] for c in table["columns"]), "source"], rows)
            + [""] + [f"- {note}" for note in table["notes"]] + [""])


def format_markdown(report: dict, plots: Dict[str, List[str]]) -> str:
    settings = report["settings"]
    lines = [
        "# Medical downstream benchmark", "",
        f"Preset `{settings['preset']}`, seeds {', '.join(map(str, settings['seeds']))}, device "
        f"`{settings['device']}`, precision `{settings['precision']}`, data root `{settings['data_root']}`. "
        f"{INTERVAL_NOTE}; chance and reported rows as labelled."
        + (f" Rows `X minus {settings['reference']}`: X's paired per-seed differences to the reference row "
           f"`{settings['reference']}`, in points." if settings.get("reference") else ""), "",
        f"Pretraining: {settings.get('pretraining_note') or 'not stated (--pretraining-note)'}", "",
        "## Datasets", "",
        *markdown_table(["dataset", "status", "where / why"],
                        [[d["title"], d["status"], d["message"] or d["path"] or ""] for d in report["datasets"]]),
        "", *([report["overlap"], ""] if report.get("overlap") else []),
        "## Models", "",
        *markdown_table(["row", "model", "pretrained", "status"],
                        [[row["label"], f"`{row['model']}`", row["pretrained"] or "(none)",
                          row["status"] if row["status"] == "ok" else f"{row['status']}: {row['message']}"]
                         for row in report["rows"]]),
        "",
    ]
    for table in report["tables"]:
        lines += table_markdown(table)
        lines += [f"![{Path(path).stem}]({path})" for path in plots.get(table["id"], [])]
        lines += [""] if plots.get(table["id"]) else []
    problems = [f"- dataset {d['title']}: {d['message']}" for d in report["datasets"] if d["status"] == "bad"]
    problems += [f"- task {name}: {state['message']}" for name, state in report["tasks"].items()
                 if state["status"] != "ready"]
    problems += [f"- model {row['label']}: {row['message']}" for row in report["rows"] if row["status"] != "ok"]
    problems += [f"- {f['row']} / {f['task']}" + (f" {fraction_label(f['fraction'])}" if f["fraction"] else "")
                 + f" seed {f['seed']}: {f['message']}" for f in report["failures"]]
    if problems:
        lines += ["## Problems (each stopped only its own cells)", "", *problems, ""]
    cells = report["cells"]
    lines += ["## Cells", "", f"{cells['done']} of {cells['planned']} cells done ({cells['run_now']} run now, "
              f"{cells['resumed']} finished earlier), {cells['failed']} failed, {cells['stopped']} stopped; "
              f"{cells['seconds'] / 60:.1f} min of recorded cell time. Every cell is one JSON file under `cells/`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _bars(table: dict, keys: Sequence[str], labels: Sequence[str], path: Path, title: str,
          with_reported: bool) -> None:
    rows = [r for r in table["rows"] if (r["kind"] == "ours" and any("mean" in r["cells"][k] for k in keys))
            or (with_reported and r["kind"] == "reported")]
    series = []
    for row in rows:
        values = [row["cells"][key].get("mean", row["cells"][key].get("value")) for key in keys]
        heights = [value if value is not None else 0.0 for value in values]
        errors = None
        if row["kind"] == "ours":
            # drawn inside the metric's range: a t-interval over two or three seeds can overshoot 0 or 100
            cells = [row["cells"][key] for key in keys]
            errors = ([value - max(c["low"], 0.0) if c.get("low") is not None else 0.0
                       for c, value in zip(cells, values)],
                      [min(c["high"], 100.0) - value if c.get("high") is not None else 0.0
                       for c, value in zip(cells, values)])
        series.append(BarSeries(row["label"], heights, errors, hatched=row["kind"] == "reported"))
    chance = next(r for r in table["rows"] if r["kind"] == "chance")
    bar_chart(path, labels, series, "%", title, reference=[chance["cells"][key].get("value") for key in keys])


def write_plots(report: dict, folder: Path) -> Dict[str, List[str]]:
    """Recall bars per retrieval table and open/closed/overall VQA bars per dataset; returns
    table id -> the paths of its plots, relative to the report's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = {}
    for table in report["tables"]:
        ours = [r for r in table["rows"] if r["kind"] == "ours" and any("mean" in c for c in r["cells"].values())]
        if not ours:
            continue
        if table["layout"] == "Fig. 2":
            keys = [c["key"] for c in table["columns"]]
            path = folder / f"{table['id']}.png"
            _bars(table, keys, [c["label"] for c in table["columns"]], path, table["title"], with_reported=False)
            plots[table["id"]] = [f"plots/{path.name}"]
        elif table["id"] == "table2":
            for dataset in reported.TABLE2_DATASETS:
                keys = [f"{dataset}/{m}" for m, _ in VQA_COLUMNS]
                if not any("mean" in r["cells"][k] for r in ours for k in keys):
                    continue
                path = folder / f"table2-{dataset}.png"
                _bars(table, keys, [label for _, label in VQA_COLUMNS], path,
                      f"{VQA_DATASET_NAMES[dataset]}: accuracy by question type (%), reported rows hatched",
                      with_reported=True)
                plots.setdefault("table2", []).append(f"plots/{path.name}")
    return plots
