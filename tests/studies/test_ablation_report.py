"""Issue 34: every number the ablation prints (``ablation.md``: stage 1's curve, Tables 3 and 4 both
evaluations, the reference rows, every metric's difference) rebuilt cell by cell from the per-run
JSON records, with NumPy and SciPy and none of the package's statistics.

Made-up records (no training): nine rows, three or four seeds each, random ranks of 48 val pairs,
I2T and T2I drawn from different laws and the two evaluations differently, so that a swapped
column, direction or evaluation, a wrong std ddof, ``x`` for ``100 x``, an R@K threshold off by
one or a wrong baseline each changes a printed cell. They go through the real public path:
records in ``<out>/runs`` as the grid writes them, ``write_outputs`` (its bar chart not drawn),
then the Markdown and the JSON it writes are read back.

The independent references:

* a run's R@K is ``100 * mean(rank <= K)`` and its mean rank ``mean(rank)``, from the record's
  ranks; a cell is the mean and the sample standard deviation (``ddof=1``) over the row's seeds;
* a difference's estimate is the mean over the seeds the row shares with the baseline row of the
  per-seed metric difference;
* its interval (printed as 95 %): ``paired_difference`` documents a percentile bootstrap that
  draws the seeds and, independently, the val pairs with replacement. Its exact law is computed
  here: every seed draw is enumerated (``itertools.product``, 27 for three seeds), and given it
  a replicate is the mean of N i.i.d. draws of a per-query integer value, whose law is the N-th
  convolution power of that value's law (by FFT). A printed bound must lie between the exact
  quantiles at ``p -/+ δ``, ``δ = 4 sqrt(p (1 - p) / B)`` (a distribution-free bound on where the
  empirical p-quantile of B = 4000 replicates falls), widened by the printing's 0.05 rounding;
* the paper's numbers: typed here from Uni-Mlip's Tables 3 and 4 (ROCO, R@1 %, I2T / T2I), row
  by row; the rows' designs (vision input, objectives, Freeze BN; the five objective marks) from
  the same tables.
"""
import itertools
import json
import math
import re

import numpy as np
import pytest

from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.experiment import DataConfig, PretrainConfig
from openclip_unimlip.studies.grid import settings_hash

from ablation_records import scored  # noqa: E402
from paths import REPO  # noqa: E402

NUM_PAIRS = 48
NUM_RESAMPLES = 4000  # write_outputs' summarize default
LEVEL = 0.95
# rows of the grid, their seeds and how good their ranks are (per evaluation and direction: the
# exponent of u in rank = ceil(N u^a); larger is better). Seeds beyond the baseline's are unpaired.
BASELINE_SEEDS = (0, 1, 2, 3)
SEEDS = {"itc_mlm": BASELINE_SEEDS, "clip": (0, 1, 2, 5), "views_no_simclr": (1, 2, 3)}
QUALITY = {"itc_mlm": 2.0, "simclr_no_freeze": 1.2, "views_no_simclr": 1.4, "simclr_freeze": 3.0,
           "text_perturbed": 2.2, "image_perturbed": 2.5, "all_five": 3.5, "untrained": 1.0, "clip": 1.8}
DIRECTIONS = ("image_to_text", "text_to_image")
METRICS = (("i2t_r1", "image_to_text", 1), ("t2i_r1", "text_to_image", 1),
           ("i2t_r10", "image_to_text", 10), ("t2i_r10", "text_to_image", 10),
           ("i2t_mean_rank", "image_to_text", None), ("t2i_mean_rank", "text_to_image", None))
EVAL_SPLIT = "test"  # what the scored pairs are, passed to write_outputs as a study's ExperimentData.eval_split
EVALUATION_TITLES = {
    "as_trained": f"as trained (the paper's evaluation), scored on the {EVAL_SPLIT} pairs",
    "bn_reestimated": f"BatchNorm statistics re-estimated on clean train images (precise BN), scored on the "
                      f"{EVAL_SPLIT} pairs"}
SCORES = ["R@1 I2T / T2I", "R@10 I2T / T2I", "mean rank I2T / T2I", "Δ I2T R@1 [95 %]", "Δ T2I R@1 [95 %]"]
# Uni-Mlip, Table 3 (row by row): vision encoder input, training objectives, Freeze BN; I2T, T2I
PAPER_TABLE3 = [("itc_mlm", ("V", "ITC, MLM", "✗"), (22.2, 21.7)),
                ("simclr_no_freeze", ("V, Va, Vb", "ITC, MLM, I2I (SimCLR)", "✗"), (5.0, 1.0)),
                ("views_no_simclr", ("V, Va, Vb", "ITC, MLM", "✗"), (4.0, 6.9)),
                ("simclr_freeze", ("V, Va, Vb", "ITC, MLM, I2I (SimCLR)", "✓"), (25.7, 24.0))]
# Uni-Mlip, Table 4 (row by row): L_ITC, L_MLM, L_IT~C (text perturbed), L_I~TC (image perturbed), L_I2I
PAPER_TABLE4 = [("itc_mlm", "✓✓✗✗✗", (22.2, 21.7)), ("text_perturbed", "✓✓✓✗✗", (23.2, 23.3)),
                ("image_perturbed", "✓✓✗✓✗", (23.8, 23.4)), ("simclr_freeze", "✓✓✗✗✓", (25.7, 24.0)),
                ("all_five", "✓✓✓✓✓", (25.9, 24.5))]
REFERENCE_LABELS = {"untrained (no training; ours)": "untrained", "ITC only (plain CLIP; ours)": "clip",
                    "ITC + MLM (baseline)": "itc_mlm"}
ROUNDING = 0.05 + 1e-9  # a number printed with one decimal


# ----- made-up records ---------------------------------------------------------------------------
def _ranks(rng, quality):
    return np.clip(np.ceil(NUM_PAIRS * rng.random(NUM_PAIRS) ** quality), 1, NUM_PAIRS).astype(int)


def _records():
    rng = np.random.default_rng(34)
    records = []
    for key in ablation.MEDPIX_RUN_ORDER:  # every row
        for seed in SEEDS.get(key, (0, 1, 2)):
            quality = QUALITY[key] * (1 + 0.1 * seed)
            evaluations = {
                "as_trained": {"image_to_text": _ranks(rng, quality), "text_to_image": _ranks(rng, 0.6 * quality)},
                "bn_reestimated": {"image_to_text": _ranks(rng, 1.3 * quality),
                                   "text_to_image": _ranks(rng, 0.8 * quality)}}
            records.append({"row": key, "seed": seed, "flags": [], "num_pairs": NUM_PAIRS,
                            "evaluations": {e: scored(r) for e, r in evaluations.items()},
                            "train_seconds": 10.0 + seed, "num_steps": 4, "final_losses": {}, "checkpoint": None})
    return records


def _stage1_curve():
    """open_clip_train's per-epoch val metrics (fractions and ranks), distinct in every cell."""
    rng = np.random.default_rng(7)
    return [{"epoch": epoch, **{f"{d}_R@{k}": float(rng.uniform(0.01, 0.6)) for d in DIRECTIONS for k in (1, 5, 10)},
             **{f"{d}_mean_rank": float(rng.uniform(3, 20)) for d in DIRECTIONS}} for epoch in range(1, 6)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """``write_outputs`` on the made-up records: (records, raw stage-1 val metrics, Markdown, JSON)."""
    out = tmp_path_factory.mktemp("ablation")
    config = ablation.AblationConfig(data=DataConfig(root=str(out / "data")), pretrain=PretrainConfig(epochs=2),
                                     out=out, rows=ablation.MEDPIX_RUN_ORDER, seeds=(0, 1, 2, 3, 5))
    origin = settings_hash(ablation.run_settings(config))
    records = _records()
    (out / "runs").mkdir()
    for record in records:
        path = out / "runs" / f"{ablation.run_name(record['row'], record['seed'])}.json"
        path.write_text(json.dumps({**record, "origin": origin, "seconds": 1.0, "units": 1}))
    raw = _stage1_curve()
    stage1 = ablation.stage1_dir(config)
    stage1.mkdir()
    curve = ablation.val_curve(raw)  # what ensure_stage1 stores
    (stage1 / "stage1.json").write_text(json.dumps({"checkpoint": "stage1.pt", "curve": curve, "plateaued": False,
                                                    "train_seconds": 312.0, "num_steps": 95}))
    with pytest.MonkeyPatch.context() as patch:  # the bar chart holds no number of the tables' (2 s to draw)
        patch.setattr(ablation, "plot_summary", lambda summary, path: path)
        ablation.write_outputs(config, EVAL_SPLIT)
    return records, raw, (out / "ablation.md").read_text(), json.loads((out / "ablation.json").read_text())


# ----- reading the Markdown ----------------------------------------------------------------------
def _split(line):
    return [cell.strip() for cell in line.strip()[1:-1].split("|")]


def _tables(markdown):
    """{title line: (header, rows)} of every table, its title the last bold-led line above it."""
    tables, title, lines = {}, None, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("**"):
            title = line
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(_split(row))
            assert title not in tables, title
            tables[title] = (_split(line), rows)
    return tables


def _find(tables, prefix, suffix=""):
    matches = [t for t in tables if t.startswith(prefix) and t.endswith(suffix)]
    assert len(matches) == 1, (prefix, suffix, list(tables))
    return tables[matches[0]]


def _mean_std(text):
    mean, std = text.split(" ± ")
    return float(mean), float(std)


DIFFERENCE = re.compile(r"^(\*\*)?([+-]\d+\.\d) \[([+-]\d+\.\d), ([+-]\d+\.\d)\](\*\*)?$")


def _difference(text):
    match = DIFFERENCE.match(text)
    assert match and bool(match[1]) == bool(match[5]), text
    return float(match[2]), float(match[3]), float(match[4]), bool(match[1])


# ----- the independent computations --------------------------------------------------------------
def _runs(records, key):
    return {r["seed"]: r for r in records if r["row"] == key}


def _value(ranks, k):
    ranks = np.asarray(ranks)
    return 100.0 * np.mean(ranks <= k) if k else float(np.mean(ranks))


def _exact_law(difference):
    """The exact law of a replicate of the two-level bootstrap of the mean of ``difference``
    ([S, N] integers): (support, probabilities) of the sum over the drawn (seed, query) cells."""
    num_seeds, num_queries = difference.shape
    low, high = int(difference.min()), int(difference.max())
    width = num_queries * num_seeds * (high - low) + 1
    size = 1 << (width - 1).bit_length()
    law = np.zeros(width)
    for draw in itertools.product(range(num_seeds), repeat=num_seeds):
        counts = np.bincount(draw, minlength=num_seeds)
        per_query = counts @ difference - num_seeds * low  # >= 0: one draw of a query
        one = np.bincount(per_query, minlength=num_seeds * (high - low) + 1) / num_queries
        law += np.fft.irfft(np.fft.rfft(one, size) ** num_queries, size)[:width] / num_seeds ** num_seeds
    support = (np.arange(width) + num_queries * num_seeds * low)
    return support, np.clip(law, 0, None) / np.clip(law, 0, None).sum()


def _quantile(support, law, p):
    return support[min(np.searchsorted(np.cumsum(law), p), len(support) - 1)]


@pytest.fixture(scope="module")
def expected(written):
    """Per (row, evaluation, metric): the seeds' values, and for rows beside the baseline the
    difference's estimate and the exact law's quantile bounds on the printed interval."""
    records = written[0]
    baseline = _runs(records, ablation.BASELINE)
    tail = (1 - LEVEL) / 2
    delta = 4 * math.sqrt(tail * (1 - tail) / NUM_RESAMPLES)
    cells = {}
    for key in QUALITY:
        runs = _runs(records, key)
        shared = sorted(set(runs) & set(baseline))
        for evaluation in ablation.EVALUATIONS:
            for short, direction, k in METRICS:
                values = [_value(runs[s]["evaluations"][evaluation]["ranks"][direction], k) for s in sorted(runs)]
                cell = {"values": values, "mean": np.mean(values), "std": np.std(values, ddof=1)}
                if key != ablation.BASELINE:
                    rows = np.array([runs[s]["evaluations"][evaluation]["ranks"][direction] for s in shared])
                    bases = np.array([baseline[s]["evaluations"][evaluation]["ranks"][direction] for s in shared])
                    integer = (rows <= k).astype(int) - (bases <= k) if k else rows - bases
                    scale = (100.0 if k else 1.0) / integer.size
                    support, law = _exact_law(integer)
                    bounds = [scale * _quantile(support, law, p) for p in (tail - delta, tail + delta,
                                                                           1 - tail - delta, 1 - tail + delta)]
                    cell["difference"] = {
                        "seeds": shared, "estimate": np.mean([_value(rows[i], k) - _value(bases[i], k)
                                                              for i in range(len(shared))]),
                        "low": bounds[:2], "high": bounds[2:],
                        "std": scale * math.sqrt(np.sum(law * support ** 2) - np.sum(law * support) ** 2)}
                cells[key, evaluation, short] = cell
    return cells


# ----- the checks ----------------------------------------------------------------------------------
def _check_difference(text, cell, rounding=ROUNDING):
    estimate, low, high, bold = _difference(text)
    d = cell["difference"]
    assert estimate == pytest.approx(d["estimate"], abs=rounding), (text, d)
    assert d["low"][0] - rounding <= low <= d["low"][1] + rounding, (text, d)
    assert d["high"][0] - rounding <= high <= d["high"][1] + rounding, (text, d)
    if d["low"][0] > 0 or d["high"][1] < 0:
        assert bold, (text, d)
    elif d["low"][1] <= 0 <= d["high"][0]:
        assert not bold, (text, d)
    return bold


def _check_scores(cells, expected, key, evaluation):
    """The five score columns of Tables 3, 4 and the reference rows."""
    for cell, metric in zip(cells[:3], ("r1", "r10", "mean_rank")):
        for text, direction in zip(cell.split(" / "), ("i2t", "t2i"), strict=True):
            mean, std = _mean_std(text)
            want = expected[key, evaluation, f"{direction}_{metric}"]
            assert mean == pytest.approx(want["mean"], abs=ROUNDING), (key, evaluation, direction, metric, text)
            assert std == pytest.approx(want["std"], abs=ROUNDING), (key, evaluation, direction, metric, text)
    bold = []
    for text, short in zip(cells[3:5], ("i2t_r1", "t2i_r1"), strict=True):
        if key == ablation.BASELINE:
            assert text == "–"
        else:
            bold.append(_check_difference(text, expected[key, evaluation, short]))
    return bold


def test_tables_3_and_4_and_the_reference_rows_are_recomputed(written, expected):
    records, _, markdown, _ = written
    tables = _tables(markdown)
    bold = []
    for evaluation, title in EVALUATION_TITLES.items():
        header, rows = _find(tables, "**Table 3**", title)
        assert header == ["Vision encoder input", "Training objectives", "Freeze BN", *SCORES, "seeds",
                          "paper R@1 I2T / T2I"]
        assert len(rows) == len(PAPER_TABLE3)
        for row, (key, design, paper) in zip(rows, PAPER_TABLE3):
            assert tuple(row[:3]) == design, (key, row)
            bold += _check_scores(row[3:8], expected, key, evaluation)
            assert row[8] == str(len(_runs(records, key)))
            assert row[9] == f"{paper[0]:.1f} / {paper[1]:.1f}"
        header, rows = _find(tables, "**Table 4**", title)
        assert header == ["ITC", "MLM", "text-perturbed ITC", "image-perturbed ITC", "I2I (SimCLR, BN frozen)",
                          *SCORES, "seeds", "paper R@1 I2T / T2I"]
        assert len(rows) == len(PAPER_TABLE4)
        for row, (key, marks, paper) in zip(rows, PAPER_TABLE4):
            assert "".join(row[:5]) == marks, (key, row)
            bold += _check_scores(row[5:10], expected, key, evaluation)
            assert row[10] == str(len(_runs(records, key)))
            assert row[11] == f"{paper[0]:.1f} / {paper[1]:.1f}"
        header, rows = _find(tables, "**Reference rows**", title)
        assert header == ["row", *SCORES, "Δ I2T mean rank [95 %]", "Δ T2I mean rank [95 %]", "seeds"]
        assert [row[0] for row in rows] == list(REFERENCE_LABELS)
        for row in rows:
            key = REFERENCE_LABELS[row[0]]
            bold += _check_scores(row[1:6], expected, key, evaluation)
            for text, short in zip(row[6:8], ("i2t_mean_rank", "t2i_mean_rank")):
                if key == ablation.BASELINE:
                    assert text == "–"
                else:
                    bold.append(_check_difference(text, expected[key, evaluation, short]))
            assert row[8] == str(len(_runs(records, key)))
    assert any(bold) and not all(bold)  # the data reach both sides of the bold rule


def test_every_metric_difference_is_recomputed(written, expected):
    _, _, markdown, _ = written
    header, rows = _find(_tables(markdown), "**Row − baseline, every metric**")
    assert "95 % bootstrap interval" in markdown
    assert header == ["row", "evaluation", "Δ I2T R@1", "Δ T2I R@1", "Δ I2T R@10", "Δ T2I R@10", "Δ I2T mean rank",
                      "Δ T2I mean rank"]
    keys = [k for k in ablation.MEDPIX_RUN_ORDER if k != ablation.BASELINE]
    assert [(row[0], row[1]) for row in rows] == [(ablation.ROWS[k].label, e.replace("_", " "))
                                                  for k in keys for e in ablation.EVALUATIONS]
    for row, (key, evaluation) in zip(rows, itertools.product(keys, ablation.EVALUATIONS)):
        for text, (short, _, _) in zip(row[2:], METRICS, strict=True):
            _check_difference(text, expected[key, evaluation, short])


def test_the_json_summary_is_recomputed(written, expected):
    """The unrounded numbers behind the cells: the seeds' values, the paired seeds, the bootstrap's
    bounds (within its Monte Carlo error of the exact law's quantiles) and its spread."""
    summary = written[3]["summary"]
    assert set(summary) == set(ablation.MEDPIX_RUN_ORDER)
    for (key, evaluation, short), cell in expected.items():
        got = summary[key][evaluation][short]
        assert got["values"] == pytest.approx(cell["values"]) and got["mean"] == pytest.approx(cell["mean"])
        assert got["std"] == pytest.approx(cell["std"])
        if key == ablation.BASELINE:
            assert "difference" not in summary[key]
            continue
        d, want = summary[key]["difference"][evaluation][short], cell["difference"]
        assert summary[key]["difference"]["seeds"] == want["seeds"]
        assert d["estimate"] == pytest.approx(want["estimate"])
        assert want["low"][0] <= d["low"] <= want["low"][1] and want["high"][0] <= d["high"] <= want["high"][1]
        assert d["std"] == pytest.approx(want["std"], rel=0.06)
        assert d["excludes_zero"] == (d["low"] > 0 or d["high"] < 0)


def test_stage1_curve_is_recomputed(written):
    """open_clip_train's val metrics per epoch: R@K as fractions printed in %, mean ranks as is."""
    _, raw, markdown, _ = written
    title = next(line for line in markdown.splitlines() if line.startswith("**Stage 1**"))
    assert f"{len(raw)} epochs, 95 steps, {312 / 60:.1f} min" in title and "plateaued: NO" in title
    header, rows = _find(_tables(markdown), "**Stage 1**")
    columns = [("I2T R@1", "image_to_text_R@1", 100), ("T2I R@1", "text_to_image_R@1", 100),
               ("I2T R@10", "image_to_text_R@10", 100), ("T2I R@10", "text_to_image_R@10", 100),
               ("I2T mean rank", "image_to_text_mean_rank", 1), ("T2I mean rank", "text_to_image_mean_rank", 1)]
    assert header == ["epoch", *(label for label, _, _ in columns)]
    assert len(rows) == len(raw)
    for row, epoch in zip(rows, raw):
        assert row[0] == str(epoch["epoch"])
        for text, (_, name, scale) in zip(row[1:], columns, strict=True):
            assert float(text) == pytest.approx(scale * epoch[name], abs=ROUNDING), (epoch["epoch"], name)


def test_the_settings_name_the_protocol_that_ran(written):
    """The made-up grid is two-stage (stage 1 for 10 epochs): the report's settings say so, with SimCLR
    from stage 2's first epoch."""
    settings = written[3]["settings"]
    assert (settings["protocol"], settings["stage1_epochs"], settings["simclr_start_epoch"]) == ("two-stage", 10, 0)
    assert settings["dataset"] == "embedded"  # the made-up grid's DataConfig


@pytest.mark.parametrize("rows, listed", [(["untrained"], ["untrained"]), (["clip"], ["clip"]),
                                          ([ablation.BASELINE], []), ([ablation.BASELINE, "untrained"],
                                                                      [ablation.BASELINE, "untrained"])])
def test_reference_rows_are_listed_beside_the_baseline_not_alone_with_it(written, rows, listed):
    """The reference table lists the grid's reference rows (before any training, plain CLIP), with the
    baseline beside them when other rows ran; a grid of the baseline alone has no reference table."""
    summary = {key: written[3]["summary"][key] for key in rows}
    tables = _tables(ablation.format_tables(summary, eval_split=EVAL_SPLIT))
    labels = {label: key for key, label in ((k, ablation.ROWS[k].label) for k in ablation.ROWS)}
    found = [rows_of for title, (_, rows_of) in tables.items() if title.startswith("**Reference rows**")]
    assert len(found) == (2 if listed else 0)  # one per evaluation
    for body in found:
        assert sorted(labels[row[0]] for row in body) == sorted(listed)


def test_a_row_without_a_common_seed_or_any_run_does_not_stop_the_rows_after_it():
    """A row with no run is left out, and one none of whose seeds the baseline ran gets no difference;
    the rows after them are still summarised, with their differences."""
    records = _records()
    kept = [r for r in records if (r["row"], r["seed"]) in {(ablation.BASELINE, 0), (ablation.BASELINE, 1),
                                                               ("simclr_freeze", 0), ("all_five", 0), ("all_five", 1)}]
    for record in kept:
        if record["row"] == "simclr_freeze":
            record["seed"] = 7  # a seed the baseline never ran
    rows = (ablation.BASELINE, "clip", "simclr_freeze", "all_five")  # clip: a row with no run at all
    summary = ablation.summarize(kept, rows, num_resamples=200)
    assert list(summary) == [ablation.BASELINE, "simclr_freeze", "all_five"]
    assert "difference" not in summary["simclr_freeze"] and summary["simclr_freeze"]["as_trained"]["i2t_r1"]["values"]
    assert summary["all_five"]["difference"]["seeds"] == [0, 1]


def test_the_chart_shows_each_rows_r1_as_trained_recomputed(written, expected, monkeypatch, tmp_path):
    """``ablation.png``: per row (the summary's order), I2T then T2I R@1 as trained: mean, ± the seeds'
    std, and each seed's value as a dot."""
    drawn = {}
    monkeypatch.setattr(ablation, "bar_chart", lambda path, categories, series, title: drawn.update(
        path=path, categories=categories, series=series) or path)
    summary = written[3]["summary"]
    assert ablation.plot_summary(summary, tmp_path / "chart.png") == tmp_path / "chart.png"
    keys = list(summary)
    assert drawn["categories"] == [ablation.ROWS[key].label for key in keys]
    assert [series.label for series in drawn["series"]] == ["I2T R@1", "T2I R@1"]
    for series, short in zip(drawn["series"], ("i2t_r1", "t2i_r1")):
        cells = [expected[key, "as_trained", short] for key in keys]
        assert series.heights == pytest.approx([cell["mean"] for cell in cells])
        stds = [cell["std"] for cell in cells]
        assert series.errors[0] == pytest.approx(stds) and series.errors[1] == pytest.approx(stds)
        assert [list(points) for points in series.points] == [pytest.approx(cell["values"]) for cell in cells]


def test_the_bootstrap_draws_the_replicates_the_docs_state():
    """docs/ablation.md: "each of 4000 replicates" (the paired bootstrap's interval)."""
    import inspect

    docs = (REPO / "docs" / "ablation.md").read_text(encoding="utf-8")
    stated = int(re.search(r"each of (\d+) replicates", docs).group(1))
    assert inspect.signature(ablation.summarize).parameters["num_resamples"].default == stated
