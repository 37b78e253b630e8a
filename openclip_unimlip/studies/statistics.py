"""The studies' statistics: intervals over training seeds and paired bootstrap intervals.

**Intervals over training seeds** (:func:`t_interval`, :func:`paired_t_interval`): Student's
t-interval of a mean, and of a paired mean difference, for the benchmark's and the real-data
downstream study's cells. A downstream number there is one run's score per seed (the test split
is fixed), so the spread that matters is the seeds' (ours: a t-interval, mean ± t(1 - α/2, n - 1)
· s / √n with s the sample standard deviation, rather than a bootstrap, which with three values
has only ten distinct resamples). Runs of two initialisations with the same seed share the
training subset and the data order, so their difference is taken per seed first (a paired interval).

**Paired bootstrap intervals** (:func:`paired_difference`, :func:`per_query_values`) for the
difference of two models' retrieval metrics. The ablation compares every row with the baseline
row on the same val pairs, one stage-2 run per seed for each. A difference is uncertain for two
reasons: which val pairs happened to be drawn, and which training seeds. Both are resampled
together (ours; a two-level bootstrap, Efron & Tibshirani 1993, ch. 6 and 8): a replicate draws
the seeds with replacement and, independently, the val pairs with replacement, and recomputes
the metric difference on them, the row and the baseline on the *same* draw (paired: seed s of
the row with seed s of the baseline, query i with query i). The interval is the replicates'
percentile interval.

Every metric there (R@K, mean rank) is a mean over queries of a per-query value of the rank of
the query's positive, each rank taken against the full val gallery (the resampling draws
queries; it does not rebuild the gallery, whose duplicates would tie with the positive). So a
replicate's difference is a weighted mean of the per-(seed, query) differences, the weights
being how often each seed and each query were drawn, which is how it is computed.
"""
import math
from typing import Dict, Optional, Sequence, Union

import numpy as np
from scipy import stats

ArrayLike = Union[np.ndarray, Sequence[Sequence[float]]]


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


def per_query_values(ranks: ArrayLike, metric: str) -> np.ndarray:
    """The per-query value whose mean over queries is ``metric``: for ``"R@K"`` 100 if the
    positive's 1-based rank is at most K else 0 (so the mean is in %), for ``"mean_rank"``
    the rank itself."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if metric == "mean_rank":
        return ranks
    if metric.startswith("R@"):
        return 100.0 * (ranks <= int(metric[2:]))
    raise ValueError(f"unknown metric {metric!r}: 'R@K' or 'mean_rank'")


def paired_difference(row_ranks: ArrayLike, baseline_ranks: ArrayLike, metric: str, *,
                      num_resamples: int = 4000, confidence: float = 0.95, seed: int = 0) -> Dict[str, float]:
    """The difference ``metric(row) - metric(baseline)``, averaged over seeds, and its paired
    bootstrap interval.

    ``row_ranks`` and ``baseline_ranks`` are ``[num_seeds, num_queries]`` 1-based ranks of each
    query's positive, row ``s`` of both arrays the same seed and column ``i`` the same query.
    Returns ``estimate`` (on all seeds and queries), ``low``/``high`` (the percentile interval
    at ``confidence``), ``std`` (of the replicates) and ``excludes_zero``. ``seed`` seeds the
    resampling, so the same call gives the same interval.
    """
    row, baseline = np.atleast_2d(row_ranks), np.atleast_2d(baseline_ranks)
    if row.shape != baseline.shape or row.size == 0:
        raise ValueError(f"expected two equal, non-empty [seeds, queries] rank arrays, "
                         f"got {row.shape} and {baseline.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    difference = per_query_values(row, metric) - per_query_values(baseline, metric)  # [S, N]
    num_seeds, num_queries = difference.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(num_seeds, np.full(num_seeds, 1 / num_seeds), size=num_resamples)  # [B, S]
    query_counts = rng.multinomial(num_queries, np.full(num_queries, 1 / num_queries), size=num_resamples)  # [B, N]
    replicates = np.einsum("bs,sn,bn->b", seed_counts, difference, query_counts) / (num_seeds * num_queries)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return {"estimate": float(difference.mean()), "low": float(low), "high": float(high),
            "std": float(replicates.std()), "excludes_zero": bool(low > 0 or high < 0)}
