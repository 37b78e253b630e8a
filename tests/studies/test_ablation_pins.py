"""The ablation's user-facing settings pinned to where a user reads them: each preset, as the command
builds it, equal to its row of docs/ablation.md's "Presets and budget" table (the steps column
recomputed from the pairs and the batch); the retrieval draw of the paper; the plateau rule on a
window of any length; the progress line's numbers. Seconds, no training."""
import math
import re
from pathlib import Path

import pytest

from openclip_unimlip.commands import ablation as ablation_command
from openclip_unimlip.studies import ablation

from ablation_records import scored  # noqa: E402
from medpix_release import empty_medpix_release  # noqa: E402
from paths import REPO  # noqa: E402

PRESET_FLAGS = {"default (CPU)": [], "`--full` (GPU)": ["--full"], "`--dataset medpix` (CPU)": ["--dataset", "medpix"]}


def _presets_table() -> dict:
    """docs/ablation.md's presets table: the first column -> {header: cell}."""
    text = (REPO / "docs" / "ablation.md").read_text(encoding="utf-8")
    section = text.split("## Presets and budget", 1)[1].lstrip("\n").splitlines()
    lines = section[:next(i for i, line in enumerate(section) if not line.startswith("|"))]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def _epochs_and_steps(cell: str) -> tuple:
    """'20 epochs, 380 steps' -> (20, 380, exact: True); '~2100 steps' is approximate."""
    epochs, approximate, steps = re.fullmatch(r"(\d+) epochs, (~?)(\d+) steps", cell).groups()
    return int(epochs), int(steps), not approximate


@pytest.mark.parametrize("preset", sorted(PRESET_FLAGS))
def test_each_preset_is_its_row_of_the_docs_table(preset, tmp_path):
    row = _presets_table()[preset]
    release = empty_medpix_release(tmp_path / "MedPix-2-0")  # the command checks it; no data is read
    flags = PRESET_FLAGS[preset] + (["--data-root", str(release)] if "medpix" in preset else [])
    config = ablation_command.config_from_args(ablation_command.parse_args([*flags, "--out", str(tmp_path)]))
    pretrain, data = config.pretrain, config.data
    train, val = (int(n) for n in re.match(r"(\d+) / (\d+)", row["data (train / val pairs)"]).groups())
    if "medpix" in preset:  # MedPix's own splits: nothing drawn
        assert not hasattr(data, "num_samples") and Path(data.release) == release
        assert data.shard_size == int(row["pairs a shard"])
    else:
        assert (data.num_samples, data.val_fraction) == (train + val, pytest.approx(val / (train + val)))
        assert data.shard_size == int(row["pairs a shard"])
    steps_per_epoch = math.ceil(train / pretrain.batch_size)  # OpenCLIP's webdataset epoch: a last short batch
    for stage, epochs in (("stage 1", config.stage1_epochs), ("stage 2 (each row)", pretrain.epochs)):
        documented_epochs, documented_steps, exact = _epochs_and_steps(row[stage])
        assert epochs == documented_epochs
        assert epochs * steps_per_epoch == (documented_steps if exact else pytest.approx(documented_steps, rel=0.02))
    assert pretrain.batch_size == int(row["batch"]) and pretrain.lr == float(row["lr"])
    assert pretrain.warmup == int(row["warm-up steps"]) and pretrain.workers == int(row["loader workers"])
    assert config.seeds == tuple(int(seed) for seed in row["seeds"].split(", "))
    trained_rows, seeds = (int(n) for n in re.match(r"1 \+ (\d+) × (\d+)", row["runs"]).groups())
    assert len([r for r in config.rows if r != "untrained"]) == trained_rows and len(config.seeds) == seeds
    assert ("untrained" in config.rows) == ("`untrained`" in row["runs"])
    assert config.simclr_start_epoch == int(row["SimCLR from (`--from-scratch`)"].removeprefix("epoch "))


def test_the_librarys_one_stage_simclr_start_is_the_default_presets():
    """``AblationConfig`` built without the command starts the one-stage protocol's views where the
    command's default preset does (the docs table's "epoch 1")."""
    row = _presets_table()["default (CPU)"]
    default = ablation.AblationConfig.__dataclass_fields__["simclr_start_epoch"].default
    assert default == int(row["SimCLR from (`--from-scratch`)"].removeprefix("epoch "))


def test_rows_are_scored_on_the_papers_2000_pair_draw():
    """Uni-Mlip, "Implementation Details of Downstream Tasks": "we randomly select 2000 test image-text
    pairs" (the whole val split where it is smaller)."""
    assert ablation.AblationConfig.__dataclass_fields__["eval_num_samples"].default == 2000


@pytest.mark.parametrize("epochs", [1, 2, 3, 4])
def test_the_plateau_rule_compares_the_last_epochs_with_the_one_before_them(epochs):
    """Whatever the window: the mean rank just before the last ``epochs`` epochs against the best of
    them; the epochs before that one do not count."""
    head = [90.0, 5.0] * 3  # earlier epochs, far higher and far lower: none counts
    flat = head + [20.0] * (epochs + 1)  # the last epochs no lower than the one before them
    steep = head + [20.0] + [20.0 - 5.0 * (i + 1) for i in range(epochs)]  # 25 % lower or more
    for mean_ranks, plateaued in ((flat, True), (steep, False)):
        curve = [{"i2t_mean_rank": rank + 1.0, "t2i_mean_rank": rank - 1.0} for rank in mean_ranks]
        assert ablation.has_plateaued(curve, epochs=epochs, tolerance=0.05) is plateaued
    just_below = head + [20.0] + [20.0 * 0.951] * epochs  # 4.9 % lower: within a 5 % tolerance
    curve = [{"i2t_mean_rank": rank, "t2i_mean_rank": rank} for rank in just_below]
    assert ablation.has_plateaued(curve, epochs=epochs, tolerance=0.05)
    assert not ablation.has_plateaued(curve, epochs=epochs, tolerance=0.04)
    exactly = head + [4.0] + [3.0] * epochs  # 25 % lower, exactly in binary: not *less* than 25 %
    curve = [{"i2t_mean_rank": rank, "t2i_mean_rank": rank} for rank in exactly]
    assert not ablation.has_plateaued(curve, epochs=epochs, tolerance=0.25)


def test_the_progress_line_shows_both_directions_in_percent():
    record = {"evaluations": {"as_trained": {"metrics": {"image_to_text_R@1": 0.1234, "text_to_image_R@1": 0.5}}},
              "train_seconds": 61.6}
    line = ablation.AblationGrid.summarize(None, record)
    assert line == "I2T R@1 12.3%, T2I R@1 50.0%, trained 62 s"


def test_the_docs_table_is_read_from_the_file():
    """The table the presets test reads has every preset the command offers, and nothing else."""
    assert set(_presets_table()) == set(PRESET_FLAGS)
    assert {"medpix" if "medpix" in name else "full" if "full" in name else "cpu"
            for name in PRESET_FLAGS} == set(ablation.PRESETS)



def test_batchnorm_is_frozen_in_every_row_with_simclr_but_the_one_that_ablates_it():
    """The paper (Sec. 3.3; Table 4's "I2I (SimCLR, BN frozen)" column): SimCLR always runs with frozen
    BatchNorm statistics; only Table 3's "+ SimCLR, BN statistics updating" row lets them update."""
    frozen = {key: row.freeze_bn for key, row in ablation.ROWS.items()}
    with_simclr = {key for key, row in ablation.ROWS.items() if "simclr" in row.terms}
    assert with_simclr == {"simclr_no_freeze", "simclr_freeze", "all_five"}
    assert {key for key, value in frozen.items() if value} == with_simclr - {"simclr_no_freeze"}


def test_the_baseline_is_found_by_value_whatever_string_names_it(tmp_path):
    """Rows named on the command line are strings argparse built, not the module's literals: the
    baseline among them still gets no difference against itself, and the others get theirs."""
    records = []
    for key, seed in ((ablation.BASELINE, 0), (ablation.BASELINE, 1), ("all_five", 0), ("all_five", 1)):
        run = scored({"image_to_text": [1, 2, 3, 1], "text_to_image": [2, 1, 1, 4]})
        records.append({"row": key, "seed": seed, "train_seconds": 1.0,
                        "evaluations": {"as_trained": run, "bn_reestimated": run}})
    rows = tuple("".join(list(key)) for key in (ablation.BASELINE, "all_five"))  # new string objects
    assert rows[0] == ablation.BASELINE and rows[0] is not ablation.BASELINE
    summary = ablation.summarize(records, rows, num_resamples=100)
    assert "difference" not in summary[rows[0]] and summary["all_five"]["difference"]["seeds"] == [0, 1]
