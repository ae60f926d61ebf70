"""A scaling law for any utility distribution: the Gaussian-copula law (docs/method.md).

The Gaussian law assumes score and utility jointly Gaussian.  Real utilities are not: ROUGE
is zero-inflated and right-skewed.  The copula law keeps the pool's own utilities, exactly as
they are, and assumes only that the *ranks* of score and utility are those of a bivariate
normal with correlation ``r_q`` (a Gaussian copula).  Given a pool's utilities, the expected
Best-of-N of a reward model with copula correlation ``r`` is

    BoN_q(N; r) = Σ_j w_{N,j} · E[ utility of the candidate at score rank j ]

with the exact rank weights ``w`` of ``ttp.analysis.bon``.  The expectation is taken over the
copula: latent normals ``Z`` are drawn for the pool, one in each rank slot of the standard
normal (so the largest goes to the best utility), scores ``r·Z + √(1−r²)·ε``, and the utilities
read off in score order; it is averaged over ``draws`` seeded draws.  Latents and ``r_q`` both
live in rank space: how far a large utility stands from the rest of its pool enters through
the value read off, not through its latent (docs/method.md says why).  The law is exact at
both ends: ``r = 1`` gives the oracle curve and ``r = 0`` the random curve, whatever the
utilities.

``r_q`` is estimated from the pool by the tie-corrected normal-scores correlation: with
utilities tied (41–46% of ROUGE candidates score 0), each tied block gets the mean of the
normal scores it spans, ``B``; under the copula ``cov(Z_score, B) = r · var(B)``, so
``r = cov(a, b) / var(b)`` is not attenuated by ties as a plain rank correlation is.  Normal
scores of ``M`` points still understate ``r`` a little (by 0.07 at ``M = 8``, 0.013 at 64), so
the estimate is mapped back through its expectation under the copula, simulated once per pool
size (``_calibration``).

The law takes two more things from a dataset's pools, fitted in ``ttp.analysis.copula_fit``:
the posterior of each ``r_q`` given ``r̂_q``, and the *top compression* λ (``compress_top``:
each latent above the median multiplied by λ before the score is drawn).
"""
from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
from scipy import special, stats

from ttp.analysis.bon import rank_weights
from ttp.analysis.stats import SPREAD_EPS

EXACT = 1e-9   # |r| below this is r = 0, above 1 - this is r = 1: the law's exact ends


def tie_averaged_normal_scores(values: np.ndarray) -> np.ndarray:
    """Each row's normal scores (van der Waerden), averaged within blocks of tied values."""
    n, m = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    starts = np.concatenate([np.ones((n, 1), bool), np.diff(ordered, axis=1) != 0], axis=1)
    block = np.cumsum(starts, axis=1) - 1 + (np.arange(n) * m)[:, None]
    z = np.broadcast_to(special.ndtri(np.arange(1, m + 1) / (m + 1)), (n, m))
    block_mean = np.bincount(block.ravel(), z.ravel(), n * m) / np.maximum(np.bincount(block.ravel(), None, n * m), 1)
    result = np.empty((n, m))
    np.put_along_axis(result, order, block_mean[block], axis=1)
    return result


def normal_scores_regression(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """Per pool, ``cov(a, B) / var(B)`` of the scores' and the utilities' tie-averaged normal
    scores: the statistic ``copula_correlation`` maps to ``r`` (0 without utility spread)."""
    a, b = tie_averaged_normal_scores(scores), tie_averaged_normal_scores(utilities)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    var_b = (b * b).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var_b > SPREAD_EPS, (a * b).mean(axis=1) / var_b, 0.0)


@lru_cache(maxsize=None)
def _calibration(m: int, pools: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(expected estimate, r)`` on a grid of r in [0, 1): the raw estimator's mean over
    simulated copula pools of size ``m`` (seeded, so every run maps estimates alike)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 0.995, 41)
    expected = np.empty_like(grid)
    for i, r in enumerate(grid):
        x = rng.standard_normal((pools, m))
        y = r * x + np.sqrt(1 - r**2) * rng.standard_normal((pools, m))
        expected[i] = normal_scores_regression(x, y).mean()
    return np.append(np.maximum.accumulate(expected), 1.0), np.append(grid, 1.0)


def copula_correlation(scores, utilities) -> np.ndarray:
    """Per-pool copula correlation of score and utility, corrected for ties in the utilities and
    for the small-pool bias of normal scores; 0 for a pool without spread in either."""
    scores, utilities = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    r = calibrated_correlation(normal_scores_regression(scores, utilities), scores.shape[1])
    return np.where(has_spread(scores, utilities), r, 0.0)


def calibrated_correlation(raw: np.ndarray, m: int) -> np.ndarray:
    """The normal-scores statistic of pools of ``m`` mapped back through its expectation."""
    raw = np.clip(raw, -1.0, 1.0)
    expected, grid = _calibration(m)
    return np.sign(raw) * np.interp(np.abs(raw), expected, grid)


def has_spread(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """Pools with a spread in both scores and utilities: the only ones whose r can be measured."""
    return (utilities.std(axis=1) > SPREAD_EPS) & (scores.std(axis=1) > SPREAD_EPS)


def latent_intervals(utilities) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's latent normal as an interval ``(low, high)`` of its CDF position: the
    slot its utility's rank holds in the pool, ``[(k − 1)/M, k/M)`` for rank ``k``, so the pool's
    latents are a stratified sample of the standard normal in utility order (the normal scores
    that ``r_q`` is measured on).  A value shared by several candidates (a tie, such as ROUGE 0)
    spans the slots of its block."""
    u = np.asarray(utilities, dtype=float)
    m = u.shape[1]
    low = (stats.rankdata(u, axis=1, method="min") - 1) / m
    high = stats.rankdata(u, axis=1, method="max") / m
    return low, high


def compress_top(latent: np.ndarray, compression) -> np.ndarray:
    """The latents above the median (positive) scaled by the top compression λ."""
    return np.where(latent > 0, compression * latent, latent)


def gaussian_copula_scores(position: np.ndarray, r: np.ndarray, rng: np.random.Generator,
                           compression: float = 1.0) -> np.ndarray:
    """Scores of a Gaussian copula with correlation ``r`` given the utilities' positions in
    ``(0, 1)``: ``r·Z + √(1−r²)·ε`` with ``Z`` the normal quantile of the position, its upper
    half scaled by the top compression λ (``compress_top``; λ = 1 leaves the copula Gaussian)."""
    latent = compress_top(stats.norm.ppf(np.clip(position, 1e-12, 1 - 1e-12)), compression)
    return r * latent + np.sqrt(np.clip(1 - r**2, 0, 1)) * rng.standard_normal(latent.shape)


def expected_by_score_rank(utilities, parameter, scores_given, draws: int = 256, seed: int = 0,
                           chunk: int = 64) -> np.ndarray:
    """``(Q, M)``: the expected utility of the candidate at each score rank (worst first) when
    ``scores_given(position, parameter, rng)`` draws scores given each candidate's position, a
    uniform draw within its utility's CDF interval (``latent_intervals``); ``parameter``, one
    per query or one per query and draw ``(Q, draws)``, reaches it shaped ``(queries, draws, 1)``.
    Averaged over ``draws`` seeded draws."""
    utilities = np.asarray(utilities, dtype=float)
    q, m = utilities.shape
    parameter = np.asarray(parameter, dtype=float)
    parameter = np.broadcast_to(parameter if parameter.ndim == 2 else parameter.reshape(-1, 1), (q, draws))
    low, high = latent_intervals(utilities)
    rng = np.random.default_rng(seed)
    expected = np.empty((q, m))
    for start in range(0, q, chunk):
        stop = min(start + chunk, q)
        position = low[start:stop, None, :] + rng.random((stop - start, draws, m)) * (high - low)[start:stop, None, :]
        order = np.argsort(scores_given(position, parameter[start:stop, :, None], rng), axis=2)
        by_score = np.take_along_axis(np.broadcast_to(utilities[start:stop, None, :], order.shape), order, axis=2)
        expected[start:stop] = by_score.mean(axis=1)
    return expected


def copula_curves(utilities, r, draws: int = 256, seed: int = 0, chunk: int = 64,
                  compression: float = 1.0) -> np.ndarray:
    """Per-query law curves ``(Q, M)`` for ``N = 1..M``: the expected Best-of-N of a reward model
    whose copula correlation with this pool's utilities is ``r``: one per query, or one per
    query and draw ``(Q, draws)`` for the curve averaged over those correlations; ``compression``
    is the top compression λ (1: the Gaussian copula).

    Each candidate's latent normal is drawn within its CDF interval (``latent_intervals``),
    scores are ``r·latent + √(1−r²)·ε`` (``gaussian_copula_scores``), and the utilities read off
    in score order, averaged over ``draws`` seeded draws: the expectation of the observed curve
    given the pool."""
    utilities = np.asarray(utilities, dtype=float)
    r = np.asarray(r, dtype=float)
    r = np.broadcast_to(r if r.ndim == 2 else r.reshape(-1, 1), (len(utilities), draws))
    expected = expected_by_score_rank(utilities, r, partial(gaussian_copula_scores, compression=compression),
                                      draws, seed, chunk)
    if compression > 0:   # λ = 0 ties the upper half's scores, so r = 1 is no oracle there
        expected = np.where((r >= 1 - EXACT).all(axis=1)[:, None], np.sort(utilities, axis=1), expected)
    expected = np.where((np.abs(r) <= EXACT).all(axis=1)[:, None], utilities.mean(axis=1, keepdims=True), expected)
    return expected @ rank_weights(utilities.shape[1]).T


def top_statistic(scores, utilities) -> np.ndarray:
    """Per pool, ``normal_scores_regression`` among its better-scored half: how well the scores
    order the candidates a selection chooses among (what the top compression is measured by)."""
    scores = np.asarray(scores, dtype=float)
    utilities = np.broadcast_to(np.asarray(utilities, dtype=float), scores.shape)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : scores.shape[1] // 2]
    return normal_scores_regression(np.take_along_axis(scores, top, axis=1), np.take_along_axis(utilities, top, axis=1))
