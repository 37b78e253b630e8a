"""The seed intervals of ``studies/statistics.py`` (the benchmark's per-seed t-intervals and paired
differences) against scipy and a t table."""
import inspect
import math
import re

import numpy as np
import pytest
from scipy import stats

from openclip_unimlip.studies import statistics
from openclip_unimlip.studies.statistics import paired_difference, paired_t_interval, per_query_values, t_interval

from paths import REPO


@pytest.mark.parametrize("values", [[0.61, 0.64, 0.58], [0.7, 0.71], [0.5, 0.52, 0.49, 0.55, 0.51]])
def test_t_interval_is_scipys(values):
    interval = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval["mean"] == pytest.approx(np.mean(values))
    assert (interval["low"], interval["high"]) == (pytest.approx(low), pytest.approx(high))


def test_t_interval_uses_the_textbook_quantile_for_three_seeds():
    # t(0.975, 2) = 4.303 (any t table); values 1, 2, 3: s = 1, half width 4.303 / sqrt(3)
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval["high"] - 2.0 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)


def test_t_interval_of_one_seed_is_undefined_and_nan_is_refused():
    assert t_interval([0.7]) == {"mean": 0.7, "low": None, "high": None, "std": None, "n": 1}
    with pytest.raises(ValueError, match="NaN"):
        t_interval([0.7, math.nan])


def test_paired_interval_excludes_zero_exactly_when_the_paired_t_test_rejects():
    rng = np.random.default_rng(0)
    for _ in range(50):
        reference = rng.normal(0.6, 0.05, 4)
        values = reference + rng.normal(rng.uniform(-0.05, 0.05), 0.02, 4)
        interval = paired_t_interval(values, reference)
        assert interval["excludes_zero"] == (stats.ttest_rel(values, reference).pvalue < 0.05)


@pytest.mark.parametrize("values, reference", [([0.5], [0.4, 0.5, 0.6]), ([0.5, 0.6], [0.4, 0.5, 0.6]),
                                               ([0.4, 0.5, 0.6], [0.5, 0.6])])
def test_paired_values_need_one_per_seed_on_both_sides(values, reference):
    # one value against three would broadcast into three "differences" of a single seed
    with pytest.raises(ValueError, match="one per seed on both sides"):
        paired_t_interval(values, reference)


@pytest.mark.parametrize("row, baseline", [(np.ones((2, 5)), np.ones((3, 5))), (np.ones((3, 5)), np.ones((2, 5))),
                                           (np.ones((2, 5)), np.ones((2, 4))), (np.ones((2, 4)), np.ones((2, 5))),
                                           (np.ones((1, 0)), np.ones((1, 0)))])
def test_the_paired_bootstrap_refuses_unpaired_or_empty_ranks(row, baseline):
    with pytest.raises(ValueError, match="expected two equal, non-empty"):
        paired_difference(row, baseline, "R@1")


def test_an_interval_touching_zero_does_not_exclude_it():
    # R@1 differences of 0 for 19 queries and +100 for one: a resample misses that query with probability
    # (19/20)^20 = 36 % > 2.5 %, so the 2.5th percentile is exactly 0, inside the closed interval
    baseline = np.ones((2, 20))
    baseline[:, 0] = 2
    result = paired_difference(np.ones((2, 20)), baseline, "R@1", num_resamples=2000)
    assert (result["low"], result["estimate"]) == (0.0, 5.0) and result["high"] > 0
    assert result["excludes_zero"] is False


def test_an_interval_wholly_between_zero_and_one_excludes_zero():
    # mean-rank differences of +1 for half the queries and 0 for the rest: estimate 0.5, the interval inside (0, 1)
    baseline = np.tile(np.arange(1, 41, dtype=float), (3, 1))
    row = baseline + (np.arange(40) % 2)
    result = paired_difference(row, baseline, "mean_rank", num_resamples=2000)
    assert result["estimate"] == 0.5 and 0 < result["low"] < 0.5 < result["high"] < 1
    assert result["excludes_zero"] is True


@pytest.mark.parametrize("confidence", [-0.5, 0.0, 1.0, 1.5])
def test_a_confidence_outside_zero_and_one_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_difference(np.ones((2, 5)), np.ones((2, 5)), "R@1", confidence=confidence)
    with pytest.raises(ValueError, match="confidence must be in"):
        t_interval([1.0, 2.0], confidence=confidence)


def test_no_values_are_refused_by_name():
    with pytest.raises(ValueError, match="non-empty"):
        t_interval([])


def test_a_50_percent_interval_lies_inside_the_95_percent_one():
    # the same resamples (same seed): the 25th-75th percentiles lie inside the 2.5th-97.5th
    rng = np.random.default_rng(1)
    row, baseline = rng.integers(1, 30, (3, 50)), rng.integers(1, 30, (3, 50))
    wide = paired_difference(row, baseline, "mean_rank", confidence=0.95)
    narrow = paired_difference(row, baseline, "mean_rank", confidence=0.5)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def test_an_interval_touching_zero_from_below_does_not_exclude_it():
    # the mirror of the test above: R@1 differences of 0 for 19 queries and -100 for one, the 97.5th percentile 0
    row = np.ones((2, 20))
    row[:, 0] = 2
    result = paired_difference(row, np.ones((2, 20)), "R@1", num_resamples=2000)
    assert (result["high"], result["estimate"]) == (0.0, -5.0) and result["low"] < 0
    assert result["excludes_zero"] is False


def test_an_interval_wholly_between_minus_one_and_zero_excludes_zero():
    baseline = np.tile(np.arange(1, 41, dtype=float), (3, 1))
    result = paired_difference(baseline, baseline + (np.arange(40) % 2), "mean_rank", num_resamples=2000)
    assert result["estimate"] == -0.5 and -1 < result["low"] < -0.5 < result["high"] < 0
    assert result["excludes_zero"] is True


def test_a_t_interval_of_zero_width_at_zero_does_not_exclude_it():
    # three seeds with equal values on both sides: the interval is [0, 0], which holds 0
    interval = paired_t_interval([0.7, 0.6, 0.5], [0.7, 0.6, 0.5])
    assert (interval["low"], interval["high"], interval["excludes_zero"]) == (0.0, 0.0, False)


def test_the_interval_is_the_central_percentile_interval_of_the_replicates(monkeypatch):
    asked = []
    percentile = np.percentile
    monkeypatch.setattr(statistics.np, "percentile", lambda a, q, *args, **kwargs: (
        asked.append(list(q)), percentile(a, q, *args, **kwargs))[1])
    rng = np.random.default_rng(2)
    row, baseline = rng.integers(1, 30, (3, 50)), rng.integers(1, 30, (3, 50))
    for confidence in (0.95, 0.5):
        paired_difference(row, baseline, "mean_rank", confidence=confidence)
    assert asked == [pytest.approx([2.5, 97.5]), pytest.approx([25.0, 75.0])]


def test_the_number_of_resamples_is_the_documented_one_and_options_are_keywords():
    documented = re.search(r"each of (\d+) replicates", (REPO / "docs" / "ablation.md").read_text()).group(1)
    parameters = inspect.signature(paired_difference).parameters
    assert parameters["num_resamples"].default == int(documented) == 4000
    assert parameters["seed"].default == 0  # the same call gives the same interval
    with pytest.raises(TypeError):  # a count passed where a keyword is meant must not be read as one
        paired_difference(np.ones((2, 5)), np.ones((2, 5)), "R@1", 100)


def test_per_query_values_count_ranks_up_to_k_and_refuse_unknown_metrics():
    ranks = np.array([1, 2, 10, 11])
    assert per_query_values(ranks, "R@10").tolist() == [100.0, 100.0, 100.0, 0.0]
    assert per_query_values(ranks, "".join(["mean", "_rank"])).tolist() == [1.0, 2.0, 10.0, 11.0]  # not interned
    for metric in ("recall", "median_rank"):
        with pytest.raises(ValueError, match="unknown metric"):
            per_query_values(ranks, metric)


@pytest.mark.parametrize("values", [5.0, [[1.0, 2.0], [3.0, 4.0]]])
def test_values_that_are_not_a_list_are_refused_by_name(values):
    with pytest.raises(ValueError, match="expected a non-empty list of numbers"):
        t_interval(values)
