"""The statistics every analysis shares, each written once: within-pool correlation (one rule
for pools without spread), group means, bootstrap draws over groups, and collapse detection.

Pools come either as ``(Q, M)`` matrices (one row per query) or as flat arrays with a
``groups`` array naming each value's pool; both go through the same code."""
from __future__ import annotations

import numpy as np
from scipy import stats

CORRELATIONS = ("pearson", "spearman", "normal_scores")
SPREAD_EPS = 1e-12   # a pool whose values vary less than this has no spread


def group_index(groups) -> tuple[np.ndarray, np.ndarray]:
    """``(group_ids, inverse)``: sorted distinct groups, and each element's group number."""
    return np.unique(np.asarray(groups), return_inverse=True)


def group_means(values, groups) -> tuple[np.ndarray, np.ndarray]:
    """``(group_ids, means)``: the mean of ``values`` (1-D, or 2-D by rows) within each group."""
    values = np.asarray(values, dtype=float)
    ids, inverse = group_index(groups)
    counts = np.bincount(inverse, minlength=len(ids)).astype(float)
    if values.ndim == 1:
        return ids, np.bincount(inverse, weights=values, minlength=len(ids)) / counts
    return ids, group_sums(values, inverse, len(ids)) / counts[:, None]


def group_sums(values, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``values`` (Q, K) within each group: shape ``(n_groups, K)``."""
    sums = np.zeros((n_groups, np.asarray(values).shape[1]))
    np.add.at(sums, inverse, values)
    return sums


def bootstrap_draws(n_groups: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n_groups)`` counts: how often each group is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot)


def _ranks(values: np.ndarray, inverse: np.ndarray, normal: bool) -> np.ndarray:
    import pandas as pd

    by_group = pd.Series(values).groupby(inverse)
    ranks = by_group.rank(method="average").to_numpy()
    if normal:
        sizes = by_group.transform("size").to_numpy()
        ranks = stats.norm.ppf(ranks / (sizes + 1))
    return ranks


def within_pool_correlation(scores, utilities, groups=None, method: str = "pearson") -> np.ndarray:
    """Per-pool correlation of score and utility.

    ``scores``/``utilities``: ``(Q, M)`` matrices, or flat arrays with ``groups``.  A pool with
    no spread in either variable has no ranking to measure: its correlation is 0.  Returns one
    value per pool (rows of the matrix, or sorted distinct groups)."""
    if method not in CORRELATIONS:
        raise ValueError(f"correlation must be one of {CORRELATIONS}, got {method!r}")
    x, y = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"scores and utilities differ in shape: {x.shape} and {y.shape}")
    if groups is None:
        if x.ndim != 2:
            raise ValueError("without groups, scores and utilities must be (pools, pool size) matrices")
        inverse = np.repeat(np.arange(x.shape[0]), x.shape[1])
        x, y = x.ravel(), y.ravel()
    else:
        _, inverse = group_index(groups)
    if method != "pearson":
        x, y = _ranks(x, inverse, method == "normal_scores"), _ranks(y, inverse, method == "normal_scores")
    n = np.bincount(inverse).astype(float)
    xc = x - (np.bincount(inverse, weights=x) / n)[inverse]
    yc = y - (np.bincount(inverse, weights=y) / n)[inverse]
    sxx = np.bincount(inverse, weights=xc * xc)
    syy = np.bincount(inverse, weights=yc * yc)
    sxy = np.bincount(inverse, weights=xc * yc)
    spread = (np.sqrt(sxx / n) > SPREAD_EPS) & (np.sqrt(syy / n) > SPREAD_EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    return np.where(spread, np.clip(r, -1.0, 1.0), 0.0)


def collapsed(spread, tau: float) -> tuple[np.ndarray, float]:
    """``(mask, threshold)``: groups whose spread is at most ``tau`` times the median group's."""
    spread = np.asarray(spread, dtype=float)
    threshold = tau * float(np.median(spread)) if spread.size else 0.0
    return spread <= threshold, threshold
