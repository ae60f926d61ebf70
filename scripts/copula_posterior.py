"""Would averaging the copula law over the uncertainty in r_q remove its bias on tied pools?
A probe, not (yet) the law of ``ttp diagnose`` (docs/results.md, "The scaling laws").

    python scripts/copula_posterior.py [runs/pep-titles]

The copula per-query law plugs the measured ``r̂_q`` into the curve.  Where ``r̂_q`` is noisy
(pools of 8, or a large tied block of zeros), ``E[curve(r̂)]`` is not ``E[curve(r)]``.  This
probe replaces the plug-in by the posterior expectation ``E[curve_q(r) | r̂_q]``:
- the noise of ``r̂`` at each r comes from simulating the copula with the pool's own tie
  pattern (iid latents, sorted into the pool's utility order);
- the prior over r is normal, fitted to the pools' ``r̂`` (their variance less the mean noise
  variance);
- the expectation over the posterior uses three-point Gauss–Hermite nodes.

It prints each law's max error over N as a share of the oracle gain and in paired standard
errors: on the simulator (1,200 queries per setting, seed 3), and on a run's test pools for
every selector.
"""
import sys
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from ttp.analysis.bon import bon_curves, oracle_curves
from ttp.analysis.copula import copula_correlation, copula_curves
from ttp.analysis.pools import Pools
from ttp.analysis.simulate import UTILITIES, SimulationConfig, simulate
from ttp.runs.evaluation import selectors
from ttp.runs.pipeline import Pipeline
from ttp.tasks.utility import PRIMARY

GRID = np.linspace(-0.99, 0.99, 45)
NODES, WEIGHTS = np.array([-np.sqrt(3), 0.0, np.sqrt(3)]), np.array([1 / 6, 2 / 3, 1 / 6])


@lru_cache(maxsize=None)
def noise_model(blocks: tuple, draws: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of ``r̂`` at each ``GRID`` r for a pool whose utilities form tied blocks of
    these sizes (in utility order)."""
    m = sum(blocks)
    utilities = np.broadcast_to(np.repeat(np.arange(len(blocks), dtype=float), blocks), (draws, m))
    rng = np.random.default_rng(0)
    latent = np.sort(rng.standard_normal((draws, m)), axis=1)
    noise = rng.standard_normal((draws, m))
    estimates = [copula_correlation(r * latent + np.sqrt(1 - r * r) * noise, utilities) for r in GRID]
    return np.array([e.mean() for e in estimates]), np.array([e.std() + 1e-3 for e in estimates])


def posterior_law(utilities: np.ndarray, r_hat: np.ndarray) -> np.ndarray:
    models = [noise_model(tuple(np.unique(row, return_counts=True)[1].tolist())) for row in utilities]
    noise_variance = np.mean([np.interp(r, GRID, sd) ** 2 for r, (_, sd) in zip(r_hat, models)])
    prior = stats.norm.pdf(GRID, r_hat.mean(), np.sqrt(max(r_hat.var() - noise_variance, 1e-3)))
    center, spread = np.empty(len(r_hat)), np.empty(len(r_hat))
    for i, (mean, sd) in enumerate(models):
        weight = prior * stats.norm.pdf(r_hat[i], mean, sd)
        weight /= weight.sum()
        center[i] = weight @ GRID
        spread[i] = np.sqrt(max(weight @ GRID**2 - center[i] ** 2, 0.0))
    return sum(w * copula_curves(utilities, np.clip(center + x * spread, -1, 1)) for x, w in zip(NODES, WEIGHTS))


def errors(scores: np.ndarray, utilities: np.ndarray, law: np.ndarray) -> tuple[float, float]:
    """``(max error over N as a share of the oracle gain, max error in paired standard errors)``."""
    oracle = oracle_curves(utilities).mean(axis=0)
    residual = bon_curves(scores, utilities) - law
    se = residual.std(axis=0, ddof=1) / np.sqrt(len(residual))
    mean = np.abs(residual.mean(axis=0))
    return float(mean.max() / (oracle[-1] - oracle[0])), float((mean / np.maximum(se, 1e-15))[1:].max())


def compare(scores: np.ndarray, utilities: np.ndarray) -> str:
    r_hat = copula_correlation(scores, utilities)
    cells = [errors(scores, utilities, law) for law in (copula_curves(utilities, r_hat),
                                                        posterior_law(utilities, r_hat))]
    return "   ".join(f"{share:6.1%} ({se:4.1f} SE)" for share, se in cells)


def main(run: str | None) -> None:
    print(f"{'':38s} {'plug-in r̂':>18s}   {'posterior':>18s}")
    for utility in UTILITIES:
        for m in (8, 16, 64):
            sim = simulate(SimulationConfig(n_users=60, queries_per_user=20, pool_size=m, utility=utility, seed=3))
            print(f"simulated {utility:14s} M = {m:2d}          " + compare(sim.scores, sim.utilities), flush=True)
    if run is None:
        return
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        pools = Pools.from_frame(pd.read_parquet(pipeline.folder.scores(task.name, policy, "test")))
        print(f"\n{task.name} / {policy}")
        for selector in selectors(pools):
            if selector.model != "random":
                print(f"  {str(selector):36s} " + compare(pools[selector.column], pools[PRIMARY]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
