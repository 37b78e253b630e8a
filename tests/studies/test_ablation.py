"""The ablation benchmark: each row's flags mean what the row says, the paired bootstrap agrees
with its exact distribution on a small example, the tables come out in the paper's layout, the
stage-1 cache is keyed by its settings, and a two-row miniature grid runs both stages end to end
through open_clip_train (stage 2 starting from stage 1's weights, stage 1 reused)."""
import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from openclip_unimlip.commands import ablation as ablation_command
from openclip_unimlip.recipes.config import active_terms
from openclip_unimlip.recipes.unimlip.config import UniMlipCfg
from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions
from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.ablation import BASELINE, ROWS, TABLE3, TABLE4, format_tables, summarize
from openclip_unimlip.studies.grid import settings_hash
from openclip_unimlip.studies.statistics import paired_difference

from paths import REPO  # noqa: E402


@pytest.mark.parametrize("start_epoch", [0, 1])
@pytest.mark.parametrize("key", [key for key, row in ROWS.items() if row.trains])
def test_row_flags_parse_to_the_row(key, start_epoch):
    from open_clip_train.params import parse_args

    row = ROWS[key]
    options, rest, _ = UniMlipOptions.split_argv(row.flags(simclr_start_epoch=start_epoch))
    # the ablation starts the views at epoch 0 only from stage 1's weights
    pretrained = ["--pretrained", "stage1.pt"] if start_epoch == 0 else []
    args = parse_args(["--model", "unimlip-tiny", "--epochs", "2", *pretrained, *rest])
    options.resolve(args, {}, None)  # every check passes (a refusal raises)
    section = options.model_section({})
    active = set(active_terms(UniMlipCfg.from_dict(section).loss_weights))
    assert active == set(row.terms)
    assert section.get("feed_views_without_simclr", False) == (row.views_fed and "simclr" not in row.terms)
    if row.views_fed:
        assert options.simclr_start_epoch == start_epoch
        assert section.get("freeze_bn_with_simclr", True) == row.freeze_bn


# ----- the paired bootstrap, against its exact distribution ---------------------------------
ROW_RANKS = np.array([[1, 3, 2], [1, 1, 3]])  # [seeds, queries], 1-based ranks in a gallery of 3
BASE_RANKS = np.array([[2, 1, 2], [3, 1, 1]])


def _exact_bootstrap(row, base, value):
    """Every equally likely draw of 2 seeds of 2 and 3 queries of 3, with replacement: the
    difference of the means of ``value(rank)`` over the drawn (seed, query) cells."""
    num_seeds, num_queries = row.shape
    replicates = []
    for seeds in itertools.product(range(num_seeds), repeat=num_seeds):
        for queries in itertools.product(range(num_queries), repeat=num_queries):
            replicates.append(np.mean([[value(row[s, q]) - value(base[s, q]) for q in queries] for s in seeds]))
    return np.array(replicates)


@pytest.mark.parametrize("metric, value", [("R@1", lambda r: 100.0 * (r <= 1)), ("R@2", lambda r: 100.0 * (r <= 2)),
                                           ("mean_rank", float)])
def test_paired_bootstrap_matches_the_exact_distribution(metric, value):
    exact = _exact_bootstrap(ROW_RANKS, BASE_RANKS, value)
    result = paired_difference(ROW_RANKS, BASE_RANKS, metric, num_resamples=40000, seed=1)
    # the point estimate: the metric of each seed on all queries, row minus baseline, averaged over seeds
    direct = np.mean([np.mean([value(r) for r in ROW_RANKS[s]]) - np.mean([value(r) for r in BASE_RANKS[s]])
                      for s in range(2)])
    assert result["estimate"] == pytest.approx(direct)
    assert exact.mean() == pytest.approx(direct)  # the bootstrap of a mean is centred on it
    assert result["std"] == pytest.approx(exact.std(), rel=0.03)
    assert exact.min() <= result["low"] <= np.percentile(exact, 10)
    assert np.percentile(exact, 90) <= result["high"] <= exact.max()


def test_paired_bootstrap_degenerate_cases():
    same = paired_difference(ROW_RANKS, ROW_RANKS, "R@1")
    assert (same["estimate"], same["low"], same["high"], same["excludes_zero"]) == (0, 0, 0, False)
    better = paired_difference(np.ones((3, 5)), np.full((3, 5), 2), "R@1")  # every query first instead of second
    assert (better["estimate"], better["low"], better["high"], better["excludes_zero"]) == (100, 100, 100, True)
    worse = paired_difference(np.full((3, 5), 4), np.full((3, 5), 2), "mean_rank")
    assert (worse["low"], worse["high"], worse["excludes_zero"]) == (2, 2, True)
    with pytest.raises(ValueError, match="equal"):
        paired_difference(ROW_RANKS, BASE_RANKS[:1], "R@1")


# ----- summary and tables ----------------------------------------------------------------------
def _record(row, seed, ranks_i2t, ranks_t2i):
    """A run record as run_one writes it, its metrics computed here from the ranks."""
    def scored(i2t, t2i):
        metrics = {}
        for direction, ranks in (("image_to_text", np.array(i2t)), ("text_to_image", np.array(t2i))):
            metrics.update({f"{direction}_R@1": np.mean(ranks <= 1), f"{direction}_R@10": np.mean(ranks <= 10),
                            f"{direction}_mean_rank": ranks.mean()})
        return {"metrics": metrics, "ranks": {"image_to_text": list(i2t), "text_to_image": list(t2i)}}
    return {"row": row, "seed": seed, "train_seconds": 1.0,
            "evaluations": {"as_trained": scored(ranks_i2t, ranks_t2i),
                            "bn_reestimated": scored([r + 1 for r in ranks_i2t], ranks_t2i)}}


def test_summary_and_tables():
    base = [_record(BASELINE, 0, [1, 2, 12, 3], [1, 1, 2, 2]), _record(BASELINE, 1, [2, 2, 12, 3], [1, 2, 2, 2])]
    row = [_record("simclr_freeze", 0, [1, 1, 1, 3], [1, 1, 2, 2]),
           _record("simclr_freeze", 1, [1, 1, 2, 3], [1, 2, 2, 2]),
           _record("simclr_freeze", 2, [1, 1, 1, 1], [1, 1, 1, 1])]  # seed 2 has no baseline: not paired
    summary = summarize(base + row, [BASELINE, "simclr_freeze"], num_resamples=2000)
    # I2T R@1: baseline 25 % and 0 %, the row 75 %, 50 %, 100 %
    assert summary[BASELINE]["as_trained"]["i2t_r1"]["mean"] == pytest.approx(12.5)
    assert summary[BASELINE]["as_trained"]["i2t_r1"]["std"] == pytest.approx(math.sqrt(2 * 12.5 ** 2))
    assert summary["simclr_freeze"]["as_trained"]["i2t_r1"]["values"] == pytest.approx([75, 50, 100])
    difference = summary["simclr_freeze"]["difference"]
    assert difference["seeds"] == [0, 1]
    assert difference["as_trained"]["i2t_r1"]["estimate"] == pytest.approx(50.0)  # (75 - 25 + 50 - 0) / 2
    assert difference["as_trained"]["i2t_mean_rank"]["estimate"] == pytest.approx((1.5 - 4.5 + 1.75 - 4.75) / 2)
    assert difference["as_trained"]["t2i_r1"] == {"estimate": 0.0, "low": 0.0, "high": 0.0, "std": 0.0,
                                                  "excludes_zero": False}
    # re-estimated: every I2T rank one worse in both rows, so R@1 is 0 everywhere, the mean-rank difference unchanged
    assert difference["bn_reestimated"]["i2t_r1"]["estimate"] == 0
    assert difference["bn_reestimated"]["i2t_mean_rank"]["estimate"] == pytest.approx(-3.0)
    assert "difference" not in summary[BASELINE]
    table = format_tables(summary)
    assert "| 12.5 ± 17.7 / 37.5 ± 17.7 |" in table  # the baseline's R@1 I2T / T2I, as trained
    assert "**Table 3**" in table and "**Table 4**" in table and "precise BN" in table
    assert "| +0.0 [+0.0, +0.0] |" in table  # T2I R@1: the row equals the baseline there
    assert set(TABLE3) | set(TABLE4) | set(ablation.REFERENCE_ROWS) == set(ROWS)
    assert BASELINE in TABLE3 and BASELINE in TABLE4


def test_plateau_rule():
    def curve(mean_ranks):
        return [{"i2t_mean_rank": m, "t2i_mean_rank": m} for m in mean_ranks]
    assert ablation.has_plateaued(curve([50, 30, 20, 19.8, 19.5, 19.4]))  # 3 % over the last 3 epochs
    assert not ablation.has_plateaued(curve([50, 40, 30, 25, 22, 20]))  # 20 % over the last 3
    assert not ablation.has_plateaued(curve([50, 50, 50]))  # too short to tell


def test_stage1_cache_key_follows_stage1_settings_only():
    def config(*argv):
        return ablation_command.config_from_args(ablation_command.parse_args(["--out", "o", *argv]))
    key = ablation.stage1_dir(config())
    assert ablation.stage1_dir(config("--epochs", "5", "--seeds", "7", "--rows", "itc_mlm")) == key  # stage 2 only
    assert ablation.stage1_dir(config("--stage1-epochs", "5")) != key
    assert ablation.stage1_dir(config("--num-samples", "900")) != key
    # stale stage-2 records
    stage2_key = settings_hash(ablation.run_settings(config()))
    assert settings_hash(ablation.run_settings(config("--epochs", "5"))) != stage2_key
    # a row continues its stage 1: another stage 1 makes every stage-2 record stale, and so does from-scratch
    assert settings_hash(ablation.run_settings(config("--stage1-epochs", "5"))) != stage2_key
    assert settings_hash(ablation.run_settings(config("--from-scratch"))) != stage2_key
    # the views' start shapes a from-scratch run only (stage 2 starts them at its first epoch)
    scratch_key = settings_hash(ablation.run_settings(config("--from-scratch")))
    assert settings_hash(ablation.run_settings(config("--from-scratch", "--simclr-start-epoch", "2"))) != scratch_key
    assert ablation.run_settings(replace(config(), simclr_start_epoch=2)) == ablation.run_settings(config())


def test_refuses_contradictory_options(capsys):
    for argv in (["--from-scratch", "--stage1-epochs", "3"], ["--simclr-start-epoch", "1"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            ablation_command.parse_args(argv)
    assert "--simclr-start-epoch applies to --from-scratch only" in capsys.readouterr().err


# ----- the miniature grid, both stages -------------------------------------------------------
def _bn_running_means(state_dict):
    return {k: v for k, v in state_dict.items() if k.startswith("visual.") and k.endswith("running_mean")}


@pytest.mark.slow
def test_two_stage_miniature_grid(tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    argv = ["--out", str(out), "--data-root", str(tmp_path / "data"), "--rows", "itc_mlm", "simclr_freeze",
            "--seeds", "0", "--num-samples", "80", "--stage1-epochs", "2", "--epochs", "1", "--batch-size", "16",
            "--keep-checkpoints"]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "ablate.py"), *argv], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    # stage 1: one cached baseline with its val curve from open_clip_train
    config = ablation_command.config_from_args(ablation_command.parse_args(argv))
    stage1 = json.loads((ablation.stage1_dir(config) / "stage1.json").read_text())
    assert [p["epoch"] for p in stage1["curve"]] == [1, 2]
    assert all(0 <= p["i2t_r10"] <= 100 and p["t2i_mean_rank"] >= 1 for p in stage1["curve"])
    stage1_weights = torch.load(stage1["checkpoint"], weights_only=True)

    # stage 2 starts from the stage-1 weights. The frozen row's BatchNorm statistics are frozen from
    # its first step, so its final checkpoint still holds stage 1's exactly, which a run from fresh
    # weights (running means 0) or from any other start could not; the baseline row updates them.
    def stage2_weights(row):
        return torch.load(out / "logs" / f"{row}-seed0" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    stage1_means, frozen, updating = (_bn_running_means(w) for w in
                                      (stage1_weights, stage2_weights("simclr_freeze"), stage2_weights("itc_mlm")))
    assert stage1_means and stage1_means.keys() == frozen.keys()
    assert all(stage1_means[k].abs().sum() > 0 and torch.equal(frozen[k], stage1_means[k]) for k in stage1_means)
    assert all(not torch.equal(updating[k], stage1_means[k]) for k in stage1_means)
    for row in ("itc_mlm", "simclr_freeze"):
        command = (out / "logs" / f"{row}-seed0" / "command.txt").read_text()
        assert f"--pretrained {stage1['checkpoint']}" in command

    # the outputs: both tables, intervals for the row against the baseline
    table = (out / "ablation.md").read_text()
    assert "**Stage 1**" in table and "| V, Va, Vb | ITC, MLM, I2I (SimCLR) | ✓ |" in table
    summary = json.loads((out / "ablation.json").read_text())["summary"]
    assert set(summary) == {"itc_mlm", "simclr_freeze"}
    for evaluation in ablation.EVALUATIONS:
        interval = summary["simclr_freeze"]["difference"][evaluation]["i2t_r1"]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert (out / "ablation.png").stat().st_size > 0

    # a second call reuses stage 1: it must not train again
    def no_training(*args, **kwargs):
        raise AssertionError("stage 1 retrained")
    monkeypatch.setattr(ablation, "run_pretraining", no_training)
    before = Path(stage1["checkpoint"]).stat().st_mtime_ns
    assert ablation.ensure_stage1(config, data=None) == stage1
    assert Path(stage1["checkpoint"]).stat().st_mtime_ns == before
