"""The seed intervals of ``studies/statistics.py`` (the benchmark's per-seed t-intervals and paired
differences) against scipy and a t table."""
import math

import numpy as np
import pytest
from scipy import stats

from openclip_unimlip.studies.statistics import paired_t_interval, t_interval


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
