"""Pins of the ablation's statistics against references computed another way: the paired
bootstrap's interval and spread against the exact distribution of a replicate (enumerated from
the multinomial and binomial laws of the draws), the summary against NumPy on the ranks, the
plateau rule against its documented sentence on hand-made and random curves, and the stage-2
command the grid would run, read without running it (tests/mutations/evaluation_data_launcher.toml)."""

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import binom

from openclip_unimlip.commands import ablation as ablation_command
from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.statistics import paired_difference

QUANTILE_TOLERANCE = 0.5  # R@1 points: 1.5 steps of the replicates' grid (100/300); Monte Carlo error ~0.1


def _exact_one_seed_distribution(difference: np.ndarray):
    """The exact law of a one-seed replicate, the mean of N draws with replacement of ``difference``
    (values in {-100, 0, 100}): (values, probabilities), from the multinomial law of the counts."""
    n = len(difference)
    p_up, p_down = np.mean(difference > 0), np.mean(difference < 0)
    up, down = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    valid = up + down <= n
    up, down = up[valid], down[valid]
    log_pmf = (gammaln(n + 1) - gammaln(up + 1) - gammaln(down + 1) - gammaln(n - up - down + 1)
               + up * np.log(p_up) + down * np.log(p_down) + (n - up - down) * np.log(1 - p_up - p_down))
    values = 100.0 * (up - down) / n
    order = np.argsort(values, kind="stable")
    return values[order], np.exp(log_pmf)[order]


def _quantile(values, probabilities, q):
    return values[np.searchsorted(np.cumsum(probabilities), q)]


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_interval_is_the_central_percentile_interval_of_the_exact_law(confidence):
    rng = np.random.default_rng(0)
    n = 300
    # per query: the row first and the baseline second (R@1 +100), the reverse (-100), or both first (0)
    outcome = rng.choice(3, size=n, p=[0.5, 0.4, 0.1])
    row, baseline = np.array([1, 2, 1])[outcome], np.array([2, 1, 1])[outcome]
    difference = 100.0 * (row == 1) - 100.0 * (baseline == 1)
    values, probabilities = _exact_one_seed_distribution(difference)
    assert probabilities.sum() == pytest.approx(1.0)
    result = paired_difference(row[None], baseline[None], "R@1", num_resamples=20000, confidence=confidence, seed=3)
    tail = (1 - confidence) / 2
    assert result["low"] == pytest.approx(_quantile(values, probabilities, tail), abs=QUANTILE_TOLERANCE)
    assert result["high"] == pytest.approx(_quantile(values, probabilities, 1 - tail), abs=QUANTILE_TOLERANCE)
    # the spread: the standard error of a mean of N draws, sqrt(population variance / N)
    assert result["std"] == pytest.approx(difference.std() / np.sqrt(n), rel=0.03)
    # the check can fail: the one-sided tail's quantile lies well outside the tolerance
    tail_gap = _quantile(values, probabilities, 2 * tail) - _quantile(values, probabilities, tail)
    assert abs(tail_gap) > 2 * QUANTILE_TOLERANCE


def test_seeds_are_resampled_too():
    """Four seeds whose difference is the same on every query (0, 0, 0 and 100): only drawing the
    seeds moves a replicate, which is then 100 x Binomial(4, 1/4) / 4."""
    row = np.array([[2] * 5, [2] * 5, [2] * 5, [1] * 5])
    baseline = np.full((4, 5), 2)
    result = paired_difference(row, baseline, "R@1", num_resamples=40000, seed=0)
    assert result["estimate"] == pytest.approx(25.0)
    exact_std = 100 * binom.std(4, 0.25) / 4
    assert result["std"] == pytest.approx(exact_std, rel=0.03)
    values = 100 * np.arange(5) / 4
    probabilities = binom.pmf(np.arange(5), 4, 0.25)
    assert result["low"] == _quantile(values, probabilities, 0.025) == 0
    assert result["high"] == _quantile(values, probabilities, 0.975) == 75


def test_an_interval_wholly_below_zero_excludes_zero():
    """A row worse than the baseline on every query of every seed: the interval is all negative,
    which excludes zero just as an all-positive one does; one straddling zero does not."""
    worse = paired_difference(np.full((3, 20), 2), np.ones((3, 20)), "R@1")
    assert (worse["estimate"], worse["low"], worse["high"]) == (-100, -100, -100)
    assert worse["excludes_zero"] is True
    better_rank = paired_difference(np.ones((2, 10)), np.full((2, 10), 3), "mean_rank")  # lower is better
    assert better_rank["high"] == -2 and better_rank["excludes_zero"] is True
    mixed = paired_difference(np.array([[1, 2, 1, 2]]), np.array([[2, 1, 2, 1]]), "R@1", seed=1)
    assert mixed["low"] < 0 < mixed["high"] and mixed["excludes_zero"] is False


# ----- the summary -------------------------------------------------------------------------------
def _record(row, seed, i2t, t2i):
    def scored(shift):
        metrics, ranks = {}, {}
        for direction, values in (("image_to_text", np.array(i2t) + shift), ("text_to_image", np.array(t2i))):
            ranks[direction] = values.tolist()
            metrics.update({f"{direction}_R@1": float(np.mean(values <= 1)),
                            f"{direction}_R@10": float(np.mean(values <= 10)),
                            f"{direction}_mean_rank": float(values.mean())})
        return {"metrics": metrics, "ranks": ranks}
    return {"row": row, "seed": seed, "train_seconds": 2.0,
            "evaluations": {"as_trained": scored(0), "bn_reestimated": scored(3)}}


def test_summary_reports_mean_ranks_in_ranks_and_recalls_in_percent():
    ranks = {0: ([1, 4, 9, 30], [2, 2, 5, 11]), 1: ([1, 1, 7, 12], [1, 3, 3, 20]), 2: ([3, 5, 5, 8], [1, 1, 2, 2])}
    records = [_record(ablation.BASELINE, seed, *r) for seed, r in ranks.items()]
    entry = ablation.summarize(records, [ablation.BASELINE], num_resamples=200)[ablation.BASELINE]
    for evaluation, shift in (("as_trained", 0), ("bn_reestimated", 3)):
        per_seed = [np.mean(np.array(i2t) + shift) for i2t, _ in ranks.values()]
        cell = entry[evaluation]["i2t_mean_rank"]
        assert cell["values"] == pytest.approx(per_seed)
        assert cell["mean"] == pytest.approx(np.mean(per_seed))
        assert cell["std"] == pytest.approx(np.std(per_seed, ddof=1))
        recall = [100 * np.mean(np.array(i2t) + shift <= 10) for i2t, _ in ranks.values()]
        assert entry[evaluation]["i2t_r10"]["mean"] == pytest.approx(np.mean(recall))
    t2i = [np.mean(t) for _, t in ranks.values()]
    assert entry["as_trained"]["t2i_mean_rank"]["mean"] == pytest.approx(np.mean(t2i))


# ----- the plateau rule --------------------------------------------------------------------------
def _plateaued_as_documented(i2t, t2i, epochs, tolerance):
    """docs: plateaued when the last ``epochs`` epochs lowered the mean rank (both directions
    averaged) by less than ``tolerance`` of its value before them -- i.e. every one of those
    epochs stays above (1 - tolerance) x the value of the epoch just before them."""
    both = [(a + b) / 2 for a, b in zip(i2t, t2i)]
    if len(both) < epochs + 1:
        return False
    reference = both[len(both) - epochs - 1]
    return all(value > (1 - tolerance) * reference for value in both[len(both) - epochs:])


def _curve(i2t, t2i):
    return [{"i2t_mean_rank": a, "t2i_mean_rank": b} for a, b in zip(i2t, t2i)]


def test_plateau_rule_reads_both_directions_from_the_epoch_before_the_last_ones():
    # the last 3 epochs end 21 % below the epoch before them, 1.3 % below their own first
    assert not ablation.has_plateaued(_curve([100, 100, 80, 79, 79], [100, 100, 80, 79, 79]))
    # image-to-text flat, text-to-image down 30 %: the average fell 15 %
    assert not ablation.has_plateaued(_curve([40, 40, 40, 40, 40], [40, 40, 36, 32, 28]))
    assert ablation.has_plateaued(_curve([40, 40, 40, 40, 40], [40, 40, 40, 39.5, 39]))
    rng = np.random.default_rng(0)
    disagreements = 0
    for _ in range(300):
        length = int(rng.integers(2, 9))
        i2t = 50 * np.cumprod(1 - rng.uniform(-0.02, 0.08, length))
        t2i = 50 * np.cumprod(1 - rng.uniform(-0.02, 0.08, length))
        expected = _plateaued_as_documented(i2t, t2i, ablation.PLATEAU_EPOCHS, ablation.PLATEAU_TOLERANCE)
        disagreements += ablation.has_plateaued(_curve(i2t, t2i)) != expected
    assert disagreements == 0


# ----- the command stage 2 would run -------------------------------------------------------------
class _Captured(Exception):
    pass


def _command_of_run_one(monkeypatch, tmp_path, argv, key, stage1):
    """The open_clip_train command ``run_one`` would start, built as run_pretraining builds it."""
    from openclip_unimlip.data.embedded import EmbeddedDataset
    from openclip_unimlip.studies import experiment

    def capture(pretrain, data, logs, name, with_val=True, progress=True):
        raise _Captured(experiment.pretrain_command(pretrain, data, logs, name, with_val=with_val))

    monkeypatch.setattr(ablation, "run_pretraining", capture)
    config = ablation_command.config_from_args(ablation_command.parse_args(["--out", str(tmp_path / "grid"), *argv]))
    data = EmbeddedDataset(root=tmp_path, train_data=str(tmp_path / "train" / "{00000..00003}.tar"),
                           val_data=str(tmp_path / "val" / "00000.tar"), train_csv=None, val_csv=None,
                           train_num_samples=1200, val_num_samples=300, manifest={}, built=False)
    with pytest.raises(_Captured) as captured:
        ablation.run_one(config, data, key, seed=1, stage1=stage1)
    return config, captured.value.args[0]


@pytest.mark.parametrize("key", ["simclr_freeze", "simclr_no_freeze", "views_no_simclr", "all_five"])
def test_stage2_rows_use_the_views_from_their_first_epoch(monkeypatch, tmp_path, key):
    """Two-stage: every row with views starts them at stage 2's epoch 0 from stage 1's weights (the
    paper continues a converged model); from scratch: at the preset's start epoch, no weights."""
    from open_clip_train.params import parse_args

    from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions

    stage1 = {"checkpoint": str(tmp_path / "stage1-abc" / "stage1.pt")}
    config, command = _command_of_run_one(monkeypatch, tmp_path, [], key, stage1)
    assert command[1:3] == ["-m", "open_clip_train.main"]
    options, rest, _ = UniMlipOptions.split_argv(command[3:])
    assert options.simclr_start_epoch == 0
    args = parse_args(rest)
    assert args.pretrained == stage1["checkpoint"] and args.seed == 1 and args.epochs == config.pretrain.epochs

    scratch, command = _command_of_run_one(monkeypatch, tmp_path, ["--from-scratch"], key, None)
    options, rest, _ = UniMlipOptions.split_argv(command[3:])
    assert options.simclr_start_epoch == scratch.simclr_start_epoch == ablation.PRESETS["cpu"].simclr_start_epoch
    assert not parse_args(rest).pretrained  # OpenCLIP's default: ""
