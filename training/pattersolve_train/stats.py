"""Bootstrap confidence intervals: the one resampling helper of the training tree and benches.

A card's medians (:func:`pattersolve_train.evaluate.median_intervals`), the paired comparison
of two models on the same maps (:func:`pattersolve_train.paired.paired_comparison`) and the
benchmarks' paired differences (``bench/bench_phasing.py``, ``bench/bench_ablation.py``) all
resample the test maps with replacement and read the 2.5 and 97.5 percentiles of a statistic
over the resamples (a percentile bootstrap). The draw depends only on the number of maps, the
number of resamples and the seed, so every statistic computed with the same three is computed
on the same resampled sets of maps (two metrics, or two models, resampled jointly).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Bootstrap resamples of the test maps (seeded): what every interval here is drawn with.
RESAMPLES = 2000


def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int,
                       resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of a statistic of ``n`` items.

    Parameters
    ----------
    statistic
        Takes the resampled indices, an integer array of shape ``(resamples, n)``, and returns
        the statistic of each resample, shape ``(resamples,)``: e.g.
        ``lambda idx: np.median(values[idx], axis=1)``, or for a paired difference of two
        arrays over the same items ``lambda idx: np.median(b[idx], 1) - np.median(a[idx], 1)``.
    n
        Number of items (maps) resampled with replacement; at least 1.
    resamples, seed
        Number of resamples and the seed of their draw (deterministic).

    Returns
    -------
    tuple
        ``(low, high)``: the 2.5 and 97.5 percentiles of the statistic over the resamples.
    """
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = statistic(idx)
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))
