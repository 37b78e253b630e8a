"""Intervals over training seeds: Student's t-interval of a mean, and of a paired mean difference.

A downstream number here is one run's score per seed (the test split is fixed), so the spread
that matters is the seeds' (ours: a t-interval, mean ± t(1 - α/2, n - 1) · s / √n with s the
sample standard deviation, rather than a bootstrap, which with three values has only ten
distinct resamples). Runs of two initialisations with the same seed share the training subset
and the data order, so their difference is taken per seed first (a paired interval).
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Dict[str, Optional[float]]:
    """``mean``, ``low``, ``high``, ``std`` (sample, ddof 1) and ``n`` of ``values``.

    With one value the interval and the standard deviation are undefined (``None``); with
    identical values the interval has zero width. NaN values (an undefined score) are refused.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a non-empty list of numbers, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("a value is NaN (an undefined score); leave it out before averaging")
    mean, n = float(array.mean()), int(array.size)
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "std": None, "n": n}
    std = float(array.std(ddof=1))
    half_width = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "low": mean - half_width, "high": mean + half_width, "std": std, "n": n}


def paired_t_interval(values: Sequence[float], reference: Sequence[float],
                      confidence: float = 0.95) -> Dict[str, Optional[float]]:
    """The t-interval of the per-seed differences ``values[i] - reference[i]`` (same seed ``i``),
    with ``excludes_zero`` (``None`` while the interval is undefined)."""
    if len(values) != len(reference):
        raise ValueError(f"paired values need one per seed on both sides, got {len(values)} and {len(reference)}")
    interval = t_interval(np.subtract(values, reference, dtype=np.float64), confidence)
    low, high = interval["low"], interval["high"]
    interval["excludes_zero"] = None if low is None else bool(low > 0 or high < 0)
    return interval
