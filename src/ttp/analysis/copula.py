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

That estimate is still noisy: from a pool of 16 candidates, more so where a large block of
utilities is tied.  The curve is not linear in ``r``, so plugging in ``r̂_q`` biases the law (it
over-predicts on tied pools).  The per-query law therefore averages the curve over the
posterior of ``r_q`` given ``r̂_q`` (``posterior_copula_curves``): the noise of ``r̂`` at each
``r`` is simulated with the pool's own tie pattern, and the prior is normal with a mean linear
in the pool's log utility spread (pools whose utilities spread wide are ranked better, on real
pools and in the simulator alike), fitted to the estimates themselves (empirical Bayes).
"""
from __future__ import annotations

import numpy as np
from functools import lru_cache

from scipy import special, stats

from ttp.analysis.bon import rank_weights
from ttp.analysis.stats import SPREAD_EPS

EXACT = 1e-9   # |r| below this is r = 0, above 1 - this is r = 1: the law's exact ends
R_GRID = np.linspace(-0.99, 0.99, 45)   # where the posterior of r_q is evaluated
# three-point Gauss–Hermite rule: E[f(r)] for r ~ N(center, spread²) is exact for cubics in r
HERMITE_NODES, HERMITE_WEIGHTS = np.array([-np.sqrt(3), 0.0, np.sqrt(3)]), np.array([1 / 6, 2 / 3, 1 / 6])
MIN_PRIOR_POOLS = 8   # fewer pools cannot fit the prior's line and spread; the law then keeps r̂_q


def _block_normal_scores(values: np.ndarray) -> np.ndarray:
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
    a, b = _block_normal_scores(scores), _block_normal_scores(utilities)
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
    raw = np.clip(normal_scores_regression(scores, utilities), -1.0, 1.0)
    expected, grid = _calibration(scores.shape[1])
    r = np.sign(raw) * np.interp(np.abs(raw), expected, grid)
    return np.where(_informative(scores, utilities), r, 0.0)


def _informative(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
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


def gaussian_copula_scores(position: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scores of a Gaussian copula with correlation ``r`` given the utilities' positions in
    ``(0, 1)``: ``r·Z + √(1−r²)·ε`` with ``Z`` the normal quantile of the position."""
    latent = stats.norm.ppf(np.clip(position, 1e-12, 1 - 1e-12))
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


def copula_curves(utilities, r, draws: int = 256, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """Per-query law curves ``(Q, M)`` for ``N = 1..M``: the expected Best-of-N of a reward model
    whose copula correlation with this pool's utilities is ``r``: one per query, or one per
    query and draw ``(Q, draws)`` for the curve averaged over those correlations.

    Each candidate's latent normal is drawn within its CDF interval (``latent_intervals``),
    scores are ``r·latent + √(1−r²)·ε``, and the utilities read off in score order, averaged
    over ``draws`` seeded draws: the expectation of the observed curve given the pool."""
    utilities = np.asarray(utilities, dtype=float)
    r = np.asarray(r, dtype=float)
    r = np.broadcast_to(r if r.ndim == 2 else r.reshape(-1, 1), (len(utilities), draws))
    expected = expected_by_score_rank(utilities, r, gaussian_copula_scores, draws, seed, chunk)
    oracle = np.sort(utilities, axis=1)
    expected = np.where((r >= 1 - EXACT).all(axis=1)[:, None], oracle, expected)
    expected = np.where((np.abs(r) <= EXACT).all(axis=1)[:, None], utilities.mean(axis=1, keepdims=True), expected)
    return expected @ rank_weights(utilities.shape[1]).T


@lru_cache(maxsize=None)
def _estimate_noise(blocks: tuple[int, ...], draws: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of ``copula_correlation`` at each ``R_GRID`` r, for a pool whose utilities
    form tied blocks of these sizes (in utility order), from seeded simulated copula pools."""
    m = sum(blocks)
    utilities = np.broadcast_to(np.repeat(np.arange(len(blocks), dtype=float), blocks), (len(R_GRID) * draws, m))
    rng = np.random.default_rng(seed)
    latent = np.sort(rng.standard_normal((draws, m)), axis=1)
    noise = rng.standard_normal((draws, m))
    r = R_GRID[:, None, None]
    scores = (r * latent + np.sqrt(1 - r * r) * noise).reshape(-1, m)
    estimates = copula_correlation(scores, utilities).reshape(len(R_GRID), draws)
    # the floor keeps the likelihood finite where the estimate cannot move (one tied block)
    return estimates.mean(axis=1), estimates.std(axis=1) + 1e-3


def _tie_blocks(row: np.ndarray) -> tuple[int, ...]:
    return tuple(np.unique(row, return_counts=True)[1].tolist())


def correlation_posterior(utilities, r_hat, prior_pools=None) -> tuple[np.ndarray, np.ndarray]:
    """Each pool's posterior mean and sd of ``r_q`` given its estimate ``r̂_q``.

    Likelihood: ``r̂ ~ N(m(r), s(r)²)`` with ``m`` and ``s`` simulated for the pool's tie
    pattern (``_estimate_noise``).  Prior: ``r ~ N(a + b·log σ_q, τ²)``, with ``a, b`` the least
    squares fit of ``r̂`` on log utility spread over ``prior_pools`` (default: all; a fit needs
    a handful, ``MIN_PRIOR_POOLS``) and ``τ²`` the fit's residual variance less the mean noise
    variance (floored at 0.001)."""
    utilities = np.asarray(utilities, dtype=float)
    r_hat = np.asarray(r_hat, dtype=float)
    prior_pools = np.ones(len(r_hat), bool) if prior_pools is None else np.asarray(prior_pools, bool)
    noise = [_estimate_noise(_tie_blocks(row)) for row in utilities]
    noise_sd = np.array([np.interp(r, R_GRID, sd) for r, (_, sd) in zip(r_hat, noise)])
    design = np.column_stack([np.ones(len(r_hat)), np.log(utilities.std(axis=1) + SPREAD_EPS)])
    coef = np.linalg.lstsq(design[prior_pools], r_hat[prior_pools], rcond=None)[0]
    prior_mean = design @ coef
    residual = (r_hat - prior_mean)[prior_pools]
    prior_sd = np.sqrt(max(residual.var() - (noise_sd[prior_pools] ** 2).mean(), 1e-3))
    center, spread = np.empty(len(r_hat)), np.empty(len(r_hat))
    for i, (mean, sd) in enumerate(noise):
        weight = stats.norm.pdf(R_GRID, prior_mean[i], prior_sd) * stats.norm.pdf(r_hat[i], mean, sd)
        weight = weight / weight.sum() if weight.sum() > 0 else np.full(len(R_GRID), 1 / len(R_GRID))
        center[i] = weight @ R_GRID
        spread[i] = np.sqrt(max(weight @ R_GRID**2 - center[i] ** 2, 0.0))
    return center, spread


def posterior_copula_curves(scores, utilities, prior_pools=None, draws: int = 256, seed: int = 0) -> np.ndarray:
    """The per-query law: ``copula_curves`` averaged over the posterior of ``r_q`` given
    ``r̂_q`` (``correlation_posterior``) by three Gauss–Hermite nodes, the draws split among
    the nodes in proportion to their weights (so its curves cost what one plug-in curve does).
    Only pools in ``prior_pools`` (default: all) with spread in both scores and utilities take
    part; the others (a collapsed user's, whose r is not drawn from the others' prior) keep
    ``r̂_q``, as every pool does when fewer than ``MIN_PRIOR_POOLS`` take part."""
    scores, utilities = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    r_hat = copula_correlation(scores, utilities)
    shrunk = _informative(scores, utilities)
    if prior_pools is not None:
        shrunk &= np.asarray(prior_pools, bool)
    if shrunk.sum() < MIN_PRIOR_POOLS:
        return copula_curves(utilities, r_hat, draws, seed)
    center, spread = correlation_posterior(utilities, r_hat, shrunk)
    outer = round(HERMITE_WEIGHTS[0] * draws)
    node = np.repeat(HERMITE_NODES, [outer, draws - 2 * outer, outer])
    r = np.where(shrunk[:, None], np.clip(center[:, None] + node * spread[:, None], -1, 1), r_hat[:, None])
    return copula_curves(utilities, r, draws, seed)
