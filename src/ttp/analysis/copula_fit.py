"""What the copula laws fit from a dataset's pools beyond each pool's ``r̂_q``
(``ttp.analysis.copula``): the posterior of ``r_q`` (``posterior_copula_curves``, the per-query
law) and the top compression λ (``top_compression``); docs/method.md, "Noise in r̂_q" and "Top
compression".

Each pool's estimate ``r̂_q`` (``copula_correlation``) is noisy: from a pool of 16 candidates,
more so where a large block of utilities is tied.  The curve is not linear in ``r``, so
plugging in ``r̂_q`` biases the law (it over-predicts on tied pools).  The per-query law
therefore averages the curve over the posterior of ``r_q`` given ``r̂_q``
(``posterior_copula_curves``): the noise of ``r̂`` at each ``r`` is simulated with the pool's
own tie pattern, and the prior is normal with a mean linear in the pool's log utility spread
(pools whose utilities spread wide are ranked better, on real pools and in the simulator
alike), fitted to the estimates themselves (empirical Bayes).

One correlation per pool says a reward model orders the best candidates as well as it tells
good from bad ones.  Real ones may not.  The laws therefore take one dataset-level quantity
more, the *top compression* λ (``top_compression``): each latent above the median is
multiplied by λ before the score is drawn (λ = 1: the Gaussian copula; λ < 1: the better half
told apart less sharply).  λ is measured from ranks, not from any curve: it makes the expected
normal-scores statistic among each pool's better-scored half (``top_statistic``), averaged over
r's posterior, the observed one.  The expectations come from simulating each tie pattern of the
pools (``_simulated_statistics``), which also gives the noise model of ``r̂`` at any λ.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special, stats

from ttp.analysis.copula import (
    calibrated_correlation,
    compress_top,
    copula_correlation,
    copula_curves,
    has_spread,
    tie_averaged_normal_scores,
    top_statistic,
)
from ttp.analysis.stats import SPREAD_EPS

R_GRID = np.linspace(-0.99, 0.99, 45)   # where the posterior of r_q is evaluated
# three-point Gauss–Hermite rule: E[f(r)] for r ~ N(center, spread²) is exact for cubics in r
HERMITE_NODES, HERMITE_WEIGHTS = np.array([-np.sqrt(3), 0.0, np.sqrt(3)]), np.array([1 / 6, 2 / 3, 1 / 6])
MIN_PRIOR_POOLS = 8   # fewer pools cannot fit the prior's line and spread; the law then keeps r̂_q
COMPRESSIONS = np.linspace(0.0, 1.5, 16)   # the top compressions λ measured (1: the Gaussian copula)
SIMULATED_POOLS = 4096   # per dataset, for the expectations the top compression and r's posterior need


@lru_cache(maxsize=None)
def _simulated_statistics(blocks: tuple[int, ...], draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, sd)`` of ``copula_correlation`` and the mean of ``top_statistic``, each
    ``(len(COMPRESSIONS), len(R_GRID))``, for a pool whose utilities form tied blocks of these
    sizes (in utility order): over seeded simulated pools of the compressed copula at each λ
    and r, the same draws at every grid point.  Each pattern is seeded by itself, so that a
    dataset's average over patterns averages their simulation errors too."""
    m, half = sum(blocks), sum(blocks) // 2
    utilities = np.repeat(np.arange(len(blocks), dtype=float), blocks)
    rng = np.random.default_rng([draws, *blocks])
    # iid latents, sorted and dealt to the utilities in order (not stratified in their slots as
    # the law's curves draw them: the estimates' sampling noise is that of iid latents)
    latent = np.sort(rng.standard_normal((draws, m)), axis=1)
    noise = rng.standard_normal((draws, m))
    r = R_GRID[:, None, None]
    shape = (len(COMPRESSIONS), len(R_GRID), draws)
    full, top = np.zeros(shape), np.empty(shape)
    # simulated scores never tie, so their normal scores in score order are those of ranks 1..M
    # (1..M/2 in the better half), and both statistics need one sort of the scores
    ranked = special.ndtri(np.arange(1, m + 1) / (m + 1))
    ranked_top = special.ndtri(np.arange(1, half + 1) / (half + 1))
    b = tie_averaged_normal_scores(utilities[None])[0]
    b, var_b = b - b.mean(), b.var()
    for a, compression in enumerate(COMPRESSIONS):
        scores = (r * compress_top(latent, compression) + np.sqrt(1 - r * r) * noise).reshape(-1, m)
        order = np.argsort(scores, axis=1)
        if var_b > SPREAD_EPS:
            full[a] = calibrated_correlation((b[order] * ranked).mean(axis=1) / var_b, m).reshape(shape[1:])
        top_b = tie_averaged_normal_scores(utilities[order[:, -half:]])
        top_b -= top_b.mean(axis=1, keepdims=True)
        var_top = (top_b * top_b).mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            top[a] = np.where(var_top > SPREAD_EPS, (top_b * ranked_top).mean(axis=1) / var_top, 0.0).reshape(shape[1:])
    # the floor keeps the likelihood finite where the estimate cannot move (one tied block)
    return full.mean(axis=2), full.std(axis=2) + 1e-3, top.mean(axis=2)


def _at_compression(table: np.ndarray, compression: float) -> np.ndarray:
    """A ``(Q, len(COMPRESSIONS), ...)`` table at one λ, linear between grid points."""
    a = int(np.clip(np.searchsorted(COMPRESSIONS, compression) - 1, 0, len(COMPRESSIONS) - 2))
    t = (compression - COMPRESSIONS[a]) / (COMPRESSIONS[a + 1] - COMPRESSIONS[a])
    return (1 - t) * table[:, a] + t * table[:, a + 1]


def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` row by row: ``x`` ``(Q,)``, ``xp`` and ``fp`` ``(Q, K)`` (``xp`` may be one
    shared row), each ``xp`` row non-decreasing; ends held constant beyond the row's range."""
    xp = np.broadcast_to(xp, fp.shape)
    k = np.clip((xp < x[:, None]).sum(axis=1), 1, xp.shape[1] - 1)
    rows = np.arange(len(x))
    x0, x1, f0, f1 = xp[rows, k - 1], xp[rows, k], fp[rows, k - 1], fp[rows, k]
    t = np.clip((x - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0, 1.0)
    return f0 + t * (f1 - f0)


def _tie_blocks(row: np.ndarray) -> tuple[int, ...]:
    return tuple(np.unique(row, return_counts=True)[1].tolist())


def _simulated_per_pool(utilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_simulated_statistics`` of each pool's tie pattern, stacked: three ``(Q,
    len(COMPRESSIONS), len(R_GRID))`` tables.  A dataset's ``SIMULATED_POOLS`` simulated pools
    (in pools of 16's worth of candidates) are shared among its patterns in proportion to how
    many pools have each, in powers of two between 128 and 2048 (so that datasets alike share
    the cache): what decides the precision of a dataset's mean."""
    patterns = [_tie_blocks(row) for row in utilities]
    counts = Counter(patterns)
    budget = SIMULATED_POOLS * 16 / utilities.shape[1] / len(patterns)
    draws = {p: int(2 ** np.clip(np.ceil(np.log2(budget * c)), 7, 11)) for p, c in counts.items()}
    tables = {p: _simulated_statistics(p, draws[p]) for p in counts}
    mean, sd, top = (np.stack([tables[p][i] for p in patterns]) for i in range(3))
    return mean, sd, top


def _measured_pools(scores, utilities, pools) -> np.ndarray:
    """The pools a dataset-level fit uses: those in ``pools`` (default: all) with spread in both
    scores and utilities."""
    measured = has_spread(scores, utilities)
    return measured if pools is None else measured & np.asarray(pools, bool)


class TopCompression(NamedTuple):
    """What ``top_compression`` measures: λ̂, its standard error (``None`` where it cannot be
    measured), and the one copula correlation ``r̄`` at λ̂."""

    compression: float
    standard_error: float | None
    r_bar: float


def top_compression(scores, utilities, pools=None, groups=None) -> TopCompression:
    """The dataset's top compression λ̂, its standard error and its one copula correlation at
    that λ, measured from ranks over ``pools`` (default: all) with spread in scores and
    utilities.

    For each λ of ``COMPRESSIONS`` the model predicts the pools' mean ``top_statistic``, each
    pool's expectation averaged over the posterior of its r given ``r̂`` at that λ
    (``_posterior_weights``; one r plugged in for all biased it, as the statistic bends in r);
    ``λ̂`` is where that meets the observed mean (``meeting_point``).  Its standard error is the
    observed mean's, with the pools of one of ``groups`` (default: each pool its own; users,
    whose pools share a profile) as a cluster, over the prediction's slope in λ at λ̂ (the delta
    method).  ``r̄`` makes the model's mean ``copula_correlation`` at ``λ̂`` the pools' mean (the
    pooled law's one correlation).  Fewer than ``MIN_PRIOR_POOLS`` pools give λ = 1, the
    Gaussian copula, without a standard error."""
    scores, utilities = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    measured = _measured_pools(scores, utilities, pools)
    scores, utilities = scores[measured], utilities[measured]
    r_hat = copula_correlation(scores, utilities)
    if measured.sum() < MIN_PRIOR_POOLS:
        return TopCompression(1.0, None, float(r_hat.mean()) if len(r_hat) else 0.0)
    simulated = _simulated_per_pool(utilities)
    top = simulated[2]
    predicted = np.array([(_posterior_weights(utilities, r_hat, simulated, c) * top[:, a]).sum(axis=1).mean()
                          for a, c in enumerate(COMPRESSIONS)])
    observed = top_statistic(scores, utilities)
    compression = meeting_point(observed.mean() - predicted)
    groups = np.arange(len(measured)) if groups is None else np.asarray(groups)
    deviations = pd.Series(observed - observed.mean()).groupby(groups[measured]).sum().to_numpy()
    clusters = len(deviations)
    observed_se = np.sqrt((deviations**2).sum() * clusters / max(clusters - 1, 1)) / len(observed)
    slope = abs(float(np.interp(compression, COMPRESSIONS, np.gradient(predicted, COMPRESSIONS))))
    full = _at_compression(simulated[0], compression).mean(axis=0)
    return TopCompression(compression, float(observed_se / slope) if slope > 0 else None,
                          float(np.interp(r_hat.mean(), np.maximum.accumulate(full), R_GRID)))


def meeting_point(gap: np.ndarray) -> float:
    """The λ of ``COMPRESSIONS`` where ``gap`` (observed − predicted, one per grid point) is 0,
    linear between grid points.  The prediction rises with λ where the pools' r is positive and
    falls where it is negative, so a crossing in either direction counts, the one nearest λ = 1
    (the Gaussian copula) if there are several; where they never meet, the grid point nearest to
    meeting."""
    sign_change = np.flatnonzero(np.sign(gap[:-1]) != np.sign(gap[1:]))
    if len(sign_change) == 0:
        return float(COMPRESSIONS[np.argmin(np.abs(gap))])
    meets = [COMPRESSIONS[a] + gap[a] / (gap[a] - gap[a + 1]) * (COMPRESSIONS[a + 1] - COMPRESSIONS[a])
             for a in sign_change]
    return float(min(meets, key=lambda c: abs(c - 1.0)))


def _posterior_weights(utilities, r_hat, simulated, compression: float) -> np.ndarray:
    """``(Q, len(R_GRID))``: each pool's posterior of ``r_q`` on ``R_GRID`` given ``r̂_q`` under
    the copula with top compression ``compression`` (``correlation_posterior`` says how)."""
    simulated_mean, simulated_sd, _ = simulated
    mean, sd = _at_compression(simulated_mean, compression), _at_compression(simulated_sd, compression)
    # the prior lives in r's units: each pool's estimate read back through its expectation at λ
    # relative to λ = 1 (same draws, so the simulation's own error cancels; at λ = 1, r̂ itself)
    gaussian = simulated_mean[:, list(COMPRESSIONS).index(1.0)]
    point = _interp_rows(_interp_rows(r_hat, R_GRID, gaussian), np.maximum.accumulate(mean, axis=1),
                         np.broadcast_to(R_GRID, mean.shape))
    slope = _interp_rows(point, R_GRID, np.gradient(mean, R_GRID, axis=1))
    noise_sd = _interp_rows(point, R_GRID, sd) / np.maximum(slope, 0.1)
    design = np.column_stack([np.ones(len(r_hat)), np.log(utilities.std(axis=1) + SPREAD_EPS)])
    coef = np.linalg.lstsq(design, point, rcond=None)[0]
    prior_mean = design @ coef
    prior_sd = np.sqrt(max((point - prior_mean).var() - (noise_sd**2).mean(), 1e-3))
    weight = stats.norm.pdf(R_GRID, prior_mean[:, None], prior_sd) * stats.norm.pdf(r_hat[:, None], mean, sd)
    total = weight.sum(axis=1, keepdims=True)
    return np.where(total > 0, weight / np.where(total > 0, total, 1), 1 / len(R_GRID))


def correlation_posterior(utilities, r_hat, compression: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Each pool's posterior mean and sd of ``r_q`` given its estimate ``r̂_q``, under the copula
    with top compression ``compression``.

    Likelihood: ``r̂ ~ N(m(r), s(r)²)`` with ``m`` and ``s`` simulated for the pool's tie
    pattern and λ (``_simulated_statistics``).  Prior: ``r ~ N(a + b·log σ_q, τ²)``, with
    ``a, b`` the least squares fit, over the pools (a fit needs a handful, ``MIN_PRIOR_POOLS``),
    of each pool's estimate in r's units on its log utility spread, and
    ``τ²`` the fit's residual variance less the mean noise variance (floored at 0.001)."""
    utilities = np.asarray(utilities, dtype=float)
    r_hat = np.asarray(r_hat, dtype=float)
    weight = _posterior_weights(utilities, r_hat, _simulated_per_pool(utilities), compression)
    center = weight @ R_GRID
    return center, np.sqrt(np.maximum(weight @ R_GRID**2 - center**2, 0.0))


def posterior_copula_curves(scores, utilities, prior_pools=None, compression: float = 1.0, draws: int = 256,
                            seed: int = 0) -> np.ndarray:
    """The per-query law: ``copula_curves`` with top compression ``compression`` averaged over
    the posterior of ``r_q`` given ``r̂_q`` (``correlation_posterior``) by three Gauss–Hermite
    nodes, the draws split among the nodes in proportion to their weights (so its curves cost
    what one plug-in curve does).  Only pools in ``prior_pools`` (default: all) with spread in
    both scores and utilities take part; the others (a collapsed user's, whose r is not drawn
    from the others' prior) keep ``r̂_q``, as every pool does when fewer than
    ``MIN_PRIOR_POOLS`` take part."""
    scores, utilities = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    r_hat = copula_correlation(scores, utilities)
    shrunk = _measured_pools(scores, utilities, prior_pools)
    if shrunk.sum() < MIN_PRIOR_POOLS:
        return copula_curves(utilities, r_hat, draws, seed, compression=compression)
    # the prior is fitted, and the tie patterns simulated, over the pools that take part alone,
    # as ``top_compression`` does (so the two share one simulation of each pattern)
    center, spread = np.zeros(len(r_hat)), np.zeros(len(r_hat))
    center[shrunk], spread[shrunk] = correlation_posterior(utilities[shrunk], r_hat[shrunk], compression)
    outer = round(HERMITE_WEIGHTS[0] * draws)
    node = np.repeat(HERMITE_NODES, [outer, draws - 2 * outer, outer])
    r = np.where(shrunk[:, None], np.clip(center[:, None] + node * spread[:, None], -1, 1), r_hat[:, None])
    return copula_curves(utilities, r, draws, seed, compression=compression)
