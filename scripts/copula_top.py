"""Does the reward model rank the best candidates as well as the rest?  A probe for the copula
law's misfit on the plain pools (docs/results.md, "The scaling laws on real pools").

    python scripts/copula_top.py [runs/pep-titles]

The Gaussian copula says one correlation r_q rules the whole pool.  This probe adds one
dataset-level quantity, the *top compression* λ: the latent normal of each candidate above the
pool's median is multiplied by λ before the score is drawn, ``score = r·Z' + √(1−r²)·ε`` with
``Z' = λZ`` for ``Z > 0`` and ``Z`` otherwise.  λ = 1 is the Gaussian copula; λ < 1 means the
reward model tells the upper half from the lower as well as before, but the candidates within
the upper half less well (λ > 1: better).  The grid runs from 1.5 to 0.

λ is measured from ranks, not from any Best-of-N curve: for each λ on a grid, one common r̄ makes
the model's mean full-pool statistic (``normal_scores_regression``) the pools' mean, and the
model then predicts the mean of the same statistic computed among the better-scored half of
each pool's candidates (pools with utility spread).  λ̂ is where that meets the observed mean
(linear interpolation on the grid; the grid's end when they never meet).  The expectations are
simulated with each pool's own utilities (64 seeded draws per grid point).

It prints, on simulated pools with a planted λ (1 and 0.4, two seeds each, 600 queries), the λ̂
found and the law's error with λ = 1 and with λ̂; and for each selector
of a run's test pools, λ̂ and the law's max error over N (signed, observed below the law is +)
as a share of the oracle gain, with λ = 1 and with λ̂, both with the pools' r found this way
(plugged in, not averaged over a posterior as ``ttp diagnose`` does).
"""
import sys

import numpy as np
import pandas as pd
from scipy import special

from ttp.analysis.bon import bon_curves, oracle_curves, rank_weights
from ttp.analysis.copula import expected_by_score_rank, latent_intervals, normal_scores_regression
from ttp.analysis.pools import Pools
from ttp.runs.evaluation import selectors
from ttp.runs.pipeline import Pipeline
from ttp.tasks.utility import PRIMARY

LAMBDAS = np.linspace(1.5, 0.0, 16)
R_GRID = np.linspace(-0.5, 0.98, 38)
DRAWS = 64
TOLERANCE = 0.05


def compressed(latent: np.ndarray, lam) -> np.ndarray:
    return np.where(latent > 0, lam * latent, latent)


def top_statistic(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """``normal_scores_regression`` among the better-scored half of each row's candidates
    (``(D, M)`` scores, one pool's ``(M,)`` utilities): how well the scores order the candidates
    a selection chooses among.  (Taking the upper half by utility instead, as this probe first
    did, reads planted λ = 1 as 0.87–0.92 and points the two policies' pools opposite ways.)"""
    top = np.argsort(-scores, axis=1, kind="stable")[:, : scores.shape[1] // 2]
    return normal_scores_regression(np.take_along_axis(scores, top, axis=1),
                                    np.broadcast_to(utilities, scores.shape)[np.arange(len(scores))[:, None], top])


def expected_statistics(utilities: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, λ, r)`` expectations of the full-pool and the top statistic under the model, each
    pool with its own utilities (latents drawn within their CDF slots, as the law draws them)."""
    q, m = utilities.shape
    low, high = latent_intervals(utilities)
    rng = np.random.default_rng(seed)
    full = np.zeros((q, len(LAMBDAS), len(R_GRID)))
    top_part = np.full_like(full, np.nan)
    r = R_GRID[:, None, None]
    for i in range(q):
        latent = special.ndtri(np.clip(low[i] + rng.random((DRAWS, m)) * (high[i] - low[i]), 1e-12, 1 - 1e-12))
        noise = rng.standard_normal((DRAWS, m))
        for a, lam in enumerate(LAMBDAS):
            scores = (r * compressed(latent, lam) + np.sqrt(1 - r * r) * noise).reshape(-1, m)
            full[i, a] = normal_scores_regression(scores, np.broadcast_to(utilities[i], scores.shape)).reshape(
                len(R_GRID), DRAWS).mean(axis=1)
            if utilities[i].std() > 0:
                top_part[i, a] = top_statistic(scores, utilities[i]).reshape(len(R_GRID), DRAWS).mean(axis=1)
    return full, top_part


def estimate(scores: np.ndarray, utilities: np.ndarray, expected) -> tuple[float, np.ndarray, np.ndarray]:
    """``(λ̂, each pool's r at λ̂, each pool's r at λ = 1)``.

    λ̂ matches two dataset means, of the full-pool statistic and of the top statistic, with one
    common r̄ per grid λ: reading each pool's r off its own noisy statistic first would bias the
    predicted top statistic, which bends in r.  The law then gives each pool the r whose
    expected full-pool statistic at λ̂ is the pool's (plugged in)."""
    full, top_part = expected
    observed_full = normal_scores_regression(scores, utilities)
    observed_top = np.array([top_statistic(s[None], u)[0] if u.std() > 0 else np.nan
                             for s, u in zip(scores, utilities)])
    usable = ~np.isnan(observed_top)
    gap = np.empty(len(LAMBDAS))
    for a in range(len(LAMBDAS)):
        r_bar = np.interp(observed_full.mean(), np.maximum.accumulate(full[:, a].mean(axis=0)), R_GRID)
        predicted = [np.interp(r_bar, R_GRID, top_part[i, a]) for i in np.flatnonzero(usable)]
        gap[a] = observed_top[usable].mean() - np.mean(predicted)
    lam = _where_zero(gap)
    r_at = np.array([[np.interp(observed_full[i], np.maximum.accumulate(full[i, a]), R_GRID)
                      for i in range(len(scores))] for a in range(len(LAMBDAS))])

    def r_at_lambda(value: float) -> np.ndarray:
        return np.array([np.interp(-value, -LAMBDAS, column) for column in r_at.T])

    return lam, r_at_lambda(lam), r_at_lambda(1.0)


def _where_zero(gap: np.ndarray) -> float:
    """The grid λ where ``gap`` (rising as λ falls) crosses zero, interpolated; a grid end if never."""
    crossing = np.flatnonzero((gap[:-1] < 0) & (gap[1:] >= 0))
    if len(crossing) == 0:
        return float(LAMBDAS[0] if gap[0] >= 0 else LAMBDAS[-1])
    a = crossing[0]
    return float(LAMBDAS[a] + gap[a] / (gap[a] - gap[a + 1]) * (LAMBDAS[a + 1] - LAMBDAS[a]))


def law_curves(utilities: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    def scores_given(position, rr, rng):
        latent = compressed(special.ndtri(np.clip(position, 1e-12, 1 - 1e-12)), lam)
        return rr * latent + np.sqrt(np.clip(1 - rr**2, 0, 1)) * rng.standard_normal(latent.shape)

    return expected_by_score_rank(utilities, r, scores_given) @ rank_weights(utilities.shape[1]).T


def worst_error(scores, utilities, law) -> float:
    oracle = oracle_curves(utilities).mean(axis=0)
    difference = law.mean(axis=0) - bon_curves(scores, utilities).mean(axis=0)
    return float(difference[np.argmax(np.abs(difference))] / (oracle[-1] - oracle[0]))


def simulated(lam: float, queries: int = 600, m: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-inflated utilities (half the candidates at 0) scored through the model with a
    planted λ and r ~ N(0.7, 0.15), about the plain pools' r̄."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((queries, m))
    utilities = np.where(latent < 0, 0.0, latent)
    r = np.clip(rng.normal(0.7, 0.15, (queries, 1)), -0.95, 0.95)
    scores = r * compressed(latent, lam) + np.sqrt(1 - r * r) * rng.standard_normal((queries, m))
    return scores, utilities


def main(run: str | None) -> None:
    for planted, seed in ((1.0, 0), (1.0, 1), (0.4, 0), (0.4, 1)):
        scores, utilities = simulated(planted, seed=seed)
        lam, r, r_gaussian = estimate(scores, utilities, expected_statistics(utilities))
        print(f"simulated zero-inflated pools of 16 (seed {seed}), planted λ = {planted}: λ̂ = {lam:.2f}, law error with λ = 1 "
              f"{worst_error(scores, utilities, law_curves(utilities, r_gaussian, 1.0)):+.1%}, with λ̂ "
              f"{worst_error(scores, utilities, law_curves(utilities, r, lam)):+.1%}", flush=True)
    if run is None:
        return
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        pools = Pools.from_frame(pd.read_parquet(pipeline.folder.scores(task.name, policy, "test")))
        utilities = pools[PRIMARY]
        expected = expected_statistics(utilities)
        print(f"\n{task.name} / {policy}: λ̂, and the law's max error with λ = 1 and with λ̂")
        within = np.zeros(2, dtype=int)
        for selector in selectors(pools):
            if selector.model == "random":
                continue
            scores = pools[selector.column]
            lam, r, r_gaussian = estimate(scores, utilities, expected)
            errors = (worst_error(scores, utilities, law_curves(utilities, r_gaussian, 1.0)),
                      worst_error(scores, utilities, law_curves(utilities, r, lam)))
            within += np.abs(errors) <= TOLERANCE
            print(f"  {str(selector):38s} λ̂ {lam:4.2f}   λ = 1: {errors[0]:+6.1%}   λ̂: {errors[1]:+6.1%}", flush=True)
        print(f"  within {TOLERANCE:.0%}: λ = 1 for {within[0]}, λ̂ for {within[1]} selectors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
