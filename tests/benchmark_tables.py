"""The benchmark's tables recomputed independently (issue 34): every number of ours, of the paired
rows and of the chance rows rebuilt from the per-seed metrics with numpy and scipy, by the paper's
column layouts; used on a real run (studies/benchmark/test_benchmark.py) and on made-up reports
(studies/benchmark/test_tables.py)."""
import numpy as np
import pytest
from scipy import stats


def _t_interval(values) -> tuple:
    mean = float(np.mean(values))
    if len(values) < 2 or np.std(values) == 0:
        return mean, mean, mean  # zero width, as statistics.seed_interval documents
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, low, high


def _column(table_id: str, key: str) -> tuple:
    """(dataset, fraction, metric) of a column, by the paper's layouts: Fig. 2's R@K per direction,
    Table 1's dataset and label fraction, Table 2's dataset and question type."""
    if table_id.startswith("figure2-"):
        return table_id.removeprefix("figure2-"), None, key
    if table_id == "table1-medpix":
        return "medpix", float(key.removesuffix(" %")) / 100, "macro_auc"
    if table_id == "table1":
        dataset, fraction = key.split("@")
        return dataset, float(fraction.removesuffix(" %")) / 100, "macro_auc"
    dataset, metric = key.split("/")
    return dataset, None, metric


def _task(table_id: str, dataset: str, mode: str) -> str:
    kind = {"figure2": "retrieval", "table1": "classification", "table2": "vqa"}[table_id.split("-")[0]]
    if mode == "linear probe":
        kind = "linear-probe"
    if mode == "question only":
        kind = "vqa-question-only"
    return f"{kind}-{dataset}"


def _side(label: str, rows: set) -> tuple:
    """(row, mode) of one side of a row label: "tiny", "tiny (linear probe)", "tiny: question only"."""
    for suffix, mode in ((" (linear probe)", "linear probe"), (": question only", "question only")):
        if label.endswith(suffix) and label.removesuffix(suffix) in rows:
            return label.removesuffix(suffix), mode
    assert label in rows, label
    return label, ""


def check_every_number(report: dict, cells: dict) -> int:
    """Every number of every table in ``report`` (ours, question only, paired rows, the chance rows
    of Fig. 2 and Table 1) rebuilt from ``cells``, (row, task, fraction) -> {seed: metrics}, with numpy
    and scipy; returns how many were checked, after checking that this is all of them."""
    rows = {row["label"] for row in report["rows"]}
    checked = 0
    for table in report["tables"]:
        for row in table["rows"]:
            for key, cell in row["cells"].items():
                if "values" not in cell and row["kind"] != "chance":
                    continue
                dataset, fraction, metric = _column(table["id"], key)
                if row["kind"] == "chance":  # Table 2's (most common answer) is checked where it is counted
                    if "value" in cell and table["id"].startswith("figure2-"):
                        k = int(key.rsplit("@", 1)[1])  # K of the pairs drawn per seed
                        drawn = report["tasks"][f"retrieval-{dataset}"]["pairs_per_draw"]
                        assert cell["value"] == pytest.approx(100 * k / drawn), (table["id"], key)
                        checked += 1
                    elif "value" in cell and table["id"].startswith("table1"):
                        assert cell["value"] == 50.0, (table["id"], key)  # a constant score's ROC AUC
                        checked += 1
                    continue
                if row["kind"] == "paired":
                    if " minus " in row["label"] and not row["label"].endswith("image minus question only"):
                        left, right = (_side(side, rows) for side in row["label"].split(" minus "))
                    else:
                        name = row["label"].removesuffix(": image minus question only")
                        left, right = (name, ""), (name, "question only")
                    by_seed = [cells[(label, _task(table["id"], dataset, mode), fraction)]
                               for label, mode in (left, right)]
                    seeds = [s for s in sorted(set(by_seed[0]) & set(by_seed[1]))  # both sides defined
                             if by_seed[0][s][metric] is not None and by_seed[1][s][metric] is not None]
                    values = [100 * (by_seed[0][s][metric] - by_seed[1][s][metric]) for s in seeds]
                    defined = values
                    if not values:  # finished on both sides, undefined on one at every seed
                        assert cell == {"values": [], "seeds": [], "n": 0}, (table["id"], row["label"], key)
                        checked += 1
                        continue
                else:
                    label, mode = _side(row["label"], rows)
                    by_seed = cells[(label, _task(table["id"], dataset, mode), fraction)]
                    values = [None if by_seed[s][metric] is None else 100 * by_seed[s][metric] for s in sorted(by_seed)]
                    defined = [v for v in values if v is not None]  # an undefined AUC is listed, not averaged
                    if not defined:
                        assert cell == {"values": values, "n": 0}, (table["id"], row["label"], key)
                        checked += 1
                        continue
                mean, low, high = _t_interval(defined)
                assert cell["values"] == pytest.approx(values), (table["id"], row["label"], key)
                assert (cell["mean"], cell["low"], cell["high"]) == (
                    pytest.approx(mean), pytest.approx(low), pytest.approx(high)), (table["id"], row["label"], key)
                checked += 1
    numbers = sum("values" in cell or (row["kind"] == "chance" and "value" in cell and t["id"] != "table2")
                  for t in report["tables"] for row in t["rows"] if row["kind"] != "reported"
                  for cell in row["cells"].values())
    assert checked == numbers  # every number of ours, every chance of Fig. 2 and Table 1
    return checked
