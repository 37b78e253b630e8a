"""A scored ablation run as ``studies.ablation`` stores it (``_evaluations``): retrieval_metrics'
fractions and the positives' ranks, computed here from made-up ranks with numpy."""
from typing import Dict, Sequence

import numpy as np


def scored(ranks: Dict[str, Sequence[int]]) -> dict:
    """``ranks``: each direction's 1-based ranks of the positives."""
    metrics = {}
    for direction, values in ranks.items():
        r = np.asarray(values)
        metrics.update({f"{direction}_R@{k}": float(np.mean(r <= k)) for k in (1, 5, 10)})
        metrics.update({f"{direction}_mean_rank": float(r.mean()), f"{direction}_median_rank": float(np.median(r))})
    return {"metrics": metrics, "ranks": {d: np.asarray(r).tolist() for d, r in ranks.items()}}
